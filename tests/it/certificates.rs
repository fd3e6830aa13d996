//! Upstream key pinning: `pin_sha256` accepts the pinned key and refuses any other. Certificates
//! for another name, from an untrusted CA, expired or not yet valid are rows of the fault matrix
//! (`fault_matrix.rs`).

use hickory_proto::rr::RecordType;

use crate::support::client::{assert_a, assert_servfail, tcp_query, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, spki_pin};

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
