//! The control socket: a Unix stream socket (`control_socket`) on which `dns-proxy status`
//! and `dns-proxy flush` ask the running daemon what it is doing and drop cached names, and
//! `dns-proxy reload` has it load its configuration again and waits for the outcome.
//!
//! The protocol is line-delimited JSON: a client writes one request per line and reads one
//! answer line for each, on one connection as long as it likes.
//!
//! ```text
//! {"command":"status"}                            {"ok":true,"status":{…}}
//! {"command":"flush"}                             {"ok":true,"flushed":120}
//! {"command":"flush","names":["example.com"]}     {"ok":true,"flushed":3}
//! {"command":"reload"}                            {"ok":true,"message":"…"}
//! anything wrong                                  {"ok":false,"error":"unknown_command","message":"…"}
//! ```
//!
//! JSON over a socket rather than varlink: the daemon has no other D-Bus or varlink surface,
//! two commands need no interface description, and `socat`/`nc -U` plus `jq` are enough to
//! script it.
//!
//! Who may do what is decided by the peer's credentials (SO_PEERCRED): `status` for anyone
//! who may open the socket (mode 0666), `flush` and `reload` only for root and the daemon's
//! own user.
//!
//! Each client is bounded: a request line is at most [`MAX_LINE`] bytes and must arrive
//! within [`READ_TIMEOUT`], [`MAX_CLIENTS`] are served at once and the others told so, and
//! every error is answered and logged at debug level, never more. It knows nothing of the
//! daemon: it is handed a [`Handler`] (a function for each command), which `daemon.rs` wires.
//! The client side (what the `status` and `flush` commands run) is here too, so the two ends
//! share the protocol's types.

use std::fs;
use std::io::{self, BufRead as _, BufReader, Write as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::common::snapshot::{self, Status};
use crate::wire::name::{ZoneName, ZoneNameError};

/// Where the client looks when `--control` is not given: the packaged unit's socket.
pub const DEFAULT_SOCKET: &str = "/run/dns-proxy/control";
/// Longest request line, newline excluded.
pub const MAX_LINE: usize = 4096;
/// Time a client gets to send each request line, from when the daemon waits for it.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients served at once; the next ones get a `busy` answer.
pub const MAX_CLIENTS: usize = 16;
/// Time an answer may take to be written, and the client to wait for one.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Mode of the socket file: anyone may connect and ask for the status (`flush` checks the
/// peer's uid).
const SOCKET_MODE: u32 = 0o666;
/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// Longest answer the client reads: a status with hundreds of upstreams fits.
const MAX_ANSWER: u64 = 4 << 20;

/// A request, as [`parse_request`] reads it from one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    /// Names to remove with every name below them; none: the whole cache.
    Flush(Vec<ZoneName>),
    /// Load the configuration again, as SIGHUP does, and say whether it is in force.
    Reload,
}

/// A request line as written.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    names: Option<Vec<String>>,
}

/// Why a request line was refused. The client gets [`RequestError::code`] and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a JSON object of the request's shape.
    #[error("not a request: {0} (expected e.g. {{\"command\":\"status\"}})")]
    BadRequest(String),
    /// A command other than `status`, `flush` and `reload`.
    #[error("unknown command {0:?} (expected \"status\", \"flush\" or \"reload\")")]
    UnknownCommand(String),
    /// `names` given to a command that takes none.
    #[error("{0} takes no names")]
    UnexpectedNames(String),
    /// A name that cannot be in the cache.
    #[error("names[{index}]: {name:?} {reason}")]
    BadName {
        index: usize,
        name: String,
        reason: ZoneNameError,
    },
}

impl RequestError {
    /// The `error` field of the answer: stable, for scripts.
    pub fn code(&self) -> &'static str {
        match self {
            RequestError::BadRequest(_) | RequestError::UnexpectedNames(_) => "bad_request",
            RequestError::UnknownCommand(_) => "unknown_command",
            RequestError::BadName { .. } => "bad_name",
        }
    }
}

