//! A tiny DNS client over UDP and TCP (hickory-proto for the wire format), plus raw senders for
//! malformed input. Every network wait is bounded by a timeout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::{Rng, within};

/// Longest wait for one answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh query id (not sequential, so stale answers cannot match by accident).
pub fn next_id() -> u16 {
    Rng::from_entropy().next_u64() as u16
}

/// A recursive query for `name`/`rtype`; with `edns` an OPT record advertising that payload size,
/// and the DO bit when `do_bit` (which needs EDNS).
pub fn make_query(name: &str, rtype: RecordType, edns: Option<u16>, do_bit: bool) -> Message {
    let mut msg = Message::new(next_id(), MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(
        Name::from_ascii(name).expect("valid query name"),
        rtype,
    ));
    match edns {
        Some(payload) => {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(do_bit);
            msg.set_edns(e);
        }
        None => assert!(!do_bit, "the DO bit needs EDNS"),
    }
    msg
}

pub fn encode(msg: &Message) -> Vec<u8> {
    msg.to_vec().expect("encodable message")
}

pub fn decode(bytes: &[u8]) -> Message {
    Message::from_vec(bytes).unwrap_or_else(|e| panic!("undecodable answer ({e}): {bytes:02x?}"))
}

/// Panics unless `resp` is a response to `query`: QR set, same id, same question.
pub fn check_response(query: &Message, resp: &Message) {
    assert_eq!(
        resp.metadata.message_type,
        MessageType::Response,
        "QR bit not set in answer: {resp}"
    );
    assert_eq!(
        resp.metadata.id, query.metadata.id,
        "answer carries another id than the query's"
    );
    assert_eq!(
        resp.queries, query.queries,
        "answer does not echo the client's question"
    );
}

/// The IPv4 addresses of the A records in the answer section.
pub fn a_records(resp: &Message) -> Vec<Ipv4Addr> {
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Asserts a NOERROR answer with exactly the A record `addr`.
pub fn assert_a(resp: &Message, addr: Ipv4Addr) {
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::NoError,
        "expected NOERROR: {resp}"
    );
    assert_eq!(a_records(resp), vec![addr], "unexpected answer: {resp}");
}

pub fn assert_servfail(resp: &Message) {
    assert_eq!(
        resp.metadata.response_code,
        ResponseCode::ServFail,
        "expected SERVFAIL: {resp}"
    );
    assert!(
        resp.answers.is_empty(),
        "a SERVFAIL must carry no answer: {resp}"
    );
}

/// The TXT strings of the answer, one `String` per record (strings of a record concatenated).
pub fn txt_records(resp: &Message) -> Vec<String> {
    resp.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .collect()
}

fn loopback_like(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(_) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0),
        IpAddr::V6(_) => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
    }
}

/// A connected UDP socket to the proxy, for sending raw datagrams and reading what comes back.
pub struct UdpClient {
    pub socket: UdpSocket,
}

impl UdpClient {
    pub async fn new(server: SocketAddr) -> Self {
        let socket = UdpSocket::bind(loopback_like(server))
            .await
            .expect("bind udp");
        socket.connect(server).await.expect("connect udp");
        UdpClient { socket }
    }

    pub async fn send_raw(&self, bytes: &[u8]) {
        within(IO_TIMEOUT, "udp send", self.socket.send(bytes))
            .await
            .expect("udp send");
    }

    pub async fn send(&self, msg: &Message) {
        self.send_raw(&encode(msg)).await;
    }

