//! Test harness: a fake DNS-over-TLS upstream (`upstream`), a scripted DNS-over-HTTPS one
//! (`doh_server`), the real daemon launched the way systemd launches it (`proxy`), a small DNS client (`client`), network namespaces with
//! nftables rules (`netns`), and shared helpers.

#![allow(dead_code)]

pub mod client;
pub mod dnssec_world;
pub mod doh_server;
pub mod encrypted;
pub mod netns;
pub mod proxy;
pub mod system_bus;
pub mod unbound;
pub mod upstream;

use std::future::Future;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a program is found on `PATH` (plus the sbin directories, where Debian puts daemons).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|m| m.is_file() && m.mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// True when `name` is installed. When it is not: panics if the environment variable `CI` is set
/// (a CI machine must have it), otherwise prints a skip message and returns false.
pub fn require_tool(name: &str) -> bool {
    if find_tool(name).is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("required tool `{name}` is not installed (CI is set, so this is an error)");
    }
    eprintln!("SKIPPED: `{name}` is not installed");
    false
}

/// The effective uid of this process (the owner of `/proc/self`).
pub fn effective_uid() -> u32 {
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

/// The daemon's binary, or a copy of it in `dir` when another user could not run it there
/// (a private target directory).
pub fn program_for_others(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let program = PathBuf::from(proxy::BIN);
    let exec_ok = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode() & 0o001 != 0)
            .unwrap_or(false)
    };
    if exec_ok(&program) && program.ancestors().skip(1).all(exec_ok) {
        return program;
    }
    let copy = dir.join("dns-proxy");
    std::fs::copy(&program, &copy).expect("copy binary");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

/// Awaits `fut`, panicking with `what` when it takes longer than `limit`.
/// Whether the peer closes `stream` (end of stream or a reset) within `limit`.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Waits until `holds()`, checked again at each change a server announces on `events`; panics
/// with `what()` after `limit`.
pub async fn wait_for(
    events: &tokio::sync::watch::Sender<u64>,
    holds: impl Fn() -> bool,
    limit: Duration,
    what: impl FnOnce() -> String,
) {
    let mut changes = events.subscribe();
    let waited = tokio::time::timeout(limit, async {
        while !holds() {
            changes.changed().await.expect("server alive");
        }
    })
    .await;
    if waited.is_err() {
        panic!("{} within {limit:?}", what());
    }
}

pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Small deterministic PRNG (SplitMix64): fixed seeds make the random-input tests repeatable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// Seeded from the clock and a process-wide counter, for values that only need to differ.
    pub fn from_entropy() -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Rng(nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

use std::net::{Ipv4Addr, SocketAddr};

use hickory_proto::rr::RecordType;

use self::client::{assert_a, tcp_query, udp_query};
use self::proxy::{Proxy, ProxyConfig};
use self::upstream::FakeUpstream;

/// A default fake upstream and a socket-activated proxy forwarding to it (READY=1 received).
pub async fn upstream_and_proxy() -> (FakeUpstream, Proxy) {
    upstream_and_proxy_with(|c| c).await
}

/// Like [`upstream_and_proxy`], with the config adjusted by `adjust`.
pub async fn upstream_and_proxy_with(
    adjust: impl FnOnce(ProxyConfig) -> ProxyConfig,
) -> (FakeUpstream, Proxy) {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&adjust(ProxyConfig::new(up.spec()))).await;
    (up, proxy)
}

/// Asserts that `name` gets exactly the A record `addr` over UDP at `udp` and over TCP at `tcp`.
pub async fn assert_serves(udp: SocketAddr, tcp: SocketAddr, name: &str, addr: Ipv4Addr) {
    let resp = udp_query(udp, name, RecordType::A, None, false).await;
    assert_a(&resp, addr);
    let resp = tcp_query(tcp, name, RecordType::A, None, false).await;
    assert_a(&resp, addr);
}
