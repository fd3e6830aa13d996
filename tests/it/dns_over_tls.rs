//! DNS over TLS for clients, on a socket passed as `dns-tls`: kdig gets answers (and none when
//! it trusts another CA), one connection carries many pipelined queries answered out of order,
//! clients resume their TLS sessions (1.3 and 1.2), a reload swaps the certificate for new
//! connections (DNS over HTTPS too) while open ones keep working (and a bad key keeps the old
//! pair), a flood of handshakes that never finish does not starve another client, and allow,
//! deny and the rate limit apply as over TCP.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use rustls::pki_types::pem::PemObject as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::metrics::{scrape, value};
use crate::real_clients::assert_dig_answer;
use crate::support::client::{assert_a, make_query};
use crate::support::encrypted::{DotClient, EncryptedProxy, SERVER_NAME, client_config, run};
use crate::support::proxy::ProxyConfig;
use crate::support::upstream::{
    FakeUpstream, ca_pem, issue_server_cert, untrusted_ca_pem, write_file,
};
use crate::support::{closed_within, require_tool, within};

async fn start(adjust: impl FnOnce(ProxyConfig) -> ProxyConfig) -> (FakeUpstream, EncryptedProxy) {
    let up = FakeUpstream::start().await;
    let proxy = EncryptedProxy::start(adjust(ProxyConfig::new(up.spec()))).await;
    (up, proxy)
}