/// Reads one request line (without its newline; surrounding whitespace is ignored). A pure
/// function of the bytes: the fuzz target `control_request` holds it to that.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    let line = line.trim_ascii();
    // serde would also read a struct from an array of its fields.
    if !line.starts_with(b"{") {
        return Err(RequestError::BadRequest(
            "a request is a JSON object".to_string(),
        ));
    }
    let raw: RawRequest = serde_json::from_slice(line)
        .map_err(|error| RequestError::BadRequest(one_line(&error.to_string())))?;
    match raw.command.as_str() {
        "status" if raw.names.is_some() => Err(RequestError::UnexpectedNames("status".to_string())),
        "status" => Ok(Request::Status),
        "reload" if raw.names.is_some() => Err(RequestError::UnexpectedNames("reload".to_string())),
        "reload" => Ok(Request::Reload),
        "flush" => raw
            .names
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(index, name)| {
                ZoneName::parse(&name).map_err(|reason| RequestError::BadName {
                    index,
                    name,
                    reason,
                })
            })
            .collect::<Result<_, _>>()
            .map(Request::Flush),
        other => Err(RequestError::UnknownCommand(other.to_string())),
    }
}

/// `text` with its control characters escaped: serde quotes an unknown field's name as sent,
/// newlines included, and a message is logged and printed as one line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| match c.is_control() {
            true => c.escape_default().to_string(),
            false => c.to_string(),
        })
        .collect()
}

impl Request {
    /// The request as one line of JSON, newline included; [`parse_request`] reads it back.
    pub fn to_line(&self) -> String {
        let raw = match self {
            Request::Status => RawRequest {
                command: "status".to_string(),
                names: None,
            },
            Request::Flush(names) => RawRequest {
                command: "flush".to_string(),
                names: Some(names.iter().map(ToString::to_string).collect()),
            },
            Request::Reload => RawRequest {
                command: "reload".to_string(),
                names: None,
            },
        };
        let mut line = serde_json::to_string(&raw).unwrap_or_default();
        line.push('\n');
        line
    }
}

/// One answer line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Answer {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// Entries removed by `flush`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flushed: Option<u64>,
    /// What went wrong, as a stable code: `bad_request`, `unknown_command`, `bad_name`,
    /// `not_permitted`, `reload_refused`, `line_too_long`, `timeout`, `busy` or `internal`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Answer {
    fn error(code: &str, message: impl Into<String>) -> Answer {
        Answer {
            ok: false,
            error: Some(code.to_string()),
            message: Some(message.into()),
            ..Answer::default()
        }
    }

    fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

/// The daemon's state now.
pub(crate) type StatusFn = dyn Fn() -> Status + Send + Sync;
/// Removes the names and those below them from the cache (everything for none); returns how
/// many entries went. May take a while on a large cache: run off the runtime.
pub(crate) type FlushFn = dyn Fn(&[ZoneName]) -> u64 + Send + Sync;
/// Loads the configuration again and puts it in force, or says why it was refused (the old
/// one stays). Reads files: run off the runtime.
pub(crate) type ReloadFn = dyn Fn() -> Result<(), String> + Send + Sync;

/// What the daemon does for each command.
pub(crate) struct Handler {
    pub(crate) status: Box<StatusFn>,
    pub(crate) flush: Box<FlushFn>,
    pub(crate) reload: Box<ReloadFn>,
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("control socket {}: another process answers on it (is another dns-proxy running?)", .0.display())]
    InUse(PathBuf),
    #[error("control socket {}: the path exists and is not a socket; not removed", .0.display())]
    NotASocket(PathBuf),
    #[error("control socket {}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

/// The bound control socket, removed by [`Control::serve`] when it stops.
pub(crate) struct Bound {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file: only this file is removed at exit, not one
    /// another process put there since.
    file: (u64, u64),
}

impl Bound {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Creates the socket at `path`, mode 0666. A socket file left by a daemon that is gone is
/// replaced; one that another process still answers on, or any other file, is left alone.
pub(crate) fn bind(path: &Path) -> Result<Bound, SocketError> {
    let io_error = |error| SocketError::Io {
        path: path.to_path_buf(),
        error,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match StdUnixStream::connect(path) {
            Ok(_) => return Err(SocketError::InUse(path.to_path_buf())),
            Err(error) if error.kind() == io::ErrorKind::ConnectionRefused => {
                info!("control socket {}: removing a stale socket", path.display());
                fs::remove_file(path).map_err(io_error)?;
            }
            Err(error) => return Err(io_error(error)),
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(io_error(error)),
    }
    let listener = UnixListener::bind(path).map_err(io_error)?;
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE)).map_err(io_error)?;
    let meta = fs::symlink_metadata(path).map_err(io_error)?;
    Ok(Bound {
        listener,
        path: path.to_path_buf(),
        file: (meta.dev(), meta.ino()),
    })
}

