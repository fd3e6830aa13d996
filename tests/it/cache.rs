//! The answer cache seen from a client: repeated questions stay local with TTLs counted down,
//! identical questions in flight go upstream once, DO is kept apart, and an expired answer is
//! served stale when the upstream is gone.

use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::client::{UdpClient, assert_a, assert_servfail, make_query, udp_query};
use crate::support::upstream_and_proxy_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_questions_are_answered_from_the_cache_with_ttls_counted_down() {
    let (up, proxy) = upstream_and_proxy_with(|c| c).await;
    let first = udp_query(
        proxy.udp4(),
        "cached.example.com.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&first, up.answer());
    assert_eq!(first.answers[0].ttl, 60);
    for _ in 0..20 {
        let again = udp_query(
            proxy.udp4(),
            "CACHED.example.com.",
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_a(&again, up.answer());
    }
    assert_eq!(
        up.queries(),
        1,
        "upstream queries for 21 identical questions"
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = udp_query(
        proxy.udp4(),
        "cached.example.com.",
        RecordType::A,
        None,
        false,
    )
    .await;
    let ttl = later.answers[0].ttl;
    assert!(
        (57..=58).contains(&ttl),
        "TTL after 2.1 s in the cache: {ttl}"
    );
    assert_eq!(up.queries(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_questions_in_flight_go_upstream_once() {
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra("cache = false")).await;
    // The upstream takes 300 ms over names starting with `slow-300`: all 50 arrive meanwhile.
    let mut clients = Vec::new();
    for _ in 0..50 {
        let client = UdpClient::new(proxy.udp4()).await;
        let query = make_query("slow-300.coalesce.example.", RecordType::A, None, false);
        client.send(&query).await;
        clients.push((client, query));
    }
    for (client, query) in &clients {
        let (answer, _) = client.recv().await;
        assert_eq!(answer.metadata.id, query.metadata.id);
        assert_a(&answer, up.answer());
    }
    assert_eq!(
        up.queries(),
        1,
        "upstream queries for 50 identical questions in flight (cache off)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnssec_ok_queries_do_not_share_answers_with_plain_ones() {
    let (up, proxy) = upstream_and_proxy_with(|c| c).await;
    let plain = udp_query(
        proxy.udp4(),
        "do.example.com.",
        RecordType::A,
        Some(1232),
        false,
    )
    .await;
    assert_a(&plain, up.answer());
    let signed = udp_query(
        proxy.udp4(),
        "do.example.com.",
        RecordType::A,
        Some(1232),
        true,
    )
    .await;
    assert_a(&signed, up.answer());
    assert!(signed.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
    assert_eq!(up.queries(), 2, "a DO=1 query must reach the upstream");
    udp_query(
        proxy.udp4(),
        "do.example.com.",
        RecordType::A,
        Some(1232),
        true,
    )
    .await;
    assert_eq!(up.queries(), 2, "and is then cached apart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_answer_is_served_stale_while_the_upstream_is_down() {
    let (mut up, proxy) =
        upstream_and_proxy_with(|c| c.timeout("1s").extra("cache_max_ttl = \"1s\"")).await;
    let fresh = udp_query(
        proxy.udp4(),
        "stale.example.com.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&fresh, up.answer());
    assert_eq!(
        fresh.answers[0].ttl, 1,
        "cache_max_ttl applies to the answer"
    );
    up.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let started = std::time::Instant::now();
    let stale = udp_query(
        proxy.udp4(),
        "stale.example.com.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&stale, up.answer());
    assert_eq!(
        stale.answers[0].ttl, 1,
        "TTL of a stale answer: at most 30, here the clamped 1"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "stale within the timeout"
    );
    let never_seen = udp_query(proxy.udp4(), "new.example.com.", RecordType::A, None, false).await;
    assert_servfail(&never_seen);

    // Back within a second of the upstream's return (its backoff is at most 1 s).
    up.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let before = up.queries();
        udp_query(
            proxy.udp4(),
            "stale.example.com.",
            RecordType::A,
            None,
            false,
        )
        .await;
        if up.queries() > before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never went upstream again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_serve_stale_an_expired_answer_is_not_served() {
    let (mut up, proxy) = upstream_and_proxy_with(|c| {
        c.timeout("1s")
            .extra("cache_max_ttl = \"1s\"")
            .extra("cache_serve_stale = \"0s\"")
    })
    .await;
    let fresh = udp_query(
        proxy.udp4(),
        "stale.example.com.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&fresh, up.answer());
    up.stop().await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let failed = udp_query(
        proxy.udp4(),
        "stale.example.com.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_servfail(&failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_cache_off_every_question_goes_upstream() {
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra("cache = false")).await;
    for _ in 0..5 {
        let answer = udp_query(
            proxy.udp4(),
            "nocache.example.com.",
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_a(&answer, up.answer());
    }
    assert_eq!(up.queries(), 5);
}

/// Cache hits arriving together are received and answered in batches: every one of many
/// clients sending at once gets its own answer, with its own id, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_cache_hits_from_many_clients_is_answered_each_to_its_sender() {
    let (up, proxy) = upstream_and_proxy_with(|c| c).await;
    let name = "burst.example.com.";
    assert_a(
        &udp_query(proxy.udp4(), name, RecordType::A, None, false).await,
        up.answer(),
    );
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(UdpClient::new(proxy.udp4()).await);
    }
    let mut queries = Vec::new();
    for client in &clients {
        let query = make_query(name, RecordType::A, None, false);
        client.send(&query).await;
        queries.push(query);
    }
    for (client, query) in clients.iter().zip(&queries) {
        let (answer, _) = client.recv().await;
        assert_eq!(
            answer.metadata.id, query.metadata.id,
            "answer to another client"
        );
        assert_a(&answer, up.answer());
        if let Some(extra) = client.recv_raw(Duration::from_millis(20)).await {
            panic!("a second datagram for one query: {extra:02x?}");
        }
    }
    assert_eq!(up.queries(), 1, "a cache hit went upstream");
}
