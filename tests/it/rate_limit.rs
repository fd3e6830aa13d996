//! `rate_limit`: a client over its queries per second gets nothing (or REFUSED), while other
//! clients are served as usual. Clients come from 127.0.0.1 and 127.0.0.2.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::support::client::{TcpClient, UdpClient, assert_a, decode, encode, make_query};
use crate::support::upstream_and_proxy_with;

/// Sends `count` queries for distinct names at once from `socket`; returns the rcodes of the
/// answers that came back within a second.
async fn burst(socket: &UdpSocket, count: usize, tag: &str) -> Vec<ResponseCode> {
    for i in 0..count {
        let query = make_query(&format!("{tag}-{i}.example."), RecordType::A, None, false);
        socket.send(&encode(&query)).await.expect("send");
    }
    let mut rcodes = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
    {
        rcodes.push(decode(&buf[..n]).metadata.response_code);
    }
    rcodes
}

async fn client(address: &str, server: std::net::SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(address).await.expect("bind");
    socket.connect(server).await.expect("connect");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_over_the_rate_gets_nothing_and_others_are_served() {
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra("rate_limit = 20")).await;
    let greedy = client("127.0.0.1:0", proxy.udp4()).await;
    let answered = burst(&greedy, 100, "greedy").await;
    assert!(
        (20..=25).contains(&answered.len()),
        "answers for 100 queries at once with rate_limit 20: {}",
        answered.len()
    );
    assert!(answered.iter().all(|rcode| *rcode == ResponseCode::NoError));

    // Another address has a budget of its own.
    let polite = client("127.0.0.2:0", proxy.udp4()).await;
    let answered = burst(&polite, 5, "polite").await;
    assert_eq!(answered.len(), 5, "a client within its rate lost answers");

    // The greedy one is served again once its bucket refills.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let query = make_query("later.example.", RecordType::A, None, false);
    let (resp, _) = UdpClient::new(proxy.udp4()).await.exchange(&query).await;
    assert_a(&resp, up.answer());
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_action_refuse_answers_refused() {
    let (up, proxy) = upstream_and_proxy_with(|c| {
        c.extra("rate_limit = 10")
            .extra(r#"rate_limit_action = "refuse""#)
    })
    .await;
    let socket = client("127.0.0.1:0", proxy.udp4()).await;
    let answered = burst(&socket, 30, "refused").await;
    assert_eq!(answered.len(), 30, "every query gets an answer");
    let refused = answered
        .iter()
        .filter(|r| **r == ResponseCode::Refused)
        .count();
    assert!((15..=20).contains(&refused), "{refused} REFUSED of 30");
    assert!(up.queries() <= 15, "refused queries reached the upstream");

    // Over TCP too, per query, on a connection that stays open. The bucket has refilled to
    // at most 10 while `burst` waited.
    let mut tcp = TcpClient::connect(proxy.tcp4()).await;
    let mut refused = 0;
    for i in 0..20 {
        let query = make_query(&format!("tcp-{i}.example."), RecordType::A, None, false);
        let resp = tcp.exchange(&query).await;
        refused += usize::from(resp.metadata.response_code == ResponseCode::Refused);
    }
    assert!(
        (8..=12).contains(&refused),
        "{refused} REFUSED of 20 over TCP"
    );
}