/// The control server.
pub(crate) struct Control {
    handler: Handler,
    /// The daemon's effective uid: the one user besides root that may flush.
    own_uid: u32,
    clients: Arc<Semaphore>,
}

impl Control {
    pub(crate) fn new(handler: Handler) -> Control {
        Control {
            handler,
            own_uid: nix::unistd::geteuid().as_raw(),
            clients: Arc::new(Semaphore::new(MAX_CLIENTS)),
        }
    }

    /// Serves clients until `shutdown`, then removes the socket file.
    pub(crate) async fn serve(
        self: Arc<Self>,
        bound: Bound,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = bound.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    warn!("control socket: accept failed: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            match self.clients.clone().try_acquire_owned() {
                Ok(permit) => {
                    let control = self.clone();
                    tracker.spawn(control.client(stream, permit, shutdown.clone()));
                }
                Err(_) => {
                    // A fresh socket's buffer takes the line at once; if not, it goes unsaid.
                    let busy = Answer::error(
                        "busy",
                        format!("{MAX_CLIENTS} clients are being served; try again"),
                    );
                    let _ = stream.try_write(&busy.line());
                    debug!("control socket: a client turned away, {MAX_CLIENTS} being served");
                }
            }
        }
        remove(&bound);
    }

    /// Answers one client's requests until it closes, errs or stalls.
    async fn client(
        self: Arc<Self>,
        stream: UnixStream,
        _permit: OwnedSemaphorePermit,
        shutdown: CancellationToken,
    ) {
        let uid = stream.peer_cred().ok().map(|cred| cred.uid());
        let (read, mut write) = stream.into_split();
        let mut reader = tokio::io::BufReader::new(read);
        loop {
            let read = tokio::select! {
                _ = shutdown.cancelled() => return,
                read = tokio::time::timeout(READ_TIMEOUT, read_line(&mut reader)) => read,
            };
            let line = match read {
                Ok(Ok(Line::Complete(line))) => line,
                Ok(Ok(Line::End)) | Ok(Err(_)) => return,
                Ok(Ok(Line::TooLong)) => {
                    let message = format!("a request line is at most {MAX_LINE} bytes");
                    debug!("control socket: {message}; closing");
                    send(&mut write, &Answer::error("line_too_long", message)).await;
                    return;
                }
                Err(_) => {
                    let message = format!(
                        "no complete request line within {}s",
                        READ_TIMEOUT.as_secs()
                    );
                    debug!("control socket: {message}; closing");
                    send(&mut write, &Answer::error("timeout", message)).await;
                    return;
                }
            };
            if line.trim_ascii().is_empty() {
                continue;
            }
            let answer = self.answer(&line, uid).await;
            if !send(&mut write, &answer).await {
                return;
            }
        }
    }

    async fn answer(self: &Arc<Self>, line: &[u8], uid: Option<u32>) -> Answer {
        let request = match parse_request(line) {
            Ok(request) => request,
            Err(error) => {
                debug!("control socket: {error}");
                return Answer::error(error.code(), error.to_string());
            }
        };
        match request {
            Request::Status => Answer {
                ok: true,
                status: Some((self.handler.status)()),
                ..Answer::default()
            },
            Request::Flush(names) => {
                let who = match self.privileged(uid, "flush") {
                    Ok(who) => who,
                    Err(refused) => return *refused,
                };
                let what = match names.is_empty() {
                    true => "the whole cache".to_string(),
                    false => names
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                };
                // Off the runtime: sweeping a large cache takes milliseconds.
                let control = self.clone();
                let flushed = match tokio::task::spawn_blocking(move || {
                    (control.handler.flush)(&names)
                })
                .await
                {
                    Ok(flushed) => flushed,
                    Err(error) => {
                        warn!("control socket: flush failed: {error}");
                        return Answer::error("internal", "the flush failed; see the log");
                    }
                };
                info!("control socket: {who} flushed {what}: {flushed} entries removed");
                Answer {
                    ok: true,
                    flushed: Some(flushed),
                    ..Answer::default()
                }
            }
            Request::Reload => {
                let who = match self.privileged(uid, "reload") {
                    Ok(who) => who,
                    Err(refused) => return *refused,
                };
                info!("control socket: reload asked by {who}");
                let control = self.clone();
                match tokio::task::spawn_blocking(move || (control.handler.reload)()).await {
                    Ok(Ok(())) => Answer {
                        ok: true,
                        message: Some("the configuration was reloaded and is in force".to_string()),
                        ..Answer::default()
                    },
                    Ok(Err(reason)) => Answer::error(
                        "reload_refused",
                        format!(
                            "reload refused, the running configuration stays in force: {reason}"
                        ),
                    ),
                    Err(error) => {
                        warn!("control socket: reload failed: {error}");
                        Answer::error("internal", "the reload failed; see the log")
                    }
                }
            }
        }
    }

    /// Who the peer is, if it may run `command` (root or the daemon's own user); otherwise the
    /// refusal to send it.
    fn privileged(&self, uid: Option<u32>, command: &str) -> Result<String, Box<Answer>> {
        let who = uid.map_or_else(|| "unknown uid".to_string(), |uid| format!("uid {uid}"));
        if uid.is_some_and(|uid| uid == 0 || uid == self.own_uid) {
            return Ok(who);
        }
        info!("control socket: {command} refused to {who}");
        Err(Box::new(Answer::error(
            "not_permitted",
            format!("{command} is for root and the daemon's own user, not {who}"),
        )))
    }
}

