//! Checks of the harness itself, without the daemon: the fake DoT upstream answers over TLS
//! (in-process rustls client, and `kdig +tls` when installed), pipelines out of order, serves the
//! big TXT answer, switches misbehaviour modes, counts, and stops/restarts on the same port.

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
use crate::support::upstream::{BIG_TXT_RECORDS, FakeUpstream, Mode, ca_pem};
use crate::support::{require_tool, within};

const T: Duration = Duration::from_secs(5);

async fn dot_connect(up: &FakeUpstream) -> TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let der =
        rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem().as_bytes()).expect("ca pem");
    roots.add(der).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
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
