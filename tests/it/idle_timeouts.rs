//! Idle timeouts: a client TCP connection with nothing outstanding is closed after
//! `tcp_idle_timeout`, one with a query outstanding is kept until answered; an upstream TLS
//! connection idle for `upstream_idle_timeout` is closed (not while a query is outstanding) and
//! the next query opens a new one. A connection that has not completed its first message is
//! closed sooner, after 2 s.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::support::client::{TcpClient, assert_a, make_query, udp_query};
use crate::support::upstream_and_proxy_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_tcp_connection_is_closed_after_tcp_idle_timeout() {
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra("tcp_idle_timeout = \"300ms\"")).await;
    let mut conn = TcpClient::connect(proxy.tcp4()).await;
    let q = make_query("idle.example.", RecordType::A, None, false);
    assert_a(&conn.exchange(&q).await, up.answer());
    let start = Instant::now();
    conn.wait_closed(Duration::from_secs(3))
        .await
        .expect("idle TCP connection closed");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200),
        "closed after {elapsed:?}, tcp_idle_timeout is 300ms"
    );
    assert!(
        elapsed <= Duration::from_millis(1300),
        "closed only after {elapsed:?}, tcp_idle_timeout is 300ms"
    );

    // A connection waiting for an answer is not idle, however long the answer takes.
    let mut conn = TcpClient::connect(proxy.tcp4()).await;
    let slow = make_query("slow-900.example.", RecordType::A, None, false);
    assert_a(&conn.exchange(&slow).await, up.answer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connection_is_closed_after_upstream_idle_timeout() {
    let (up, proxy) =
        upstream_and_proxy_with(|c| c.extra("upstream_idle_timeout = \"300ms\"")).await;
    let resp = udp_query(proxy.udp4(), "one.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());
    assert_eq!(up.handshakes(), 1);
    let start = Instant::now();
    up.wait_until(
        "without open connections",
        |u| u.open_connections() == 0,
        Duration::from_secs(3),
    )
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "upstream connection closed after {:?}, upstream_idle_timeout is 300ms",
        start.elapsed()
    );

    let resp = udp_query(proxy.udp4(), "two.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());
    assert_eq!(
        up.handshakes(),
        2,
        "no new upstream connection after the idle close"
    );
    eprintln!(
        "resumed TLS handshakes: {} of {}",
        up.resumed_handshakes(),
        up.handshakes()
    );

    // An outstanding query keeps the connection: a 900 ms answer still arrives.
    let resp = udp_query(
        proxy.udp4(),
        "slow-900.example.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&resp, up.answer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_without_a_first_message_is_closed_well_before_tcp_idle_timeout() {
    // tcp_idle_timeout stays at its default of 10 s; the first message has 2 s.
    let (_up, proxy) = upstream_and_proxy_with(|c| c).await;
    let mut conn = TcpClient::connect(proxy.tcp4()).await;
    conn.write_raw(&[0]).await;
    let start = Instant::now();
    conn.wait_closed(Duration::from_secs(6))
        .await
        .expect("a connection stalled before its first message is closed");
    let elapsed = start.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed after {elapsed:?}, before its first-message deadline of 2 s"
    );
}