/// Removes the socket file if it is still the one bound.
fn remove(bound: &Bound) {
    let ours =
        fs::symlink_metadata(&bound.path).is_ok_and(|meta| (meta.dev(), meta.ino()) == bound.file);
    if !ours {
        return;
    }
    if let Err(error) = fs::remove_file(&bound.path) {
        warn!(
            "control socket {}: cannot remove it: {error}",
            bound.path.display()
        );
    }
}

/// What one read of a request line gives.
enum Line {
    /// The line without its newline, or the last bytes before the client closed its side.
    Complete(Vec<u8>),
    TooLong,
    /// The client closed with nothing pending.
    End,
}

/// Reads up to the next newline, at most [`MAX_LINE`] bytes of it.
async fn read_line(
    reader: &mut tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
) -> io::Result<Line> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut line)
        .await?;
    if read == 0 {
        return Ok(Line::End);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Complete(line));
    }
    if line.len() > MAX_LINE {
        return Ok(Line::TooLong);
    }
    Ok(Line::Complete(line))
}

/// Writes an answer line; false if the client cannot take it.
async fn send(write: &mut OwnedWriteHalf, answer: &Answer) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&answer.line())).await,
        Ok(Ok(()))
    )
}

/// Why a command of the client failed; [`ClientError::exit_code`] is its exit status.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No socket there, or nobody listening on it.
    #[error(
        "cannot reach the daemon at {}: {error} (is dns-proxy running, with control_socket set? --control gives another path)",
        path.display()
    )]
    Unavailable { path: PathBuf, error: io::Error },
    /// The socket (or its directory) may not be opened by this user.
    #[error("cannot open the control socket {}: {error}", path.display())]
    NoPermission { path: PathBuf, error: io::Error },
    /// The connection failed or timed out after it was made.
    #[error("no answer from the daemon at {}: {error}", path.display())]
    NoAnswer { path: PathBuf, error: io::Error },
    /// The answer could not be read.
    #[error("the daemon's answer cannot be read: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("{message}")]
    Refused { code: String, message: String },
    /// A name given to `flush` that cannot be in the cache.
    #[error("{0:?} {1}")]
    BadName(String, ZoneNameError),
}

/// Exit statuses of the client commands (sysexits.h).
const EX_USAGE: u8 = 64;
const EX_SOFTWARE: u8 = 70;
const EX_UNAVAILABLE: u8 = 69;
const EX_PROTOCOL: u8 = 76;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

