//! Real software around the proxy: `dig` as the client over UDP and TCP (IPv4 and IPv6), and
//! unbound as the DoT upstream (its certificate from the test CA), with dig answered through it
//! and a thousand queries carried over at most two upstream TLS connections.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use tempfile::TempDir;

use crate::support::client::{UdpClient, assert_a, make_query};
use crate::support::proxy::{Collector, Proxy, ProxyConfig, UpstreamSpec, free_port};
use crate::support::unbound;
use crate::support::upstream::{DEFAULT_TLS_NAME, ca_pem, issue_cert, open_temp_dir, write_file};
use crate::support::{require_tool, upstream_and_proxy, within};

/// Runs `dig @server -p port name A +time=2 +tries=1 [extra]`; returns its stdout (exit 0 required).
pub(crate) async fn dig(server: SocketAddr, name: &str, extra: &[&str]) -> String {
    let out = within(
        Duration::from_secs(10),
        "dig",
        tokio::process::Command::new("dig")
            .arg(format!("@{}", server.ip()))
            .arg("-p")
            .arg(server.port().to_string())
            .arg(name)
            .arg("A")
            .arg("+time=2")
            .arg("+tries=1")
            .args(extra)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run dig");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dig {extra:?} failed: {:?}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub(crate) fn assert_dig_answer(output: &str, name: &str, addr: &str) {
    assert!(output.contains("status: NOERROR"), "not NOERROR:\n{output}");
    let answered = output.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() == 5 && f[0] == name && f[2] == "IN" && f[3] == "A" && f[4] == addr
    });
    assert!(answered, "no `{name} … IN A {addr}` in:\n{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_gets_upstream_answer_over_udp_and_tcp() {
    if !require_tool("dig") {
        return;
    }
    let (up, proxy) = upstream_and_proxy().await;
    let addr = up.answer().to_string();
    for server in [proxy.udp4(), proxy.udp6()] {
        let out = dig(server, "www.example.com", &[]).await;
        assert_dig_answer(&out, "www.example.com.", &addr);
        let out = dig(server, "www.example.org", &["+tcp"]).await;
        assert_dig_answer(&out, "www.example.org.", &addr);
        // dig's default EDNS query with a cookie and the DO bit.
        let out = dig(server, "www.example.net", &["+dnssec"]).await;
        assert_dig_answer(&out, "www.example.net.", &addr);
    }
    proxy.assert_running();
}

/// unbound serving DoT on 127.0.0.1:`port` with a static `test.` zone; killed on drop.
struct Unbound {
    port: u16,
    _dir: TempDir,
    _child: tokio::process::Child,
    log: Arc<Collector>,
}

impl Unbound {
    async fn start() -> Unbound {
        let dir = open_temp_dir();
        let port = free_port();
        let conf = unbound::write_conf(
            dir.path(),
            &issue_cert(DEFAULT_TLS_NAME, false),
            &format!(
                r#"    interface: 127.0.0.1@{port}
    tls-port: {port}
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    local-zone: "test." static
    local-data: "www.test. 60 IN A 192.0.2.53"
    local-data: "mail.test. 60 IN A 192.0.2.54"
    local-data: "txt.test. 60 IN TXT \"hello from unbound\""
remote-control:
    control-enable: no
"#
            ),
        );
        let log = Collector::new();
        let child = unbound::spawn(&conf, None, &log, Duration::from_secs(10)).await;
        Unbound {
            port,
            _dir: dir,
            _child: child,
            log,
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

/// Distinct TCP connections to or from `port` that exist or ended less than a minute ago
/// (TIME-WAIT included), identified by their other port.
fn tcp_connections(port: u16) -> BTreeSet<u16> {
    let out = std::process::Command::new("ss")
        .arg("-Htan")
        .arg(format!("( sport = :{port} or dport = :{port} )"))
        .output()
        .expect("run ss");
    assert!(out.status.success(), "ss failed: {out:?}");
    let port_of = |s: &str| -> u16 { s.rsplit(':').next().unwrap().parse().unwrap() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 5 || f[0] == "LISTEN" {
                return None;
            }
            let (local, peer) = (port_of(f[3]), port_of(f[4]));
            Some(if local == port { peer } else { local })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbound_as_upstream_answers_dig_and_reuses_tls_connections() {
    if !require_tool("unbound") || !require_tool("dig") || !require_tool("ss") {
        return;
    }
    let unbound = Unbound::start().await;
    let dir = open_temp_dir();
    let ca_file = dir.path().join("ca.pem");
    write_file(&ca_file, ca_pem(), 0o644);
    let spec = UpstreamSpec {
        address: unbound.addr(),
        tls_name: Some(DEFAULT_TLS_NAME.to_string()),
        ca_file: Some(ca_file.clone()),
        pin_sha256: Vec::new(),
    };
    let proxy = Proxy::start(&ProxyConfig::new(spec)).await;

    let out = dig(proxy.udp4(), "www.test", &[]).await;
    assert_dig_answer(&out, "www.test.", "192.0.2.53");
    let out = dig(proxy.udp4(), "mail.test", &["+tcp"]).await;
    assert_dig_answer(&out, "mail.test.", "192.0.2.54");

    let client = UdpClient::new(proxy.udp4()).await;
    for i in 0..1000 {
        let name = if i % 2 == 0 {
            "www.test."
        } else {
            "mail.test."
        };
        let q = make_query(name, RecordType::A, None, false);
        let (resp, _) = client.exchange(&q).await;
        let want = if i % 2 == 0 {
            [192, 0, 2, 53]
        } else {
            [192, 0, 2, 54]
        };
        assert_a(&resp, want.into());
    }
    let conns = tcp_connections(unbound.port);
    assert!(
        !conns.is_empty() && conns.len() <= 2,
        "{} TLS connections to unbound for 1000 queries (ports {conns:?})\n{}",
        conns.len(),
        unbound.log.lines().join("\n")
    );
    proxy.assert_running();
}
