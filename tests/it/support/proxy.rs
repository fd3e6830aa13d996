//! Launches the real `dns-proxy` binary the way systemd does: the test binds the listening
//! sockets itself and passes them as fds 3, 4, … with `LISTEN_FDS`, `LISTEN_FDNAMES` and
//! `LISTEN_PID` (set to the daemon's own pid through `sh -c 'LISTEN_PID=$$ exec …'`), a
//! `NOTIFY_SOCKET` datagram socket whose messages are collected, a clean environment, and
//! stderr captured into a searchable log. The child is killed when the [`Proxy`] is dropped.
//! Also: starting without socket activation (`--listen`), and running `check-config`. A TCP
//! listener for the metrics endpoint can be passed too, named `metrics`, as fd 3, and TCP
//! listeners under other names (`dns-tls`, `dns-https`) after the DNS sockets.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::net::UnixDatagram;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::upstream::{open_temp_dir, write_file};

/// The daemon under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_dns-proxy");

/// Longest wait for READY=1 after start.
pub const START_TIMEOUT: Duration = Duration::from_secs(15);

/// One `[[upstream]]` entry of the config.
#[derive(Clone, Debug)]
pub struct UpstreamSpec {
    pub address: SocketAddr,
    pub tls_name: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub pin_sha256: Vec<String>,
}

/// The config file the harness writes (rendered to TOML by [`ProxyConfig::to_toml`]).
#[derive(Clone, Debug, Default)]
pub struct ProxyConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub timeout: Option<String>,
    /// Further top-level lines, verbatim (e.g. `log_queries = true`).
    pub extra: Vec<String>,
    /// `[metrics] listen`, when set.
    pub metrics_listen: Option<String>,
    pub upstreams: Vec<UpstreamSpec>,
}

fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl ProxyConfig {
    /// A config forwarding to `upstream` only.
    pub fn new(upstream: UpstreamSpec) -> Self {
        ProxyConfig {
            upstreams: vec![upstream],
            ..ProxyConfig::default()
        }
    }

    pub fn timeout(mut self, timeout: &str) -> Self {
        self.timeout = Some(timeout.to_string());
        self
    }

    pub fn listen(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.listen = Some(addrs);
        self
    }

    pub fn extra(mut self, line: &str) -> Self {
        self.extra.push(line.to_string());
        self
    }

    /// A `[metrics]` table with this `listen` address.
    pub fn metrics(mut self, listen: &str) -> Self {
        self.metrics_listen = Some(listen.to_string());
        self
    }

    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if let Some(listen) = &self.listen {
            let items: Vec<String> = listen.iter().map(|a| toml_str(&a.to_string())).collect();
            writeln!(out, "listen = [{}]", items.join(", ")).unwrap();
        }
        if let Some(timeout) = &self.timeout {
            writeln!(out, "timeout = {}", toml_str(timeout)).unwrap();
        }
        // The fake upstreams serve no signed root, so a test validates only when it sets up
        // DNSSEC itself (a `dnssec` or `trust_anchors` line). Before the extra lines, which
        // may open a table.
        let dnssec_set = self.extra.iter().any(|line| {
            let line = line.trim_start();
            line.starts_with("dnssec") || line.starts_with("trust_anchors")
        });
        if !dnssec_set {
            writeln!(out, "dnssec = \"off\"").unwrap();
        }
        for line in &self.extra {
            writeln!(out, "{line}").unwrap();
        }
        if let Some(listen) = &self.metrics_listen {
            writeln!(out, "\n[metrics]\nlisten = {}", toml_str(listen)).unwrap();
        }
        for up in &self.upstreams {
            writeln!(out, "\n[[upstream]]").unwrap();
            writeln!(out, "address = {}", toml_str(&up.address.to_string())).unwrap();
            if let Some(name) = &up.tls_name {
                writeln!(out, "tls_name = {}", toml_str(name)).unwrap();
            }
            if let Some(ca) = &up.ca_file {
                writeln!(out, "ca_file = {}", toml_str(&ca.display().to_string())).unwrap();
            }
            if !up.pin_sha256.is_empty() {
                let pins: Vec<String> = up.pin_sha256.iter().map(|p| toml_str(p)).collect();
                writeln!(out, "pin_sha256 = [{}]", pins.join(", ")).unwrap();
            }
        }
        out
    }
}

