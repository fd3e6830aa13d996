//! The control socket, end to end: the real daemon serving `control_socket`, asked by the real
//! `dns-proxy status`, `flush` and `reload` commands (and by raw connections for what the
//! commands never send), with metrics off. Status follows an upstream going down and back
//! with the error's kind and names every upstream, forward zones' included; flush removes a
//! name and the names below it and nothing else, or everything; only root and the daemon's own
//! user may flush; every bad input gets its error while DNS keeps answering; the socket file
//! is replaced when stale and removed at exit.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;

use crate::support::client::{assert_a, assert_servfail, udp_query};
use crate::support::proxy::{BIN, Proxy, ProxyConfig, RunOutput, free_port};
use crate::support::upstream::{FakeUpstream, open_temp_dir};
use crate::support::{effective_uid, program_for_others, within};

/// The daemon's bounds on a client (src/control.rs).
const MAX_LINE: usize = 4096;
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CLIENTS: usize = 16;
const EX_UNAVAILABLE: i32 = 69;
const EX_NOPERM: i32 = 77;
const NOBODY: u32 = 65534;
/// A user that is neither root nor the daemon's.
const STRANGER: u32 = 65533;

/// A daemon with its control socket in a directory of its own.
struct Controlled {
    proxy: Proxy,
    socket: PathBuf,
    _dir: TempDir,
}

/// Starts the daemon for `config` with `control_socket` set, READY=1 received.
async fn start(config: ProxyConfig) -> Controlled {
    let dir = open_temp_dir();
    let socket = dir.path().join("control");
    Controlled {
        proxy: Proxy::builder(&with_socket(config, &socket)).start().await,
        socket,
        _dir: dir,
    }
}

/// `config` with `control_socket = socket`, first of the top-level keys (before any table).
fn with_socket(mut config: ProxyConfig, socket: &Path) -> ProxyConfig {
    let line = format!("control_socket = \"{}\"", socket.display());
    config.extra.insert(0, line);
    config
}

