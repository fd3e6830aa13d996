//! `org.freedesktop.resolve1` on the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the standard
//! socket): the methods NetworkManager and `resolvectl` call, with systemd-resolved's names,
//! signatures and errors, and the properties `resolvectl status` reads.
//!
//! zbus's object server is not used: its `Properties.GetAll` refuses the interface `""` that
//! `resolvectl status` sends, and link objects exist for every interface index. Instead one
//! task reads every message and hands method calls, in order, to one worker (a link's settings
//! arrive as a pipelined sequence that must be applied in order); lookups run as tasks of their
//! own, at most [`LOOKUPS`] at once. The reader never waits, so the bus's replies to our own
//! calls (the caller's uid) always get through.
//!
//! Changing anything (Set*, Revert, FlushCaches, ResetServerFeatures) is allowed to root and
//! to the daemon's own user, asked of the bus (`GetConnectionUnixUser`); reading and lookups
//! are open, as in systemd-resolved.
//!
//! Without a bus the daemon serves as before and tries again now and then; with the name
//! refused (no policy file) it gives up; with the name taken (systemd-resolved running) it
//! waits in the bus's queue for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zbus::message::{Flags, Header, Type};
use zbus::zvariant::{ObjectPath, Value};
use zbus::{Connection, Message, MessageStream};

use crate::common::lock;
use crate::common::metrics::LinkOutcome;
use crate::context::Context;
use crate::link::input::{self, InputError, Setting};
use crate::link::lookup::{self, Failure};
use crate::link::properties::{self, Counts, LINK, MANAGER, MANAGER_PATH};
use crate::link::registry::{Flush, Registry};
use crate::link::table::Change;

/// The bus name.
pub(crate) const NAME: &str = "org.freedesktop.resolve1";
/// Method calls waiting for the worker; beyond, callers get LimitsExceeded.
const QUEUE: usize = 256;
/// Lookups at once; beyond, callers get LimitsExceeded.
const LOOKUPS: usize = 64;
/// First and longest wait before trying an absent bus again.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// How often links whose interface is gone are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// Callers' uids remembered (unique names are never reused on a bus).
const UIDS_KEPT: usize = 256;

const DBUS: &str = "org.freedesktop.DBus";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
const PEER: &str = "org.freedesktop.DBus.Peer";

/// A server as `SetLinkDNSEx` gives it: family, address bytes, port, TLS server name.
type ServerEx = (i32, Vec<u8>, u16, String);

/// Why the bus name could not be had.
enum Unavailable {
    /// No bus to connect to, or the connection failed: try again later.
    NoBus(zbus::Error),
    /// The bus refuses this process the name (no policy allows it): trying again is useless.
    Refused(zbus::Error),
}