    /// The next datagram, or `None` when nothing arrives within `wait`.
    pub async fn recv_raw(&self, wait: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 65_535];
        match tokio::time::timeout(wait, self.socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(buf[..n].to_vec()),
            Ok(Err(e)) => panic!("udp receive failed: {e}"),
            Err(_) => None,
        }
    }

    /// The next datagram, decoded; panics after `IO_TIMEOUT`.
    pub async fn recv(&self) -> (Message, usize) {
        let raw = self
            .recv_raw(IO_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no UDP answer within {IO_TIMEOUT:?}"));
        (decode(&raw), raw.len())
    }

    /// Sends `query`, returns the answer (checked against the query) and its size in bytes.
    pub async fn exchange(&self, query: &Message) -> (Message, usize) {
        self.send(query).await;
        let (resp, len) = self.recv().await;
        check_response(query, &resp);
        (resp, len)
    }
}

/// One query over UDP from a fresh socket: the checked answer and its size in bytes.
pub async fn udp_exchange(server: SocketAddr, query: &Message) -> (Message, usize) {
    UdpClient::new(server).await.exchange(query).await
}

/// One query over UDP; the answer is checked to carry the query's id and question.
pub async fn udp_query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    edns: Option<u16>,
    do_bit: bool,
) -> Message {
    let query = make_query(name, rtype, edns, do_bit);
    udp_exchange(server, &query).await.0
}

/// One raw datagram from a fresh socket; whatever comes back within `wait`.
pub async fn udp_send_raw(server: SocketAddr, bytes: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let client = UdpClient::new(server).await;
    client.send_raw(bytes).await;
    client.recv_raw(wait).await
}

/// A TCP connection to the proxy speaking 2-byte length framing (RFC 1035 §4.2.2).
pub struct TcpClient {
    pub stream: TcpStream,
}

impl TcpClient {
    pub async fn connect(server: SocketAddr) -> Self {
        let stream = within(IO_TIMEOUT, "tcp connect", TcpStream::connect(server))
            .await
            .unwrap_or_else(|e| panic!("tcp connect to {server}: {e}"));
        stream.set_nodelay(true).ok();
        TcpClient { stream }
    }

    /// Writes bytes as they are (no framing added).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        within(IO_TIMEOUT, "tcp write", self.stream.write_all(bytes))
            .await
            .expect("tcp write");
    }

    /// Writes one frame: the length prefix then `body`.
    pub async fn send_frame(&mut self, body: &[u8]) {
        let mut buf = (body.len() as u16).to_be_bytes().to_vec();
        buf.extend_from_slice(body);
        self.write_raw(&buf).await;
    }

    pub async fn send(&mut self, msg: &Message) {
        self.send_frame(&encode(msg)).await;
    }

    /// The next frame's body; panics on timeout or end of stream.
    pub async fn recv_raw(&mut self) -> Vec<u8> {
        within(IO_TIMEOUT, "tcp answer", async {
            let mut len = [0u8; 2];
            self.stream
                .read_exact(&mut len)
                .await
                .expect("tcp answer length (connection closed?)");
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
            self.stream
                .read_exact(&mut body)
                .await
                .expect("tcp answer body");
            body
        })
        .await
    }

    pub async fn recv(&mut self) -> Message {
        decode(&self.recv_raw().await)
    }

    /// Sends `query` and returns the next answer, checked against it.
    pub async fn exchange(&mut self, query: &Message) -> Message {
        self.send(query).await;
        let resp = self.recv().await;
        check_response(query, &resp);
        resp
    }

    /// Waits until the peer closes the connection (end of stream or reset), discarding any
    /// bytes received meanwhile. Err when it is still open after `wait`.
    pub async fn wait_closed(&mut self, wait: Duration) -> Result<(), String> {
        let mut buf = [0u8; 4096];
        let res = tokio::time::timeout(wait, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) => return,
                    Ok(_) => continue,
                    Err(_) => return,
                }
            }
        })
        .await;
        res.map_err(|_| format!("connection still open after {wait:?}"))
    }
}

/// One query over a fresh TCP connection; the answer is checked against the query.
pub async fn tcp_query(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    edns: Option<u16>,
    do_bit: bool,
) -> Message {
    let query = make_query(name, rtype, edns, do_bit);
    TcpClient::connect(server).await.exchange(&query).await
}
