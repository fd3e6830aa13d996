//! Where port 853 is blocked: in a network namespace of its own, unbound serves DNS over TLS on
//! 127.0.0.1:853 and DNS over HTTPS on 127.0.0.1:443, and nftables drops (or resets) every TCP
//! packet to port 853. dns-proxy runs in that namespace (its client sockets passed from outside,
//! as systemd passes them) with the README's "DoT first, DoH when blocked" group: every query
//! is answered through DNS over HTTPS within `timeout`, and once the first has found DoT
//! blocked, no query waits for it.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::client::{UdpClient, make_query};
use crate::support::proxy::Proxy;
use crate::support::unbound::{DOH_NAME, DOH_PATH, Unbound, UnboundPorts};
use crate::support::upstream::{open_temp_dir, write_file};
use crate::support::{effective_uid, require_tool};

/// A network namespace with loopback up; deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    /// `None` (the test is skipped) when namespaces cannot be made here: not root, no `ip`.
    fn create(tag: &str) -> Option<Netns> {
        if effective_uid() != 0 {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: network namespaces are needed"
            );
            eprintln!("SKIPPED: network namespaces need root");
            return None;
        }
        let name = format!("dnsproxy-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        run("ip", &["netns", "add", &name]);
        let netns = Netns { name };
        run("ip", &["-n", &netns.name, "link", "set", "lo", "up"]);
        Some(netns)
    }

    /// Loads nftables rules in the namespace.
    fn nft(&self, rules: &str) {
        let dir = open_temp_dir();
        let file = dir.path().join("rules.nft");
        write_file(&file, rules, 0o644);
        run(
            "ip",
            &[
                "netns",
                "exec",
                &self.name,
                "nft",
                "-f",
                &file.display().to_string(),
            ],
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// A script that runs the daemon inside `netns`, keeping its pid (`LISTEN_PID` must match).
fn daemon_in(netns: &Netns, dir: &std::path::Path) -> PathBuf {
    let script = dir.join("dns-proxy-in-netns");
    let nsenter = crate::support::find_tool("nsenter").expect("nsenter");
    write_file(
        &script,
        &format!(
            "#!/bin/sh\nexec {} --net=/run/netns/{} {} \"$@\"\n",
            nsenter.display(),
            netns.name,
            crate::support::proxy::BIN
        ),
        0o755,
    );
    script
}

/// The README's group: Cloudflare-like DoT first, DoH on 443 when it fails.
fn dot_then_doh(ca_file: &str) -> String {
    format!(
        r#"timeout = "2s"
strategy = "failover"
# The test upstreams serve no signed root.
dnssec = "off"

[[upstream]]
address = "127.0.0.1:853"
tls_name = "{DOH_NAME}"
ca_file = {ca_file:?}

[[upstream]]
url = "https://{DOH_NAME}{DOH_PATH}"
address = "127.0.0.1"
ca_file = {ca_file:?}
"#
    )
}

async fn blocked_853_is_skipped(tag: &str, rule: &str) {
    if !require_tool("nft") || !require_tool("ip") || !require_tool("unbound") {
        return;
    }
    let Some(netns) = Netns::create(tag) else {
        return;
    };
    let ports = UnboundPorts {
        ip: [127, 0, 0, 1].into(),
        https: 443,
        tls: Some(853),
    };
    let unbound = Unbound::start_in(ports, Some(&netns.name)).await;
    netns.nft(&format!(
        "table inet block853 {{\n  chain output {{\n    type filter hook output priority 0;\n    tcp dport 853 {rule}\n  }}\n}}\n"
    ));
    let dir = open_temp_dir();
    let toml = dot_then_doh(&unbound.ca_file.display().to_string());
    let proxy = Proxy::builder_toml(&toml)
        .program(&daemon_in(&netns, dir.path()))
        .start()
        .await;
    let client = UdpClient::new(proxy.udp4()).await;
    let mut times = Vec::new();
    for i in 0..40 {
        // A new name each time: no answer comes from the cache.
        let name = format!("q{i}.test.");
        let started = Instant::now();
        let (answer, _) = client
            .exchange(&make_query(&name, RecordType::A, None, false))
            .await;
        times.push(started.elapsed());
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name} answered by unbound over DoH"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let www = client
        .exchange(&make_query("www.test.", RecordType::A, None, false))
        .await
        .0;
    assert_eq!(www.answers.len(), 1, "{www}");
    assert!(
        times[0] < Duration::from_secs(2),
        "the first query is answered within timeout: {times:?}"
    );
    let slowest = times[1..].iter().max().copied().unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(1),
        "after the first, no query waits for the blocked upstream: {times:?}"
    );
    proxy
        .wait_for_log(
            "upstream 127.0.0.1:853 (doh.test) is down",
            Duration::from_secs(5),
        )
        .await;
    eprintln!("tcp dport 853 {rule}: query times {times:?}");
    drop(unbound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_853_is_answered_over_doh_and_then_skipped() {
    blocked_853_is_skipped("drop", "drop").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_853_is_answered_over_doh_and_then_skipped() {
    blocked_853_is_skipped("reset", "reject with tcp reset").await;
}
