//! DNS over HTTPS upstreams against a real HTTP/2 server, unbound's `https-port`: answers, many
//! queries as streams of one connection, a certificate from a CA not configured (SERVFAIL),
//! the upstream killed and started again; an upstream by host name whose address only a
//! bootstrap server gives (it sees the upstream's name and nothing else, and once it is gone
//! the kept addresses still serve, across a reload too); and `_dns.resolver.arpa`, answered
//! locally.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::client::{UdpClient, a_records, assert_a, assert_servfail, make_query};
use crate::support::proxy::Proxy;
use crate::support::unbound::{DOH_NAME, PlainServer, Unbound, UnboundPorts};
use crate::support::upstream::{FakeUpstream, open_temp_dir, untrusted_ca_pem, write_file};
use crate::support::{require_tool, within};

/// A configuration forwarding to unbound's DoH service at its address, trusting `ca_file`
/// (not validating: the test unbound serves no signed root).
fn doh_config(unbound: &Unbound, ca_file: &str, extra: &str) -> String {
    format!(
        "timeout = \"1500ms\"\ndnssec = \"off\"\n{extra}\n[[upstream]]\nurl = \"{}\"\naddress = \"127.0.0.1\"\nca_file = {ca_file:?}\n",
        unbound.url(DOH_NAME),
    )
}

fn ca(unbound: &Unbound) -> String {
    unbound.ca_file.display().to_string()
}

