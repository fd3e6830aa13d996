//! DNS over HTTPS for clients, on a socket passed as `dns-https`: curl resolves a name through
//! it (`--doh-url`); raw POST and GET requests over HTTP/2 and HTTP/1.1 (curl) and dig
//! `+https` / `+https-get` are answered, dnsperf gets every answer over DNS over TLS and
//! HTTPS with many queries outstanding, with `Cache-Control: max-age` of the answer's TTL;
//! requests that carry no query get their status codes (400, 404, 405, 413, 415); request heads
//! and handshakes that never finish are closed while others are served; allow, deny and the
//! rate limit apply as over TCP.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::metrics::{scrape, value};
use crate::real_clients::assert_dig_answer;
use crate::support::client::{assert_a, decode, encode, make_query};
use crate::support::encrypted::{
    DotClient, EncryptedProxy, Fetched, SERVER_NAME, client_config, curl, loopback_listener, run,
};
use crate::support::proxy::ProxyConfig;
use crate::support::upstream::{FakeUpstream, ca_pem};
use crate::support::{closed_within, require_tool, within};

const CONTENT_TYPE: &str = "content-type: application/dns-message";

async fn start(adjust: impl FnOnce(ProxyConfig) -> ProxyConfig) -> (FakeUpstream, EncryptedProxy) {
    let up = FakeUpstream::start().await;
    let proxy = EncryptedProxy::start(adjust(ProxyConfig::new(up.spec()))).await;
    (up, proxy)
}

/// A query for `name` A with id 0, as RFC 8484 §4.1 asks of clients, as bytes.
fn query_bytes(name: &str) -> (Message, Vec<u8>) {
    let mut query = make_query(name, RecordType::A, None, false);
    query.metadata.id = 0;
    let bytes = encode(&query);
    (query, bytes)
}

/// POSTs `body` as a DNS message with curl's `version` flag (`--http2`, `--http1.1`).
async fn post(proxy: &EncryptedProxy, version: &str, body: &[u8], extra: &[&str]) -> Fetched {
    let file = proxy
        .files
        .dir
        .path()
        .join(format!("query-{}", crate::support::client::next_id()));
    std::fs::write(&file, body).expect("write the query");
    let data = format!("@{}", file.display());
    let mut args = vec![version, "--data-binary", &data, "--header", CONTENT_TYPE];
    args.extend_from_slice(extra);
    curl(proxy, &proxy.url("/dns-query"), &args).await
}

async fn get(proxy: &EncryptedProxy, version: &str, query: &str) -> Fetched {
    curl(
        proxy,
        &proxy.url(&format!("/dns-query?{query}")),
        &[version],
    )
    .await
}