/// A UDP socket and a TCP listener bound by the test, to be passed to the daemon.
pub struct ActivationSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl ActivationSockets {
    /// UDP and TCP on the same ephemeral port of `ip` (a few attempts: the TCP port may be taken).
    pub fn bind(ip: IpAddr) -> Self {
        for _ in 0..50 {
            let udp = UdpSocket::bind(SocketAddr::new(ip, 0))
                .unwrap_or_else(|e| panic!("bind UDP on {ip}: {e}"));
            let port = udp.local_addr().unwrap().port();
            if let Ok(tcp) = TcpListener::bind(SocketAddr::new(ip, port)) {
                return ActivationSockets { udp, tcp };
            }
        }
        panic!("no port of {ip} free for both UDP and TCP");
    }

    /// UDP and TCP on exactly `addr`, if both are free.
    pub fn bind_exact(addr: SocketAddr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(addr)?;
        let tcp = TcpListener::bind(addr)?;
        Ok(ActivationSockets { udp, tcp })
    }

    pub fn addr(&self) -> SocketAddr {
        self.udp.local_addr().unwrap()
    }
}

/// A port of 127.0.0.1 free for both UDP and TCP right now (released before returning).
pub fn free_port() -> u16 {
    ActivationSockets::bind(Ipv4Addr::LOCALHOST.into())
        .addr()
        .port()
}

/// Lines received from the daemon (stderr, stdout or notify datagrams), with a way to wait.
pub struct Collector {
    lines: Mutex<Vec<String>>,
    /// Bumped on every new line.
    changed: watch::Sender<u64>,
}

impl Collector {
    pub fn new() -> Arc<Self> {
        Arc::new(Collector {
            lines: Mutex::new(Vec::new()),
            changed: watch::channel(0).0,
        })
    }

    fn push(&self, line: String) {
        self.lines.lock().unwrap().push(line);
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// Index of the first line at or after `from` for which `pred` holds.
    fn find(&self, from: usize, pred: &dyn Fn(&str) -> bool) -> Option<usize> {
        let lines = self.lines.lock().unwrap();
        (from..lines.len()).find(|&i| pred(&lines[i]))
    }

    /// Waits for a line at or after `from` satisfying `pred`; its index, or None on timeout.
    pub async fn wait(
        &self,
        from: usize,
        pred: &dyn Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<usize> {
        let mut rx = self.changed.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(i) = self.find(from, pred) {
                    return i;
                }
                // Cannot fail: the sender lives in `self`.
                let _ = rx.changed().await;
            }
        })
        .await
        .ok()
    }
}

/// How the daemon gets its sockets.
enum Sockets {
    /// Socket activation with these sockets (fds 3, 4, … as UDP, TCP per entry).
    Activated(Vec<ActivationSockets>),
    /// No activation: the daemon binds `--listen` addresses itself.
    Listen(Vec<SocketAddr>),
}

/// Builder for a [`Proxy`].
pub struct ProxyBuilder {
    config: String,
    sockets: Sockets,
    args: Vec<String>,
    env: Vec<(String, String)>,
    uid_gid: Option<(u32, u32)>,
    program: PathBuf,
    /// Passed as fd 3 named `metrics`, before the DNS sockets (socket activation only).
    metrics_socket: Option<TcpListener>,
    /// Passed after the DNS sockets under these names (socket activation only).
    named_sockets: Vec<(String, TcpListener)>,
    /// Run inside this network namespace (`ip netns exec`).
    netns: Option<String>,
}

impl ProxyBuilder {
    /// Socket activation with these sockets instead of the default 127.0.0.1 + ::1 pair.
    pub fn activation_sockets(mut self, sockets: Vec<ActivationSockets>) -> Self {
        self.sockets = Sockets::Activated(sockets);
        self
    }

    /// Also passes `listener` for the metrics endpoint: first (fd 3), named `metrics`, so
    /// that the daemon must tell it from the DNS sockets by its name.
    pub fn metrics_socket(mut self, listener: TcpListener) -> Self {
        self.metrics_socket = Some(listener);
        self
    }

    /// Also passes `listener` named `name` (e.g. `dns-tls`), after the DNS sockets.
    pub fn named_socket(mut self, name: &str, listener: TcpListener) -> Self {
        self.named_sockets.push((name.to_string(), listener));
        self
    }

