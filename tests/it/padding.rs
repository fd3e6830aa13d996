//! What the upstream receives: queries padded with the EDNS(0) padding option to a multiple of
//! 128 bytes (RFC 7830, RFC 8467), and the client's DO bit kept as the client set it.

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use hickory_proto::rr::rdata::opt::EdnsCode;

use crate::support::client::{assert_a, tcp_query, udp_query};
use crate::support::upstream::FakeUpstream;
use crate::support::upstream_and_proxy;

/// The last query the upstream received, checked for padding; returned decoded.
fn padded_query_at(up: &FakeUpstream, name: &str) -> Message {
    let raw = up.last_query().expect("the upstream received a query");
    let msg = Message::from_vec(&raw).expect("upstream query parses");
    assert_eq!(
        msg.queries[0].name().to_ascii().to_ascii_lowercase(),
        name,
        "not the query sent"
    );
    assert_eq!(
        raw.len() % 128,
        0,
        "query sent upstream is {} bytes, not a multiple of 128",
        raw.len()
    );
    let edns = msg
        .edns
        .as_ref()
        .expect("query sent upstream has no OPT record");
    assert!(
        edns.option(EdnsCode::Padding).is_some(),
        "query sent upstream has no padding option (code 12): {msg}"
    );
    msg
}

fn do_bit(msg: &Message) -> bool {
    msg.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_sent_upstream_are_padded_to_multiples_of_128_bytes() {
    let (up, proxy) = upstream_and_proxy().await;
    let cases: [(&str, Option<u16>); 4] = [
        ("short.example.", None),
        ("short-edns.example.", Some(1232)),
        (
            "a-rather-long-label-to-cross-one-block.and-another-one-to-be-sure.example.com.",
            Some(4096),
        ),
        (
            "a-rather-long-label-to-cross-one-block.and-another-one-to-be-sure.example.org.",
            None,
        ),
    ];
    for (name, edns) in cases {
        let resp = udp_query(proxy.udp4(), name, RecordType::A, edns, false).await;
        assert_a(&resp, up.answer());
        padded_query_at(&up, name);
        let resp = tcp_query(proxy.tcp4(), name, RecordType::A, edns, false).await;
        assert_a(&resp, up.answer());
        padded_query_at(&up, name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_do_bit_is_kept_upstream() {
    let (up, proxy) = upstream_and_proxy().await;
    let resp = udp_query(proxy.udp4(), "do.example.", RecordType::A, Some(1232), true).await;
    assert_a(&resp, up.answer());
    assert!(
        do_bit(&padded_query_at(&up, "do.example.")),
        "DO bit lost upstream"
    );

    let resp = tcp_query(
        proxy.tcp4(),
        "do-tcp.example.",
        RecordType::A,
        Some(1232),
        true,
    )
    .await;
    assert_a(&resp, up.answer());
    assert!(
        do_bit(&padded_query_at(&up, "do-tcp.example.")),
        "DO bit lost upstream"
    );

    let resp = udp_query(
        proxy.udp4(),
        "nodo.example.",
        RecordType::A,
        Some(1232),
        false,
    )
    .await;
    assert_a(&resp, up.answer());
    assert!(
        !do_bit(&padded_query_at(&up, "nodo.example.")),
        "DO bit set upstream"
    );

    let resp = udp_query(proxy.udp4(), "noedns.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());
    assert!(
        !do_bit(&padded_query_at(&up, "noedns.example.")),
        "DO bit set upstream"
    );
}
