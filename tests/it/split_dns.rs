//! Split DNS: a forward zone's names go to its plain-DNS resolver (UDP, then TCP when
//! truncated), everything else to the DoT upstream, and private reverse names and localhost
//! are answered locally without reaching any upstream.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::support::client::{a_records, assert_a, tcp_query, txt_records, udp_query};
use crate::support::proxy::ActivationSockets;
use crate::support::upstream::response_to;
use crate::support::upstream_and_proxy_with;

const INTERNAL: Ipv4Addr = Ipv4Addr::new(10, 9, 9, 9);
const BIG_RECORDS: usize = 20;

/// A plain DNS server on 127.0.0.1 (UDP and TCP on one port), as a VPC or corporate resolver
/// would be: A queries get `INTERNAL`; TXT for `big.*` does not fit 512 bytes, so over UDP
/// it answers TC=1 and the full answer only over TCP.
struct PlainServer {
    addr: SocketAddr,
    udp_queries: Arc<AtomicUsize>,
    tcp_queries: Arc<AtomicUsize>,
}

/// A UDP socket and a TCP listener on one free loopback port, for tokio.
fn bind_udp_and_tcp() -> (UdpSocket, TcpListener, SocketAddr) {
    let sockets = ActivationSockets::bind(Ipv4Addr::LOCALHOST.into());
    let addr = sockets.addr();
    sockets.udp.set_nonblocking(true).expect("non-blocking udp");
    sockets.tcp.set_nonblocking(true).expect("non-blocking tcp");
    let udp = UdpSocket::from_std(sockets.udp).expect("udp for tokio");
    let tcp = TcpListener::from_std(sockets.tcp).expect("tcp for tokio");
    (udp, tcp, addr)
}

impl PlainServer {
    async fn start() -> PlainServer {
        let (udp, tcp, addr) = bind_udp_and_tcp();
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let counter = udp_queries.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((len, from)) = udp.recv_from(&mut buf).await {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(answer) = answer(&buf[..len], true) {
                    let _ = udp.send_to(&answer, from).await;
                }
            }
        });
        let counter = tcp_queries.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut len = [0u8; 2];
                    stream.read_exact(&mut len).await.ok()?;
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    stream.read_exact(&mut query).await.ok()?;
                    let answer = answer(&query, false)?;
                    let mut frame = (answer.len() as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(&answer);
                    stream.write_all(&frame).await.ok()
                });
            }
        });
        PlainServer {
            addr,
            udp_queries,
            tcp_queries,
        }
    }
}

fn answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let (mut response, question) = response_to(query)?;
    let name = question.name().clone();
    match question.query_type() {
        RecordType::A => {
            response.add_answer(Record::from_rdata(name, 30, RData::A(A(INTERNAL))));
        }
        RecordType::TXT if name.to_ascii().starts_with("big.") => {
            if udp {
                response.metadata.truncation = true;
            } else {
                for i in 0..BIG_RECORDS {
                    let text = format!("internal-{i:02}-{}", "y".repeat(60));
                    let record =
                        Record::from_rdata(name.clone(), 30, RData::TXT(TXT::new(vec![text])));
                    response.add_answer(record);
                }
            }
        }
        _ => {}
    }
    response.to_vec().ok()
}

