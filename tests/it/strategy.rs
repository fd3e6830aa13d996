//! Upstream selection: `failover` keeps to the first upstream, `round-robin` spreads queries
//! evenly, `fastest` moves to the upstream that answers, and hedging answers from the second
//! upstream when the first is slow.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::support::client::{a_records, assert_a, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, Mode, UpstreamOptions};

async fn two_upstreams() -> (FakeUpstream, FakeUpstream) {
    let first = FakeUpstream::start_answering([192, 0, 2, 1].into()).await;
    let second = FakeUpstream::start_with(UpstreamOptions {
        answer: [192, 0, 2, 2].into(),
        ..UpstreamOptions::default()
    })
    .await;
    (first, second)
}

async fn proxy(first: &FakeUpstream, second: &FakeUpstream, extra: &[&str]) -> Proxy {
    let mut config = ProxyConfig::new(first.spec());
    config.upstreams.push(second.spec());
    for line in extra {
        config = config.extra(line);
    }
    Proxy::start(&config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_to_the_first_upstream() {
    let (first, second) = two_upstreams().await;
    let proxy = proxy(&first, &second, &[r#"strategy = "failover""#]).await;
    for i in 0..40 {
        let answer = udp_query(
            proxy.udp4(),
            &format!("f{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_a(&answer, first.answer());
    }
    assert_eq!((first.queries(), second.queries()), (40, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_queries_evenly() {
    let (first, second) = two_upstreams().await;
    let proxy = proxy(&first, &second, &[r#"strategy = "round-robin""#]).await;
    for i in 0..40 {
        udp_query(
            proxy.udp4(),
            &format!("r{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
    }
    assert_eq!((first.queries(), second.queries()), (20, 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastest_moves_away_from_a_slow_upstream() {
    let (first, second) = two_upstreams().await;
    let proxy = proxy(
        &first,
        &second,
        &[r#"strategy = "fastest""#, r#"timeout = "2s""#],
    )
    .await;
    // Both get measured, then the first turns slow: every answer takes its full timeout.
    for i in 0..4 {
        udp_query(
            proxy.udp4(),
            &format!("warm{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
    }
    first.set_mode(Mode::Stall);
    let mut from_second = 0;
    for i in 0..40 {
        let answer = udp_query(
            proxy.udp4(),
            &format!("s{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        from_second += usize::from(a_records(&answer) == vec![second.answer()]);
    }
    assert!(
        from_second >= 38,
        "{from_second} of 40 answered by the responsive upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_answers_from_the_second_upstream_when_the_first_is_slow() {
    let (first, second) = two_upstreams().await;
    let proxy = proxy(
        &first,
        &second,
        &[
            r#"strategy = "failover""#,
            r#"hedge = "50ms""#,
            r#"timeout = "2s""#,
        ],
    )
    .await;
    // The first upstream stops answering; hedging asks the second after 50 ms.
    first.set_mode(Mode::Stall);
    let started = Instant::now();
    let answer = udp_query(proxy.udp4(), "hedge.example.", RecordType::A, None, false).await;
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_a(&answer, second.answer());
    assert_eq!(
        second.queries(),
        1,
        "the query was hedged to the second upstream"
    );

    first.set_mode(Mode::Normal);
    let quick = udp_query(proxy.udp4(), "quick.example.", RecordType::A, None, false).await;
    assert_a(&quick, first.answer());
    assert_eq!(second.queries(), 1, "a fast answer is not hedged");
}