/// `kdig +tls` for `name` A, trusting the CA in `ca_file`.
async fn kdig(
    server: SocketAddr,
    ca_file: &std::path::Path,
    name: &str,
) -> crate::support::encrypted::Ran {
    let args = [
        format!("@{}", server.ip()),
        "-p".to_string(),
        server.port().to_string(),
        "+tls".to_string(),
        format!("+tls-ca={}", ca_file.display()),
        format!("+tls-hostname={SERVER_NAME}"),
        "+time=3".to_string(),
        "+retry=0".to_string(),
        name.to_string(),
        "A".to_string(),
    ];
    run("kdig", &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kdig_is_answered_and_one_connection_carries_many_queries_out_of_order() {
    if !require_tool("kdig") {
        return;
    }
    let (up, proxy) = start(|c| c.extra("log_queries = true").metrics("127.0.0.1:0")).await;
    let out = kdig(proxy.tls, &proxy.files.ca_file, "www.example.com").await;
    assert!(out.success, "kdig failed:\n{}{}", out.stdout, out.stderr);
    assert_dig_answer(&out.stdout, "www.example.com.", &up.answer().to_string());
    let logged = proxy
        .proxy
        .wait_for_log("transport=", Duration::from_secs(5))
        .await;
    assert!(
        logged.contains("tls"),
        "the query log does not name the transport: {logged}"
    );

    let mut client = DotClient::connect(proxy.tls).await;
    assert_eq!(client.alpn().as_deref(), Some(&b"dot"[..]));
    // A slow query first, then 200 more on the same connection without waiting.
    let slow = make_query("slow-500.first.example.", RecordType::A, None, false);
    client.send(&slow).await;
    let mut sent = BTreeSet::from([slow.metadata.id]);
    for i in 0..200 {
        let query = make_query(&format!("q{i}.many.example."), RecordType::A, None, false);
        if sent.insert(query.metadata.id) {
            client.send(&query).await;
        }
    }
    let mut order = Vec::new();
    for _ in 0..sent.len() {
        let answer = client.recv().await;
        assert_a(&answer, up.answer());
        order.push(answer.metadata.id);
    }
    assert_eq!(order.iter().copied().collect::<BTreeSet<_>>(), sent);
    assert_ne!(
        order[0], slow.metadata.id,
        "answers waited for the slow one"
    );
    assert_eq!(*order.last().unwrap(), slow.metadata.id);
    let samples = scrape(proxy.proxy.metrics_address().await).await;
    let answered = value(
        &samples,
        r#"dns_proxy_queries_total{transport="tls",rcode="NOERROR"}"#,
    );
    assert_eq!(answered as usize, 1 + sent.len());
    proxy.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_another_ca_gets_nothing() {
    let (up, proxy) = start(|c| c).await;
    let other = client_config(untrusted_ca_pem(), &[b"dot"]);
    let refused = DotClient::connect_with(proxy.tls, other, None).await;
    assert!(
        refused.is_err(),
        "a client trusting another CA completed the handshake"
    );
    if require_tool("kdig") {
        let ca = proxy.files.dir.path().join("other-ca.pem");
        write_file(&ca, untrusted_ca_pem(), 0o644);
        let out = kdig(proxy.tls, &ca, "www.example.com").await;
        assert!(
            !out.stdout.contains("status: NOERROR"),
            "kdig trusting another CA got an answer:\n{}",
            out.stdout
        );
    }
    assert_eq!(up.queries(), 0);
    // The daemon's own CA still works.
    let mut client = DotClient::connect(proxy.tls).await;
    let answer = client
        .exchange(&make_query("ok.example.", RecordType::A, None, false))
        .await;
    assert_a(&answer, up.answer());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_resume_their_sessions_over_tls_1_3_and_1_2() {
    let (up, proxy) = start(|c| c).await;
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let config = client_config_with_version(version);
        for round in 0..2 {
            let mut client = DotClient::connect_with(proxy.tls, config.clone(), None)
                .await
                .expect("DNS over TLS connection");
            // The answer also carries the session tickets of TLS 1.3 to the client.
            let query = make_query(
                &format!("resume{round}.example."),
                RecordType::A,
                None,
                false,
            );
            assert_a(&client.exchange(&query).await, up.answer());
            assert_eq!(
                client.resumed(),
                round == 1,
                "{version:?}, connection {round}"
            );
        }
    }
}

/// A client trusting the test CA that speaks only `version`, with its own session cache.
fn client_config_with_version(
    version: &'static rustls::SupportedProtocolVersion,
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(ca_pem().as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"dot".to_vec()];
    std::sync::Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_the_certificate_and_a_bad_key_keeps_the_old_one() {
    let (up, mut proxy) = start(|c| c).await;
    let first = proxy.files.cert.cert_der.clone();
    let mut open = DotClient::connect(proxy.tls).await;
    assert_eq!(open.server_certificate(), first);

    proxy.files.renew(2);
    let second = proxy.files.cert.cert_der.clone();
    assert_ne!(first, second);
    proxy.reload("configuration reloaded").await;
    let mut renewed = DotClient::connect(proxy.tls).await;
    assert_eq!(
        renewed.server_certificate(),
        second,
        "a new connection got the old certificate"
    );
    // DNS over HTTPS shows the same certificate from then on.
    let h2 = DotClient::connect_with(proxy.https, client_config(ca_pem(), &[b"h2"]), None)
        .await
        .expect("TLS connection to the DNS-over-HTTPS port");
    assert_eq!(h2.server_certificate(), second);
    // The connection opened before the reload carries on.
    for client in [&mut open, &mut renewed] {
        let answer = client
            .exchange(&make_query(
                "after-reload.example.",
                RecordType::A,
                None,
                false,
            ))
            .await;
        assert_a(&answer, up.answer());
    }

    // A key that is not the certificate's: the reload is refused in one line naming the key
    // file, and the pair in force stays.
    let stranger = issue_server_cert(&[SERVER_NAME], 3);
    proxy
        .files
        .write(&proxy.files.cert.cert_pem, &stranger.key_pem);
    let line = proxy.reload("reload refused").await;
    assert!(
        line.contains(&proxy.files.key_file.display().to_string()),
        "the refusal does not name the key file: {line}"
    );
    let mut after_bad = DotClient::connect(proxy.tls).await;
    assert_eq!(after_bad.server_certificate(), second);
    for client in [&mut open, &mut renewed, &mut after_bad] {
        let answer = client
            .exchange(&make_query(
                "after-bad-key.example.",
                RecordType::A,
                None,
                false,
            ))
            .await;
        assert_a(&answer, up.answer());
    }
    proxy.proxy.assert_running();
}

/// A TCP connection from 127.0.0.1 that sends the first bytes of a TLS record and never the
/// rest of its ClientHello.
async fn stalled_handshake(server: SocketAddr) -> TcpStream {
    let mut stream = within(
        Duration::from_secs(5),
        "connect",
        TcpStream::connect(server),
    )
    .await
    .expect("connect");
    let _ = stream.write_all(&[0x16, 0x03, 0x01]).await;
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_that_never_finish_do_not_starve_another_client() {
    // The default slots: 256 in all, 32 per address; the attacker shares the client's address.
    let (up, proxy) = start(|c| c).await;
    let mut stalled = Vec::new();
    for _ in 0..300 {
        stalled.push(stalled_handshake(proxy.tls).await);
    }
    for i in 0..5 {
        let mut client = within(
            Duration::from_secs(3),
            "a handshake among stalled ones from the same address",
            DotClient::connect(proxy.tls),
        )
        .await;
        let answer = within(
            Duration::from_secs(3),
            "an answer among stalled handshakes",
            client.exchange(&make_query(
                &format!("c{i}.example."),
                RecordType::A,
                None,
                false,
            )),
        )
        .await;
        assert_a(&answer, up.answer());
        stalled.push(stalled_handshake(proxy.tls).await);
    }
    // Every stalled handshake is closed: made room for others, or past its deadline (5 s).
    for (i, stream) in stalled.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(10)).await,
            "stalled handshake {i} still open after its deadline"
        );
    }
    proxy.proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_deny_and_rate_limit_apply_to_dns_over_tls() {
    // Outside allow: REFUSED, and the upstream never asked; inside: answered.
    let (up, proxy) = start(|c| c.extra(r#"allow = ["127.0.0.2"]"#)).await;
    let mut outside = DotClient::connect(proxy.tls).await;
    let answer = outside
        .exchange(&make_query("denied.example.", RecordType::A, None, false))
        .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);
    let config = client_config(ca_pem(), &[b"dot"]);
    let local = Some("127.0.0.2:0".parse().unwrap());
    let mut inside = DotClient::connect_with(proxy.tls, config.clone(), local)
        .await
        .expect("connection from 127.0.0.2");
    let answer = inside
        .exchange(&make_query("allowed.example.", RecordType::A, None, false))
        .await;
    assert_a(&answer, up.answer());
    assert_eq!(up.queries(), 1);
    drop(proxy);

    // deny_action = "drop": closed before any handshake.
    let (up, proxy) = start(|c| {
        c.extra(r#"allow = ["127.0.0.2"]"#)
            .extra(r#"deny_action = "drop""#)
    })
    .await;
    let dropped = DotClient::connect_with(proxy.tls, config.clone(), None).await;
    assert!(
        dropped.is_err(),
        "a client outside allow completed a handshake"
    );
    assert_eq!(up.queries(), 0);
    drop(proxy);

    // The rate limit, per query: refused beyond the bucket's 5, on a connection that stays.
    let (_up, proxy) = start(|c| {
        c.extra("rate_limit = 5")
            .extra(r#"rate_limit_action = "refuse""#)
    })
    .await;
    let mut client = DotClient::connect(proxy.tls).await;
    let queries: Vec<_> = (0..20)
        .map(|i| make_query(&format!("r{i}.example."), RecordType::A, None, false))
        .collect();
    client.send_all(&queries).await;
    let mut refused = 0;
    for _ in &queries {
        refused += usize::from(client.recv().await.metadata.response_code == ResponseCode::Refused);
    }
    assert!((12..=15).contains(&refused), "{refused} REFUSED of 20");
    drop(proxy);

    // With the default action, a query over the limit closes the connection.
    let (_up, proxy) = start(|c| c.extra("rate_limit = 5")).await;
    let mut client = DotClient::connect(proxy.tls).await;
    client.send_all(&queries).await;
    let mut answered = 0;
    while client.try_recv().await.is_some() {
        answered += 1;
    }
    assert!(
        (1..20).contains(&answered),
        "{answered} of 20 answered before closing"
    );
}
