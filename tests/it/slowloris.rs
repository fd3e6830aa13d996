//! Slowloris: a client that opens many TCP connections and trickles a byte a second into them
//! gets only its share of connection slots; other clients are served over TCP and UDP at
//! once, and the trickling connections are closed after `tcp_idle_timeout`.

use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

use crate::support::client::{assert_a, tcp_query, udp_query};
use crate::support::upstream_and_proxy_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_from_one_address_does_not_lock_out_others() {
    let (up, proxy) = upstream_and_proxy_with(|c| {
        c.extra("tcp_max_connections = 64")
            .extra("tcp_max_connections_per_client = 16")
            .extra(r#"tcp_idle_timeout = "3s""#)
    })
    .await;
    // 100 connections from 127.0.0.2, each sending one byte of a length prefix.
    let mut attackers = Vec::new();
    for _ in 0..100 {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().unwrap())
            .expect("bind 127.0.0.2");
        let mut stream = socket.connect(proxy.tcp4()).await.expect("connect");
        let _ = stream.write_all(&[0]).await;
        attackers.push(stream);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for stream in &mut attackers {
                let _ = stream.write_all(&[0]).await;
            }
        }
        attackers
    });

    // Meanwhile a client from 127.0.0.1 is served at once, over TCP and UDP.
    for i in 0..10 {
        let started = Instant::now();
        let answer = tcp_query(
            proxy.tcp4(),
            &format!("t{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_a(&answer, up.answer());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "TCP query {i} took {:?}",
            started.elapsed()
        );
        let answer = udp_query(
            proxy.udp4(),
            &format!("u{i}.example."),
            RecordType::A,
            None,
            false,
        )
        .await;
        assert_a(&answer, up.answer());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The connections beyond its share were closed at once; the others after the idle
    // timeout (3 s), though bytes kept coming: every one reads end-of-stream or a reset.
    let mut attackers = trickle.await.expect("trickle task");
    for (i, stream) in attackers.iter_mut().enumerate() {
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "slowloris connection {i} still open: {read:?}"
        );
    }
    proxy.assert_running();
}
