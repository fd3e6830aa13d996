//! Signals: SIGHUP reloads the config (RELOADING=1 then READY=1; the listening sockets stay; an
//! invalid new config is refused with a logged error and the running config stays); SIGTERM lets
//! in-flight queries finish, sends STOPPING=1 and exits with status 0.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::assert_serves;
use crate::support::client::{assert_a, tcp_query, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::FakeUpstream;

const T: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_switches_upstream_and_keeps_running_config_when_new_one_is_invalid() {
    let first = FakeUpstream::start().await;
    let second = FakeUpstream::start_answering(Ipv4Addr::new(192, 0, 2, 2)).await;
    let mut proxy = Proxy::start(&ProxyConfig::new(first.spec())).await;
    assert_serves(proxy.udp4(), proxy.tcp4(), "one.example.", first.answer()).await;

    // Reload onto the second upstream.
    let second_config = ProxyConfig::new(second.spec()).to_toml();
    proxy.write_config(&second_config);
    proxy.signal("HUP");
    proxy.wait_for_notify("RELOADING=1", T).await;
    proxy.wait_for_notify("READY=1", T).await;
    // Same sockets, new upstream.
    assert_serves(proxy.udp4(), proxy.tcp4(), "two.example.", second.answer()).await;
    assert_serves(proxy.udp6(), proxy.tcp6(), "two6.example.", second.answer()).await;
    let answered_by_first = first.queries();

    // An invalid config: refused, logged, the running one stays.
    proxy.write_config(&format!("bogus_key = 1\n{second_config}"));
    let mark = proxy.log_mark();
    proxy.signal("HUP");
    let line = proxy.wait_for_log_after(mark, "bogus_key", T).await;
    eprintln!("reload error logged: {line}");
    // Every SIGHUP is answered with RELOADING=1 then READY=1, or systemd (Type=notify-reload)
    // would wait for the reload to end.
    proxy.wait_for_notify("RELOADING=1", T).await;
    proxy.wait_for_notify("READY=1", T).await;
    proxy.assert_running();
    assert_serves(
        proxy.udp4(),
        proxy.tcp4(),
        "three.example.",
        second.answer(),
    )
    .await;
    assert_serves(
        proxy.udp6(),
        proxy.tcp6(),
        "three6.example.",
        second.answer(),
    )
    .await;
    assert_eq!(
        first.queries(),
        answered_by_first,
        "the old upstream was used again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_queries_finish_then_exits_zero() {
    let up = FakeUpstream::start().await;
    let mut proxy = Proxy::start(&ProxyConfig::new(up.spec())).await;
    let (udp, tcp) = (proxy.udp4(), proxy.tcp4());
    let before = up.queries();
    let in_udp = tokio::spawn(async move {
        udp_query(udp, "slow-300.example.", RecordType::A, None, false).await
    });
    let in_tcp = tokio::spawn(async move {
        tcp_query(tcp, "slow-300.example.net.", RecordType::A, None, false).await
    });
    // Both queries are at the upstream: they are in flight.
    up.wait_queries(before + 2, T).await;
    proxy.signal("TERM");

    let resp = tokio::time::timeout(T, in_udp)
        .await
        .expect("UDP answer after SIGTERM")
        .expect("UDP query task");
    assert_a(&resp, up.answer());
    let resp = tokio::time::timeout(T, in_tcp)
        .await
        .expect("TCP answer after SIGTERM")
        .expect("TCP query task");
    assert_a(&resp, up.answer());

    proxy.wait_for_notify("STOPPING=1", T).await;
    let status = proxy.wait_exit(T).await;
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
}
