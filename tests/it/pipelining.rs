//! TCP clients: 2-byte length framing, several queries pipelined on one connection and answered
//! as each completes (out of order), and many queries over one connection.

use hickory_proto::rr::RecordType;

use crate::support::client::{TcpClient, assert_a, check_response, make_query};
use crate::support::upstream_and_proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_tcp_queries_are_answered_out_of_order() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut conn = TcpClient::connect(proxy.tcp4()).await;
    let slow = make_query("slow-400.example.com.", RecordType::A, None, false);
    let mut fast = make_query("fast.example.com.", RecordType::A, None, false);
    fast.metadata.id = slow.metadata.id.wrapping_add(1);
    // Both frames in one write: pipelined for sure.
    let mut bytes = Vec::new();
    for q in [&slow, &fast] {
        let body = q.to_vec().unwrap();
        bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&body);
    }
    conn.write_raw(&bytes).await;
    let first = conn.recv().await;
    assert_eq!(
        first.metadata.id, fast.metadata.id,
        "the fast answer did not overtake the slow one: {first}"
    );
    check_response(&fast, &first);
    assert_a(&first, up.answer());
    let second = conn.recv().await;
    check_response(&slow, &second);
    assert_a(&second, up.answer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connection_serves_many_queries() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut conn = TcpClient::connect(proxy.tcp6()).await;
    // Sequential, then 20 pipelined at once.
    for i in 0..20 {
        let q = make_query(&format!("seq{i}.example."), RecordType::A, None, false);
        assert_a(&conn.exchange(&q).await, up.answer());
    }
    let queries: Vec<_> = (0..20u16)
        .map(|i| {
            let mut q = make_query(&format!("pipe{i}.example."), RecordType::A, None, false);
            q.metadata.id = 1000 + i; // distinct ids
            q
        })
        .collect();
    for q in &queries {
        conn.send(q).await;
    }
    let mut pending: Vec<_> = queries.iter().collect();
    while !pending.is_empty() {
        let resp = conn.recv().await;
        let pos = pending
            .iter()
            .position(|q| q.metadata.id == resp.metadata.id)
            .unwrap_or_else(|| panic!("answer to no pending query: {resp}"));
        check_response(pending[pos], &resp);
        assert_a(&resp, up.answer());
        pending.remove(pos);
    }
}
