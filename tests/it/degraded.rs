//! Degraded start: with sockets from systemd, a configuration error or a trust store that
//! yields no certificate does not stop the daemon. It reports READY, answers the built-in local
//! zones, SERVFAILs every other name without asking any upstream, says why in one log line and
//! in STATUS, and a reload once the problem is fixed puts the upstreams in force. Without
//! socket activation the same problems still exit 78.

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::rr::RecordType;

use crate::support::assert_serves;
use crate::support::client::{assert_a, assert_servfail, tcp_query, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig, run_binary};
use crate::support::upstream::{FakeUpstream, open_temp_dir, write_file};

const T: Duration = Duration::from_secs(5);

/// The STATUS= text sent with the first READY=1 from notification `mark` on. Both come in one
/// message, which the harness splits into lines as it arrives, so the STATUS line may trail.
async fn status_with_ready(proxy: &Proxy, mark: usize) -> String {
    for _ in 0..50 {
        let status = proxy.notifications()[mark..]
            .iter()
            .skip_while(|line| *line != "READY=1")
            .find_map(|line| line.strip_prefix("STATUS="))
            .map(str::to_string);
        if let Some(status) = status {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no STATUS= with READY=1: {:?}", proxy.notifications());
}

/// Sends SIGHUP and returns the STATUS= text the reload ends with.
async fn reload(proxy: &mut Proxy) -> String {
    let mark = proxy.notifications().len();
    proxy.signal("HUP");
    proxy.wait_for_notify("RELOADING=1", T).await;
    proxy.wait_for_notify("READY=1", T).await;
    status_with_ready(proxy, mark).await
}

/// Local zones answered over UDP and TCP; a name to forward gets SERVFAIL; `up` is not asked.
async fn assert_local_only(proxy: &Proxy, up: &FakeUpstream) {
    let resp = udp_query(proxy.udp4(), "localhost.", RecordType::A, None, false).await;
    assert_a(&resp, Ipv4Addr::LOCALHOST);
    let resp = tcp_query(proxy.tcp6(), "db.localhost.", RecordType::A, None, false).await;
    assert_a(&resp, Ipv4Addr::LOCALHOST);
    let resp = udp_query(proxy.udp4(), "www.example.com.", RecordType::A, None, false).await;
    assert_servfail(&resp);
    let resp = tcp_query(proxy.tcp4(), "www.example.org.", RecordType::A, None, false).await;
    assert_servfail(&resp);
    assert_eq!(up.queries(), 0, "a degraded daemon asked the upstream");
}

/// Log lines that report the degraded start, once the first has arrived (stderr is read
/// apart from the notify socket, so it may trail READY=1).
async fn degraded_lines(proxy: &Proxy) -> Vec<String> {
    proxy.wait_for_log("degraded:", T).await;
    proxy
        .log_lines()
        .into_iter()
        .filter(|line| line.contains("degraded:"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_config_at_activated_start_serves_local_zones_until_a_reload_fixes_it() {
    let up = FakeUpstream::start().await;
    let good = ProxyConfig::new(up.spec()).to_toml();
    let mut proxy = Proxy::builder_toml(&format!("timeout = \"soon\"\n{good}"))
        .start()
        .await;

    let status = status_with_ready(&proxy, 0).await;
    assert!(
        status.starts_with("degraded") && status.contains("timeout"),
        "STATUS does not say what is wrong: {status:?}"
    );
    let lines = degraded_lines(&proxy).await;
    assert_eq!(lines.len(), 1, "one log line expected: {lines:?}");
    assert!(lines[0].contains("timeout"), "{lines:?}");
    assert_local_only(&proxy, &up).await;
    proxy.assert_running();

    // A reload of a still broken file keeps it degraded, saying why.
    proxy.write_config(&format!("bogus_key = 1\n{good}"));
    let status = reload(&mut proxy).await;
    assert!(
        status.starts_with("degraded") && status.contains("bogus_key"),
        "{status:?}"
    );
    assert_local_only(&proxy, &up).await;

    proxy.write_config(&good);
    let status = reload(&mut proxy).await;
    assert!(!status.contains("degraded"), "{status:?}");
    assert!(status.contains("upstreams: "), "{status:?}");
    assert_serves(proxy.udp4(), proxy.tcp4(), "one.example.", up.answer()).await;
    let resp = udp_query(proxy.udp6(), "localhost.", RecordType::A, None, false).await;
    assert_a(&resp, Ipv4Addr::LOCALHOST);
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_trust_store_at_activated_start_serves_local_zones_and_says_why() {
    let up = FakeUpstream::start().await;
    // The upstream validated against the system store, which holds nothing.
    let mut system_store = up.spec();
    system_store.ca_file = None;
    let store = open_temp_dir();
    let empty_file = store.path().join("ca-certificates.crt");
    write_file(&empty_file, "", 0o644);
    let mut proxy = Proxy::builder(&ProxyConfig::new(system_store))
        .env("SSL_CERT_FILE", empty_file.to_str().expect("path"))
        .env("SSL_CERT_DIR", store.path().to_str().expect("path"))
        .start()
        .await;

    let status = status_with_ready(&proxy, 0).await;
    assert!(
        status.starts_with("degraded") && status.contains("No CA certificates"),
        "STATUS does not say what is wrong: {status:?}"
    );
    assert_eq!(
        degraded_lines(&proxy).await.len(),
        1,
        "{:?}",
        proxy.log_lines()
    );
    assert_local_only(&proxy, &up).await;

    // Fixed (here: the upstream's own CA configured); a reload is all it takes.
    proxy.write_config(&ProxyConfig::new(up.spec()).to_toml());
    let status = reload(&mut proxy).await;
    assert!(!status.contains("degraded"), "{status:?}");
    assert_serves(proxy.udp4(), proxy.tcp4(), "one.example.", up.answer()).await;
    proxy.assert_running();
}

/// Started by hand (no sockets passed) nobody waits on our sockets yet: exit 78 and say why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_trust_store_without_activation_exits_78() {
    let store = open_temp_dir();
    let empty_file = store.path().join("ca-certificates.crt");
    write_file(&empty_file, "", 0o644);
    let config = store.path().join("dns-proxy.toml");
    write_file(&config, "", 0o644);
    let out = run_binary(
        &[
            "--config",
            config.to_str().expect("path"),
            "--listen",
            "127.0.0.1:0",
            "--log",
            "stderr",
        ],
        &[
            ("SSL_CERT_FILE", empty_file.to_str().expect("path")),
            ("SSL_CERT_DIR", store.path().to_str().expect("path")),
        ],
    )
    .await;
    assert_eq!(out.code(), Some(78), "{out}");
    assert!(out.stderr.contains("No CA certificates"), "{out}");
}