/// Asserts a 200 with a DNS answer with the A record `up` gives, and a `max-age` from its TTL.
fn assert_answered(fetched: &Fetched, up: &FakeUpstream, version: &str) {
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert_eq!(fetched.version, version, "{fetched:?}");
    assert_eq!(
        fetched.header("content-type").as_deref(),
        Some("application/dns-message")
    );
    let max_age = fetched
        .header("cache-control")
        .and_then(|value| value.strip_prefix("max-age=").map(str::to_string))
        .and_then(|seconds| seconds.parse::<u32>().ok());
    assert!(
        max_age.is_some_and(|seconds| (1..=60).contains(&seconds)),
        "cache-control from a TTL of 60: {fetched:?}"
    );
    assert_a(&decode(&fetched.body), up.answer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_and_get_are_answered_over_http2_and_http11() {
    if !require_tool("curl") {
        return;
    }
    let (up, proxy) = start(|c| c.extra("log_queries = true").metrics("127.0.0.1:0")).await;
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (_, body) = query_bytes(&format!("post{version}.example."));
        assert_answered(&post(&proxy, flag, &body, &[]).await, &up, version);
        let (_, body) = query_bytes(&format!("get{version}.example."));
        let unpadded = format!("dns={}", URL_SAFE_NO_PAD.encode(&body));
        assert_answered(&get(&proxy, flag, &unpadded).await, &up, version);
    }
    // Padding is accepted too: a 35-byte query needs one `=`.
    let (_, body) = query_bytes("padded.example.");
    assert_eq!(body.len() % 3, 2);
    let padded = format!("dns={}=", URL_SAFE_NO_PAD.encode(&body));
    assert_answered(&get(&proxy, "--http2", &padded).await, &up, "2");
    let logged = proxy
        .proxy
        .wait_for_log("transport=", Duration::from_secs(5))
        .await;
    assert!(
        logged.contains("https"),
        "the query log does not name the transport: {logged}"
    );
    let samples = scrape(proxy.proxy.metrics_address().await).await;
    let answered = value(
        &samples,
        r#"dns_proxy_queries_total{transport="https",rcode="NOERROR"}"#,
    );
    assert_eq!(answered, 5.0);

    if require_tool("dig") {
        for mode in ["+https", "+https-get"] {
            let args = [
                format!("@{}", proxy.https.ip()),
                "-p".into(),
                proxy.https.port().to_string(),
                mode.into(),
                format!("+tls-ca={}", proxy.files.ca_file.display()),
                format!("+tls-hostname={SERVER_NAME}"),
                "+time=3".into(),
                "+tries=1".into(),
                "www.example.org".into(),
                "A".into(),
            ];
            let out = run("dig", &args).await;
            assert!(
                out.success,
                "dig {mode} failed:\n{}{}",
                out.stdout, out.stderr
            );
            assert_dig_answer(&out.stdout, "www.example.org.", &up.answer().to_string());
        }
    }
    proxy.proxy.assert_running();
}

/// dnsperf with `-m mode` at `port`: 400 queries (200 names twice), 20 outstanding on each
/// of 2 connections; its report.
async fn dnsperf(proxy: &EncryptedProxy, mode: &str, port: u16) -> String {
    let data = proxy.files.dir.path().join(format!("dnsperf-{mode}.txt"));
    let names: String = (0..200).map(|i| format!("perf{i}.example. A\n")).collect();
    std::fs::write(&data, names.repeat(2)).expect("write the dnsperf data file");
    let uri = format!("doh-uri=https://127.0.0.1:{port}/dns-query");
    let mut args: Vec<String> = [
        "-m",
        mode,
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        "2",
        "-q",
        "20",
        "-n",
        "1",
        "-l",
        "10",
        "-t",
        "3",
        "-d",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.push(data.display().to_string());
    if mode == "doh" {
        args.extend(["-O".to_string(), uri]);
    }
    let out = run("dnsperf", &args).await;
    assert!(
        out.success,
        "dnsperf -m {mode} failed:\n{}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsperf_gets_every_answer_over_tls_and_https() {
    if !require_tool("dnsperf") {
        return;
    }
    let (up, proxy) = start(|c| c).await;
    // dnsperf reads one TLS record at a time and takes one answer from each: every answer
    // must come in a record of its own, even when many are ready at once.
    for (mode, port) in [("dot", proxy.tls.port()), ("doh", proxy.https.port())] {
        let report = dnsperf(&proxy, mode, port).await;
        let completed = report
            .lines()
            .find_map(|line| line.trim().strip_prefix("Queries completed:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|count| count.parse::<u32>().ok());
        assert_eq!(completed, Some(400), "dnsperf -m {mode}:\n{report}");
        assert!(
            report.contains("NOERROR 400"),
            "dnsperf -m {mode}:\n{report}"
        );
    }
    assert!(up.queries() >= 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_resolves_a_name_through_the_daemon() {
    if !require_tool("curl") {
        return;
    }
    // The name resolves to 127.0.0.1, where a small HTTP server answers.
    let up = FakeUpstream::start_answering(std::net::Ipv4Addr::LOCALHOST).await;
    let proxy = EncryptedProxy::start(ProxyConfig::new(up.spec())).await;
    let web = tokio::net::TcpListener::from_std({
        let listener = loopback_listener();
        listener.set_nonblocking(true).unwrap();
        listener
    })
    .unwrap();
    let port = web.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut stream, _) = web.accept().await.expect("accept");
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nhello\n")
            .await;
    });
    let args = [
        "--silent".to_string(),
        "--show-error".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        proxy.files.ca_file.display().to_string(),
        "--doh-url".into(),
        format!("https://127.0.0.1:{}/dns-query", proxy.https.port()),
        format!("http://www.resolved.example:{port}/"),
    ];
    let out = run("curl", &args).await;
    assert!(out.success, "curl --doh-url failed: {}", out.stderr);
    assert_eq!(out.stdout, "hello\n");
    within(Duration::from_secs(5), "web server", server)
        .await
        .unwrap();
    assert!(up.queries() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_query_get_their_status_codes() {
    if !require_tool("curl") {
        return;
    }
    let (up, proxy) = start(|c| c).await;
    let (_, query) = query_bytes("malformed.example.");
    let encoded = URL_SAFE_NO_PAD.encode(&query);
    for version in ["--http2", "--http1.1"] {
        let cases: Vec<(u16, Fetched)> = vec![
            (
                404,
                curl(
                    &proxy,
                    &proxy.url(&format!("/other?dns={encoded}")),
                    &[version],
                )
                .await,
            ),
            (404, curl(&proxy, &proxy.url("/"), &[version]).await),
            (
                405,
                curl(
                    &proxy,
                    &proxy.url(&format!("/dns-query?dns={encoded}")),
                    &[version, "-X", "PUT"],
                )
                .await,
            ),
            (400, get(&proxy, version, "name=example.com").await),
            (400, get(&proxy, version, "dns=not+base64url/").await),
            (400, get(&proxy, version, "dns=AAAA").await),
            (
                415,
                curl(
                    &proxy,
                    &proxy.url("/dns-query"),
                    &[version, "--data-binary", "x=1"],
                )
                .await,
            ),
            (400, post(&proxy, version, b"short", &[]).await),
            (413, post(&proxy, version, &vec![0u8; 70_000], &[]).await),
        ];
        for (status, fetched) in cases {
            assert_eq!(fetched.status, status, "{version}: {fetched:?}");
            assert_eq!(
                fetched.header("cache-control").as_deref(),
                Some("no-store"),
                "{fetched:?}"
            );
            if status == 405 {
                assert_eq!(
                    fetched.header("allow").as_deref(),
                    Some("get, post"),
                    "the head is lower-cased"
                );
            }
        }
    }
    assert_eq!(
        up.queries(),
        0,
        "a request without a query reached the upstream"
    );
    // The daemon carries on.
    let (_, body) = query_bytes("after.example.");
    assert_answered(&post(&proxy, "--http2", &body, &[]).await, &up, "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_and_handshakes_are_closed_while_others_are_served() {
    if !require_tool("curl") {
        return;
    }
    let (up, proxy) = start(|c| c).await;
    // Connections from the client's own address: TLS handshakes that never finish, and
    // HTTP/1.1 request heads that never finish after a complete handshake.
    let mut stalled = Vec::new();
    for _ in 0..40 {
        let mut stream = TcpStream::connect(proxy.https).await.expect("connect");
        let _ = stream.write_all(&[0x16, 0x03, 0x01]).await;
        stalled.push(stream);
    }
    let http11 = client_config(ca_pem(), &[b"http/1.1"]);
    let mut slow = Vec::new();
    for _ in 0..10 {
        let mut client = DotClient::connect_with(proxy.https, http11.clone(), None)
            .await
            .expect("TLS connection to the DNS-over-HTTPS port");
        client
            .write_raw(
                b"GET /dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB HTTP/1.1\r\nHost",
            )
            .await;
        slow.push(client);
    }
    let (_, body) = query_bytes("among-slow.example.");
    assert_answered(&post(&proxy, "--http1.1", &body, &[]).await, &up, "1.1");
    assert_answered(&post(&proxy, "--http2", &body, &[]).await, &up, "2");
    // The slow heads are closed after the 5 s head timeout, with no answer; the stalled
    // handshakes after their 5 s deadline.
    for (i, client) in slow.iter_mut().enumerate() {
        let received = client.read_to_close(Duration::from_secs(10)).await;
        let received = received.unwrap_or_else(|| panic!("slow request {i} still open"));
        let text = String::from_utf8_lossy(&received);
        assert!(
            !text.contains(" 200 "),
            "a half request was answered: {text}"
        );
    }
    for (i, stream) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "stalled handshake {i} still open"
        );
    }
    proxy.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_rate_limit_apply_to_dns_over_https() {
    if !require_tool("curl") {
        return;
    }
    let (_, body) = query_bytes("admission.example.");

    // Outside allow: a REFUSED answer; from 127.0.0.2, inside, answered.
    let (up, proxy) = start(|c| c.extra(r#"allow = ["127.0.0.2"]"#)).await;
    let refused = post(&proxy, "--http2", &body, &[]).await;
    assert_eq!(refused.status, 200, "{refused:?}");
    assert_eq!(
        decode(&refused.body).metadata.response_code,
        ResponseCode::Refused
    );
    assert_eq!(refused.header("cache-control").as_deref(), Some("no-store"));
    let inside = post(&proxy, "--http2", &body, &["--interface", "127.0.0.2"]).await;
    assert_answered(&inside, &up, "2");
    assert_eq!(up.queries(), 1);
    drop(proxy);

    // deny_action = "drop": no response at all.
    let (up, proxy) = start(|c| {
        c.extra(r#"allow = ["127.0.0.2"]"#)
            .extra(r#"deny_action = "drop""#)
    })
    .await;
    let dropped = post(&proxy, "--http2", &body, &[]).await;
    assert_eq!(dropped.status, 0, "{dropped:?}");
    assert_eq!(up.queries(), 0);
    drop(proxy);

    // rate_limit: 20 requests on one connection, REFUSED beyond the bucket's 5.
    let (_, proxy) = start(|c| {
        c.extra("rate_limit = 5")
            .extra(r#"rate_limit_action = "refuse""#)
    })
    .await;
    let rcodes = many_gets(&proxy, 20).await;
    let refused = rcodes
        .iter()
        .filter(|r| **r == Some(ResponseCode::Refused))
        .count();
    assert_eq!(rcodes.len(), 20);
    assert!(
        (8..=15).contains(&refused),
        "{refused} REFUSED of 20: {rcodes:?}"
    );
    drop(proxy);

    // With the default action the connection is dropped: some requests get nothing.
    let (_, proxy) = start(|c| c.extra("rate_limit = 5")).await;
    let rcodes = many_gets(&proxy, 20).await;
    let answered = rcodes.iter().filter(|r| r.is_some()).count();
    assert!(
        (1..20).contains(&answered),
        "{answered} of 20 answered: {rcodes:?}"
    );
}

/// `count` GETs for distinct names in one curl run (one connection, one after another); the
/// response code of each answer, `None` for a request that got no DNS answer.
async fn many_gets(proxy: &EncryptedProxy, count: usize) -> Vec<Option<ResponseCode>> {
    let dir = proxy.files.dir.path();
    let mut args: Vec<String> = vec![
        "--silent".into(),
        "--max-time".into(),
        "20".into(),
        "--http2".into(),
        "--cacert".into(),
        proxy.files.ca_file.display().to_string(),
        "--resolve".into(),
        proxy.resolve(),
    ];
    let mut files = Vec::new();
    for i in 0..count {
        let (_, body) = query_bytes(&format!("many{i}.example."));
        let file = dir.join(format!("answer-{}-{i}", crate::support::client::next_id()));
        args.push(proxy.url(&format!("/dns-query?dns={}", URL_SAFE_NO_PAD.encode(&body))));
        args.push("--output".into());
        args.push(file.display().to_string());
        files.push(file);
    }
    run("curl", &args).await;
    files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).ok()?;
            Message::from_vec(&bytes)
                .ok()
                .map(|m| m.metadata.response_code)
        })
        .collect()
}
