//! The black-holed upstream, with packets really dropped: the daemon and two DoT upstreams run
//! in a network namespace of the test's own, where an nftables rule drops the first upstream's
//! SYNs, its SYN-ACKs, or every segment carrying data to it (the TCP handshake completes, the
//! TLS one stalls). Nothing refuses or resets: the daemon learns of the fault only by time.
//!
//! For each hole and each strategy, with the hole there before the daemon's first query:
//!
//! 1. every query of a steady load is answered, by the second upstream, the first included;
//!    the first within a connect share of `timeout` (a quarter) plus `MARGIN`, every other one
//!    within `LATE`, far below that share: none waits on the hole;
//! 2. the daemon warns once that the upstream is down, naming the step that timed out;
//! 3. when the hole closes, the first upstream answers again within its longest backoff (plus
//!    `RECOVERY_MARGIN`), and no query fails or is late meanwhile.
//!
//! Then the same for a forward zone whose first plain-DNS resolver is black-holed.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use super::{error_kind, timed_udp};
use crate::support::client::a_records;
use crate::support::netns::Netns;
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{FakeUpstream, UpstreamOptions, a_response};

/// The budget of these tests (the default); a quarter of it is the connect share.
const TIMEOUT: Duration = Duration::from_secs(2);
/// What the first query may pay on top of the connect share, on a loaded machine.
const MARGIN: Duration = Duration::from_millis(300);
/// Longest any other query may take: well below the connect share (500 ms), so none waited on
/// the hole, with room for a loaded machine.
const LATE: Duration = Duration::from_millis(300);
/// The daemon's longest backoff, and the slack on top of it for a loaded machine.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
const RECOVERY_MARGIN: Duration = Duration::from_millis(500);
/// The steady load: a query this often, for this long, then as long again once the hole is
/// closed.
const INTERVAL: Duration = Duration::from_millis(100);
const PHASE: Duration = Duration::from_secs(4);

const FIRST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SECOND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// How the first upstream's packets are dropped.
#[derive(Clone, Copy, Debug)]
enum Hole {
    /// The daemon's SYNs: its connect never completes.
    Syn,
    /// The upstream's SYN-ACKs: the upstream sees the SYN, the daemon never hears back.
    SynAck,
    /// Every segment carrying data to the upstream: TCP connects, the ClientHello never
    /// arrives, the TLS handshake stalls.
    Data,
}

impl Hole {
    fn name(self) -> &'static str {
        match self {
            Hole::Syn => "SYN dropped",
            Hole::SynAck => "SYN-ACK dropped",
            Hole::Data => "TLS handshake stalled after connect",
        }
    }

    /// The nftables rule for the upstream on `port`.
    fn rule(self, port: u16) -> String {
        match self {
            Hole::Syn => format!("tcp dport {port} tcp flags & (syn | ack) == syn drop"),
            Hole::SynAck => {
                format!("tcp sport {port} tcp flags & (syn | ack) == syn | ack drop")
            }
            // The longest segment without data is a SYN with options (60 bytes of IPv4).
            Hole::Data => format!("tcp dport {port} ip length > 80 drop"),
        }
    }

    /// Words of the daemon's "is down" warning.
    fn cause(self) -> &'static str {
        match self {
            Hole::Syn | Hole::SynAck => "TCP connect timed out",
            Hole::Data => "TLS handshake timed out",
        }
    }
}

/// The `inet dnsproxy_test` table with `rule` in its input chain: a packet leaves its sender
/// as usual and is lost on the way, as beyond a firewall that drops it (dropped on output
/// instead, the sender's own send would fail with EPERM, which is no black hole).
fn ruleset(rule: &str) -> String {
    format!(
        "table inet dnsproxy_test {{\n chain input {{\n  type filter hook input priority 0; \
         policy accept;\n  {rule}\n }}\n}}\n"
    )
}

const NO_RULES: &str = "delete table inet dnsproxy_test\n";

/// The strategy's configuration value.
const STRATEGIES: [&str; 3] = ["failover", "round-robin", "fastest"];

/// How one query of the steady load went.
struct Fate {
    /// When it was asked, from the start of the load.
    at: Duration,
    took: Duration,
    rcode: ResponseCode,
    by: Vec<Ipv4Addr>,
}

/// Queries under `zone`, one every `INTERVAL` for `PHASE`, each answered whenever it is.
async fn steady(server: SocketAddr, zone: &'static str) -> Vec<Fate> {
    let start = Instant::now();
    let mut queries = JoinSet::new();
    let mut sent = 0u32;
    while start.elapsed() < PHASE {
        queries.spawn(async move {
            let at = start.elapsed();
            let (answer, took) = timed_udp(server, "blackhole", zone).await;
            Fate {
                at,
                took,
                rcode: answer.metadata.response_code,
                by: a_records(&answer),
            }
        });
        sent += 1;
        tokio::time::sleep_until((start + INTERVAL * sent).into()).await;
    }
    let mut fates = Vec::new();
    while let Some(fate) = queries.join_next().await {
        fates.push(fate.expect("query task"));
    }
    fates.sort_by_key(|fate| fate.at);
    fates
}

