//! Slowloris: a client that opens many TCP connections and trickles a byte a second into them
//! gets only its share of connection slots; other clients are served over TCP and UDP at
//! once, and the trickling connections are closed. A slowloris from the same address as a
//! well-behaved client (on a host, every local client is 127.0.0.1) does not lock it out
//! either: its stalled connections make room, never a connection with queries outstanding.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::support::client::{TcpClient, assert_a, make_query, tcp_query, udp_query};
use crate::support::{closed_within, upstream_and_proxy_with, within};

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

    // The connections beyond its share made room for its newer ones; the others were closed
    // though bytes kept coming: every one reads end-of-stream or a reset.
    let mut attackers = trickle.await.expect("trickle task");
    for (i, stream) in attackers.iter_mut().enumerate() {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "slowloris connection {i} still open"
        );
    }
    proxy.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_from_the_same_address_do_not_lock_out_a_local_client() {
    // The default share of 32 connections per address, as on a host.
    let (up, proxy) = upstream_and_proxy_with(|c| c.timeout("6s")).await;
    let server = proxy.tcp4();

    // A pipelining client with three queries outstanding (answered after 3 s) the whole time.
    let mut pipelining = TcpClient::connect(server).await;
    let slow: Vec<_> = (0..3)
        .map(|i| {
            make_query(
                &format!("slow-3000.p{i}.example."),
                RecordType::A,
                None,
                false,
            )
        })
        .collect();
    for query in &slow {
        pipelining.send(query).await;
    }
    up.wait_queries(3, Duration::from_secs(5)).await;

    // 400 connections from 127.0.0.1, each sending one byte and then nothing, and more opened
    // all along while the client asks.
    let stop = Arc::new(AtomicBool::new(false));
    let mut stalled = Vec::new();
    for _ in 0..400 {
        stalled.push(stall(server).await);
    }
    let attacker = tokio::spawn({
        let stop = stop.clone();
        async move {
            while !stop.load(Ordering::Relaxed) && stalled.len() < 1000 {
                stalled.push(stall(server).await);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stalled
        }
    });

    for i in 0..5 {
        let name = format!("local{i}.example.");
        let answer = within(
            Duration::from_secs(1),
            "a TCP answer among stalled connections from the same address",
            tcp_query(server, &name, RecordType::A, None, false),
        )
        .await;
        assert_a(&answer, up.answer());
    }
    stop.store(true, Ordering::Relaxed);
    let stalled = attacker.await.expect("attacker task");
    assert!(stalled.len() >= 400);

    // The pipelining connection was never the one closed: it still takes a query (a closed
    // one would still write the answers it owes, then end), and every answer arrives on it.
    let last = make_query("after.example.", RecordType::A, None, false);
    pipelining.send(&last).await;
    let mut ids: Vec<u16> = Vec::new();
    for _ in 0..=slow.len() {
        let answer = pipelining.recv().await;
        assert_a(&answer, up.answer());
        ids.push(answer.metadata.id);
    }
    ids.sort_unstable();
    let mut expected: Vec<u16> = slow.iter().chain([&last]).map(|q| q.metadata.id).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected);
    proxy.assert_running();
}

/// A connection from 127.0.0.1 that sends one byte of a length prefix and nothing more.
async fn stall(server: std::net::SocketAddr) -> TcpStream {
    let mut stream = within(
        Duration::from_secs(5),
        "connect",
        TcpStream::connect(server),
    )
    .await
    .expect("connect");
    let _ = stream.write_all(&[0]).await;
    stream
}