/// A reply's body.
enum Reply {
    Empty,
    Text(String),
    Path(String),
    Value(Value<'static>),
    All(HashMap<&'static str, Value<'static>>),
    Hostname(Vec<(i32, i32, Vec<u8>)>, String, u64),
    Address(Vec<(i32, String)>, u64),
    Records(Vec<(i32, u16, u16, Vec<u8>)>, u64),
}

impl From<InputError> for Failure {
    fn from(error: InputError) -> Failure {
        Failure {
            name: error.dbus_name().to_string(),
            text: error.to_string(),
        }
    }
}

fn failure(name: &str, text: impl Into<String>) -> Failure {
    Failure {
        name: name.to_string(),
        text: text.into(),
    }
}

/// The name of interface `index` now, if there is one (`if_indextoname`). nix 0.31 misses
/// the null pointer libc returns for an unknown index and hands back its zeroed buffer: an
/// empty name is no interface.
pub(crate) fn interface_name(index: u32) -> Option<String> {
    nix::net::if_::if_indextoname(index)
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
}

/// Owns the bus name and answers on it until `shutdown`; `tried` is told once the first try
/// at the name is over, whatever its outcome.
pub(crate) async fn serve(
    registry: Arc<Registry>,
    context: Arc<Context>,
    shutdown: CancellationToken,
    tried: tokio::sync::oneshot::Sender<()>,
) {
    let mut tried = Some(tried);
    let server = Arc::new(Server {
        registry,
        context,
        uids: Mutex::new(HashMap::new()),
        own_uid: nix::unistd::geteuid().as_raw(),
    });
    let mut retry = RETRY_FIRST;
    let mut said_unavailable = false;
    loop {
        let connected = connect().await;
        if let Some(tried) = tried.take() {
            let _ = tried.send(());
        }
        match connected {
            Ok((connection, stream, queued)) => {
                retry = RETRY_FIRST;
                said_unavailable = false;
                if queued {
                    warn!(
                        "link DNS: {NAME} is owned by another service (systemd-resolved?); \
                         waiting in the bus's queue for it, serving as before meanwhile"
                    );
                    server
                        .registry
                        .set_bus(format!("waiting for {NAME}, owned by another service"));
                }
                // Owning it, the bus's NameAcquired, which the stream sees, logs and records it.
                if server.clone().run(connection, stream, &shutdown).await {
                    return;
                }
                warn!("link DNS: the system bus connection closed; connecting again");
                server
                    .registry
                    .set_bus("the system bus connection closed".to_string());
            }
            Err(Unavailable::Refused(error)) => {
                warn!(
                    "link DNS: the system bus refuses {NAME} to this process ({error}); \
                     is dns-proxy's D-Bus policy installed? Serving without the links' DNS settings"
                );
                server.registry.set_bus(format!("refused {NAME}: {error}"));
                return;
            }
            Err(Unavailable::NoBus(error)) => {
                if !said_unavailable {
                    info!(
                        "link DNS: no system bus ({error}); serving without the links' DNS \
                         settings, and trying again now and then"
                    );
                    said_unavailable = true;
                }
                debug!("link DNS: no system bus: {error}");
                server.registry.set_bus(format!("no system bus: {error}"));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// A connection to the system bus and the name requested: true when it is queued behind
/// another owner.
async fn connect() -> Result<(Connection, MessageStream, bool), Unavailable> {
    let connection = zbus::connection::Builder::system()
        .map_err(Unavailable::NoBus)?
        .build()
        .await
        .map_err(Unavailable::NoBus)?;
    // Listening before the name is ours: a caller waiting for it (NetworkManager replays every
    // link on NameOwnerChanged) may call as soon as the bus grants it, before RequestName's
    // reply reaches us, and a stream only sees the messages that arrive after it exists.
    let stream = MessageStream::from(&connection);
    // Flags 0: wait in the queue when the name is taken; never hand it over.
    let reply = connection
        .call_method(
            Some(DBUS),
            "/org/freedesktop/DBus",
            Some(DBUS),
            "RequestName",
            &(NAME, 0u32),
        )
        .await
        .map_err(|error| match &error {
            zbus::Error::MethodError(name, _, _)
                if name.as_str() != "org.freedesktop.DBus.Error.NoReply" =>
            {
                Unavailable::Refused(error)
            }
            _ => Unavailable::NoBus(error),
        })?;
    let code: u32 = reply.body().deserialize().map_err(Unavailable::NoBus)?;
    // 1: primary owner, 2: in the queue, 4: already the owner.
    Ok((connection, stream, code == 2))
}

struct Server {
    registry: Arc<Registry>,
    context: Arc<Context>,
    /// Callers' uids by unique name.
    uids: Mutex<HashMap<String, u32>>,
    own_uid: u32,
}

/// Whether a method call is a lookup (run as a task of its own).
fn is_lookup(header: &Header<'_>) -> bool {
    matches!(
        header.member().map(|m| m.as_str()),
        Some("ResolveHostname" | "ResolveAddress" | "ResolveRecord")
    )
}

impl Server {
    /// Serves `connection` until it closes (false) or `shutdown` (true).
    async fn run(
        self: Arc<Self>,
        connection: Connection,
        mut stream: MessageStream,
        shutdown: &CancellationToken,
    ) -> bool {
        // Unique names are unique on one bus only: another bus may give a known one to
        // someone else.
        lock::lock(&self.uids).clear();
        let (queue, mut calls) = mpsc::channel::<Message>(QUEUE);
        let worker = {
            let (server, connection) = (self.clone(), connection.clone());
            tokio::spawn(async move {
                let mut prune = tokio::time::interval(PRUNE_EVERY);
                loop {
                    tokio::select! {
                        call = calls.recv() => match call {
                            Some(call) => server.answer(&connection, &call).await,
                            None => return,
                        },
                        _ = prune.tick() => {
                            let flush = server.registry.prune(|index, _| interface_name(index).is_some());
                            if let Some(flush) = flush {
                                server.flush(flush).await;
                            }
                        }
                    }
                }
            })
        };
        let lookups = Arc::new(Semaphore::new(LOOKUPS));
        let stopped = loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break true,
                message = stream.next() => message,
            };
            let message = match message {
                None => break false,
                Some(Err(error)) => {
                    debug!("link DNS: unreadable message: {error}");
                    continue;
                }
                Some(Ok(message)) => message,
            };
            match message.message_type() {
                Type::Signal => self.signal(&message),
                Type::MethodCall if is_lookup(&message.header()) => {
                    match lookups.clone().try_acquire_owned() {
                        Ok(permit) => {
                            let (server, connection) = (self.clone(), connection.clone());
                            tokio::spawn(async move {
                                server.answer(&connection, &message).await;
                                drop(permit);
                            });
                        }
                        Err(_) => busy(&connection, message),
                    }
                }
                Type::MethodCall => {
                    if let Err(mpsc::error::TrySendError::Full(message)) = queue.try_send(message) {
                        busy(&connection, message);
                    }
                }
                _ => {}
            }
        };
        worker.abort();
        stopped
    }

    /// The bus's signals about our name.
    fn signal(&self, message: &Message) {
        let header = message.header();
        let member = header.member().map(|m| m.as_str());
        let Ok(name) = message.body().deserialize::<String>() else {
            return;
        };
        if name != NAME {
            return;
        }
        match member {
            Some("NameAcquired") => {
                info!("link DNS: owning {NAME} on the system bus");
                self.registry.set_bus(format!("owns {NAME}"));
            }
            Some("NameLost") => {
                warn!("link DNS: lost {NAME} to another service");
                self.registry
                    .set_bus(format!("lost {NAME} to another service"));
            }
            _ => {}
        }
    }

    /// Answers one method call.
    async fn answer(&self, connection: &Connection, message: &Message) {
        let header = message.header();
        let result = self.dispatch(connection, message).await;
        if header.primary().flags().contains(Flags::NoReplyExpected) {
            return;
        }
        let sent = match result {
            Ok(Reply::Empty) => connection.reply(&header, &()).await,
            Ok(Reply::Text(text)) => connection.reply(&header, &text).await,
            Ok(Reply::Path(path)) => match ObjectPath::try_from(path.as_str()) {
                Ok(path) => connection.reply(&header, &path).await,
                Err(error) => Err(error.into()),
            },
            Ok(Reply::Value(value)) => connection.reply(&header, &value).await,
            Ok(Reply::All(values)) => connection.reply(&header, &values).await,
            Ok(Reply::Hostname(addresses, canonical, flags)) => {
                connection
                    .reply(&header, &(addresses, canonical, flags))
                    .await
            }
            Ok(Reply::Address(names, flags)) => connection.reply(&header, &(names, flags)).await,
            Ok(Reply::Records(records, flags)) => {
                connection.reply(&header, &(records, flags)).await
            }
            Err(failure) => {
                connection
                    .reply_error(&header, failure.name.as_str(), &failure.text)
                    .await
            }
        };
        if let Err(error) = sent {
            debug!("link DNS: cannot reply: {error}");
        }
    }

    async fn dispatch(&self, connection: &Connection, message: &Message) -> Result<Reply, Failure> {
        let header = message.header();
        let path = header
            .path()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let interface = header.interface().map(|i| i.as_str().to_string());
        let member = header
            .member()
            .map(|m| m.as_str().to_string())
            .unwrap_or_default();
        let body = message.body();
        let signature = body.signature().to_string_no_parens();
        let expect = |wanted: &str| -> Result<(), Failure> {
            match signature == wanted {
                true => Ok(()),
                false => Err(failure(
                    "org.freedesktop.DBus.Error.InvalidArgs",
                    format!(
                        "Invalid arguments '{signature}' to call {member}(), expecting '{wanted}'."
                    ),
                )),
            }
        };
        let unknown_method = || {
            failure(
                "org.freedesktop.DBus.Error.UnknownMethod",
                format!(
                    "Unknown method {member} or interface {}.",
                    interface.as_deref().unwrap_or("")
                ),
            )
        };
        let args = |error: zbus::Error| {
            failure("org.freedesktop.DBus.Error.InvalidArgs", error.to_string())
        };

        // The object, and the interface its own methods and properties are on.
        let link = properties::link_index(&path);
        let own_interface = match (path.as_str(), link) {
            (MANAGER_PATH, _) => Some(MANAGER),
            (_, Some(index)) => {
                if interface_name(index).is_none() {
                    return Err(failure(
                        "org.freedesktop.DBus.Error.UnknownObject",
                        format!("Unknown object '{path}'."),
                    ));
                }
                Some(LINK)
            }
            ("/" | "/org" | "/org/freedesktop" | "/org/freedesktop/resolve1/link", _) => None,
            _ => {
                return Err(failure(
                    "org.freedesktop.DBus.Error.UnknownObject",
                    format!("Unknown object '{path}'."),
                ));
            }
        };
        match (interface.as_deref(), member.as_str()) {
            (Some(PEER) | None, "Ping") => {
                expect("")?;
                return Ok(Reply::Empty);
            }
            (Some(PEER) | None, "GetMachineId") => {
                expect("")?;
                let id = std::fs::read_to_string("/etc/machine-id").map_err(|e| {
                    failure("org.freedesktop.DBus.Error.FileNotFound", e.to_string())
                })?;
                return Ok(Reply::Text(id.trim().to_string()));
            }
            (Some(INTROSPECTABLE) | None, "Introspect") => {
                expect("")?;
                let links = self.registry.links().into_keys();
                let xml = properties::introspect(&path, links).ok_or_else(unknown_method)?;
                return Ok(Reply::Text(xml));
            }
            (Some(PROPERTIES) | None, "Get" | "GetAll" | "Set") if own_interface.is_some() => {
                let own = own_interface.unwrap_or(MANAGER);
                return self.properties(link, own, &member, &signature, message);
            }
            (Some(PEER | INTROSPECTABLE | PROPERTIES), _) => return Err(unknown_method()),
            (Some(other), _) if Some(other) != own_interface => {
                return Err(failure(
                    "org.freedesktop.DBus.Error.UnknownInterface",
                    format!("Unknown interface '{other}'."),
                ));
            }
            _ => {}
        }
        if link.is_none() && own_interface != Some(MANAGER) {
            return Err(unknown_method());
        }
        // The calls that change a link: the link object's, or the manager's SetLink* and
        // RevertLink, the same with the link's index first.
        let change = match link {
            Some(_) => Some(member.clone()),
            None if member == "RevertLink" => Some("Revert".to_string()),
            None => member
                .strip_prefix("SetLink")
                .map(|name| format!("Set{name}")),
        };
        let set = |change: Result<Change, InputError>| change.map_err(Failure::from);
        let changed = match change.as_deref() {
            Some("SetDNS") => {
                let (index, list): (i32, Vec<(i32, Vec<u8>)>) =
                    link_arguments(&body, link, "a(iay)", &expect)?;
                let reply = self.set(connection, &header, index, |i| {
                    let list = list.iter().map(|(f, a)| (*f, a.as_slice(), 0, ""));
                    set(input::servers(i, list).map(Change::Servers))
                });
                Some(reply.await)
            }
            Some("SetDNSEx") => {
                let (index, list): (i32, Vec<ServerEx>) =
                    link_arguments(&body, link, "a(iayqs)", &expect)?;
                let reply = self.set(connection, &header, index, |i| {
                    let list = list
                        .iter()
                        .map(|(f, a, p, n)| (*f, a.as_slice(), *p, n.as_str()));
                    set(input::servers(i, list).map(Change::Servers))
                });
                Some(reply.await)
            }
            Some("SetDomains") => {
                let (index, list): (i32, Vec<(String, bool)>) =
                    link_arguments(&body, link, "a(sb)", &expect)?;
                let reply = self.set(connection, &header, index, |_| {
                    set(input::domains(&list).map(Change::Domains))
                });
                Some(reply.await)
            }
            Some("SetDefaultRoute") => {
                let (index, on): (i32, bool) = link_arguments(&body, link, "b", &expect)?;
                let reply = self.set(connection, &header, index, |_| Ok(Change::DefaultRoute(on)));
                Some(reply.await)
            }
            Some(name @ ("SetLLMNR" | "SetMulticastDNS" | "SetDNSOverTLS" | "SetDNSSEC")) => {
                let (index, value): (i32, String) = link_arguments(&body, link, "s", &expect)?;
                let which = setting_of(name).ok_or_else(unknown_method)?;
                let reply = self.set(connection, &header, index, |_| {
                    set(input::setting(which, &value).map(|v| Change::Setting(which, v)))
                });
                Some(reply.await)
            }
            Some("SetDNSSECNegativeTrustAnchors") => {
                let (index, list): (i32, Vec<String>) = link_arguments(&body, link, "as", &expect)?;
                let reply = self.set(connection, &header, index, |_| {
                    set(input::trust_anchors(&list).map(Change::TrustAnchors))
                });
                Some(reply.await)
            }
            Some("Revert") => {
                let index = match link {
                    Some(index) => {
                        expect("")?;
                        index as i32
                    }
                    None => {
                        expect("i")?;
                        body.deserialize().map_err(args)?
                    }
                };
                Some(
                    self.set(connection, &header, index, |_| Ok(Change::Revert))
                        .await,
                )
            }
            _ => None,
        };
        if let Some(reply) = changed {
            return reply;
        }
        if link.is_some() {
            return Err(unknown_method());
        }
        match member.as_str() {
            "GetLink" => {
                expect("i")?;
                let index: i32 = body.deserialize().map_err(args)?;
                match input::link(index, interface_name) {
                    Ok((index, _)) => Ok(Reply::Path(properties::link_path(index))),
                    Err(InputError::Loopback(_)) => Ok(Reply::Path(properties::link_path(1))),
                    Err(error) => Err(error.into()),
                }
            }
            "FlushCaches" => {
                expect("")?;
                let uid = self.authorize(connection, &header).await?;
                let forwarder = self.context.forwarder();
                let flushed = tokio::task::spawn_blocking(move || forwarder.flush(&[]))
                    .await
                    .unwrap_or(0);
                info!("cache flushed over D-Bus by uid {uid}: {flushed} entries");
                Ok(Reply::Empty)
            }
            "ResetServerFeatures" => {
                expect("")?;
                let uid = self.authorize(connection, &header).await?;
                self.context.forwarder().forget_upstream_state();
                info!("upstream state (latency, backoff) reset over D-Bus by uid {uid}");
                Ok(Reply::Empty)
            }
            "ResolveHostname" => {
                expect("isit")?;
                let (index, name, family, flags): (i32, String, i32, u64) =
                    body.deserialize().map_err(args)?;
                self.resolve_hostname(index, &name, family, flags).await
            }
            "ResolveAddress" => {
                expect("iiayt")?;
                let (index, family, address, flags): (i32, i32, Vec<u8>, u64) =
                    body.deserialize().map_err(args)?;
                self.resolve_address(index, family, &address, flags).await
            }
            "ResolveRecord" => {
                expect("isqqt")?;
                let (index, name, class, qtype, flags): (i32, String, u16, u16, u64) =
                    body.deserialize().map_err(args)?;
                self.resolve_record(index, &name, class, qtype, flags).await
            }
            _ => Err(unknown_method()),
        }
    }

    /// Applies the change `make` builds for link `ifindex`, if the caller may.
    async fn set(
        &self,
        connection: &Connection,
        header: &Header<'_>,
        ifindex: i32,
        make: impl FnOnce(u32) -> Result<Change, Failure>,
    ) -> Result<Reply, Failure> {
        let counts = &self.context.metrics.links;
        let uid = self.authorize(connection, header).await?;
        let checked = input::link(ifindex, interface_name)
            .map_err(Failure::from)
            .and_then(|(index, name)| Ok((index, name, make(index)?)));
        let (index, name, change) = checked.inspect_err(|_| counts.update(LinkOutcome::Invalid))?;
        let (changed, flush) = self.registry.update(index, name, change, uid);
        counts.update(match changed {
            true => LinkOutcome::Applied,
            false => LinkOutcome::Unchanged,
        });
        if let Some(flush) = flush {
            self.flush(flush).await;
        }
        Ok(Reply::Empty)
    }

    /// Forgets cached answers whose route changed, off the runtime's threads.
    async fn flush(&self, flush: Flush) {
        let forwarder = self.context.forwarder();
        let _ = tokio::task::spawn_blocking(move || match flush {
            Flush::Zones(zones) => forwarder.flush(&zones),
            Flush::All => forwarder.flush(&[]),
        })
        .await;
    }

    /// The caller's uid if it may change settings: root or the daemon's own user.
    async fn authorize(
        &self,
        connection: &Connection,
        header: &Header<'_>,
    ) -> Result<u32, Failure> {
        let denied = |uid: Option<u32>| {
            self.context.metrics.links.update(LinkOutcome::Denied);
            let who = uid.map_or_else(|| "an unknown user".to_string(), |u| format!("uid {u}"));
            debug!("link DNS: {who} may not change DNS settings");
            failure(
                "org.freedesktop.DBus.Error.AccessDenied",
                "Access denied: only root and dns-proxy's own user may change DNS settings",
            )
        };
        let sender = header
            .sender()
            .map(|s| s.as_str().to_string())
            .ok_or_else(|| denied(None))?;
        let known = lock::lock(&self.uids).get(&sender).copied();
        let uid = match known {
            Some(uid) => uid,
            None => {
                let reply = connection
                    .call_method(
                        Some(DBUS),
                        "/org/freedesktop/DBus",
                        Some(DBUS),
                        "GetConnectionUnixUser",
                        &sender,
                    )
                    .await
                    .map_err(|_| denied(None))?;
                let uid: u32 = reply.body().deserialize().map_err(|_| denied(None))?;
                let mut uids = lock::lock(&self.uids);
                if uids.len() >= UIDS_KEPT {
                    uids.clear();
                }
                uids.insert(sender, uid);
                uid
            }
        };
        match uid == 0 || uid == self.own_uid {
            true => Ok(uid),
            false => Err(denied(Some(uid))),
        }
    }

    /// `Properties.Get`, `GetAll` and `Set` on the manager or link `link`, whose interface is
    /// `own`; `""` stands for it, as `resolvectl status` sends.
    fn properties(
        &self,
        link: Option<u32>,
        own: &str,
        member: &str,
        signature: &str,
        message: &Message,
    ) -> Result<Reply, Failure> {
        let body = message.body();
        let args = |error: zbus::Error| {
            failure("org.freedesktop.DBus.Error.InvalidArgs", error.to_string())
        };
        let values = || match link {
            Some(index) => {
                let links = self.registry.links();
                properties::link(
                    links.get(&index),
                    self.registry.mode(),
                    &self.registry.own(),
                )
            }
            None => self.manager_properties(),
        };
        let ours = |interface: &str| interface.is_empty() || interface == own;
        match (member, signature) {
            ("GetAll", "s") => {
                let interface: String = body.deserialize().map_err(args)?;
                if ours(&interface) {
                    return Ok(Reply::All(values().into_iter().collect()));
                }
                if [PROPERTIES, INTROSPECTABLE, PEER].contains(&interface.as_str()) {
                    return Ok(Reply::All(HashMap::new()));
                }
                Err(failure(
                    "org.freedesktop.DBus.Error.UnknownInterface",
                    format!("Unknown interface '{interface}'."),
                ))
            }
            ("Get", "ss") => {
                let (interface, name): (String, String) = body.deserialize().map_err(args)?;
                let found = ours(&interface)
                    .then(|| values().into_iter().find(|(n, _)| *n == name))
                    .flatten();
                match found {
                    Some((_, value)) => Ok(Reply::Value(value)),
                    None => Err(failure(
                        "org.freedesktop.DBus.Error.UnknownProperty",
                        format!("Unknown property or interface: {interface}.{name}"),
                    )),
                }
            }
            ("Set", "ssv") => {
                let (_, name, _): (String, String, Value<'_>) = body.deserialize().map_err(args)?;
                Err(failure(
                    "org.freedesktop.DBus.Error.PropertyReadOnly",
                    format!("Property '{name}' is not writable."),
                ))
            }
            _ => Err(failure(
                "org.freedesktop.DBus.Error.InvalidArgs",
                format!("Invalid arguments '{signature}' to call {member}()"),
            )),
        }
    }

    fn manager_properties(&self) -> properties::Properties {
        let (config, forwarder) = self.context.current();
        let metrics = &self.context.metrics;
        let upstreams = forwarder.upstreams_snapshot();
        let current = upstreams
            .iter()
            .position(|u| u.state == crate::common::snapshot::State::Up)
            .or((!upstreams.is_empty()).then_some(0));
        let (entries, _, _) = forwarder.cache_size().unwrap_or_default();
        let queries = metrics
            .transports_snapshot()
            .values()
            .map(|t| t.answers.values().sum::<u64>())
            .sum();
        let counts = Counts {
            in_flight: metrics.queries_in_flight.get().max(0) as u64,
            queries,
            cache_entries: entries,
            cache_hits: metrics.cache.hits.get(),
            cache_misses: metrics.cache.misses.get(),
        };
        let resolv_conf = self.registry.resolv_conf();
        let mode = properties::resolv_conf_mode(
            std::path::Path::new("/etc/resolv.conf"),
            resolv_conf.as_deref(),
        );
        properties::manager(&config, &self.registry.links(), current, counts, mode)
    }

    async fn resolve_hostname(
        &self,
        ifindex: i32,
        text: &str,
        family: i32,
        flags: u64,
    ) -> Result<Reply, Failure> {
        lookup::check_request(ifindex, flags)?;
        let types = lookup::address_types(family)?;
        if let Some((found, bytes, canonical)) = lookup::literal(text) {
            if family != 0 && found != family {
                return Err(failure(
                    "org.freedesktop.resolve1.NoSuchRR",
                    "The specified address is not of the requested family.",
                ));
            }
            return Ok(Reply::Hostname(
                vec![(ifindex, found, bytes)],
                canonical,
                lookup::SYNTHETIC_FLAGS,
            ));
        }
        let name = lookup::name(text)?;
        let search = self.registry.search();
        let mut last = lookup::no_such_record(text);
        for candidate in lookup::candidates(text, &name, &search, flags) {
            let asked = candidate.to_string();
            let answers =
                join_all(
                    types.iter().map(|qtype| {
                        let query = lookup::query(candidate.wire(), *qtype, lookup::CLASS_IN);
                        async move {
                            lookup::ask(&self.context, &query, lookup::cache_only(flags)).await
                        }
                    }),
                )
                .await;
            let mut addresses = Vec::new();
            let mut canonical = None;
            let mut reply_flags = None;
            let mut failed = None;
            for answer in answers {
                let Some(answer) = answer else {
                    failed.get_or_insert_with(no_source);
                    continue;
                };
                match lookup::success(&answer, &asked) {
                    Ok(message) => {
                        let (found, owner) = lookup::addresses(&message);
                        if !found.is_empty() {
                            reply_flags.get_or_insert(lookup::reply_flags(&answer, &message));
                            canonical = canonical.or(owner);
                        }
                        addresses.extend(found.into_iter().map(|(f, a)| (ifindex, f, a)));
                    }
                    Err(error) => {
                        failed.get_or_insert(error);
                    }
                }
            }
            if !addresses.is_empty() {
                let canonical = canonical.unwrap_or(asked);
                return Ok(Reply::Hostname(
                    addresses,
                    canonical,
                    reply_flags.unwrap_or(lookup::FLAG_DNS),
                ));
            }
            last = failed.unwrap_or_else(|| lookup::no_such_record(&asked));
        }
        Err(last)
    }

    async fn resolve_address(
        &self,
        ifindex: i32,
        family: i32,
        address: &[u8],
        flags: u64,
    ) -> Result<Reply, Failure> {
        lookup::check_request(ifindex, flags)?;
        let (ip, name) = lookup::reverse_name(family, address)?;
        let query = lookup::query(name.wire(), lookup::TYPE_PTR, lookup::CLASS_IN);
        let answer = lookup::ask(&self.context, &query, lookup::cache_only(flags))
            .await
            .ok_or_else(no_source)?;
        let message = lookup::success(&answer, &ip.to_string())?;
        let names: Vec<(i32, String)> = lookup::pointers(&message)
            .into_iter()
            .map(|n| (ifindex, n))
            .collect();
        if names.is_empty() {
            return Err(failure(
                "org.freedesktop.resolve1.NoSuchRR",
                format!("Address '{ip}' does not have any RR of requested type"),
            ));
        }
        Ok(Reply::Address(
            names,
            lookup::reply_flags(&answer, &message),
        ))
    }

    async fn resolve_record(
        &self,
        ifindex: i32,
        text: &str,
        class: u16,
        qtype: u16,
        flags: u64,
    ) -> Result<Reply, Failure> {
        lookup::check_request(ifindex, flags)?;
        lookup::check_type(qtype)?;
        let wire = match text {
            "." => vec![0],
            _ => lookup::name(text)?.wire().to_vec(),
        };
        let query = lookup::query(&wire, qtype, class);
        let answer = lookup::ask(&self.context, &query, lookup::cache_only(flags))
            .await
            .ok_or_else(no_source)?;
        let message = lookup::success(&answer, text)?;
        let records: Vec<(i32, u16, u16, Vec<u8>)> = lookup::records(&message, qtype, class)
            .into_iter()
            .map(|(c, t, r)| (ifindex, c, t, r))
            .collect();
        if records.is_empty() {
            return Err(failure(
                "org.freedesktop.resolve1.NoSuchRR",
                format!("Name '{text}' does not have any RR of the requested type"),
            ));
        }
        Ok(Reply::Records(
            records,
            lookup::reply_flags(&answer, &message),
        ))
    }
}

/// The answer when the request allowed no source that had one (`NO_NETWORK` and no cache entry).
fn no_source() -> Failure {
    failure(
        "org.freedesktop.resolve1.NoSource",
        "All suitable resolution sources turned off",
    )
}

/// The setting a `Set…` method name (without `SetLink`/`Set`) changes.
/// The link index and the arguments of a call that changes a link: on the link object `link`
/// the arguments alone, of signature `wanted`; on the manager the same after the index.
fn link_arguments<T>(
    body: &zbus::message::Body,
    link: Option<u32>,
    wanted: &str,
    expect: &dyn Fn(&str) -> Result<(), Failure>,
) -> Result<(i32, T), Failure>
where
    T: serde::de::DeserializeOwned + zbus::zvariant::Type,
{
    let args =
        |error: zbus::Error| failure("org.freedesktop.DBus.Error.InvalidArgs", error.to_string());
    match link {
        Some(index) => {
            expect(wanted)?;
            Ok((index as i32, body.deserialize().map_err(args)?))
        }
        None => {
            expect(&format!("i{wanted}"))?;
            body.deserialize().map_err(args)
        }
    }
}

fn setting_of(member: &str) -> Option<Setting> {
    match member.trim_start_matches("Set") {
        "LLMNR" => Some(Setting::Llmnr),
        "MulticastDNS" => Some(Setting::MulticastDns),
        "DNSOverTLS" => Some(Setting::DnsOverTls),
        "DNSSEC" => Some(Setting::Dnssec),
        _ => None,
    }
}

/// Tells a caller over the limits to come back later, without holding up the reader.
fn busy(connection: &Connection, message: Message) {
    let connection = connection.clone();
    tokio::spawn(async move {
        let header = message.header();
        let _ = connection
            .reply_error(
                &header,
                "org.freedesktop.DBus.Error.LimitsExceeded",
                &"Too many requests at once; try again",
            )
            .await;
    });
}