/// Panics unless every query in `fates` was answered, the first (when `first_pays`) within a
/// connect share plus `MARGIN` and every other within `LATE`. The slowest of the others.
fn assert_answered_in_time(fates: &[Fate], first_pays: bool, what: &str) -> Duration {
    let mut slowest = Duration::ZERO;
    for (i, fate) in fates.iter().enumerate() {
        assert_eq!(
            fate.rcode,
            ResponseCode::NoError,
            "{what}: the query at {:?} got {:?} after {:?}",
            fate.at,
            fate.rcode,
            fate.took
        );
        let limit = match (i, first_pays) {
            (0, true) => TIMEOUT / 4 + MARGIN,
            _ => LATE,
        };
        assert!(
            fate.took <= limit,
            "{what}: the query at {:?} took {:?} (at most {limit:?})",
            fate.at,
            fate.took
        );
        if i > 0 || !first_pays {
            slowest = slowest.max(fate.took);
        }
    }
    slowest
}

/// The first upstream black-holed by `hole` under `strategy` (see the module documentation).
async fn black_holed_first_upstream(netns: &Arc<Netns>, hole: Hole, strategy: &str) {
    let what = format!("{} under {strategy}", hole.name());
    let start_in = |answer| UpstreamOptions {
        answer,
        netns: Some(netns.clone()),
        ..UpstreamOptions::default()
    };
    let first = FakeUpstream::start_with(start_in(FIRST)).await;
    let second = FakeUpstream::start_with(start_in(SECOND)).await;
    netns.nft(&ruleset(&hole.rule(first.addr().port())));
    let mut config = ProxyConfig::new(first.spec())
        .timeout("2s")
        .extra(&format!("strategy = \"{strategy}\""))
        .extra("cache_serve_stale = \"0s\"");
    config.upstreams.push(second.spec());
    let proxy = Proxy::builder(&config).netns(netns.name()).start().await;
    let udp = proxy.udp4();

    // 1: every query answered by the second upstream; only the first pays a connect share.
    let fates = steady(udp, "example").await;
    let slowest = assert_answered_in_time(&fates, true, &what);
    let first_query = fates[0].took;
    assert!(
        fates.iter().all(|fate| fate.by == vec![SECOND]),
        "{what}: an answer not from the second upstream"
    );
    // The hole is real: the first upstream never saw a connection through (SYN or SYN-ACK
    // dropped), or never a byte of TLS on one (data dropped).
    match hole {
        Hole::Syn | Hole::SynAck => assert_eq!(first.connections(), 0, "{what}"),
        Hole::Data => {
            assert!(first.connections() > 0, "{what}: no connection accepted");
            assert_eq!(first.client_hellos(), 0, "{what}: a ClientHello arrived");
        }
    }

    // 2: one warning, with the step that timed out.
    let line = proxy
        .wait_for_log(" is down: ", Duration::from_secs(5))
        .await;
    assert_eq!(error_kind(&line).as_deref(), Some("timeout"), "{line}");
    assert!(line.contains(hole.cause()), "{what}: {line}");
    let warnings = proxy
        .log_lines()
        .iter()
        .filter(|l| l.contains(" is down: "))
        .count();
    assert_eq!(warnings, 1, "{what}: one warning while it stays down");

    // 3: the hole closes; the first upstream answers again within its backoff.
    netns.nft(NO_RULES);
    let queries_before = first.queries();
    let fates = steady(udp, "example").await;
    let recovery = fates
        .iter()
        .find(|fate| fate.by == vec![FIRST])
        .map(|fate| fate.at)
        .unwrap_or_else(|| {
            panic!("{what}: the first upstream never answered after the hole closed")
        });
    let slowest = slowest.max(assert_answered_in_time(&fates, false, &what));
    assert!(
        recovery <= BACKOFF_MAX + RECOVERY_MARGIN,
        "{what}: answered again {recovery:?} after the hole closed"
    );
    assert!(first.queries() > queries_before);
    if strategy == "failover" {
        let late = fates
            .iter()
            .filter(|fate| fate.at > recovery && fate.by != vec![FIRST])
            .count();
        assert_eq!(late, 0, "{what}: failover went back to the first upstream");
    }
    proxy.assert_running();
    eprintln!(
        "fault-matrix black hole | {} | {strategy} | all {} queries answered | first {} ms, \
         others at most {} ms | answered by it again {} ms after the hole closed",
        hole.name(),
        2 * fates.len(),
        first_query.as_millis(),
        slowest.as_millis(),
        recovery.as_millis(),
    );
}

