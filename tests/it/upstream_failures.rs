//! Upstream failures: a stopped or unreachable upstream gives SERVFAIL within the configured
//! `timeout` (+100 ms), and answers resume once it is back, in the same proxy process; an upstream
//! that stalls (before or after the TLS handshake), closes on queries, or answers with a wrong id,
//! a wrong question or garbage gives SERVFAIL, never a wrong answer, and the proxy serves again
//! when the upstream behaves; with two upstreams, the second answers when the first is down.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::client::{
    a_records, assert_a, assert_servfail, make_query, tcp_query, udp_query,
};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, Mode};
use crate::support::upstream_and_proxy_with;

/// The per-query budget configured in these tests.
const TIMEOUT: Duration = Duration::from_millis(500);
/// What the daemon may add to its budget.
const MARGIN: Duration = Duration::from_millis(100);

fn config(up: &FakeUpstream) -> ProxyConfig {
    ProxyConfig::new(up.spec()).timeout("500ms")
}

/// Queries `name` over UDP (`tcp` false) or TCP; asserts SERVFAIL within TIMEOUT + MARGIN.
async fn assert_servfail_in_time(server: SocketAddr, tcp: bool, name: &str) {
    let start = Instant::now();
    let resp = if tcp {
        tcp_query(server, name, RecordType::A, None, false).await
    } else {
        udp_query(server, name, RecordType::A, None, false).await
    };
    let elapsed = start.elapsed();
    assert_servfail(&resp);
    assert!(
        elapsed <= TIMEOUT + MARGIN,
        "SERVFAIL after {elapsed:?}, budget is {TIMEOUT:?} + {MARGIN:?} ({} {name})",
        if tcp { "tcp" } else { "udp" }
    );
}

/// Queries until the answer is `addr` (SERVFAIL meanwhile is fine); panics after 10 s or on any
/// answer other than SERVFAIL or the right one.
async fn assert_recovers(proxy: &Proxy, addr: Ipv4Addr) {
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let name = format!("recover{attempt}.example.");
        let resp: Message = udp_query(proxy.udp4(), &name, RecordType::A, None, false).await;
        if resp.metadata.response_code == ResponseCode::NoError {
            assert_a(&resp, addr);
            break;
        }
        assert_servfail(&resp);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still SERVFAIL 10 s after the upstream came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both transports work now.
    let resp = tcp_query(proxy.tcp4(), "after.example.", RecordType::A, None, false).await;
    assert_a(&resp, addr);
    let resp = udp_query(proxy.udp6(), "after6.example.", RecordType::A, None, false).await;
    assert_a(&resp, addr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_upstream_gives_servfail_within_timeout_and_recovers_after_restart() {
    let (mut up, proxy) = upstream_and_proxy_with(|c| c.timeout("500ms")).await;
    let resp = udp_query(proxy.udp4(), "before.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());

    up.stop().await;
    for i in 0..3 {
        assert_servfail_in_time(proxy.udp4(), false, &format!("down{i}.example.")).await;
        assert_servfail_in_time(proxy.tcp4(), true, &format!("downtcp{i}.example.")).await;
    }
    let pid = proxy.pid;
    up.restart().await;
    assert_recovers(&proxy, up.answer()).await;
    proxy.assert_running();
    assert_eq!(proxy.pid, pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_start_gives_servfail_then_answers_once_it_is_up() {
    let mut up = FakeUpstream::start().await;
    up.stop().await;
    // READY=1 must come even though the upstream cannot be reached yet.
    let proxy = Proxy::start(&config(&up)).await;
    assert_servfail_in_time(proxy.udp4(), false, "early.example.").await;
    assert_servfail_in_time(proxy.tcp6(), true, "early6.example.").await;
    up.restart().await;
    assert_recovers(&proxy, up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_never_completing_tls_handshake_gives_servfail_within_timeout() {
    // A TCP listener nobody accepts from: the kernel completes the TCP handshake, TLS never starts.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let up = FakeUpstream::start().await;
    let mut spec = up.spec();
    spec.address = silent.local_addr().unwrap();
    let proxy = Proxy::start(&ProxyConfig::new(spec).timeout("500ms")).await;
    for i in 0..2 {
        assert_servfail_in_time(proxy.udp4(), false, &format!("hs{i}.example.")).await;
        assert_servfail_in_time(proxy.tcp4(), true, &format!("hstcp{i}.example.")).await;
    }
    proxy.assert_running();
}

/// With the upstream in `mode`: SERVFAIL (never a wrong answer) over UDP and TCP within the
/// budget; then, back to normal, answers again.
async fn misbehaving_upstream_gives_servfail(mode: Mode) {
    let (up, proxy) = upstream_and_proxy_with(|c| c.timeout("500ms")).await;
    // A working connection first, so the misbehaviour hits an established one.
    let resp = udp_query(proxy.udp4(), "warm.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());
    up.set_mode(mode);
    for i in 0..3 {
        assert_servfail_in_time(proxy.udp4(), false, &format!("bad{i}.example.")).await;
        assert_servfail_in_time(proxy.tcp4(), true, &format!("badtcp{i}.example.")).await;
    }
    assert!(up.queries() >= 2, "the upstream was not even asked");
    up.set_mode(Mode::Normal);
    assert_recovers(&proxy, up.answer()).await;
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_upstream_gives_servfail_within_timeout() {
    misbehaving_upstream_gives_servfail(Mode::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_connection_on_query_gives_servfail() {
    misbehaving_upstream_gives_servfail(Mode::CloseOnQuery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answer_with_wrong_id_gives_servfail() {
    misbehaving_upstream_gives_servfail(Mode::WrongId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answer_with_wrong_question_gives_servfail() {
    misbehaving_upstream_gives_servfail(Mode::WrongQuestion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_garbage_answer_gives_servfail() {
    misbehaving_upstream_gives_servfail(Mode::Garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_upstream_answers_when_first_is_down() {
    let mut first = FakeUpstream::start().await;
    first.stop().await;
    let second = FakeUpstream::start_answering(Ipv4Addr::new(192, 0, 2, 2)).await;
    let mut cfg = config(&first);
    cfg.upstreams.push(second.spec());
    let proxy = Proxy::start(&cfg).await;
    for i in 0..3 {
        let start = Instant::now();
        let q = make_query(&format!("fo{i}.example."), RecordType::A, None, false);
        let (resp, _) = crate::support::client::udp_exchange(proxy.udp4(), &q).await;
        assert_eq!(
            a_records(&resp),
            vec![second.answer()],
            "no answer from the second upstream: {resp}"
        );
        assert!(start.elapsed() <= TIMEOUT + MARGIN, "{:?}", start.elapsed());
    }
    let resp = tcp_query(proxy.tcp4(), "fotcp.example.", RecordType::A, None, false).await;
    assert_a(&resp, second.answer());
}