impl ClientError {
    /// 69 when the daemon cannot be reached or is busy, 77 when this user may not do it, 64
    /// for a bad name, 76 for an answer that makes no sense, 78 for a configuration the
    /// daemon refused at reload, 70 for any other refusal.
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unavailable { .. } | ClientError::NoAnswer { .. } => EX_UNAVAILABLE,
            ClientError::NoPermission { .. } => EX_NOPERM,
            ClientError::Protocol(_) => EX_PROTOCOL,
            ClientError::BadName(..) => EX_USAGE,
            ClientError::Refused { code, .. } => match code.as_str() {
                "not_permitted" => EX_NOPERM,
                "reload_refused" => EX_CONFIG,
                "busy" | "timeout" => EX_UNAVAILABLE,
                _ => EX_SOFTWARE,
            },
        }
    }
}

/// Sends one request to the daemon at `path` and returns its answer, if it says ok.
pub fn ask(path: &Path, request: &Request) -> Result<Answer, ClientError> {
    let stream = StdUnixStream::connect(path).map_err(|error| match error.kind() {
        io::ErrorKind::PermissionDenied => ClientError::NoPermission {
            path: path.to_path_buf(),
            error,
        },
        _ => ClientError::Unavailable {
            path: path.to_path_buf(),
            error,
        },
    })?;
    let no_answer = |error| ClientError::NoAnswer {
        path: path.to_path_buf(),
        error,
    };
    stream
        .set_read_timeout(Some(WRITE_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(WRITE_TIMEOUT)))
        .map_err(no_answer)?;
    // A daemon too busy to serve us may answer and close before our request is written: its
    // answer still says why.
    let written = (&stream).write_all(request.to_line().as_bytes());
    let mut line = Vec::new();
    let read = io::Read::take(BufReader::new(&stream), MAX_ANSWER).read_until(b'\n', &mut line);
    if line.is_empty() {
        let error = written
            .err()
            .or(read.err())
            .unwrap_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof));
        return Err(no_answer(error));
    }
    let answer: Answer =
        serde_json::from_slice(&line).map_err(|error| ClientError::Protocol(error.to_string()))?;
    if !answer.ok {
        return Err(ClientError::Refused {
            code: answer.error.unwrap_or_default(),
            message: answer.message.unwrap_or_default(),
        });
    }
    Ok(answer)
}

/// `dns-proxy status`: the daemon's state for people, or its JSON (one object) for scripts.
pub fn status_command(path: &Path, json: bool) -> Result<String, ClientError> {
    let answer = ask(path, &Request::Status)?;
    let status = answer
        .status
        .ok_or_else(|| ClientError::Protocol("no status in the answer".to_string()))?;
    if json {
        let mut text = serde_json::to_string_pretty(&status)
            .map_err(|error| ClientError::Protocol(error.to_string()))?;
        text.push('\n');
        return Ok(text);
    }
    Ok(snapshot::render(&status, SystemTime::now()))
}

/// `dns-proxy flush [NAME…]`: how many cache entries went.
pub fn flush_command(path: &Path, names: &[String]) -> Result<String, ClientError> {
    let names = names
        .iter()
        .map(|name| ZoneName::parse(name).map_err(|e| ClientError::BadName(name.clone(), e)))
        .collect::<Result<Vec<_>, _>>()?;
    let answer = ask(path, &Request::Flush(names.clone()))?;
    let flushed = answer
        .flushed
        .ok_or_else(|| ClientError::Protocol("no count in the answer".to_string()))?;
    let entries = match flushed {
        1 => "entry",
        _ => "entries",
    };
    Ok(match names.is_empty() {
        true => format!("flushed the cache: {flushed} {entries} removed\n"),
        false => {
            let names: Vec<String> = names.iter().map(ToString::to_string).collect();
            format!(
                "flushed {} and below: {flushed} {entries} removed\n",
                names.join(", ")
            )
        }
    })
}