    /// No socket activation: `--listen ADDR` for each address.
    pub fn listen_args(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.sockets = Sockets::Listen(addrs);
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Runs the daemon as this uid/gid (std drops the supplementary groups).
    pub fn user(mut self, uid: u32, gid: u32) -> Self {
        self.uid_gid = Some((uid, gid));
        self
    }

    /// Runs the daemon inside the network namespace `name` (`ip netns exec`, which then execs
    /// it: the pid, and so `LISTEN_PID`, stay the daemon's). The sockets passed to it stay
    /// where the test bound them.
    pub fn netns(mut self, name: &str) -> Self {
        self.netns = Some(name.to_string());
        self
    }

    /// Runs this copy of the binary instead of the one in the target directory.
    pub fn program(mut self, path: &Path) -> Self {
        self.program = path.to_path_buf();
        self
    }

    /// Spawns the daemon and waits for READY=1.
    pub async fn start(self) -> Proxy {
        let mut proxy = self.spawn().await;
        proxy.wait_ready().await;
        proxy
    }

    /// Spawns the daemon without waiting for anything.
    pub async fn spawn(self) -> Proxy {
        let dir = open_temp_dir();
        let config_path = dir.path().join("dns-proxy.toml");
        write_file(&config_path, &self.config, 0o644);

        // The notify socket lives in its own world-writable directory, so that a daemon running
        // as another user can send to it.
        let notify_dir = dir.path().join("notify");
        std::fs::create_dir(&notify_dir).expect("notify dir");
        chmod(&notify_dir, 0o777);
        let notify_path = notify_dir.join("notify.sock");
        let notify_sock = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        chmod(&notify_path, 0o666);

        let mut cmd;
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut held = Vec::new();
        match &self.sockets {
            Sockets::Activated(sockets) => {
                cmd = match &self.netns {
                    Some(name) => {
                        let mut ip = std::process::Command::new("ip");
                        ip.args(["netns", "exec", name, "/bin/sh"]);
                        ip
                    }
                    None => std::process::Command::new("/bin/sh"),
                };
                cmd.arg("-c")
                    .arg(r#"LISTEN_PID=$$ exec "$0" "$@""#)
                    .arg(&self.program);
                let mut mappings = Vec::new();
                let mut names = Vec::new();
                let mut first_dns_fd = 3;
                if let Some(metrics) = &self.metrics_socket {
                    metrics.set_nonblocking(true).unwrap();
                    mappings.push(FdMapping {
                        parent_fd: metrics.as_fd().try_clone_to_owned().unwrap(),
                        child_fd: 3,
                    });
                    names.push("metrics");
                    held.push(metrics.as_fd().try_clone_to_owned().unwrap());
                    first_dns_fd = 4;
                }
                for (i, s) in sockets.iter().enumerate() {
                    // systemd creates its sockets with SOCK_NONBLOCK; the daemon inherits that.
                    s.udp.set_nonblocking(true).unwrap();
                    s.tcp.set_nonblocking(true).unwrap();
                    udp.push(s.udp.local_addr().unwrap());
                    tcp.push(s.tcp.local_addr().unwrap());
                    let base = first_dns_fd + 2 * i as i32;
                    mappings.push(FdMapping {
                        parent_fd: s.udp.as_fd().try_clone_to_owned().unwrap(),
                        child_fd: base,
                    });
                    mappings.push(FdMapping {
                        parent_fd: s.tcp.as_fd().try_clone_to_owned().unwrap(),
                        child_fd: base + 1,
                    });
                    names.push("dns-udp");
                    names.push("dns-tcp");
                    // Like systemd, keep our copies open while the daemon runs.
                    held.push(s.udp.as_fd().try_clone_to_owned().unwrap());
                    held.push(s.tcp.as_fd().try_clone_to_owned().unwrap());
                }
                for (name, listener) in &self.named_sockets {
                    listener.set_nonblocking(true).unwrap();
                    mappings.push(FdMapping {
                        parent_fd: listener.as_fd().try_clone_to_owned().unwrap(),
                        child_fd: 3 + names.len() as i32,
                    });
                    names.push(name.as_str());
                    held.push(listener.as_fd().try_clone_to_owned().unwrap());
                }
                cmd.fd_mappings(mappings).expect("fd mappings");
                cmd.env_clear();
                cmd.env("LISTEN_FDS", names.len().to_string());
                cmd.env("LISTEN_FDNAMES", names.join(":"));
            }
            Sockets::Listen(addrs) => {
                assert!(
                    self.netns.is_none(),
                    "a namespace only with socket activation"
                );
                cmd = std::process::Command::new(&self.program);
                cmd.env_clear();
                udp.extend(addrs.iter().copied());
                tcp.extend(addrs.iter().copied());
            }
        }
        cmd.env("PATH", default_path());
        cmd.env("NOTIFY_SOCKET", &notify_path);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg("--config").arg(&config_path);
        if let Sockets::Listen(addrs) = &self.sockets {
            for a in addrs {
                cmd.arg("--listen").arg(a.to_string());
            }
        }
        cmd.args(&self.args);
        cmd.current_dir(dir.path());
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.uid_gid {
            cmd.uid(uid).gid(gid);
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.program.display()));
        let pid = child.id().expect("child pid");

        let logs = Collector::new();
        let stdout = Collector::new();
        let notify = Collector::new();
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(collect_lines(
            child.stderr.take().unwrap(),
            logs.clone(),
        )));
        tasks.push(tokio::spawn(collect_lines(
            child.stdout.take().unwrap(),
            stdout.clone(),
        )));
        tasks.push(tokio::spawn(collect_notify(notify_sock, notify.clone())));
        let (exit_tx, exit_rx) = watch::channel(None);
        tasks.push(tokio::spawn(async move {
            // Owns the child: dropping this task (test end) kills the daemon.
            let status = child.wait().await.expect("wait for daemon");
            exit_tx.send_replace(Some(status));
        }));

        Proxy {
            pid,
            dir,
            config_path,
            udp,
            tcp,
            _held: held,
            logs,
            stdout,
            notify,
            notify_cursor: 0,
            exit: exit_rx,
            tasks,
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn default_path() -> String {
    std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".to_string())
}

pub async fn collect_lines(stream: impl AsyncRead + Unpin, into: Arc<Collector>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        into.push(line);
    }
}

async fn collect_notify(sock: UnixDatagram, into: Arc<Collector>) {
    let mut buf = vec![0u8; 65_536];
    while let Ok(n) = sock.recv(&mut buf).await {
        for line in String::from_utf8_lossy(&buf[..n]).split('\n') {
            if !line.is_empty() {
                into.push(line.to_string());
            }
        }
    }
}

/// The running daemon.
pub struct Proxy {
    pub pid: u32,
    pub dir: TempDir,
    pub config_path: PathBuf,
    /// UDP addresses served (IPv4 first when activated with the defaults, then IPv6).
    pub udp: Vec<SocketAddr>,
    /// TCP addresses served, in the same order.
    pub tcp: Vec<SocketAddr>,
    _held: Vec<OwnedFd>,
    logs: Arc<Collector>,
    stdout: Arc<Collector>,
    notify: Arc<Collector>,
    notify_cursor: usize,
    exit: watch::Receiver<Option<ExitStatus>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Proxy {
    /// Builder with socket activation on 127.0.0.1 and ::1 (UDP + TCP each) and this config.
    pub fn builder(config: &ProxyConfig) -> ProxyBuilder {
        Self::builder_toml(&config.to_toml())
    }

    /// Like [`builder`](Self::builder) with a config file given verbatim.
    pub fn builder_toml(toml: &str) -> ProxyBuilder {
        ProxyBuilder {
            config: toml.to_string(),
            sockets: Sockets::Activated(vec![
                ActivationSockets::bind(Ipv4Addr::LOCALHOST.into()),
                ActivationSockets::bind(Ipv6Addr::LOCALHOST.into()),
            ]),
            args: Vec::new(),
            env: Vec::new(),
            uid_gid: None,
            program: PathBuf::from(BIN),
            metrics_socket: None,
            named_sockets: Vec::new(),
            netns: None,
        }
    }

    /// Socket-activated on 127.0.0.1 and ::1, READY=1 received.
    pub async fn start(config: &ProxyConfig) -> Proxy {
        Self::builder(config).start().await
    }

    /// The first (IPv4) UDP address.
    pub fn udp4(&self) -> SocketAddr {
        *self
            .udp
            .iter()
            .find(|a| a.is_ipv4())
            .expect("an IPv4 UDP socket")
    }

    pub fn tcp4(&self) -> SocketAddr {
        *self
            .tcp
            .iter()
            .find(|a| a.is_ipv4())
            .expect("an IPv4 TCP socket")
    }

    pub fn udp6(&self) -> SocketAddr {
        *self
            .udp
            .iter()
            .find(|a| a.is_ipv6())
            .expect("an IPv6 UDP socket")
    }

    pub fn tcp6(&self) -> SocketAddr {
        *self
            .tcp
            .iter()
            .find(|a| a.is_ipv6())
            .expect("an IPv6 TCP socket")
    }

    /// Everything the daemon wrote to stderr so far, one entry per line.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lines()
    }

    /// Everything the daemon wrote to stdout so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines()
    }

    /// Every notify line received so far (`READY=1`, `STATUS=…`, …).
    pub fn notifications(&self) -> Vec<String> {
        self.notify.lines()
    }

    /// The exit status, if the daemon has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    fn describe(&self) -> String {
        format!(
            "exit status: {:?}\nnotifications: {:?}\n--- daemon stderr ---\n{}\n--- end ---",
            self.exit_status(),
            self.notifications(),
            self.log_lines().join("\n")
        )
    }

