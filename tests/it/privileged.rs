//! A privileged port (< 1024) bound by the parent as root and passed by socket activation to the
//! daemon running as `nobody` (uid/gid 65534, no supplementary groups): it serves UDP and TCP.
//! Skipped unless the tests run as root.

use std::net::{Ipv4Addr, SocketAddr};

use crate::support::proxy::{ActivationSockets, Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, open_temp_dir};
use crate::support::{Rng, assert_serves, effective_uid, program_for_others};

const NOBODY: u32 = 65534;

/// UDP + TCP on 127.0.0.1 at a free port below 1024 (tried from a random start, wrapping).
fn bind_privileged_port() -> ActivationSockets {
    let (low, high) = (600u16, 1024u16);
    let span = high - low;
    let start = Rng::from_entropy().below(u64::from(span)) as u16;
    for i in 0..span {
        let port = low + (start + i) % span;
        if let Ok(s) = ActivationSockets::bind_exact(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        {
            return s;
        }
    }
    panic!("no free port in {low}..{high} on 127.0.0.1");
}

/// (uid, gid) lines of /proc/PID/status: real, effective, saved, filesystem.
fn ids_of(pid: u32) -> (String, String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    (field("Uid:"), field("Gid:"), field("Groups:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_privileged_port_passed_by_socket_activation_while_running_as_nobody() {
    if effective_uid() != 0 {
        eprintln!("SKIPPED: binding a port below 1024 needs root");
        return;
    }
    let up = FakeUpstream::start().await;
    let sockets = bind_privileged_port();
    let addr = sockets.addr();
    assert!(addr.port() < 1024);

    // nobody must be able to execute the binary: copied when the target dir is private.
    let bin_dir = open_temp_dir();
    let program = program_for_others(bin_dir.path());

    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()))
        .activation_sockets(vec![sockets])
        .user(NOBODY, NOBODY)
        .program(&program)
        .start()
        .await;
    let (uid, gid, groups) = ids_of(proxy.pid);
    assert_eq!(uid, "65534 65534 65534 65534", "daemon uids");
    assert_eq!(gid, "65534 65534 65534 65534", "daemon gids");
    assert_eq!(groups, "", "daemon supplementary groups");

    assert_serves(addr, addr, "www.example.com.", up.answer()).await;
    assert_serves(addr, addr, "www.example.org.", up.answer()).await;
    proxy.assert_running();
}
