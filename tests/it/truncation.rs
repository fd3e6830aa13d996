//! Large answers (~3 KB of TXT records): over UDP they are truncated (TC=1) to fit the client's
//! payload size, 512 bytes without EDNS or the advertised EDNS size; over TCP they arrive whole.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::client::{UdpClient, make_query, tcp_query, txt_records};
use crate::support::upstream::BIG_TXT_RECORDS;
use crate::support::upstream_and_proxy;

const BIG: &str = "big.example.com.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answer_over_udp_without_edns_is_truncated_within_512_bytes() {
    let (_up, proxy) = upstream_and_proxy().await;
    for server in [proxy.udp4(), proxy.udp6()] {
        assert_truncated(server, None, 512).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answer_over_udp_with_edns_1232_is_truncated_within_1232_bytes() {
    let (_up, proxy) = upstream_and_proxy().await;
    assert_truncated(proxy.udp4(), Some(1232), 1232).await;
}

/// Asks `server` over UDP for the big TXT answer, advertising `edns`, and checks the answer
/// fits in `limit` bytes, has TC set and lacks records.
async fn assert_truncated(server: std::net::SocketAddr, edns: Option<u16>, limit: usize) {
    let query = make_query(BIG, RecordType::TXT, edns, false);
    let (resp, len) = UdpClient::new(server).await.exchange(&query).await;
    assert!(
        len <= limit,
        "{len}-byte UDP answer to a client advertising {edns:?} (limit {limit})"
    );
    assert!(
        resp.metadata.truncation,
        "TC not set on a cut answer: {resp}"
    );
    assert_eq!(resp.metadata.response_code, ResponseCode::NoError, "{resp}");
    assert!(txt_records(&resp).len() < BIG_TXT_RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answer_over_tcp_is_complete() {
    let (_up, proxy) = upstream_and_proxy().await;
    for (server, edns) in [(proxy.tcp4(), None), (proxy.tcp6(), Some(1232))] {
        let resp = tcp_query(server, BIG, RecordType::TXT, edns, false).await;
        assert!(!resp.metadata.truncation, "TC set over TCP: {resp}");
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError, "{resp}");
        let txt = txt_records(&resp);
        assert_eq!(txt.len(), BIG_TXT_RECORDS, "incomplete answer over TCP");
        for (i, t) in txt.iter().enumerate() {
            assert!(t.starts_with(&format!("record-{i:02}-")), "record {i}: {t}");
        }
    }
}
