//! An upstream that leaves Nagle's algorithm on (unbound before 1.22.1, among others) holds back
//! a small write while an earlier small one is unacknowledged. If the proxy delayed its ACKs
//! (Linux does, by 40 ms at least, or until it next sends), every answer would wait for that
//! timer or for the next query; the proxy acknowledges at once, so light load is answered at
//! once.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::support::client::{UdpClient, assert_a, make_query};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, UpstreamOptions};
use crate::support::within;

/// Queries sent one after another, each only once the previous one is answered.
const QUERIES: usize = 21;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_from_a_nagle_upstream_do_not_wait_for_a_delayed_ack() {
    let up = FakeUpstream::start_with(UpstreamOptions {
        nagle: true,
        ..UpstreamOptions::default()
    })
    .await;
    let proxy = Proxy::start(&ProxyConfig::new(up.spec())).await;
    let client = UdpClient::new(proxy.udp4()).await;
    let mut took = Vec::with_capacity(QUERIES);
    for i in 0..QUERIES {
        let query = make_query(&format!("q{i}.light.example."), RecordType::A, None, false);
        let sent = Instant::now();
        let (answer, _) = within(Duration::from_secs(5), "answer", client.exchange(&query)).await;
        took.push(sent.elapsed());
        assert_a(&answer, up.answer());
    }
    assert_eq!(up.connections(), 1, "every query on one connection");
    took.sort();
    // A held answer takes the delayed-ACK timer, 40 ms or more, every time; an answer that is
    // not held takes well under a millisecond. The median leaves room for a busy machine.
    let median = took[QUERIES / 2];
    assert!(
        median < Duration::from_millis(20),
        "answers waited for the proxy's delayed ACK: median {median:?}, all {took:?}"
    );
}
