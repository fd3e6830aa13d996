//! Checks of the harness itself, without the daemon: the fake DoT upstream answers over TLS
//! (in-process rustls client, and `kdig +tls` when installed), pipelines out of order, serves the
//! big TXT answer, switches misbehaviour modes, counts, and stops/restarts on the same port; its
//! fault modes, certificates and half-open connections behave as the fault matrix needs, and it
//! sees plain text and UDP when they come.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::client::{a_records, encode, make_query, txt_records};
use crate::support::upstream::{BIG_TXT_RECORDS, CertKind, FakeUpstream, Mode, ca_pem};
use crate::support::{require_tool, within};

const T: Duration = Duration::from_secs(5);

/// A TLS client trusting the test CA, as the proxy's would.
fn client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let der =
        rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem().as_bytes()).expect("ca pem");
    roots.add(der).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

async fn dot_connect(up: &FakeUpstream) -> TlsStream<TcpStream> {
    let config = client_config();
    let tcp = within(T, "connect", TcpStream::connect(up.addr()))
        .await
        .unwrap();
    within(
        T,
        "handshake",
        TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("dns.test").unwrap(), tcp),
    )
    .await
    .unwrap()
}

async fn send(tls: &mut TlsStream<TcpStream>, msg: &Message) {
    let body = encode(msg);
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    within(T, "write to fake upstream", async {
        tls.write_all(&frame).await.unwrap();
        tls.flush().await.unwrap();
    })
    .await;
}

