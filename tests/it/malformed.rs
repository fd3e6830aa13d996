//! Malformed client input. UDP: fewer than 12 bytes, QR=1 or more than 4096 bytes (no query is
//! that large) is dropped silently; an unparseable
//! body gets FORMERR, an opcode other than QUERY NOTIMP, a question count other than 1 FORMERR,
//! all with the client's id. TCP: a frame shorter than a header closes that connection only; other
//! clients are unaffected. Random datagrams and random TCP streams (fixed seed) do not disturb the
//! service. After each case the daemon still answers normal queries.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::RecordType;

use crate::support::client::{TcpClient, UdpClient, assert_a, decode, encode, make_query, next_id};
use crate::support::proxy::Proxy;
use crate::support::upstream::FakeUpstream;
use crate::support::{Rng, assert_serves, upstream_and_proxy};

/// How long to listen for an answer that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// Sends `bytes`, then a valid query from the same socket: the first datagram back must be the
/// valid query's answer, and nothing else may follow.
async fn assert_udp_dropped(proxy: &Proxy, up: &FakeUpstream, bytes: &[u8], what: &str) {
    let client = UdpClient::new(proxy.udp4()).await;
    client.send_raw(bytes).await;
    // A name of its own each time, so the probe is never a cache hit and reaches the upstream.
    let name = format!("after-drop-{}.example.", next_id());
    let q = make_query(&name, RecordType::A, None, false);
    client.send(&q).await;
    let (resp, _) = client.recv().await;
    assert_eq!(
        resp.metadata.id, q.metadata.id,
        "{what}: got an answer instead of a silent drop: {resp}"
    );
    assert_a(&resp, up.answer());
    if let Some(extra) = client.recv_raw(QUIET).await {
        panic!("{what}: answered although it must be dropped: {extra:02x?}");
    }
}

/// Sends `bytes` over UDP and expects an answer with `id` and `rcode`.
async fn assert_udp_error(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    rcode: ResponseCode,
    what: &str,
) {
    let client = UdpClient::new(server).await;
    client.send_raw(bytes).await;
    let (resp, _) = client.recv().await;
    assert_error_response(&resp, id, rcode, what);
}

fn assert_error_response(resp: &Message, id: u16, rcode: ResponseCode, what: &str) {
    assert_eq!(
        resp.metadata.message_type,
        MessageType::Response,
        "{what}: QR not set: {resp}"
    );
    assert_eq!(
        resp.metadata.id, id,
        "{what}: answer does not carry the client's id: {resp}"
    );
    assert_eq!(resp.metadata.response_code, rcode, "{what}: {resp}");
    assert!(
        resp.answers.is_empty(),
        "{what}: error with answers: {resp}"
    );
}

/// A valid query as bytes, with a known id.
fn query_bytes(name: &str, id: u16) -> Vec<u8> {
    let mut q = make_query(name, RecordType::A, None, false);
    q.metadata.id = id;
    encode(&q)
}

/// A query with its opcode changed to `opcode`.
fn with_opcode(mut bytes: Vec<u8>, opcode: u8) -> Vec<u8> {
    bytes[2] = (bytes[2] & 0b1000_0111) | (opcode << 3);
    bytes
}

/// A header with `qdcount` questions, followed by that many questions for `name`/A.
fn with_questions(id: u16, qdcount: u16) -> Vec<u8> {
    let mut bytes = vec![0u8; 12];
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    bytes[2] = 0x01; // RD
    bytes[4..6].copy_from_slice(&qdcount.to_be_bytes());
    for i in 0..qdcount {
        let label = format!("q{i}");
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
        bytes.extend_from_slice(&[7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0]);
        bytes.extend_from_slice(&[0, 1, 0, 1]); // A, IN
    }
    bytes
}

