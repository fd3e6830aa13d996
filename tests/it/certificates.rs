//! Upstream certificate checks: a certificate for another name, an expired one, or one from a CA
//! other than `ca_file` gives SERVFAIL (with a warning naming the cause for the wrong name);
//! `pin_sha256` accepts the pinned key and refuses any other.

use std::time::Duration;

use hickory_proto::rr::RecordType;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

use crate::support::client::{assert_a, assert_servfail, tcp_query, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, UpstreamOptions, spki_pin, write_file};

async fn assert_refused(proxy: &Proxy) {
    for i in 0..2 {
        let resp = udp_query(
            proxy.udp4(),
            &format!("c{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_servfail(&resp);
        let resp = tcp_query(
            proxy.tcp4(),
            &format!("t{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_servfail(&resp);
    }
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_certificate_name_gives_servfail_and_logs_cause() {
    let up = FakeUpstream::start_with(UpstreamOptions {
        cert_name: "other.test".into(),
        ..UpstreamOptions::default()
    })
    .await;
    // The config asks for "dns.test"; the certificate is for "other.test".
    let proxy = Proxy::start(&ProxyConfig::new(up.spec()).timeout("1s")).await;
    assert_refused(&proxy).await;
    let line = proxy
        .wait_for_log("not valid for name", Duration::from_secs(5))
        .await;
    assert!(
        line.to_ascii_lowercase().contains("warn"),
        "not logged as a warning: {line}"
    );
    assert_eq!(
        up.queries(),
        0,
        "a query was sent over an unverified connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificate_gives_servfail() {
    let up = FakeUpstream::start_with(UpstreamOptions {
        expired: true,
        ..UpstreamOptions::default()
    })
    .await;
    let proxy = Proxy::start(&ProxyConfig::new(up.spec()).timeout("1s")).await;
    assert_refused(&proxy).await;
    assert_eq!(
        up.queries(),
        0,
        "a query was sent over an unverified connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_gives_servfail() {
    let up = FakeUpstream::start().await;
    // A CA of its own, which did not issue the upstream's certificate.
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let other_ca = params.self_signed(&KeyPair::generate().unwrap()).unwrap();
    let other_ca_file = up.dir().join("other-ca.pem");
    write_file(&other_ca_file, &other_ca.pem(), 0o644);
    let mut spec = up.spec();
    spec.ca_file = Some(other_ca_file);
    let proxy = Proxy::start(&ProxyConfig::new(spec).timeout("1s")).await;
    assert_refused(&proxy).await;
    assert_eq!(
        up.queries(),
        0,
        "a query was sent over an unverified connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_spki_pin_is_accepted() {
    let up = FakeUpstream::start().await;
    let mut spec = up.spec();
    spec.pin_sha256 = vec![spki_pin(b"some other key"), spki_pin(&up.cert().spki_der)];
    let proxy = Proxy::start(&ProxyConfig::new(spec)).await;
    let resp = udp_query(proxy.udp4(), "pinned.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatching_spki_pin_gives_servfail() {
    let up = FakeUpstream::start().await;
    let mut spec = up.spec();
    spec.pin_sha256 = vec![spki_pin(b"some other key")];
    let proxy = Proxy::start(&ProxyConfig::new(spec).timeout("1s")).await;
    assert_refused(&proxy).await;
    assert_eq!(
        up.queries(),
        0,
        "a query was sent over a connection failing the pin"
    );
}