fn zone_config(server: &PlainServer, zones: &str) -> String {
    format!(
        "[[forward_zone]]\nzones = [{zones}]\n[[forward_zone.upstream]]\naddress = \"{}\"\nprotocol = \"udp\"",
        server.addr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_zone_names_go_to_their_plain_resolver_and_the_rest_over_dot() {
    let internal = PlainServer::start().await;
    let zone = zone_config(&internal, "\"corp.example\", \"compute.internal\"");
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra(&zone)).await;

    let corp = udp_query(
        proxy.udp4(),
        "host.CORP.example.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&corp, INTERNAL);
    let vpc = tcp_query(
        proxy.tcp4(),
        "ip-10-0-0-1.eu-west-1.compute.internal.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_a(&vpc, INTERNAL);
    assert_eq!(
        up.queries(),
        0,
        "forward-zone names must not reach the DoT upstream"
    );

    let public = udp_query(proxy.udp4(), "www.example.com.", RecordType::A, None, false).await;
    assert_a(&public, up.answer());
    // A name that only ends like the zone is not in it.
    let lookalike = udp_query(proxy.udp4(), "notcorp.example.", RecordType::A, None, false).await;
    assert_a(&lookalike, up.answer());
    assert_eq!(up.queries(), 2);
    assert_eq!(internal.udp_queries.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_plain_answer_is_asked_again_over_tcp() {
    let internal = PlainServer::start().await;
    let zone = zone_config(&internal, "\"corp.example\"");
    let (_up, proxy) = upstream_and_proxy_with(|c| c.extra(&zone)).await;
    let answer = tcp_query(
        proxy.tcp4(),
        "big.corp.example.",
        RecordType::TXT,
        None,
        false,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        txt_records(&answer).len(),
        BIG_RECORDS,
        "the full answer, fetched over TCP"
    );
    assert_eq!(internal.udp_queries.load(Ordering::SeqCst), 1);
    assert_eq!(internal.tcp_queries.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_reverse_names_and_localhost_never_reach_the_dot_upstream() {
    let (up, proxy) = upstream_and_proxy_with(|c| c).await;
    for name in [
        "1.0.168.192.in-addr.arpa.",
        "4.3.2.10.in-addr.arpa.",
        "1.0.16.172.in-addr.arpa.",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
    ] {
        let answer = udp_query(proxy.udp4(), name, RecordType::PTR, None, false).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
        assert!(
            !answer.authorities.is_empty(),
            "{name}: an SOA for negative caching"
        );
    }
    let localhost = udp_query(proxy.udp4(), "localhost.", RecordType::A, None, false).await;
    assert_eq!(a_records(&localhost), vec![Ipv4Addr::LOCALHOST]);
    let app = tcp_query(proxy.tcp4(), "app.localhost.", RecordType::A, None, false).await;
    assert_eq!(a_records(&app), vec![Ipv4Addr::LOCALHOST]);
    assert_eq!(
        up.queries(),
        0,
        "private names were sent to the public upstream"
    );

    let public = udp_query(
        proxy.udp4(),
        "8.8.8.8.in-addr.arpa.",
        RecordType::PTR,
        None,
        false,
    )
    .await;
    assert_eq!(public.metadata.response_code, ResponseCode::NoError);
    assert_eq!(up.queries(), 1, "public reverse names are forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_zone_can_claim_a_private_reverse_zone() {
    let internal = PlainServer::start().await;
    let zone = zone_config(&internal, "\"10.in-addr.arpa\"");
    let (up, proxy) = upstream_and_proxy_with(|c| c.extra(&zone)).await;
    let claimed = udp_query(
        proxy.udp4(),
        "4.3.2.10.in-addr.arpa.",
        RecordType::PTR,
        None,
        false,
    )
    .await;
    assert_eq!(claimed.metadata.response_code, ResponseCode::NoError);
    assert_eq!(internal.udp_queries.load(Ordering::SeqCst), 1);
    let other = udp_query(
        proxy.udp4(),
        "1.0.168.192.in-addr.arpa.",
        RecordType::PTR,
        None,
        false,
    )
    .await;
    assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(up.queries(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_plain_resolver_gives_servfail_within_the_timeout() {
    // A port nobody listens on: ICMP port unreachable, or silence.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead = socket.local_addr().expect("addr");
    drop(socket);
    let zone = format!(
        "[[forward_zone]]\nzones = [\"corp.example\"]\n[[forward_zone.upstream]]\naddress = \"{dead}\"\nprotocol = \"udp\""
    );
    let (up, proxy) = upstream_and_proxy_with(|c| c.timeout("1s").extra(&zone)).await;
    let started = std::time::Instant::now();
    let answer = udp_query(
        proxy.udp4(),
        "host.corp.example.",
        RecordType::A,
        None,
        false,
    )
    .await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < std::time::Duration::from_millis(1500));
    assert_eq!(
        up.queries(),
        0,
        "no fallback to the default upstreams for a forward zone"
    );
}
