//! A network namespace of the test's own, where nftables drops packets for real: made with
//! `ip netns add`, its loopback up, deleted on drop. The fake upstreams' sockets are bound
//! inside it by a thread that enters it (setns), and the test's runtime serves them from there;
//! the daemon runs inside it under `ip netns exec` (see `ProxyBuilder::netns`). The clients
//! stay outside: the daemon's listening sockets are bound by the test and passed to it, as
//! systemd does, so only its own connections to the upstreams cross the namespace's rules.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{effective_uid, require_tool};

/// Prefix of the namespaces the tests make, then the test process's pid and a counter.
const PREFIX: &str = "dnsproxy-it-";

#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace with its loopback up, or `None` (and a line saying why) when this
    /// machine cannot make one: not root, or `ip` or `nft` not installed. Under CI (`CI` set)
    /// each of these is an error instead.
    pub fn create() -> Option<Netns> {
        if effective_uid() != 0 {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "network namespaces and nftables need root (CI is set, so this is an error)"
                );
            }
            eprintln!("SKIPPED: network namespaces and nftables need root");
            return None;
        }
        if !require_tool("ip") || !require_tool("nft") {
            return None;
        }
        remove_stale();
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name], None);
        let netns = Netns { name };
        run("ip", &["-n", &netns.name, "link", "set", "lo", "up"], None);
        Some(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Loads `ruleset` (nft syntax) inside the namespace.
    pub fn nft(&self, ruleset: &str) {
        run(
            "ip",
            &["netns", "exec", &self.name, "nft", "-f", "-"],
            Some(ruleset),
        );
    }

    /// Runs `f` on a thread inside the namespace: the sockets it makes belong there.
    pub fn within<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let namespace = std::fs::File::open(&path)
                        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                    rustix::thread::move_into_link_name_space(
                        namespace.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                    f()
                })
                .join()
                .expect("thread inside the namespace")
        })
    }

    /// A TCP listener and a UDP socket on the same port of `addr` inside the namespace (an
    /// ephemeral one when its port is 0), non-blocking, for tokio.
    pub fn bind(&self, addr: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
        self.within(|| {
            let mut last = None;
            for _ in 0..50 {
                let tcp = TcpListener::bind(addr)?;
                match UdpSocket::bind(tcp.local_addr()?) {
                    Ok(udp) => {
                        tcp.set_nonblocking(true)?;
                        udp.set_nonblocking(true)?;
                        return Ok((tcp, udp));
                    }
                    Err(e) if addr.port() == 0 => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.unwrap_or_else(|| std::io::Error::other("no free port")))
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Deletes the namespaces that test processes no longer running left behind.
fn remove_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !PathBuf::from("/proc").join(pid).exists() {
            let _ = Command::new("ip")
                .args(["netns", "delete", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `program` with `args` (and `input` on its stdin); panics with its output if it fails.
fn run(program: &str, args: &[&str], input: Option<&str>) {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).expect("write to stdin");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("wait");
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
