//! UDP answers on wildcard sockets (`0.0.0.0`, `[::]`) leave from the address the query was
//! sent to, whether the daemon bound the socket or systemd passed it: forwarded answers, cache
//! hits, local-zone answers and FORMERR. The clients connect their sockets, so an answer from
//! any other address never reaches them (the kernel drops it), as with glibc and dig.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::real_clients::{assert_dig_answer, dig};
use crate::support::client::{UdpClient, assert_a, check_response, decode, make_query};
use crate::support::proxy::{ActivationSockets, Proxy, ProxyConfig, free_port};
use crate::support::require_tool;
use crate::support::upstream::FakeUpstream;

/// Longest wait for one answer; an answer from the wrong address never comes.
const WAIT: Duration = Duration::from_secs(3);

/// Sends `query` from a socket connected to `server` and returns the answer, which the kernel
/// delivers only if it comes from `server` itself.
async fn ask(server: SocketAddr, query: &[u8], what: &str) -> Vec<u8> {
    let client = UdpClient::new(server).await;
    client.send_raw(query).await;
    client.recv_raw(WAIT).await.unwrap_or_else(|| {
        panic!("{what}: no answer from {server} within {WAIT:?} (answered from another address?)")
    })
}

/// A forwarded answer, the same from the cache, a local-zone answer and a FORMERR, all asked
/// at `server`.
async fn assert_answered_from(server: SocketAddr, up: &FakeUpstream) {
    let name = format!("q{}-{}.example.", server.port(), server.ip()).replace([':', '.'], "-");
    let name = format!("{name}.");
    let query = make_query(&name, RecordType::A, Some(1232), false);
    let before = up.queries();
    let answer = decode(&ask(server, &query.to_vec().unwrap(), "forwarded").await);
    check_response(&query, &answer);
    assert_a(&answer, up.answer());
    assert_eq!(up.queries(), before + 1, "{name} was not forwarded");

    let query = make_query(&name, RecordType::A, Some(1232), false);
    let answer = decode(&ask(server, &query.to_vec().unwrap(), "cache hit").await);
    check_response(&query, &answer);
    assert_a(&answer, up.answer());
    assert_eq!(
        up.queries(),
        before + 1,
        "{name} was not answered from the cache"
    );

    let query = make_query("localhost.", RecordType::A, None, false);
    let answer = decode(&ask(server, &query.to_vec().unwrap(), "local zone").await);
    check_response(&query, &answer);
    assert_a(&answer, Ipv4Addr::LOCALHOST);

    // A header without a question: FORMERR, made in the receive loop.
    let no_question = [0x4a, 0x21, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    let answer = decode(&ask(server, &no_question, "FORMERR").await);
    assert_eq!(answer.metadata.id, 0x4a21);
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);
}

fn with_port(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// UDP and TCP on `[::]`, one port, taking IPv4 too (as systemd binds with `BindIPv6Only=both`).
fn bind_dual_stack() -> ActivationSockets {
    let wildcard = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    for _ in 0..50 {
        let udp = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        udp.set_only_v6(false).expect("dual stack");
        udp.bind(&wildcard.into()).expect("bind [::]");
        let udp: UdpSocket = udp.into();
        let port = udp.local_addr().unwrap().port();
        let tcp = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP)).expect("socket");
        tcp.set_only_v6(false).expect("dual stack");
        if tcp
            .bind(&with_port(Ipv6Addr::UNSPECIFIED, port).into())
            .is_ok()
            && tcp.listen(128).is_ok()
        {
            let tcp: TcpListener = tcp.into();
            return ActivationSockets { udp, tcp };
        }
    }
    panic!("no port of [::] free for both UDP and TCP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_sockets_passed_by_systemd_answer_from_the_address_asked() {
    let up = FakeUpstream::start().await;
    let v4 = ActivationSockets::bind(Ipv4Addr::UNSPECIFIED.into());
    let v6 = bind_dual_stack();
    // What systemd does for a socket unit with PassPacketInfo=yes, before any query queues.
    setsockopt(&v4.udp, sockopt::Ipv4PacketInfo, &true).expect("IP_PKTINFO");
    setsockopt(&v6.udp, sockopt::Ipv6RecvPacketInfo, &true).expect("IPV6_RECVPKTINFO");
    let (port4, port6) = (v4.addr().port(), v6.addr().port());
    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()))
        .activation_sockets(vec![v4, v6])
        .start()
        .await;
    for server in [
        with_port([127, 0, 0, 2], port4),
        with_port([127, 1, 2, 3], port4),
        with_port(Ipv6Addr::LOCALHOST, port6),
        // IPv4 on the dual-stack socket: its destination comes as an IPv4-mapped IPv6 address.
        with_port([127, 0, 0, 2], port6),
    ] {
        assert_answered_from(server, &up).await;
    }
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_sockets_bound_from_listen_answer_from_the_address_asked() {
    let up = FakeUpstream::start().await;
    let port = free_port();
    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()))
        .listen_args(vec![
            with_port(Ipv4Addr::UNSPECIFIED, port),
            with_port(Ipv6Addr::UNSPECIFIED, port),
        ])
        .start()
        .await;
    for server in [
        with_port([127, 0, 0, 2], port),
        with_port([127, 1, 2, 3], port),
        with_port(Ipv6Addr::LOCALHOST, port),
    ] {
        assert_answered_from(server, &up).await;
    }
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_at_a_second_loopback_address_gets_its_answer() {
    if !require_tool("dig") {
        return;
    }
    let up = FakeUpstream::start().await;
    let port = free_port();
    let proxy = Proxy::builder(&ProxyConfig::new(up.spec()))
        .listen_args(vec![with_port(Ipv4Addr::UNSPECIFIED, port)])
        .start()
        .await;
    let server = with_port([127, 0, 0, 2], port);
    let out = dig(server, "www.example.com", &[]).await;
    assert_dig_answer(&out, "www.example.com.", &up.answer().to_string());
    proxy.assert_running();
}
