//! Upstream TLS connections are persistent: a thousand sequential UDP queries, or a hundred TCP
//! clients one after another, all travel over a single upstream TLS connection.

use hickory_proto::rr::RecordType;

use crate::support::client::{TcpClient, UdpClient, assert_a, make_query};
use crate::support::upstream_and_proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sequential_udp_queries_use_one_upstream_tls_connection() {
    let (up, proxy) = upstream_and_proxy().await;
    let client = UdpClient::new(proxy.udp4()).await;
    for i in 0..1000 {
        let q = make_query(&format!("q{i}.example.com."), RecordType::A, None, false);
        let (resp, _) = client.exchange(&q).await;
        assert_a(&resp, up.answer());
    }
    assert_eq!(up.queries(), 1000, "queries seen by the upstream");
    assert_eq!(up.handshakes(), 1, "TLS handshakes for 1000 queries");
    assert!(
        up.connections() <= 1,
        "{} TCP connections",
        up.connections()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn successive_tcp_clients_share_one_upstream_tls_connection() {
    let (up, proxy) = upstream_and_proxy().await;
    for i in 0..100 {
        let server = if i % 2 == 0 {
            proxy.tcp4()
        } else {
            proxy.tcp6()
        };
        let mut conn = TcpClient::connect(server).await;
        let q = make_query(&format!("t{i}.example.com."), RecordType::A, None, false);
        assert_a(&conn.exchange(&q).await, up.answer());
    }
    assert_eq!(up.handshakes(), 1, "TLS handshakes for 100 TCP clients");
    assert!(
        up.connections() <= 1,
        "{} TCP connections",
        up.connections()
    );
}