/// Distinct TCP connections to `server` now or in the last minute (TIME-WAIT included), by
/// their local port.
fn connections_to(server: SocketAddr) -> BTreeSet<u16> {
    let out = std::process::Command::new("ss")
        .args(["-Htan", &format!("dport = :{}", server.port())])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let local = line.split_whitespace().nth(3)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doh_upstream_carries_concurrent_queries_on_one_connection() {
    if !require_tool("unbound") || !require_tool("ss") {
        return;
    }
    let unbound = Unbound::start(UnboundPorts::https_only()).await;
    // Connections of earlier tests to a server that had this port may linger in TIME-WAIT.
    let before = connections_to(unbound.https_addr());
    let toml = doh_config(
        &unbound,
        &ca(&unbound),
        "upstream_connections = 1\n[metrics]\nlisten = \"127.0.0.1:0\"",
    );
    let proxy = Proxy::builder_toml(&toml).start().await;

    let client = UdpClient::new(proxy.udp4()).await;
    let (answer, _) = client
        .exchange(&make_query("www.test.", RecordType::A, None, false))
        .await;
    assert_a(&answer, [192, 0, 2, 53].into());

    // 400 queries, 50 at a time from as many clients, each a new name: all go upstream.
    let server = proxy.udp4();
    let mut tasks = Vec::new();
    for client in 0..50 {
        tasks.push(tokio::spawn(async move {
            let socket = UdpClient::new(server).await;
            for i in 0..8 {
                let name = format!("n{client}-{i}.test.");
                let (answer, _) = socket
                    .exchange(&make_query(&name, RecordType::A, None, false))
                    .await;
                assert_eq!(
                    answer.metadata.response_code,
                    ResponseCode::NXDomain,
                    "{name}"
                );
            }
        }));
    }
    within(Duration::from_secs(60), "400 queries", async {
        for task in tasks {
            task.await.expect("client");
        }
    })
    .await;
    let connections: BTreeSet<u16> = connections_to(unbound.https_addr())
        .difference(&before)
        .copied()
        .collect();
    assert_eq!(
        connections.len(),
        1,
        "one HTTP/2 connection carries every query: {connections:?}"
    );
    // The daemon's own count agrees: one TLS handshake, none failed.
    let samples = crate::metrics::scrape(proxy.metrics_address().await).await;
    let handshakes: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(series, value)| {
            series.starts_with("dns_proxy_tls_handshakes_total{") && **value > 0.0
        })
        .collect();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert!(
        handshakes[0].0.contains("outcome=\"full\"") && *handshakes[0].1 == 1.0,
        "{handshakes:?}"
    );
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_gives_servfail() {
    if !require_tool("unbound") {
        return;
    }
    let unbound = Unbound::start(UnboundPorts::https_only()).await;
    let dir = open_temp_dir();
    let other_ca = dir.path().join("other-ca.pem");
    write_file(&other_ca, untrusted_ca_pem(), 0o644);
    let toml = doh_config(&unbound, &other_ca.display().to_string(), "");
    let proxy = Proxy::builder_toml(&toml).start().await;
    let client = UdpClient::new(proxy.udp4()).await;
    let started = Instant::now();
    let (answer, _) = client
        .exchange(&make_query("www.test.", RecordType::A, None, false))
        .await;
    assert_servfail(&answer);
    assert!(started.elapsed() < Duration::from_secs(5));
    proxy
        .wait_for_log(
            "certificate issued by an unknown CA",
            Duration::from_secs(5),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_upstream_gives_servfail_and_answers_again_once_restarted() {
    if !require_tool("unbound") {
        return;
    }
    let mut unbound = Unbound::start(UnboundPorts::https_only()).await;
    let toml = doh_config(&unbound, &ca(&unbound), "");
    let proxy = Proxy::builder_toml(&toml).start().await;
    let client = UdpClient::new(proxy.udp4()).await;
    let ask = |name: &str| make_query(name, RecordType::A, None, false);
    assert_a(
        &client.exchange(&ask("www.test.")).await.0,
        [192, 0, 2, 53].into(),
    );

    unbound.kill().await;
    let started = Instant::now();
    let (answer, _) = client.exchange(&ask("mail.test.")).await;
    assert_servfail(&answer);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "SERVFAIL within the time budget"
    );

    unbound.restart().await;
    let answered = within(
        Duration::from_secs(15),
        "an answer after the restart",
        async {
            loop {
                let (answer, _) = client.exchange(&ask("mail.test.")).await;
                if answer.metadata.response_code == ResponseCode::NoError {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        },
    )
    .await;
    assert_a(&answered, [192, 0, 2, 54].into());
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_upstream_is_resolved_only_through_bootstrap_and_kept() {
    if !require_tool("unbound") {
        return;
    }
    let unbound = Unbound::start(UnboundPorts::https_only()).await;
    // The first address refuses connections: the next one is tried.
    let addresses: Vec<IpAddr> = vec![[127, 0, 0, 2].into(), [127, 0, 0, 1].into()];
    let bootstrap = PlainServer::start(DOH_NAME, addresses, 60).await;
    let toml = format!(
        "timeout = \"1500ms\"\ndnssec = \"off\"\nbootstrap = [\"{}\"]\n[[upstream]]\nurl = \"{}\"\nca_file = {:?}\n",
        bootstrap.addr,
        unbound.url(DOH_NAME),
        ca(&unbound),
    );
    let proxy = Proxy::builder_toml(&toml).start().await;
    let client = UdpClient::new(proxy.udp4()).await;
    let ask = |name: &str| make_query(name, RecordType::A, None, false);
    for name in ["www.test.", "secret-client-name.test."] {
        let (answer, _) = client.exchange(&ask(name)).await;
        assert_ne!(
            answer.metadata.response_code,
            ResponseCode::ServFail,
            "{name}"
        );
    }
    assert_eq!(
        a_records(&client.exchange(&ask("www.test.")).await.0),
        [[192, 0, 2, 53].into()] as [std::net::Ipv4Addr; 1]
    );
    let asked = bootstrap.asked();
    assert!(!asked.is_empty());
    for (name, rtype) in &asked {
        assert_eq!(
            name, "doh.test.",
            "the bootstrap server saw only the upstream's name"
        );
        assert!(matches!(rtype, RecordType::A | RecordType::AAAA), "{rtype}");
    }
    proxy
        .wait_for_log(
            "upstream doh.test is at 127.0.0.2, 127.0.0.1",
            Duration::from_secs(5),
        )
        .await;

    // The bootstrap server goes away: the kept addresses keep answering, after a reload too.
    bootstrap.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (answer, _) = client.exchange(&ask("mail.test.")).await;
    assert_a(&answer, [192, 0, 2, 54].into());
    let mark = proxy.log_mark();
    proxy.signal("HUP");
    proxy
        .wait_for_log_after(mark, "configuration reloaded", Duration::from_secs(10))
        .await;
    let (answer, _) = client.exchange(&ask("after-reload.test.")).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    let (answer, _) = client.exchange(&ask("www.test.")).await;
    assert_a(&answer, [192, 0, 2, 53].into());
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddr_discovery_is_answered_locally_and_never_forwarded() {
    let upstream = FakeUpstream::start().await;
    let proxy = Proxy::start(&crate::support::proxy::ProxyConfig::new(upstream.spec())).await;
    let client = UdpClient::new(proxy.udp4()).await;
    for (name, rtype) in [
        ("_dns.resolver.arpa.", RecordType::SVCB),
        ("_dns.resolver.arpa.", RecordType::HTTPS),
        ("_dns.resolver.arpa.", RecordType::A),
    ] {
        let (answer, _) = client
            .exchange(&make_query(name, rtype, Some(1232), false))
            .await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{rtype}"
        );
        assert!(answer.answers.is_empty(), "NODATA: {answer}");
        let soa = &answer.authorities;
        assert_eq!(soa.len(), 1, "{answer}");
        assert_eq!(soa[0].record_type(), RecordType::SOA);
        assert_eq!(soa[0].name.to_ascii(), "resolver.arpa.");
    }
    assert_eq!(
        upstream.queries(),
        0,
        "nothing under resolver.arpa goes upstream"
    );
}