/// Runs `dns-proxy ARGS` (as `uid`, with its gid, when given) in a clean environment.
async fn client(args: &[&str], uid: Option<u32>) -> RunOutput {
    // Kept until the command has run: it may hold the copy of the binary.
    let bin_dir = uid.map(|_| open_temp_dir());
    let mut command = match (uid, &bin_dir) {
        (Some(uid), Some(dir)) => {
            let mut command = std::process::Command::new(program_for_others(dir.path()));
            command.uid(uid).gid(uid);
            command
        }
        _ => std::process::Command::new(BIN),
    };
    command
        .args(args)
        .env_clear()
        .stdin(Stdio::null())
        .current_dir("/");
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(true);
    let out = within(
        Duration::from_secs(20),
        "dns-proxy client",
        command.output(),
    )
    .await
    .expect("run dns-proxy");
    RunOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Controlled {
    fn socket(&self) -> &str {
        self.socket.to_str().expect("socket path")
    }

    /// `dns-proxy status --json`, parsed.
    async fn status(&self) -> Value {
        let out = client(&["status", "--json", "--control", self.socket()], None).await;
        assert_eq!(out.code(), Some(0), "status failed:\n{out}");
        serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json printed no JSON ({e}):\n{out}"))
    }

    /// `dns-proxy status` for people.
    async fn status_text(&self) -> String {
        let out = client(&["status", "--control", self.socket()], None).await;
        assert_eq!(out.code(), Some(0), "status failed:\n{out}");
        out.stdout
    }

    /// `dns-proxy flush NAMES…` as root.
    async fn flush(&self, names: &[&str]) -> RunOutput {
        let mut args = vec!["flush", "--control", self.socket()];
        args.extend_from_slice(names);
        client(&args, None).await
    }

    /// Polls the status until `pred` holds for it (at most `limit`); returns that status.
    async fn status_until(
        &self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.status().await;
            if pred(&status) {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "not {what} within {limit:?}: {status:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn cache_hits(status: &Value) -> u64 {
    status["cache"]["hits"].as_u64().expect("cache.hits")
}

/// A `[[forward_zone]]` sending `zone` over DoT to `up` (a table: after the top-level keys).
fn tls_zone(zone: &str, up: &FakeUpstream) -> String {
    format!(
        "[[forward_zone]]\nzones = [\"{zone}\"]\n[[forward_zone.upstream]]\naddress = \"{}\"\n\
         tls_name = \"dns.test\"\nca_file = \"{}\"",
        up.addr(),
        up.ca_file().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_an_upstream_going_down_and_coming_back_with_the_error_kind() {
    let mut up = FakeUpstream::start().await;
    let config = ProxyConfig::new(up.spec())
        .timeout("500ms")
        .extra("cache_serve_stale = \"0s\"");
    let daemon = start(config).await;
    let dns = daemon.proxy.udp4();

    assert_a(
        &udp_query(dns, "one.example.", RecordType::A, None, false).await,
        up.answer(),
    );
    let status = daemon.status().await;
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["address"], up.addr().to_string(), "{status:#}");
    assert_eq!(upstream["protocol"], "tls");
    assert_eq!(upstream["tls_name"], "dns.test");
    assert_eq!(upstream["state"], "up");
    assert!(upstream["last_error"].is_null(), "{upstream:#}");
    assert_eq!(upstream["queries"], 1);
    assert_eq!(upstream["failures"], 0);
    assert_eq!(upstream["connections"], 1);
    assert!(
        upstream["srtt_ms"].as_f64().is_some_and(|ms| ms > 0.0),
        "{upstream:#}"
    );
    let up_since = upstream["since"].as_str().expect("since").to_string();

    up.stop().await;
    let answer = udp_query(dns, "two.example.", RecordType::A, None, false).await;
    assert_servfail(&answer);
    let status = daemon
        .status_until("down", Duration::from_secs(5), |s| {
            s["upstreams"][0]["state"] == "down"
        })
        .await;
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["last_error"]["kind"], "refused", "{upstream:#}");
    let message = upstream["last_error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("refused"), "{upstream:#}");
    assert!(upstream["failures"].as_u64() >= Some(1), "{upstream:#}");
    let down_since = upstream["since"].as_str().expect("since").to_string();
    assert!(down_since >= up_since, "{up_since} then {down_since}");
    let text = daemon.status_text().await;
    let address = up.addr().to_string();
    assert!(
        text.contains(&format!("  {address} (DNS over TLS, dns.test)"))
            && text.contains("State: down since ")
            && text.contains("Last error: refused: TCP connect failed"),
        "{text}"
    );

    // Back: answered again within the backoff ceiling (1 s), and the status says so.
    up.restart().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut n = 0;
    loop {
        n += 1;
        let answer = udp_query(
            dns,
            &format!("back-{n}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        if answer.metadata.response_code == ResponseCode::NoError {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no answer after the upstream came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = daemon.status().await;
    let upstream = &status["upstreams"][0];
    assert_eq!(upstream["state"], "up", "{upstream:#}");
    assert!(upstream["since"].as_str() >= Some(down_since.as_str()));
    assert_eq!(
        upstream["last_error"]["kind"], "refused",
        "the last error stays once it is up: {upstream:#}"
    );
    let text = daemon.status_text().await;
    assert!(text.contains("State: up since "), "{text}");
    daemon.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_names_every_upstream_including_forward_zones() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start().await;
    let zone_up = FakeUpstream::start().await;
    // A plain resolver that is not there: nothing listens on the port.
    let internal = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let mut config = ProxyConfig::new(first.spec());
    config.upstreams.push(second.spec());
    let config = config.timeout("500ms").extra(&format!(
        "{}\n[[forward_zone]]\nzones = [\"internal.test\", \"10.in-addr.arpa\"]\n\
         [[forward_zone.upstream]]\naddress = \"{internal}\"\nprotocol = \"udp\"",
        tls_zone("corp.test", &zone_up)
    ));
    let daemon = start(config).await;
    let dns = daemon.proxy.udp4();
    assert_servfail(&udp_query(dns, "host.internal.test.", RecordType::A, None, false).await);

    let status = daemon.status().await;
    let addresses = |upstreams: &Value| -> Vec<String> {
        upstreams
            .as_array()
            .expect("an array of upstreams")
            .iter()
            .map(|u| u["address"].as_str().expect("address").to_string())
            .collect()
    };
    assert_eq!(
        addresses(&status["upstreams"]),
        vec![first.addr().to_string(), second.addr().to_string()],
        "{status:#}"
    );
    for upstream in status["upstreams"].as_array().unwrap() {
        assert_eq!(upstream["protocol"], "tls");
        assert_eq!(upstream["tls_name"], "dns.test");
    }
    let zones = status["forward_zones"].as_array().expect("forward_zones");
    assert_eq!(zones.len(), 2, "{status:#}");
    assert_eq!(zones[0]["zones"], serde_json::json!(["corp.test"]));
    assert_eq!(
        addresses(&zones[0]["upstreams"]),
        vec![zone_up.addr().to_string()]
    );
    assert_eq!(zones[0]["upstreams"][0]["tls_name"], "dns.test");
    assert_eq!(
        zones[1]["zones"],
        serde_json::json!(["internal.test", "10.in-addr.arpa"])
    );
    let plain = &zones[1]["upstreams"][0];
    assert_eq!(plain["address"], internal.to_string());
    assert_eq!(plain["protocol"], "udp");
    assert!(plain["tls_name"].is_null());
    assert_eq!(plain["state"], "down", "{plain:#}");
    assert_eq!(plain["last_error"]["kind"], "refused", "{plain:#}");

    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["pid"], daemon.proxy.pid);
    assert!(status["degraded"].is_null());
    assert!(status["uptime_seconds"].as_u64().is_some());
    assert_eq!(
        status["config_files"],
        serde_json::json!([daemon.proxy.config_path.display().to_string()])
    );
    let listeners: Vec<String> = status["listeners"]
        .as_array()
        .expect("listeners")
        .iter()
        .map(|l| {
            format!(
                "{} {}",
                l["kind"].as_str().unwrap(),
                l["address"].as_str().unwrap()
            )
        })
        .collect();
    for (kind, address) in [
        ("udp", dns.to_string()),
        ("tcp", daemon.proxy.tcp4().to_string()),
        ("udp", daemon.proxy.udp6().to_string()),
        ("control", daemon.socket().to_string()),
    ] {
        let listener = format!("{kind} {address}");
        assert!(
            listeners.contains(&listener),
            "no {listener} in {listeners:?}"
        );
    }
    assert_eq!(status["cache"]["enabled"], true);
    assert!(status["cache"]["max_bytes"].as_u64() > Some(0));
    for transport in ["udp", "tcp"] {
        let answers = &status["queries"][transport]["answers"];
        for rcode in ["NOERROR", "SERVFAIL", "NXDOMAIN", "REFUSED", "other"] {
            assert!(
                answers[rcode].is_u64(),
                "no {transport} {rcode} in {status:#}"
            );
        }
        assert!(status["queries"][transport]["dropped"].is_u64());
    }
    assert_eq!(status["queries"]["udp"]["answers"]["SERVFAIL"], 1);
    for key in ["rate_limited", "local_answers", "hedged", "in_flight"] {
        assert!(status[key].is_number(), "no {key} in {status:#}");
    }

    let text = daemon.status_text().await;
    for expected in [
        format!("  {} (DNS over TLS, dns.test)", first.addr()),
        format!("  {} (DNS over TLS, dns.test)", second.addr()),
        "Forward zone corp.test:".to_string(),
        format!("  {} (DNS over TLS, dns.test)", zone_up.addr()),
        "Forward zone internal.test, 10.in-addr.arpa:".to_string(),
        format!("  {internal} (plain DNS)"),
    ] {
        assert!(text.contains(&expected), "no {expected:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_name_removes_that_name_and_the_names_below_it_and_nothing_else() {
    let up = FakeUpstream::start().await;
    let daemon = start(ProxyConfig::new(up.spec())).await;
    let dns = daemon.proxy.udp4();
    let names = [
        "example.com.",
        "a.example.com.",
        "b.a.example.com.",
        "badexample.com.",
        "other.test.",
    ];
    for name in names {
        assert_a(
            &udp_query(dns, name, RecordType::A, None, false).await,
            up.answer(),
        );
    }
    up.wait_queries(names.len(), Duration::from_secs(5)).await;
    let status = daemon.status().await;
    assert_eq!(status["cache"]["entries"], names.len(), "{status:#}");

    let out = daemon.flush(&["Example.COM"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        out.stdout, "flushed example.com and below: 3 entries removed\n",
        "{out}"
    );
    let status = daemon.status().await;
    assert_eq!(status["cache"]["entries"], 2, "{status:#}");
    let hits = cache_hits(&status);

    // The other names are still answered from the cache...
    for name in ["badexample.com.", "other.test."] {
        assert_a(
            &udp_query(dns, name, RecordType::A, None, false).await,
            up.answer(),
        );
    }
    assert_eq!(cache_hits(&daemon.status().await), hits + 2);
    assert_eq!(up.queries(), names.len(), "a kept name went upstream");
    // ...and the flushed ones are asked upstream again.
    for name in ["example.com.", "b.a.example.com."] {
        assert_a(
            &udp_query(dns, name, RecordType::A, None, false).await,
            up.answer(),
        );
    }
    up.wait_queries(names.len() + 2, Duration::from_secs(5))
        .await;
    assert_eq!(cache_hits(&daemon.status().await), hits + 2);

    let out = daemon.flush(&["nothing.cached.test", "test"]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        out.stdout,
        "flushed nothing.cached.test, test and below: 1 entry removed\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_without_names_empties_the_cache() {
    let up = FakeUpstream::start().await;
    let daemon = start(ProxyConfig::new(up.spec())).await;
    let dns = daemon.proxy.udp4();
    let names = ["one.example.", "two.example.", "three.example."];
    for name in names {
        assert_a(
            &udp_query(dns, name, RecordType::A, None, false).await,
            up.answer(),
        );
    }
    up.wait_queries(names.len(), Duration::from_secs(5)).await;
    assert_eq!(daemon.status().await["cache"]["entries"], 3);

    let out = daemon.flush(&[]).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout, "flushed the cache: 3 entries removed\n");
    let status = daemon.status().await;
    assert_eq!(status["cache"]["entries"], 0, "{status:#}");
    assert_eq!(status["cache"]["bytes"], 0, "{status:#}");
    let hits = cache_hits(&status);
    for name in names {
        assert_a(
            &udp_query(dns, name, RecordType::A, None, false).await,
            up.answer(),
        );
    }
    up.wait_queries(2 * names.len(), Duration::from_secs(5))
        .await;
    assert_eq!(cache_hits(&daemon.status().await), hits);
    assert_eq!(
        daemon.flush(&[]).await.stdout,
        "flushed the cache: 3 entries removed\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_during_flushes_are_all_answered() {
    let up = FakeUpstream::start().await;
    let daemon = start(ProxyConfig::new(up.spec())).await;
    let dns = daemon.proxy.udp4();
    const NAMES: usize = 200;
    for i in 0..NAMES {
        let name = format!("n{i}.load.example.");
        assert_a(
            &udp_query(dns, &name, RecordType::A, None, false).await,
            up.answer(),
        );
    }
    // Four clients ask cached and uncached names while the cache is flushed again and again.
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..4 {
        let answer = up.answer();
        clients.spawn(async move {
            for i in 0..NAMES {
                let name = match i % 2 {
                    0 => format!("n{i}.load.example."),
                    _ => format!("c{client}-{i}.fresh.example."),
                };
                assert_a(
                    &udp_query(dns, &name, RecordType::A, None, false).await,
                    answer,
                );
            }
        });
    }
    let mut flushes = 0;
    while !clients.is_empty() {
        let names: &[&str] = match flushes % 2 {
            0 => &["load.example"],
            _ => &[],
        };
        let out = daemon.flush(names).await;
        assert_eq!(out.code(), Some(0), "{out}");
        flushes += 1;
        while let Some(done) = clients.try_join_next() {
            done.expect("a client's queries all answered");
        }
    }
    eprintln!("{flushes} flushes while {} queries were asked", 4 * NAMES);
    daemon.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_is_for_root_and_the_daemons_own_user_only() {
    if effective_uid() != 0 {
        eprintln!("SKIPPED: running the daemon and the clients as other users needs root");
        return;
    }
    let up = FakeUpstream::start().await;
    // The daemon runs as nobody, in a directory it may create its socket in.
    let dir = open_temp_dir();
    std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    let socket = dir.path().join("control");
    let bin_dir = open_temp_dir();
    let proxy = Proxy::builder(&with_socket(ProxyConfig::new(up.spec()), &socket))
        .user(NOBODY, NOBODY)
        .program(&program_for_others(bin_dir.path()))
        .start()
        .await;
    let meta = std::fs::metadata(&socket).expect("the socket exists");
    assert_eq!(meta.permissions().mode() & 0o777, 0o666, "socket mode");
    assert_eq!(meta.uid(), NOBODY, "socket owner");
    let path = socket.to_str().unwrap();
    assert_a(
        &udp_query(proxy.udp4(), "cached.example.", RecordType::A, None, false).await,
        up.answer(),
    );

    // Another user may ask for the status but not flush.
    let status = client(&["status", "--control", path], Some(STRANGER)).await;
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(status.stdout.contains("Upstreams:"), "{status}");
    let refused = client(&["flush", "--control", path], Some(STRANGER)).await;
    assert_eq!(refused.code(), Some(EX_NOPERM), "{refused}");
    assert!(
        refused.stderr.contains(&format!(
            "flush is for root and the daemon's own user, not uid {STRANGER}"
        )),
        "{refused}"
    );
    let refused = client(&["flush", "example", "--control", path], Some(STRANGER)).await;
    assert_eq!(refused.code(), Some(EX_NOPERM), "{refused}");
    proxy
        .wait_for_log(
            &format!("flush refused to uid {STRANGER}"),
            Duration::from_secs(5),
        )
        .await;

    // Nothing went: the name is still a cache hit for the daemon's own user's flush.
    let own = client(
        &["flush", "cached.example", "--control", path],
        Some(NOBODY),
    )
    .await;
    assert_eq!(own.code(), Some(0), "{own}");
    assert_eq!(
        own.stdout,
        "flushed cached.example and below: 1 entry removed\n"
    );
    let root = client(&["flush", "--control", path], None).await;
    assert_eq!(root.code(), Some(0), "{root}");
    assert_eq!(root.stdout, "flushed the cache: 0 entries removed\n");
    proxy.assert_running();
}

/// A raw connection to the control socket.
struct Raw {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Raw {
    async fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket)
            .await
            .expect("connect to the control socket");
        let (read, writer) = stream.into_split();
        Raw {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write a request");
    }

    /// The next answer line, parsed; `None` if the daemon closed the connection.
    async fn answer(&mut self, limit: Duration) -> Option<Value> {
        let mut line = String::new();
        let read = within(limit, "an answer line", self.reader.read_line(&mut line))
            .await
            .expect("read an answer");
        (read > 0).then(|| {
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
    }

    async fn ask(&mut self, request: &[u8]) -> Value {
        self.send(request).await;
        self.answer(Duration::from_secs(5))
            .await
            .expect("an answer, not a closed connection")
    }

    /// Panics unless the daemon closes the connection (after any answers still unread). A
    /// close with some of our bytes unread reaches us as a reset rather than an end.
    async fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        let read = within(
            Duration::from_secs(5),
            "the daemon closing the connection",
            self.reader.read_to_end(&mut rest),
        )
        .await;
        match read {
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(error) => panic!("reading to the end: {error}"),
        }
        assert!(rest.is_empty(), "more after the last answer: {rest:?}");
    }
}

fn assert_error(answer: &Value, code: &str) {
    assert_eq!(answer["ok"], false, "{answer}");
    assert_eq!(answer["error"], code, "{answer}");
    assert!(
        answer["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_request_gets_its_error_and_the_connection_goes_on() {
    let up = FakeUpstream::start().await;
    let daemon = start(ProxyConfig::new(up.spec())).await;
    let mut raw = Raw::connect(&daemon.socket).await;

    let answer = raw.ask(b"{\"command\":\"reboot\"}\n").await;
    assert_error(&answer, "unknown_command");
    assert!(
        answer["message"].as_str().unwrap().contains("\"reboot\""),
        "{answer}"
    );
    assert_error(&raw.ask(b"\x00\xffgarbage\n").await, "bad_request");
    assert_error(
        &raw.ask(b"{\"command\":\"status\",\"names\":[]}\n").await,
        "bad_request",
    );
    assert_error(
        &raw.ask(b"{\"command\":\"flush\",\"names\":[\"a b.test\"]}\n")
            .await,
        "bad_name",
    );
    // Blank lines are skipped; the connection still answers a good request.
    let answer = raw.ask(b"\n\r\n{\"command\":\"status\"}\n").await;
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["status"]["version"], env!("CARGO_PKG_VERSION"));
    let answer = raw
        .ask(b"{\"command\":\"flush\",\"names\":[\"example.com\"]}\n")
        .await;
    assert_eq!(answer, serde_json::json!({"ok": true, "flushed": 0}));
    // A last request without a newline, then the client's end: answered, then closed.
    raw.send(b"{\"command\":\"flush\"}").await;
    raw.writer.shutdown().await.expect("shutdown");
    assert_eq!(
        raw.answer(Duration::from_secs(5)).await,
        Some(serde_json::json!({"ok": true, "flushed": 0}))
    );
    raw.assert_closed().await;

    // A line longer than the limit: an error, then the connection is closed.
    let mut raw = Raw::connect(&daemon.socket).await;
    let mut huge = vec![b'x'; 2 * MAX_LINE];
    huge.push(b'\n');
    raw.send(&huge).await;
    let answer = raw.answer(Duration::from_secs(5)).await.expect("an answer");
    assert_error(&answer, "line_too_long");
    raw.assert_closed().await;
    // A line of exactly the limit is read.
    let mut raw = Raw::connect(&daemon.socket).await;
    let mut longest = vec![b' '; MAX_LINE - 20];
    longest.extend_from_slice(b"{\"command\":\"status\"}\n");
    assert_eq!(longest.len(), MAX_LINE + 1);
    assert_eq!(raw.ask(&longest).await["ok"], true);

    daemon.proxy.assert_running();
    assert_a(
        &udp_query(
            daemon.proxy.udp4(),
            "still.example.",
            RecordType::A,
            None,
            false,
        )
        .await,
        up.answer(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_never_finished_times_out() {
    let up = FakeUpstream::start().await;
    let daemon = start(ProxyConfig::new(up.spec())).await;
    let mut raw = Raw::connect(&daemon.socket).await;
    let started = Instant::now();
    raw.send(b"{\"command\":").await;
    let answer = raw
        .answer(READ_TIMEOUT + Duration::from_secs(5))
        .await
        .expect("an answer");
    let waited = started.elapsed();
    assert_error(&answer, "timeout");
    assert!(
        waited >= READ_TIMEOUT - Duration::from_millis(100),
        "timed out after {waited:?}, before {READ_TIMEOUT:?}"
    );
    raw.assert_closed().await;
    assert_eq!(daemon.status().await["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_at_once_are_told_to_wait_while_dns_still_answers() {
    let up = FakeUpstream::start().await;
    let daemon = start(ProxyConfig::new(up.spec())).await;
    let mut clients = Vec::new();
    for _ in 0..4 * MAX_CLIENTS {
        clients.push(Raw::connect(&daemon.socket).await);
    }
    // The first ones are served (the daemon accepts in order)...
    for client in &mut clients[..MAX_CLIENTS] {
        assert_eq!(client.ask(b"{\"command\":\"status\"}\n").await["ok"], true);
    }
    // ...and every one beyond the cap is told at once.
    let mut busy = 0;
    for client in &mut clients[MAX_CLIENTS..] {
        let answer = client
            .answer(Duration::from_secs(5))
            .await
            .expect("an answer");
        assert_error(&answer, "busy");
        client.assert_closed().await;
        busy += 1;
    }
    assert_eq!(busy, 3 * MAX_CLIENTS);
    let out = client(&["status", "--control", daemon.socket()], None).await;
    assert_eq!(out.code(), Some(EX_UNAVAILABLE), "{out}");
    assert!(out.stderr.contains("clients are being served"), "{out}");

    // DNS answers meanwhile.
    assert_a(
        &udp_query(
            daemon.proxy.udp4(),
            "busy.example.",
            RecordType::A,
            None,
            false,
        )
        .await,
        up.answer(),
    );

    // Once the served ones leave, anyone may come in.
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = client(&["status", "--control", daemon.socket()], None).await;
        if out.code() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still refused once the clients left:\n{out}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_the_socket_goes_at_exit() {
    let up = FakeUpstream::start().await;
    let dir = open_temp_dir();
    let socket = dir.path().join("control");
    let path = socket.to_str().unwrap();

    let out = client(&["status", "--control", path], None).await;
    assert_eq!(out.code(), Some(EX_UNAVAILABLE), "{out}");
    assert!(
        out.stderr
            .contains(&format!("cannot reach the daemon at {path}"))
            && out.stderr.contains("No such file"),
        "{out}"
    );
    // Left by a daemon that is gone: nobody answers on it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    let out = client(&["flush", "--control", path], None).await;
    assert_eq!(out.code(), Some(EX_UNAVAILABLE), "{out}");
    assert!(out.stderr.contains("refused"), "{out}");

    let mut proxy = Proxy::builder(&with_socket(ProxyConfig::new(up.spec()), &socket))
        .start()
        .await;
    proxy
        .wait_for_log("removing a stale socket", Duration::from_secs(5))
        .await;
    let out = client(&["status", "--control", path], None).await;
    assert_eq!(out.code(), Some(0), "{out}");

    proxy.signal("TERM");
    proxy.wait_exit(Duration::from_secs(10)).await;
    assert!(!socket.exists(), "the socket is still there after exit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_that_is_not_a_socket_is_left_alone() {
    let up = FakeUpstream::start().await;
    let dir = open_temp_dir();
    let file = dir.path().join("control");
    std::fs::write(&file, "precious").expect("write");
    let config = with_socket(ProxyConfig::new(up.spec()), &file);

    // Socket-activated: DNS is served all the same, and the log says why status is not.
    let proxy = Proxy::builder(&config).start().await;
    proxy
        .wait_for_log("is not a socket", Duration::from_secs(5))
        .await;
    assert_a(
        &udp_query(proxy.udp4(), "served.example.", RecordType::A, None, false).await,
        up.answer(),
    );
    drop(proxy);
    // Started by hand: it refuses to start.
    let port = free_port();
    let mut proxy = Proxy::builder(&config)
        .listen_args(vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))])
        .spawn()
        .await;
    let status = proxy.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "{:?}", proxy.log_lines());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_is_in_the_runtime_directory_under_systemd_and_off_by_hand() {
    let up = FakeUpstream::start().await;
    let runtime = open_temp_dir();
    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()))
        .env("RUNTIME_DIRECTORY", runtime.path().to_str().unwrap())
        .start()
        .await;
    let socket = runtime.path().join("control");
    let out = client(
        &["status", "--json", "--control", socket.to_str().unwrap()],
        None,
    )
    .await;
    assert_eq!(out.code(), Some(0), "{out}");
    drop(proxy);

    // No RUNTIME_DIRECTORY (the harness clears the environment): no socket, and check-config
    // says so.
    let proxy = Proxy::start(&ProxyConfig::new(up.spec())).await;
    proxy
        .wait_for_log("ready: serving", Duration::from_secs(5))
        .await;
    assert!(
        !proxy
            .log_lines()
            .iter()
            .any(|l| l.contains("control socket")),
        "{:?}",
        proxy.log_lines()
    );
    let out = crate::support::proxy::run_binary(
        &[
            "check-config",
            "--config",
            proxy.config_path.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(
        out.stdout.contains("control_socket = \"\"  # default"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_returns_once_the_new_configuration_answers_or_says_why_it_was_refused() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start_answering(Ipv4Addr::new(192, 0, 2, 2)).await;
    let daemon = start(ProxyConfig::new(first.spec())).await;
    let socket = daemon.socket().to_string();
    assert_a(
        &udp_query(
            daemon.proxy.udp4(),
            "one.example.",
            RecordType::A,
            None,
            false,
        )
        .await,
        first.answer(),
    );

    // In force when the command returns: the very next query goes to the new upstream.
    let second_config = with_socket(ProxyConfig::new(second.spec()), &daemon.socket).to_toml();
    daemon.proxy.write_config(&second_config);
    let out = client(&["reload", "--control", &socket], None).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(
        out.stdout,
        "the configuration was reloaded and is in force\n"
    );
    assert_a(
        &udp_query(
            daemon.proxy.udp4(),
            "two.example.",
            RecordType::A,
            None,
            false,
        )
        .await,
        second.answer(),
    );

    // A bad configuration: exit 78 with the reason, and the running one stays.
    daemon
        .proxy
        .write_config(&format!("bogus_key = 1\n{second_config}"));
    let out = client(&["reload", "--control", &socket], None).await;
    assert_eq!(out.code(), Some(78), "{out}");
    assert!(
        out.stderr
            .contains("reload refused, the running configuration stays in force")
            && out.stderr.contains("bogus_key"),
        "{out}"
    );
    assert_a(
        &udp_query(
            daemon.proxy.udp4(),
            "three.example.",
            RecordType::A,
            None,
            false,
        )
        .await,
        second.answer(),
    );
    daemon.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_without_a_control_socket_signals_the_pid_it_is_given() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start_answering(Ipv4Addr::new(192, 0, 2, 2)).await;
    let mut proxy = Proxy::start(&ProxyConfig::new(first.spec())).await;
    proxy.write_config(&ProxyConfig::new(second.spec()).to_toml());
    let dir = open_temp_dir();
    let missing = dir.path().join("control");
    let missing = missing.to_str().expect("path");

    // Without --pid there is nobody to ask.
    let out = client(&["reload", "--control", missing], None).await;
    assert_eq!(out.code(), Some(EX_UNAVAILABLE), "{out}");

    let pid = proxy.pid.to_string();
    let out = client(&["reload", "--control", missing, "--pid", &pid], None).await;
    assert_eq!(out.code(), Some(0), "{out}");
    assert!(out.stdout.contains("sent SIGHUP"), "{out}");
    proxy
        .wait_for_notify("RELOADING=1", Duration::from_secs(5))
        .await;
    proxy
        .wait_for_notify("READY=1", Duration::from_secs(5))
        .await;
    assert_a(
        &udp_query(proxy.udp4(), "two.example.", RecordType::A, None, false).await,
        second.answer(),
    );
}