/// A header claiming one question, followed by bytes that are no question.
fn bad_body(id: u16) -> Vec<u8> {
    let mut bytes = with_questions(id, 0);
    bytes[5] = 1; // qdcount = 1
    // A 63-byte label of which only 3 bytes follow.
    bytes.extend_from_slice(&[63, b'a', b'b', b'c']);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagram_shorter_than_header_is_dropped() {
    let (up, proxy) = upstream_and_proxy().await;
    for len in [0usize, 1, 2, 11] {
        let bytes = query_bytes("short.example.", 0x1111)[..len].to_vec();
        assert_udp_dropped(&proxy, &up, &bytes, &format!("{len}-byte datagram")).await;
    }
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_message_with_qr_set_is_dropped() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut bytes = query_bytes("qr.example.", 0x2222);
    bytes[2] |= 0x80;
    assert_udp_dropped(&proxy, &up, &bytes, "QR=1 query").await;
    // A complete, well-formed response (as in a reflection attack) is dropped too.
    let mut resp = Message::new(
        0x2223,
        MessageType::Response,
        hickory_proto::op::OpCode::Query,
    );
    resp.add_query(make_query("qr.example.", RecordType::A, None, false).queries[0].clone());
    assert_udp_dropped(&proxy, &up, &encode(&resp), "well-formed response").await;
    assert_eq!(up.queries(), 2, "a QR=1 message was forwarded upstream");
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_datagram_larger_than_any_query_is_dropped() {
    let (up, proxy) = upstream_and_proxy().await;
    // A valid query padded past 4096 bytes with trailing garbage.
    let mut bytes = query_bytes("huge.example.", 0x3333);
    bytes.resize(4097, 0xab);
    assert_udp_dropped(&proxy, &up, &bytes, "4097-byte datagram").await;
    bytes.resize(65_000, 0xab);
    assert_udp_dropped(&proxy, &up, &bytes, "65000-byte datagram").await;
    assert_eq!(
        up.queries(),
        2,
        "an oversized datagram was forwarded upstream"
    );
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_unparseable_body_gets_formerr() {
    let (up, proxy) = upstream_and_proxy().await;
    assert_udp_error(
        proxy.udp4(),
        &bad_body(0x3333),
        0x3333,
        ResponseCode::FormErr,
        "bad body",
    )
    .await;
    // Header only, question cut in the middle of the type.
    let cut = query_bytes("cut.example.", 0x3334);
    let cut = &cut[..cut.len() - 3];
    assert_udp_error(
        proxy.udp6(),
        cut,
        0x3334,
        ResponseCode::FormErr,
        "truncated question",
    )
    .await;
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_opcode_other_than_query_gets_notimp() {
    let (up, proxy) = upstream_and_proxy().await;
    for opcode in [1u8, 2, 4, 5, 15] {
        let id = 0x4400 + u16::from(opcode);
        let bytes = with_opcode(query_bytes("op.example.", id), opcode);
        assert_udp_error(
            proxy.udp4(),
            &bytes,
            id,
            ResponseCode::NotImp,
            &format!("opcode {opcode}"),
        )
        .await;
    }
    assert_eq!(
        up.queries(),
        0,
        "a non-QUERY message was forwarded upstream"
    );
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_question_count_other_than_one_gets_formerr() {
    let (up, proxy) = upstream_and_proxy().await;
    for qdcount in [0u16, 2, 3] {
        let id = 0x5500 + qdcount;
        let bytes = with_questions(id, qdcount);
        assert_udp_error(
            proxy.udp4(),
            &bytes,
            id,
            ResponseCode::FormErr,
            &format!("qdcount {qdcount}"),
        )
        .await;
    }
    assert_eq!(
        up.queries(),
        0,
        "a message with qdcount != 1 was forwarded upstream"
    );
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_opcode_other_than_query_gets_notimp_and_connection_keeps_serving() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut conn = TcpClient::connect(proxy.tcp4()).await;
    for opcode in [2u8, 4, 5] {
        let id = 0x6600 + u16::from(opcode);
        conn.send_frame(&with_opcode(query_bytes("op.example.", id), opcode))
            .await;
        assert_error_response(
            &decode(&conn.recv_raw().await),
            id,
            ResponseCode::NotImp,
            &format!("tcp opcode {opcode}"),
        );
    }
    // A well-formed message with another opcode is no garbage: the connection still serves.
    let q = make_query("same-conn.example.", RecordType::A, None, false);
    assert_a(&conn.exchange(&q).await, up.answer());
    assert_eq!(
        up.queries(),
        1,
        "a non-QUERY message was forwarded upstream"
    );
}

/// Sends one frame on a fresh TCP connection; the proxy may answer it (then the answer must be
/// `rcode` with `id`) and may close the connection afterwards.
async fn tcp_error_answer(proxy: &Proxy, frame: &[u8], id: u16, rcode: ResponseCode, what: &str) {
    let mut conn = TcpClient::connect(proxy.tcp4()).await;
    conn.send_frame(frame).await;
    assert_error_response(&decode(&conn.recv_raw().await), id, rcode, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_question_count_other_than_one_gets_formerr() {
    let (up, proxy) = upstream_and_proxy().await;
    for qdcount in [0u16, 2] {
        let id = 0x6700 + qdcount;
        tcp_error_answer(
            &proxy,
            &with_questions(id, qdcount),
            id,
            ResponseCode::FormErr,
            &format!("tcp qdcount {qdcount}"),
        )
        .await;
    }
    assert_eq!(
        up.queries(),
        0,
        "a message with qdcount != 1 was forwarded upstream"
    );
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_unparseable_message_closes_that_connection_only() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut other = TcpClient::connect(proxy.tcp4()).await;
    let slow = make_query("slow-300.example.", RecordType::A, None, false);
    other.send(&slow).await;

    let mut bad = TcpClient::connect(proxy.tcp4()).await;
    // Garbage frame, then a valid query behind it that must not be served on this connection.
    bad.send_frame(&bad_body(0x6801)).await;
    bad.send_frame(&query_bytes("behind-garbage.example.", 0x6802))
        .await;
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        let mut buf = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut bad.stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "connection that sent garbage still open after 3 s"
    );
    if !seen.is_empty() {
        // An answer before closing is acceptable only as FORMERR to the garbage.
        let len = usize::from(u16::from_be_bytes([seen[0], seen[1]]));
        assert_eq!(
            seen.len(),
            2 + len,
            "more than one answer after garbage: {seen:02x?}"
        );
        assert_error_response(
            &decode(&seen[2..]),
            0x6801,
            ResponseCode::FormErr,
            "tcp garbage",
        );
    }

    let resp = other.recv().await;
    crate::support::client::check_response(&slow, &resp);
    assert_a(&resp, up.answer());
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_frame_shorter_than_header_closes_that_connection_only() {
    let (up, proxy) = upstream_and_proxy().await;
    // Another client with a query in flight while the bad ones misbehave.
    let mut other = TcpClient::connect(proxy.tcp4()).await;
    let slow = make_query("slow-300.example.", RecordType::A, None, false);
    other.send(&slow).await;
    for len in [0usize, 1, 11] {
        let mut bad = TcpClient::connect(proxy.tcp4()).await;
        bad.send_frame(&query_bytes("bad.example.", 0x7777)[..len])
            .await;
        bad.wait_closed(Duration::from_secs(3))
            .await
            .unwrap_or_else(|e| panic!("{len}-byte frame: {e}"));
    }
    let resp = other.recv().await;
    crate::support::client::check_response(&slow, &resp);
    assert_a(&resp, up.answer());
    let q = make_query("still.example.", RecordType::A, None, false);
    assert_a(&other.exchange(&q).await, up.answer());
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
}

/// Random input: half pure noise, half a valid query with a few bytes changed.
fn random_message(rng: &mut Rng) -> Vec<u8> {
    if rng.below(2) == 0 {
        let len = rng.below(300) as usize;
        rng.bytes(len)
    } else {
        let mut bytes = query_bytes(
            &format!("fuzz{}.example.", rng.below(1000)),
            rng.next_u64() as u16,
        );
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(bytes.len() as u64) as usize;
            bytes[i] = rng.next_u64() as u8;
        }
        if rng.below(4) == 0 {
            let keep = rng.below(bytes.len() as u64) as usize;
            bytes.truncate(keep);
        }
        bytes
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_udp_datagrams_do_not_disturb_service() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut rng = Rng::new(0x5eed_0001);
    let client = UdpClient::new(proxy.udp4()).await;
    for i in 0..2000 {
        client.send_raw(&random_message(&mut rng)).await;
        if i % 250 == 249 {
            // Whatever came back meanwhile must at least be a response.
            while let Some(bytes) = client.recv_raw(Duration::from_millis(1)).await {
                if bytes.len() >= 3 {
                    assert!(
                        bytes[2] & 0x80 != 0,
                        "non-response datagram from the proxy: {bytes:02x?}"
                    );
                }
            }
            let q = make_query(&format!("alive{i}.example."), RecordType::A, None, false);
            let (resp, _) = crate::support::client::udp_exchange(proxy.udp4(), &q).await;
            assert_a(&resp, up.answer());
        }
    }
    proxy.assert_running();
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
    assert_serves(proxy.udp6(), proxy.tcp6(), "ok6.example.", up.answer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_tcp_input_does_not_disturb_service() {
    let (up, proxy) = upstream_and_proxy().await;
    let mut rng = Rng::new(0x5eed_0002);
    // 100 connections with 10 random frames each, 100 with an unframed random stream.
    for c in 0..200 {
        let mut conn = TcpClient::connect(proxy.tcp4()).await;
        if c % 2 == 0 {
            let mut bytes = Vec::new();
            for _ in 0..10 {
                let body = random_message(&mut rng);
                bytes.extend_from_slice(&(body.len() as u16).to_be_bytes());
                bytes.extend_from_slice(&body);
            }
            // The peer may close on the first bad frame: a failed write is fine.
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &bytes),
            )
            .await;
        } else {
            let len = 1 + rng.below(600) as usize;
            let bytes = rng.bytes(len);
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncWriteExt::write_all(&mut conn.stream, &bytes),
            )
            .await;
        }
        drop(conn);
        if c % 50 == 49 {
            let mut conn = TcpClient::connect(proxy.tcp4()).await;
            let q = make_query(&format!("alive{c}.example."), RecordType::A, None, false);
            assert_a(&conn.exchange(&q).await, up.answer());
        }
    }
    proxy.assert_running();
    assert_serves(proxy.udp4(), proxy.tcp4(), "ok.example.", up.answer()).await;
    assert_serves(proxy.udp6(), proxy.tcp6(), "ok6.example.", up.answer()).await;
}