/// `dns-proxy reload`: has the daemon load its configuration again and waits until it is in
/// force, or refused. With `pid` (the unit passes `$MAINPID`), a daemon without a control
/// socket is sent SIGHUP instead, which does the same without waiting.
pub fn reload_command(path: &Path, pid: Option<i32>) -> Result<String, ClientError> {
    match (ask(path, &Request::Reload), pid) {
        (Ok(answer), _) => Ok(format!("{}\n", answer.message.unwrap_or_default())),
        (Err(ClientError::Unavailable { path, error }), Some(pid)) => {
            // Only a process: 0 and negative numbers would signal process groups.
            let signal = if pid > 0 {
                kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(io::Error::from)
            } else {
                Err(io::Error::from(io::ErrorKind::InvalidInput))
            };
            match signal {
                Ok(()) => Ok(format!(
                    "no control socket at {} ({error}): sent SIGHUP to {pid}; the daemon reloads without waiting, and logs the outcome\n",
                    path.display()
                )),
                Err(error) => Err(ClientError::Unavailable { path, error }),
            }
        }
        (Err(error), _) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> ZoneName {
        ZoneName::parse(text).unwrap()
    }

    #[test]
    fn requests_are_read() {
        assert_eq!(
            parse_request(br#"{"command":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(b" {\"command\": \"status\"}\r"),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"command":"flush"}"#),
            Ok(Request::Flush(Vec::new()))
        );
        assert_eq!(
            parse_request(br#"{"command":"flush","names":[]}"#),
            Ok(Request::Flush(Vec::new()))
        );
        assert_eq!(
            parse_request(br#"{"command":"flush","names":["Example.COM.","a.test"]}"#),
            Ok(Request::Flush(vec![name("example.com"), name("a.test")]))
        );
        assert_eq!(
            parse_request(br#"{"command":"reload"}"#),
            Ok(Request::Reload)
        );
    }

    #[test]
    fn bad_requests_say_why() {
        let code = |line: &[u8]| parse_request(line).map_err(|e| e.code());
        assert_eq!(code(br#"{"command":"reboot"}"#), Err("unknown_command"));
        assert_eq!(code(b"status"), Err("bad_request"));
        assert_eq!(code(b""), Err("bad_request"));
        assert_eq!(code(b"\xff\xfe"), Err("bad_request"));
        assert_eq!(code(br#"{"command":"status","x":1}"#), Err("bad_request"));
        assert_eq!(
            code(br#"{"command":"status","names":[]}"#),
            Err("bad_request")
        );
        assert_eq!(
            code(br#"{"command":"reload","names":[]}"#),
            Err("bad_request")
        );
        assert_eq!(code(br#"{"command":1}"#), Err("bad_request"));
        assert_eq!(code(br#"["status"]"#), Err("bad_request"));
        // Found by the fuzz target: serde quotes an unknown field's name as sent.
        let error = parse_request(br#"{"\u000a":1}"#).unwrap_err();
        assert!(error.to_string().contains(r"unknown field `\n`"), "{error}");
        assert_eq!(
            code(br#"{"command":"flush","names":["."]}"#),
            Err("bad_name")
        );
        assert_eq!(
            code(br#"{"command":"flush","names":["a..b"]}"#),
            Err("bad_name")
        );
        let error = parse_request(br#"{"command":"reboot"}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            r#"unknown command "reboot" (expected "status", "flush" or "reload")"#
        );
        let error = parse_request(br#"{"command":"flush","names":["ok.test","a b"]}"#);
        assert_eq!(
            error.unwrap_err().to_string(),
            r#"names[1]: "a b" contains a space or control character"#
        );
    }

    #[test]
    fn requests_written_read_back() {
        for request in [
            Request::Status,
            Request::Flush(Vec::new()),
            Request::Flush(vec![name("example.com"), name("xn--bcher-kva.test")]),
            Request::Reload,
        ] {
            let line = request.to_line();
            assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
            assert_eq!(parse_request(line.as_bytes()), Ok(request));
        }
    }

    #[test]
    fn answers_are_one_line_of_json() {
        let line = Answer::error("busy", "try again").line();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"ok\":false,\"error\":\"busy\",\"message\":\"try again\"}\n"
        );
        let flushed = Answer {
            ok: true,
            flushed: Some(3),
            ..Answer::default()
        };
        assert_eq!(
            String::from_utf8(flushed.line()).unwrap(),
            "{\"ok\":true,\"flushed\":3}\n"
        );
    }

    #[test]
    fn refusals_map_to_exit_codes() {
        let refused = |code: &str| ClientError::Refused {
            code: code.to_string(),
            message: String::new(),
        };
        assert_eq!(refused("not_permitted").exit_code(), 77);
        assert_eq!(refused("busy").exit_code(), 69);
        assert_eq!(refused("bad_request").exit_code(), 70);
        let missing = ClientError::Unavailable {
            path: PathBuf::from("/nonexistent"),
            error: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(missing.exit_code(), 69);
    }
}
