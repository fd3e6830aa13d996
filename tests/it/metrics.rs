//! The Prometheus endpoint of the real daemon, on an ephemeral loopback port: known traffic
//! (UDP and TCP answers, a FORMERR, a SERVFAIL from a stalled upstream, a dropped packet) gives
//! exactly those counts; `/healthz` is 200 while an upstream is up and 503 while the only one
//! is down; counters survive a reload; a socket passed by systemd under the name `metrics`
//! serves the endpoint while the DNS sockets keep working; every series is in the manual; a
//! client that never finishes its request is dropped after the header timeout while others
//! are served, and an oversized request head gets 431.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::client::{
    IO_TIMEOUT, TcpClient, UdpClient, assert_a, assert_servfail, encode, make_query, tcp_query,
    udp_query,
};
use crate::support::proxy::{Proxy, ProxyConfig, free_port};
use crate::support::upstream::{FakeUpstream, Mode};
use crate::support::{assert_serves, within};

/// How long a gauge may take to settle after the event that moves it.
const SETTLE: Duration = Duration::from_secs(5);

fn config(up: &FakeUpstream) -> ProxyConfig {
    ProxyConfig::new(up.spec())
        .timeout("500ms")
        .metrics("127.0.0.1:0")
}

/// A response, with the headers' names in lower case.
struct HttpResponse {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Sends `request` as it is and reads until the server closes the connection.
async fn http(address: SocketAddr, request: &str) -> HttpResponse {
    let raw = within(IO_TIMEOUT, "HTTP exchange", async {
        let mut stream = TcpStream::connect(address)
            .await
            .unwrap_or_else(|e| panic!("connect to {address}: {e}"));
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    })
    .await;
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.strip_prefix("HTTP/1.1 "))
        .and_then(|l| l.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line in {text:?}"));
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn get(address: SocketAddr, path: &str) -> HttpResponse {
    http(
        address,
        &format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: it\r\n\r\n"),
    )
    .await
}

/// Scrapes `/metrics`: each series (name and labels as written) with its value. Checks the
/// response and that every line is a HELP or TYPE comment or a sample.
pub(crate) async fn scrape(address: SocketAddr) -> BTreeMap<String, f64> {
    let response = get(address, "/metrics").await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        response.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(
        response.headers.get("content-length"),
        Some(&response.body.len().to_string())
    );
    let mut samples = BTreeMap::new();
    for line in response.body.lines() {
        if line.starts_with("# HELP dns_proxy_") || line.starts_with("# TYPE dns_proxy_") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        assert!(series.starts_with("dns_proxy_"), "{line:?}");
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line:?}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "twice: {series}"
        );
    }
    samples
}

pub(crate) fn value(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    *samples
        .get(series)
        .unwrap_or_else(|| panic!("no series {series} in {samples:#?}"))
}

/// Asserts the value of every series whose name is `name`: those in `expected` (by their
/// labels as written, e.g. `transport="udp",rcode="NOERROR"`) have that value, the others 0.
fn assert_family(samples: &BTreeMap<String, f64>, name: &str, expected: &[(&str, f64)]) {
    let prefix = format!("{name}{{");
    let family: BTreeMap<&str, f64> = samples
        .iter()
        .filter_map(|(series, v)| Some((series.strip_prefix(&prefix)?.strip_suffix('}')?, *v)))
        .collect();
    assert!(!family.is_empty(), "no series {name} in {samples:#?}");
    for (labels, _) in expected {
        assert!(
            family.contains_key(labels),
            "no {name}{{{labels}}} in {family:#?}"
        );
    }
    for (labels, got) in &family {
        let want = expected
            .iter()
            .find(|(l, _)| l == labels)
            .map_or(0.0, |(_, v)| *v);
        assert_eq!(*got, want, "{name}{{{labels}}}");
    }
}