    /// Waits for the next notify line equal to `line` after the previous match of this method
    /// (so successive calls see successive occurrences). Panics on timeout.
    pub async fn wait_for_notify(&mut self, line: &str, timeout: Duration) {
        let want = line.to_string();
        match self
            .notify
            .wait(self.notify_cursor, &|l| l == want, timeout)
            .await
        {
            Some(i) => self.notify_cursor = i + 1,
            None => panic!(
                "no notify message {line:?} within {timeout:?}\n{}",
                self.describe()
            ),
        }
    }

    /// True when a notify line equal to `line` arrived after the last one
    /// [`wait_for_notify`](Self::wait_for_notify) matched.
    pub fn notify_pending(&self, line: &str) -> bool {
        self.notify
            .find(self.notify_cursor, &|l| l == line)
            .is_some()
    }

    /// Waits for READY=1 (the next one).
    pub async fn wait_ready(&mut self) {
        self.wait_for_notify("READY=1", START_TIMEOUT).await;
    }

    /// Current number of log lines: a mark for [`wait_for_log_after`](Self::wait_for_log_after).
    pub fn log_mark(&self) -> usize {
        self.logs.len()
    }

    /// Waits for a stderr line containing `needle` (from the start); returns it.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_log_after(0, needle, timeout).await
    }

    /// Waits for a stderr line containing `needle` among lines after `mark`; returns it.
    pub async fn wait_for_log_after(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        let n = needle.to_string();
        match self
            .logs
            .wait(mark, &|l| l.contains(n.as_str()), timeout)
            .await
        {
            Some(i) => self.logs.lines()[i].clone(),
            None => panic!(
                "no log line containing {needle:?} within {timeout:?}\n{}",
                self.describe()
            ),
        }
    }

    /// The address of the metrics endpoint, from the line the daemon logs when it starts
    /// serving it (so `[metrics] listen` may use port 0).
    pub async fn metrics_address(&self) -> SocketAddr {
        const MARK: &str = "metrics: serving http://";
        let line = self.wait_for_log(MARK, START_TIMEOUT).await;
        line.split_once(MARK)
            .and_then(|(_, rest)| rest.split_once("/metrics"))
            .and_then(|(address, _)| address.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    /// Sends a signal (name as for `kill -s`, e.g. "HUP", "TERM") to the daemon.
    pub fn signal(&self, sig: &str) {
        assert!(
            self.exit_status().is_none(),
            "daemon already exited\n{}",
            self.describe()
        );
        let status = std::process::Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {sig} {} failed", self.pid);
    }

    /// Waits for the daemon to exit; panics after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let mut exit = self.exit.clone();
        let res = tokio::time::timeout(timeout, exit.wait_for(|s| s.is_some()))
            .await
            .map(|r| r.map(|s| *s));
        match res {
            Ok(Ok(status)) => status.unwrap(),
            _ => panic!(
                "daemon still running {timeout:?} later\n{}",
                self.describe()
            ),
        }
    }

    /// Panics if the daemon has exited.
    pub fn assert_running(&self) {
        assert!(
            self.exit_status().is_none(),
            "daemon exited unexpectedly\n{}",
            self.describe()
        );
    }

    /// Replaces the config file (the daemon reads it again on SIGHUP).
    pub fn write_config(&self, toml: &str) {
        write_file(&self.config_path, toml, 0o644);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.describe());
        }
        if self.exit_status().is_none() {
            // SIGKILL right away; the task owning the child would do it at runtime shutdown.
            let _ = std::process::Command::new("kill")
                .arg("-s")
                .arg("KILL")
                .arg(self.pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Result of running the binary to completion (check-config, --help, …).
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl RunOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for RunOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}--- end ---",
            self.status, self.stdout, self.stderr
        )
    }
}

/// Runs the binary with `args` in a clean environment plus `env`; bounded to 20 s.
pub async fn run_binary(args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .env("PATH", default_path())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("dns-proxy {args:?} still running after 20 s"))
        .expect("run dns-proxy");
    RunOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