async fn recv(tls: &mut TlsStream<TcpStream>) -> Vec<u8> {
    within(T, "answer from fake upstream", async {
        let mut len = [0u8; 2];
        tls.read_exact(&mut len).await.unwrap();
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tls.read_exact(&mut body).await.unwrap();
        body
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_upstream_answers_pipelined_out_of_order() {
    let up = FakeUpstream::start().await;
    let mut tls = dot_connect(&up).await;
    let slow = make_query("slow-300.example.", RecordType::A, None, false);
    let fast = make_query("fast.example.", RecordType::A, Some(1232), true);
    send(&mut tls, &slow).await;
    send(&mut tls, &fast).await;
    let first = Message::from_vec(&recv(&mut tls).await).unwrap();
    assert_eq!(first.metadata.id, fast.metadata.id);
    assert_eq!(a_records(&first), vec![up.answer()]);
    assert!(first.edns.as_ref().unwrap().flags().dnssec_ok);
    let second = Message::from_vec(&recv(&mut tls).await).unwrap();
    assert_eq!(second.metadata.id, slow.metadata.id);
    assert_eq!(up.queries(), 2);
    assert_eq!(up.handshakes(), 1);
    assert_eq!(up.connections(), 1);
    assert_eq!(up.last_query().unwrap(), encode(&fast));

    let big = make_query("big.example.", RecordType::TXT, None, false);
    send(&mut tls, &big).await;
    let raw = recv(&mut tls).await;
    assert!(raw.len() > 2500, "big answer is only {} bytes", raw.len());
    let big_resp = Message::from_vec(&raw).unwrap();
    assert_eq!(txt_records(&big_resp).len(), BIG_TXT_RECORDS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_upstream_modes_and_restart() {
    let mut up = FakeUpstream::start().await;
    let mut tls = dot_connect(&up).await;

    up.set_mode(Mode::WrongId);
    let q = make_query("a.example.", RecordType::A, None, false);
    send(&mut tls, &q).await;
    let r = Message::from_vec(&recv(&mut tls).await).unwrap();
    assert_eq!(r.metadata.id, q.metadata.id.wrapping_add(1));

    up.set_mode(Mode::WrongQuestion);
    send(&mut tls, &q).await;
    let r = Message::from_vec(&recv(&mut tls).await).unwrap();
    assert_eq!(r.metadata.id, q.metadata.id);
    assert_ne!(r.queries, q.queries);

    up.set_mode(Mode::Garbage);
    send(&mut tls, &q).await;
    assert!(Message::from_vec(&recv(&mut tls).await).is_err());

    up.set_mode(Mode::Stall);
    send(&mut tls, &q).await;
    let mut b = [0u8; 1];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), tls.read(&mut b))
            .await
            .is_err()
    );

    up.set_mode(Mode::CloseOnQuery);
    send(&mut tls, &q).await;
    let n = within(T, "close", tls.read(&mut b)).await.unwrap_or(0);
    assert_eq!(n, 0);

    up.set_mode(Mode::Normal);
    let addr = up.addr();
    up.stop().await;
    assert!(TcpStream::connect(addr).await.is_err());
    up.restart().await;
    assert_eq!(up.addr(), addr);
    let mut tls = dot_connect(&up).await;
    send(&mut tls, &q).await;
    let r = Message::from_vec(&recv(&mut tls).await).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&r), vec![up.answer()]);
    assert_eq!(up.handshakes(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_upstream_answers_kdig() {
    if !require_tool("kdig") {
        return;
    }
    let up = FakeUpstream::start().await;
    let started = Instant::now();
    let out = within(
        Duration::from_secs(10),
        "kdig",
        tokio::process::Command::new("kdig")
            .arg(format!("@{}", up.addr().ip()))
            .arg("-p")
            .arg(up.addr().port().to_string())
            .arg("+tls")
            .arg(format!("+tls-ca={}", up.ca_file().display()))
            .arg("+tls-hostname=dns.test")
            .arg("+short")
            .arg("+time=3")
            .arg("+retry=0")
            .arg("example.com")
            .arg("A")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim() == up.answer().to_string(),
        "kdig: {:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(up.handshakes(), 1);
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// The TLS handshake with `up` as the proxy would do it: the error when it fails, or gets no
/// further for 300 ms.
async fn try_dot_connect(up: &FakeUpstream) -> Result<TlsStream<TcpStream>, String> {
    let config = client_config();
    let tcp = within(T, "connect", TcpStream::connect(up.addr()))
        .await
        .unwrap();
    let handshake = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("dns.test").unwrap(), tcp);
    match tokio::time::timeout(Duration::from_millis(300), handshake).await {
        Ok(Ok(tls)) => Ok(tls),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no handshake within 300 ms".to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_upstream_fault_modes() {
    let up = FakeUpstream::start().await;
    let q = make_query("a.example.", RecordType::A, None, false);

    // Half a frame, then a TCP reset.
    up.set_mode(Mode::ResetMidResponse);
    let mut tls = dot_connect(&up).await;
    send(&mut tls, &q).await;
    let mut buf = Vec::new();
    let err = within(T, "reset", tls.read_to_end(&mut buf))
        .await
        .expect_err("a reset, not a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(
        buf.len() < 2 + 29,
        "a whole answer came before the reset: {buf:02x?}"
    );

    // A length prefix 100 bytes beyond the answer, then a clean close.
    up.set_mode(Mode::LengthOverrun);
    let mut tls = dot_connect(&up).await;
    send(&mut tls, &q).await;
    let mut buf = Vec::new();
    within(T, "close", tls.read_to_end(&mut buf)).await.unwrap();
    let claimed = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    assert_eq!(claimed, buf.len() - 2 + 100);

    // An answer cut short, framed as cut.
    up.set_mode(Mode::Truncated);
    let mut tls = dot_connect(&up).await;
    send(&mut tls, &q).await;
    let body = recv(&mut tls).await;
    assert!(Message::from_vec(&body).is_err(), "the cut answer parses");
    assert_eq!(body[..2], encode(&q)[..2], "the id is kept");

    // Two answers per connection, then close_notify.
    up.set_mode(Mode::CloseAfter(2));
    let mut tls = dot_connect(&up).await;
    for _ in 0..2 {
        send(&mut tls, &q).await;
        assert_eq!(
            a_records(&Message::from_vec(&recv(&mut tls).await).unwrap()),
            vec![up.answer()]
        );
    }
    let mut b = [0u8; 1];
    assert_eq!(within(T, "close", tls.read(&mut b)).await.unwrap(), 0);

    // Handshakes that never happen or are not TLS.
    up.set_mode(Mode::NoTls);
    assert_eq!(
        try_dot_connect(&up).await.err().as_deref(),
        Some("no handshake within 300 ms")
    );
    up.set_mode(Mode::HttpInsteadOfTls);
    let err = try_dot_connect(&up).await.expect_err("HTTP is not TLS");
    assert!(err.contains("corrupt") || err.contains("invalid"), "{err}");

    // Half-open: connections open now go silent, new ones answer.
    up.set_mode(Mode::Normal);
    let mut old = dot_connect(&up).await;
    up.freeze_connections();
    send(&mut old, &q).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), old.read(&mut b))
            .await
            .is_err(),
        "a frozen connection answered or closed"
    );
    let mut new = dot_connect(&up).await;
    send(&mut new, &q).await;
    assert_eq!(
        a_records(&Message::from_vec(&recv(&mut new).await).unwrap()),
        vec![up.answer()]
    );

    // Certificates.
    for (kind, cause) in [
        (CertKind::WrongName, "not valid for name"),
        (CertKind::UnknownCa, "UnknownIssuer"),
        (CertKind::Expired, "expired"),
        (CertKind::NotYetValid, "not valid yet"),
    ] {
        up.set_cert(kind);
        let err = try_dot_connect(&up).await.expect_err("a bad certificate");
        assert!(err.contains(cause), "{kind:?}: {err}");
    }
    up.set_cert(CertKind::Valid);
    try_dot_connect(&up).await.expect("a valid certificate");

    // What must never reach an upstream is seen: plain DNS over TCP, and UDP.
    assert!(up.not_tls().is_empty());
    let hellos = up.client_hellos();
    assert!(hellos >= 10, "{hellos} ClientHellos seen");
    let mut plain = TcpStream::connect(up.addr()).await.unwrap();
    let body = encode(&q);
    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    plain.write_all(&frame).await.unwrap();
    up.wait_until("plain text seen", |u| !u.not_tls().is_empty(), T)
        .await;
    assert_eq!(up.not_tls(), vec![frame[..2].to_vec()]);
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(&body, up.addr()).await.unwrap();
    up.wait_until("a datagram seen", |u| u.udp_datagrams() == 1, T)
        .await;
    assert_eq!(up.client_hellos(), hellos);
}
