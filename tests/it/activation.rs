//! Socket activation (as systemd does it): UDP and TCP queries over IPv4 and IPv6 are answered on
//! the passed sockets, READY=1 arrives, answers carry the client's id and question, and `listen`
//! from the config is left unbound while activated.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::client::{assert_a, tcp_query, udp_query};
use crate::support::proxy::{Proxy, ProxyConfig, free_port};
use crate::support::upstream::FakeUpstream;
use crate::support::upstream_and_proxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_udp_and_tcp_over_ipv4_and_ipv6_on_activated_sockets() {
    // Proxy::start waits for READY=1.
    let (up, proxy) = upstream_and_proxy().await;
    assert!(proxy.notifications().iter().any(|l| l == "READY=1"));
    for (udp, tcp) in [(proxy.udp4(), proxy.tcp4()), (proxy.udp6(), proxy.tcp6())] {
        // udp_query/tcp_query check that the answer has the query's id and question.
        let resp = udp_query(udp, "www.example.com.", RecordType::A, None, false).await;
        assert_a(&resp, up.answer());
        assert!(resp.metadata.recursion_desired, "RD not copied: {resp}");
        let resp = tcp_query(tcp, "www.example.org.", RecordType::A, None, false).await;
        assert_a(&resp, up.answer());
        let resp = udp_query(udp, "mail.example.net.", RecordType::A, Some(1232), false).await;
        assert_a(&resp, up.answer());
        // A type the fake upstream has no data for: an empty NOERROR, not an error.
        let resp = tcp_query(tcp, "www.example.com.", RecordType::AAAA, None, false).await;
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError, "{resp}");
        assert!(resp.answers.is_empty(), "{resp}");
    }
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_from_config_is_not_bound_when_socket_activated() {
    let up = FakeUpstream::start().await;
    let port = free_port();
    let listen = vec![
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
    ];
    let proxy = Proxy::start(&ProxyConfig::new(up.spec()).listen(listen.clone())).await;
    // Served on the activated sockets...
    let resp = udp_query(proxy.udp4(), "a.example.", RecordType::A, None, false).await;
    assert_a(&resp, up.answer());
    // ...and the configured addresses are still free (we can bind them ourselves).
    for addr in listen {
        UdpSocket::bind(addr).unwrap_or_else(|e| {
            panic!("UDP {addr} from `listen` is bound although socket-activated: {e}")
        });
        TcpListener::bind(addr).unwrap_or_else(|e| {
            panic!("TCP {addr} from `listen` is bound although socket-activated: {e}")
        });
    }
    proxy.assert_running();
}