/// Scrapes until `series` has the value `want`; panics with the last value after [`SETTLE`].
async fn wait_for_value(address: SocketAddr, series: &str, want: f64) {
    let start = std::time::Instant::now();
    loop {
        let got = value(&scrape(address).await, series);
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < SETTLE,
            "{series} is {got}, not {want}, after {SETTLE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_known_traffic_exactly() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up)).await;
    let address = proxy.metrics_address().await;
    let upstream = format!("upstream=\"{}\"", up.addr());

    // Before any query every series is there, at zero.
    let before = scrape(address).await;
    assert_family(&before, "dns_proxy_queries_total", &[]);
    assert_family(&before, "dns_proxy_upstream_errors_total", &[]);
    assert_eq!(
        value(
            &before,
            &format!("dns_proxy_upstream_queries_total{{{upstream}}}")
        ),
        0.0
    );

    // A packet too short to be a query, dropped; the receive loop reads it before the query
    // that follows it on the same socket.
    let client = UdpClient::new(proxy.udp4()).await;
    client.send_raw(&[0u8; 5]).await;
    // 5 queries over UDP, 3 over TCP.
    for i in 0..5 {
        let query = make_query(&format!("udp{i}.example."), RecordType::A, None, false);
        assert_a(&client.exchange(&query).await.0, up.answer());
    }
    for i in 0..3 {
        let resp = tcp_query(
            proxy.tcp4(),
            &format!("tcp{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_a(&resp, up.answer());
    }
    // FORMERR: a header announcing two questions followed by one.
    let mut malformed = encode(&make_query("formerr.example.", RecordType::A, None, false));
    malformed[5] = 2;
    client.send_raw(&malformed).await;
    let (resp, _) = client.recv().await;
    assert_eq!(resp.metadata.response_code, ResponseCode::FormErr, "{resp}");

    let during = scrape(address).await;
    assert_eq!(
        value(
            &during,
            &format!("dns_proxy_upstream_connections{{{upstream}}}")
        ),
        1.0
    );

    // SERVFAIL: the upstream stops answering; the stalled connection is then closed.
    up.set_mode(Mode::Stall);
    assert_servfail(&udp_query(proxy.udp4(), "stall.example.", RecordType::A, None, false).await);

    let samples = scrape(address).await;
    assert_family(
        &samples,
        "dns_proxy_queries_total",
        &[
            (r#"transport="udp",rcode="NOERROR""#, 5.0),
            (r#"transport="udp",rcode="FORMERR""#, 1.0),
            (r#"transport="udp",rcode="SERVFAIL""#, 1.0),
            (r#"transport="tcp",rcode="NOERROR""#, 3.0),
        ],
    );
    assert_family(
        &samples,
        "dns_proxy_queries_dropped_total",
        &[(r#"transport="udp""#, 1.0)],
    );
    // The FORMERR never reached the upstream; the stalled query did.
    assert_eq!(
        value(
            &samples,
            &format!("dns_proxy_upstream_queries_total{{{upstream}}}")
        ),
        9.0
    );
    assert_family(
        &samples,
        "dns_proxy_upstream_errors_total",
        &[(&format!(r#"{upstream},kind="timeout""#), 1.0)],
    );
    let latency = |suffix: &str, labels: &str| {
        value(
            &samples,
            &format!("dns_proxy_upstream_latency_seconds_{suffix}{{{labels}}}"),
        )
    };
    assert_eq!(latency("count", &upstream), 8.0);
    assert_eq!(latency("bucket", &format!(r#"{upstream},le="+Inf""#)), 8.0);
    let sum = latency("sum", &upstream);
    assert!(sum > 0.0 && sum < 8.0 * 0.5, "latency sum {sum}");
    assert_family(
        &samples,
        "dns_proxy_tls_handshakes_total",
        &[(&format!(r#"{upstream},outcome="full""#), 1.0)],
    );
    assert_eq!(value(&samples, "dns_proxy_queries_in_flight"), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        value(
            &samples,
            &format!("dns_proxy_build_info{{version=\"{version}\"}}")
        ),
        1.0
    );
    // Every answered name was new: each lookup missed and went upstream.
    for (cache, count) in [("hits", 0.0), ("misses", 9.0), ("stale", 0.0)] {
        assert_eq!(
            value(&samples, &format!("dns_proxy_cache_{cache}_total")),
            count,
            "cache {cache}"
        );
    }
    wait_for_value(
        address,
        &format!("dns_proxy_upstream_connections{{{upstream}}}"),
        0.0,
    )
    .await;

    // Client TCP connections: one held open counts, and stops counting when closed.
    let mut held = TcpClient::connect(proxy.tcp4()).await;
    up.set_mode(Mode::Normal);
    let query = make_query("held.example.", RecordType::A, None, false);
    let resp = held.exchange(&query).await;
    assert!(
        matches!(
            resp.metadata.response_code,
            ResponseCode::NoError | ResponseCode::ServFail
        ),
        "{resp}"
    );
    wait_for_value(address, "dns_proxy_client_tcp_connections", 1.0).await;
    drop(held);
    wait_for_value(address, "dns_proxy_client_tcp_connections", 0.0).await;
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_follows_upstream_health() {
    let mut up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up)).await;
    let address = proxy.metrics_address().await;
    assert_serves(proxy.udp4(), proxy.tcp4(), "up.example.", up.answer()).await;
    let health = get(address, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    // The only upstream goes away: the next query fails and marks it down.
    up.stop().await;
    assert_servfail(&udp_query(proxy.udp4(), "down.example.", RecordType::A, None, false).await);
    let health = get(address, "/healthz").await;
    assert_eq!(health.status, 503, "{}", health.body);
    let samples = scrape(address).await;
    let refused = format!(
        "dns_proxy_upstream_errors_total{{upstream=\"{}\",kind=\"refused\"}}",
        up.addr()
    );
    assert!(value(&samples, &refused) >= 1.0, "{refused}");

    // Back up: healthy again once a query got through.
    up.restart().await;
    let start = std::time::Instant::now();
    loop {
        let resp = udp_query(proxy.udp4(), "back.example.", RecordType::A, None, false).await;
        if resp.metadata.response_code == ResponseCode::NoError {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still failing: {resp}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let health = get(address, "/healthz").await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_else_is_not_found_and_bad_requests_are_refused() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up)).await;
    let address = proxy.metrics_address().await;
    for path in ["/", "/metrics/", "/health", "/../metrics"] {
        assert_eq!(get(address, path).await.status, 404, "{path}");
    }
    let post = http(
        address,
        "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert_eq!(post.status, 404);
    let head = http(address, "HEAD /metrics HTTP/1.1\r\n\r\n").await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "{}", head.body);
    assert_ne!(
        head.headers.get("content-length").map(String::as_str),
        Some("0")
    );
    assert_eq!(
        http(address, "GET /metrics HTTP/9\r\n\r\n").await.status,
        400
    );
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "y".repeat(10_000));
    assert_eq!(http(address, &huge).await.status, 431);
    // A client that sends half a request and closes gets nothing, and the server carries on.
    let mut half = TcpStream::connect(address).await.expect("connect");
    half.write_all(b"GET /metr").await.expect("write");
    drop(half);
    assert_eq!(get(address, "/healthz").await.status, 200);
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_after_5_seconds_and_oversized_requests_get_431() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up)).await;
    let address = proxy.metrics_address().await;
    let started = std::time::Instant::now();
    let mut slow = TcpStream::connect(address).await.expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nHost")
        .await
        .expect("write");

    // Scrapes go on while it holds its connection.
    scrape(address).await;
    let mut probe = [0u8; 64];
    match slow.try_read(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("slow connection not open while a scrape was served: {other:?}"),
    }
    // Over 100 header lines, although under 8 KiB.
    let many = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(200));
    assert_eq!(http(address, &many).await.status, 431);

    // The header-read timeout (5 s) closes it without an answer.
    let mut received = Vec::new();
    within(Duration::from_secs(15), "slow client closed", async {
        slow.read_to_end(&mut received).await.expect("read");
    })
    .await;
    assert!(
        received.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&received)
    );
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(get(address, "/healthz").await.status, 200);
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_reload() {
    let up = FakeUpstream::start().await;
    let mut proxy = Proxy::start(&config(&up)).await;
    let address = proxy.metrics_address().await;
    assert_serves(proxy.udp4(), proxy.tcp4(), "before.example.", up.answer()).await;

    // A new forwarder (another timeout, so it really is a new configuration).
    proxy.write_config(&config(&up).timeout("700ms").to_toml());
    proxy.signal("HUP");
    proxy.wait_for_notify("RELOADING=1", SETTLE).await;
    proxy.wait_for_notify("READY=1", SETTLE).await;
    assert_serves(proxy.udp4(), proxy.tcp4(), "after.example.", up.answer()).await;

    let samples = scrape(address).await;
    assert_family(
        &samples,
        "dns_proxy_queries_total",
        &[
            (r#"transport="udp",rcode="NOERROR""#, 2.0),
            (r#"transport="tcp",rcode="NOERROR""#, 2.0),
        ],
    );
    let upstream = format!("upstream=\"{}\"", up.addr());
    assert_eq!(
        value(
            &samples,
            &format!("dns_proxy_upstream_queries_total{{{upstream}}}")
        ),
        2.0,
        "one per name: the cache answers its second query"
    );
    assert_eq!(
        value(
            &samples,
            &format!("dns_proxy_upstream_latency_seconds_count{{{upstream}}}")
        ),
        2.0
    );
    // The new forwarder opened its own connection.
    let handshakes = |outcome: &str| {
        value(
            &samples,
            &format!(r#"dns_proxy_tls_handshakes_total{{{upstream},outcome="{outcome}"}}"#),
        )
    };
    assert_eq!(handshakes("full") + handshakes("resumed"), 2.0);
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_named_metrics_from_systemd_serves_the_endpoint() {
    let up = FakeUpstream::start().await;
    let passed = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind metrics socket");
    let address = passed.local_addr().expect("address");
    // Also configured: the passed socket wins and this address stays unbound.
    let configured = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let config = ProxyConfig::new(up.spec()).metrics(&configured.to_string());
    let proxy = Proxy::builder(&config).metrics_socket(passed).start().await;
    assert_eq!(proxy.metrics_address().await, address);

    // The DNS sockets after it still serve, over IPv4 and IPv6.
    assert_serves(proxy.udp4(), proxy.tcp4(), "v4.example.", up.answer()).await;
    assert_serves(proxy.udp6(), proxy.tcp6(), "v6.example.", up.answer()).await;
    let samples = scrape(address).await;
    assert_family(
        &samples,
        "dns_proxy_queries_total",
        &[
            (r#"transport="udp",rcode="NOERROR""#, 2.0),
            (r#"transport="tcp",rcode="NOERROR""#, 2.0),
        ],
    );
    assert_eq!(get(address, "/healthz").await.status, 200);
    TcpListener::bind(configured).unwrap_or_else(|e| {
        panic!("[metrics] listen {configured} is bound although a metrics socket was passed: {e}")
    });
    let log = proxy.log_lines().join("\n");
    assert!(
        !log.contains("not used"),
        "a passed socket was left unused:\n{log}"
    );
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_is_in_the_manual() {
    let up = FakeUpstream::start().await;
    let proxy = Proxy::start(&config(&up)).await;
    let body = get(proxy.metrics_address().await, "/metrics").await.body;
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(names.len() >= 10, "{body}");
    let page = Path::new(env!("CARGO_MANIFEST_DIR")).join("man/dns-proxy.8");
    let page = std::fs::read_to_string(&page).expect("man/dns-proxy.8");
    let section: String = page
        .lines()
        .skip_while(|l| l.trim() != ".SH METRICS")
        .skip(1)
        .take_while(|l| !l.starts_with(".SH"))
        .map(|l| format!("{}\n", l.replace("\\_", "_")))
        .collect();
    let missing: Vec<&&str> = names
        .iter()
        .filter(|name| !section.contains(&format!(".B {name}\n")))
        .collect();
    assert!(
        missing.is_empty(),
        "not documented as `.B name` in the METRICS section of man/dns-proxy.8: {missing:?}"
    );
}