async fn black_hole_under_every_strategy(hole: Hole) {
    let Some(netns) = Netns::create() else {
        return;
    };
    let netns = Arc::new(netns);
    for strategy in STRATEGIES {
        black_holed_first_upstream(&netns, hole, strategy).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_dropped() {
    black_hole_under_every_strategy(Hole::Syn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syn_ack_dropped() {
    black_hole_under_every_strategy(Hole::SynAck).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_stalled_after_connect() {
    black_hole_under_every_strategy(Hole::Data).await;
}

/// A plain DNS server on UDP inside `netns`, answering every A query with `answer`.
fn plain_server(netns: &Netns, answer: Ipv4Addr) -> SocketAddr {
    let (_, udp) = netns
        .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .expect("bind a plain DNS server in the namespace");
    let udp = UdpSocket::from_std(udp).expect("udp for tokio");
    let address = udp.local_addr().expect("local address");
    tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((len, from)) = udp.recv_from(&mut buf).await {
            if let Some(response) = a_response(&buf[..len], answer) {
                let _ = udp.send_to(&response, from).await;
            }
        }
    });
    address
}

/// A forward zone of two plain-DNS resolvers, the first black-holed (its datagrams dropped),
/// under `failover`: the queries sent before its first one times out wait for that (a plain
/// server has no connection whose state would warn them), every later one is answered by the
/// second at once; when the hole closes the first is used again within its backoff.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_zone_with_a_black_holed_plain_resolver() {
    const ZONE: &str = "corp.test";
    const PLAIN_FIRST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const PLAIN_SECOND: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    let Some(netns) = Netns::create() else {
        return;
    };
    let netns = Arc::new(netns);
    let dot = FakeUpstream::start_with(UpstreamOptions {
        netns: Some(netns.clone()),
        ..UpstreamOptions::default()
    })
    .await;
    let first = plain_server(&netns, PLAIN_FIRST);
    let second = plain_server(&netns, PLAIN_SECOND);
    netns.nft(&ruleset(&format!("udp dport {} drop", first.port())));
    let mut zone = format!("[[forward_zone]]\nzones = [\"{ZONE}\"]");
    for server in [first, second] {
        zone.push_str(&format!(
            "\n[[forward_zone.upstream]]\naddress = \"{server}\"\nprotocol = \"udp\""
        ));
    }
    let config = ProxyConfig::new(dot.spec())
        .timeout("2s")
        .extra("strategy = \"failover\"")
        .extra("cache_serve_stale = \"0s\"")
        .extra(&zone);
    let proxy = Proxy::builder(&config).netns(netns.name()).start().await;
    let udp = proxy.udp4();

    let fates = steady(udp, ZONE).await;
    // The first resolver gets half the budget, then the second its half.
    let first_wave = TIMEOUT / 2 + MARGIN;
    let mut slowest = Duration::ZERO;
    for fate in &fates {
        assert_eq!(fate.rcode, ResponseCode::NoError, "at {:?}", fate.at);
        assert_eq!(fate.by, vec![PLAIN_SECOND], "at {:?}", fate.at);
        let limit = if fate.at < first_wave {
            first_wave
        } else {
            LATE
        };
        assert!(
            fate.took <= limit,
            "the query at {:?} took {:?}",
            fate.at,
            fate.took
        );
        if fate.at >= first_wave {
            slowest = slowest.max(fate.took);
        }
    }
    let line = proxy
        .wait_for_log(" is down: ", Duration::from_secs(5))
        .await;
    assert!(
        line.contains("plain DNS") && line.contains("no answer in time"),
        "{line}"
    );

    netns.nft(NO_RULES);
    let fates = steady(udp, ZONE).await;
    let recovery = fates
        .iter()
        .find(|fate| fate.by == vec![PLAIN_FIRST])
        .map(|fate| fate.at)
        .expect("the first resolver never answered after the hole closed");
    for fate in &fates {
        assert_eq!(fate.rcode, ResponseCode::NoError, "at {:?}", fate.at);
        assert!(
            fate.took <= LATE,
            "the query at {:?} took {:?}",
            fate.at,
            fate.took
        );
        if fate.at > recovery {
            assert_eq!(
                fate.by,
                vec![PLAIN_FIRST],
                "failover went back to the first"
            );
        }
    }
    assert!(
        recovery <= BACKOFF_MAX + RECOVERY_MARGIN,
        "answered again {recovery:?} after the hole closed"
    );
    proxy.assert_running();
    eprintln!(
        "fault-matrix black hole | plain-DNS forward zone, first resolver's datagrams dropped | \
         failover | after the first {} ms, at most {} ms | answered by it again {} ms after \
         the hole closed",
        first_wave.as_millis(),
        slowest.as_millis(),
        recovery.as_millis()
    );
}
