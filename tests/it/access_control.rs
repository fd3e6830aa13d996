//! `allow` decides who may use the resolver: others get REFUSED, or nothing with
//! `deny_action = "drop"`, and their queries never reach the upstream. Clients come from
//! different loopback addresses (127.0.0.1 and 127.0.0.2) to be inside or outside `allow`.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use tokio::net::UdpSocket;

use crate::support::client::{
    TcpClient, UdpClient, assert_a, check_response, decode, encode, make_query,
};
use crate::support::upstream_and_proxy_with;

const OTHER_CLIENT: &str = "127.0.0.2:0";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_allow_get_refused_and_never_reach_the_upstream() {
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra(r#"allow = ["127.0.0.2"]"#)).await;

    // 127.0.0.1 is outside: REFUSED over UDP and TCP.
    let query = make_query("denied.example.", RecordType::A, Some(1232), false);
    let (resp, _) = UdpClient::new(proxy.udp4()).await.exchange(&query).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused, "{resp}");
    let mut tcp = TcpClient::connect(proxy.tcp4()).await;
    let resp = tcp.exchange(&query).await;
    assert_eq!(resp.metadata.response_code, ResponseCode::Refused, "{resp}");
    assert_eq!(up.queries(), 0, "a refused query reached the upstream");

    // 127.0.0.2 is inside: answered.
    let socket = UdpSocket::bind(OTHER_CLIENT).await.expect("bind 127.0.0.2");
    socket.connect(proxy.udp4()).await.expect("connect");
    let query = make_query("allowed.example.", RecordType::A, None, false);
    socket.send(&encode(&query)).await.expect("send");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("no answer for the allowed client")
        .expect("recv");
    let resp = decode(&buf[..n]);
    check_response(&query, &resp);
    assert_a(&resp, up.answer());
    assert_eq!(up.queries(), 1);
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_action_drop_answers_nothing_and_closes_tcp() {
    let (up, proxy) = upstream_and_proxy_with(|c| {
        c.extra(r#"allow = ["192.0.2.0/24", "2001:db8::/32"]"#)
            .extra(r#"deny_action = "drop""#)
    })
    .await;

    let query = make_query("dropped.example.", RecordType::A, None, false);
    let udp = UdpClient::new(proxy.udp4()).await;
    udp.send(&query).await;
    assert_eq!(
        udp.recv_raw(Duration::from_millis(500)).await,
        None,
        "a dropped query was answered"
    );

    let mut tcp = TcpClient::connect(proxy.tcp4()).await;
    tcp.send(&query).await;
    tcp.wait_closed(Duration::from_secs(5))
        .await
        .expect("the TCP connection of a client outside allow stays open");
    assert_eq!(up.queries(), 0, "a dropped query reached the upstream");
    proxy.assert_running();
}
