//! The fault matrix: each way a DNS-over-TLS upstream can fail, against the real daemon with a
//! 500 ms `timeout`, the cache on but never answering (a new name per query, `cache_serve_stale`
//! off), and a second fake upstream serving the forward zone `healthy.test`. For each fault:
//!
//! 1. every client query gets SERVFAIL within the timeout (+ `MARGIN`), over UDP and TCP, and
//!    the daemon logs one warning that names the cause (`error_kind`);
//! 2. meanwhile a query for `healthy.test` is answered at once: the daemon is not held up;
//! 3. during 3 s of steady client queries, the daemon makes at most `MAX_ATTEMPTS` connection
//!    attempts to the failing upstream (it backs off 125 ms doubling to 1 s): no storm;
//! 4. once the upstream is fixed, a query is answered within the backoff ceiling (1 s, +
//!    `RECOVERY_MARGIN`);
//! 5. nothing ever reaches an upstream in plain text: every connection opens with a TLS
//!    ClientHello, no datagram reaches its port, and no query is sent over a connection whose
//!    certificate failed;
//! 6. with a healthy upstream second in line instead of the forward zone, queries are answered
//!    by it without waiting on the failing one.
//!
//! Then the faults that are not plain failures (an upstream closing after N queries, a
//! half-open connection, a TLS 1.1-only server, an upstream down at start), serve-stale
//! answering for every fault, failover between two upstreams when the first dies under load,
//! and one regression test for each fault the daemon used to handle wrongly.
//!
//! The black-holed upstream beside a healthy one, with packets dropped by nftables in a network
//! namespace, under every strategy, is in `blackhole`.
//!
//! Each test prints its `fault-matrix |` line (run with `--nocapture`); `docs/fault-matrix.md`
//! holds the table from one run.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use crate::support::client::{
    a_records, assert_a, assert_servfail, make_query, tcp_query, udp_exchange,
};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::upstream::{CertKind, FakeUpstream, Mode, issue_cert, write_file};
use crate::support::{require_tool, within};

mod blackhole;

/// The per-query budget configured here.
const TIMEOUT: Duration = Duration::from_millis(500);
/// Slack for a loaded machine, on top of any bound the daemon promises.
const MARGIN: Duration = Duration::from_millis(150);
/// The daemon's longest backoff: the longest a recovered upstream may wait to be used again.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How long the steady load of the backoff check lasts, and its query interval.
const STEADY: Duration = Duration::from_secs(3);
const STEADY_INTERVAL: Duration = Duration::from_millis(50);
/// Most connection attempts allowed during `STEADY`: the backoff schedule (125, 250, 500 ms,
/// then every 1 s) allows 6 or 7 in 3 s, against 60 client queries.
const MAX_ATTEMPTS: usize = 10;
/// Slack on top of `BACKOFF_MAX` for the first answer after a fix: the poll interval, a new
/// connection and handshake, on a loaded machine.
const RECOVERY_MARGIN: Duration = Duration::from_millis(300);
/// Longest a query to the healthy zone may take while the other upstream fails: far below the
/// timeout, so it was not waiting behind the failing query.
const HEALTHY_LIMIT: Duration = Duration::from_millis(300);
/// The forward zone served by the healthy upstream, and its answer.
const HEALTHY_ZONE: &str = "healthy.test";
const HEALTHY_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

/// A fresh name under `zone`, so the cache never answers.
fn unique(tag: &str, zone: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{tag}-{}.{zone}.", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// One UDP query for a fresh name under `zone`: the answer and how long it took.
async fn timed_udp(server: SocketAddr, tag: &str, zone: &str) -> (Message, Duration) {
    let query = make_query(&unique(tag, zone), RecordType::A, None, false);
    let start = Instant::now();
    let (answer, _) = udp_exchange(server, &query).await;
    (answer, start.elapsed())
}

async fn timed_tcp(server: SocketAddr, tag: &str, zone: &str) -> (Message, Duration) {
    let start = Instant::now();
    let answer = tcp_query(server, &unique(tag, zone), RecordType::A, None, false).await;
    (answer, start.elapsed())
}

fn assert_servfail_in_time(answer: &Message, elapsed: Duration, what: &str) {
    assert_servfail(answer);
    assert!(
        elapsed <= TIMEOUT + MARGIN,
        "{what}: SERVFAIL after {elapsed:?}, budget {TIMEOUT:?} + {MARGIN:?}"
    );
}

/// The config of the matrix: `up` as the only default upstream, `healthy` for `healthy.test`.
fn matrix_config(up: &FakeUpstream, healthy: &FakeUpstream) -> ProxyConfig {
    ProxyConfig::new(up.spec())
        .timeout("500ms")
        .extra("cache_serve_stale = \"0s\"")
        .extra("log_level = \"debug\"")
        .extra(&forward_zone(HEALTHY_ZONE, healthy))
}

/// A `[[forward_zone]]` table sending `zone` to `up` over DoT (last in the top level: the
/// lines after it belong to the table).
fn forward_zone(zone: &str, up: &FakeUpstream) -> String {
    let spec = up.spec();
    format!(
        "[[forward_zone]]\nzones = [\"{zone}\"]\n[[forward_zone.upstream]]\naddress = \"{}\"\n\
         tls_name = \"dns.test\"\nca_file = \"{}\"",
        spec.address,
        up.ca_file().display()
    )
}

/// Panics if anything reached `up` other than TLS over TCP, or nothing did.
fn assert_only_tls(up: &FakeUpstream, what: &str) {
    assert!(up.client_hellos() > 0, "{what}: no TLS connection at all");
    assert!(
        up.not_tls().is_empty(),
        "{what}: connections that did not open with a TLS ClientHello, first bytes {:02x?}",
        up.not_tls()
    );
    assert_eq!(
        up.udp_datagrams(),
        0,
        "{what}: UDP datagrams reached the upstream's port"
    );
}

/// A loopback address where TCP connections are never completed: a listener that never
/// accepts, its one-slot accept queue filled, so the kernel drops further SYNs.
struct Blackhole {
    _listener: tokio::net::TcpListener,
    _queued: TcpStream,
}

impl Blackhole {
    async fn bind(addr: SocketAddr) -> Blackhole {
        let mut attempt = 0;
        let listener = loop {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            match socket.bind(addr).and_then(|()| socket.listen(0)) {
                Ok(listener) => break listener,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    eprintln!("binding the blackhole on {addr} failed ({e}), retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot bind the blackhole on {addr}: {e}"),
            }
        };
        // With a backlog of 0 Linux queues one connection; the next SYN is dropped.
        let queued = within(Duration::from_secs(5), "fill", TcpStream::connect(addr))
            .await
            .expect("the first connection is queued");
        let probe = tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr));
        assert!(
            probe.await.is_err(),
            "a connection to the blackhole completed: SYNs are not dropped here"
        );
        Blackhole {
            _listener: listener,
            _queued: queued,
        }
    }
}

/// A fault of the default upstream that ends in SERVFAIL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Nothing listens: connection refused.
    Refused,
    /// SYNs are dropped: the TCP connect never completes.
    Blackhole,
    /// TCP is accepted, TLS never starts.
    NoTls,
    /// Plain-text bytes (an HTTP error) instead of a TLS handshake.
    HttpInsteadOfTls,
    /// The connection reads queries after the handshake and never answers.
    Stall,
    /// Half an answer, then a TCP reset.
    ResetMidResponse,
    /// The connection is closed when a query arrives.
    CloseOnQuery,
    /// Random bytes, inside a valid frame.
    Garbage,
    /// A length prefix larger than the answer, then close.
    LengthOverrun,
    WrongId,
    WrongQuestion,
    /// The answer cut short, framed as it is.
    Truncated,
    Cert(CertKind),
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Refused => "connection refused",
            Fault::Blackhole => "unreachable (SYN dropped)",
            Fault::NoTls => "TCP accepted, TLS never starts",
            Fault::HttpInsteadOfTls => "plain-text bytes instead of TLS",
            Fault::Stall => "stalls after the handshake",
            Fault::ResetMidResponse => "reset in the middle of an answer",
            Fault::CloseOnQuery => "closes when a query arrives",
            Fault::Garbage => "garbage in a valid frame",
            Fault::LengthOverrun => "length prefix beyond the data, then close",
            Fault::WrongId => "answer with the wrong id",
            Fault::WrongQuestion => "right id, other question",
            Fault::Truncated => "answer cut short",
            Fault::Cert(CertKind::WrongName) => "certificate for another name",
            Fault::Cert(CertKind::UnknownCa) => "certificate from an untrusted CA",
            Fault::Cert(CertKind::Expired) => "certificate expired",
            Fault::Cert(CertKind::NotYetValid) => "certificate not yet valid",
            Fault::Cert(CertKind::Valid) => unreachable!("a valid certificate is no fault"),
        }
    }

    /// The `error_kind` of the warning the daemon logs when the upstream goes down, and words
    /// of its message that say why; `None` when the upstream stays up (the connection works,
    /// only the answers are bad).
    fn down(self) -> Option<(&'static str, &'static str)> {
        match self {
            Fault::Refused => Some(("refused", "TCP connect failed: Connection refused")),
            Fault::Blackhole => Some(("timeout", "TCP connect timed out")),
            Fault::NoTls => Some(("timeout", "TLS handshake timed out")),
            Fault::Stall | Fault::WrongId => Some(("timeout", "no answer in time")),
            Fault::HttpInsteadOfTls => Some(("tls", "TLS handshake failed")),
            Fault::ResetMidResponse
            | Fault::CloseOnQuery
            | Fault::Garbage
            | Fault::LengthOverrun
            | Fault::WrongQuestion => Some(("closed", "connection closed")),
            Fault::Truncated => None,
            Fault::Cert(CertKind::WrongName) => Some((
                "certificate_name",
                "certificate not valid for name \"dns.test\" (it names",
            )),
            Fault::Cert(CertKind::UnknownCa) => Some((
                "certificate_unknown_ca",
                "certificate issued by an unknown CA",
            )),
            Fault::Cert(CertKind::Expired) => Some(("certificate_expired", "certificate expired")),
            Fault::Cert(CertKind::NotYetValid) => {
                Some(("certificate_not_yet_valid", "certificate not valid yet"))
            }
            Fault::Cert(CertKind::Valid) => None,
        }
    }

    /// Faults that only change how new connections go: the live connection is closed first
    /// (by restarting the upstream) so the next query has to connect.
    fn at_connect(self) -> bool {
        matches!(
            self,
            Fault::Refused
                | Fault::Blackhole
                | Fault::NoTls
                | Fault::HttpInsteadOfTls
                | Fault::Cert(_)
        )
    }
}

/// The failing upstream, the healthy one and the daemon.
struct Bench {
    up: FakeUpstream,
    healthy: FakeUpstream,
    proxy: Proxy,
    blackhole: Option<Blackhole>,
}

impl Bench {
    /// Starts the upstreams and the daemon with `config` of them, and opens the connection to
    /// `up` (so that faults hit an established one).
    async fn start(
        healthy_answer: Ipv4Addr,
        config: impl FnOnce(&FakeUpstream, &FakeUpstream) -> ProxyConfig,
    ) -> Bench {
        let up = FakeUpstream::start().await;
        let healthy = FakeUpstream::start_answering(healthy_answer).await;
        let proxy = Proxy::start(&config(&up, &healthy)).await;
        let bench = Bench {
            up,
            healthy,
            proxy,
            blackhole: None,
        };
        let (answer, _) = timed_udp(bench.proxy.udp4(), "warm", "example").await;
        assert_a(&answer, bench.up.answer());
        bench
    }

    async fn break_upstream(&mut self, fault: Fault) {
        if fault.at_connect() {
            // Closes the daemon's live connection too.
            self.up.stop().await;
        }
        match fault {
            Fault::Refused => {}
            Fault::Blackhole => self.blackhole = Some(Blackhole::bind(self.up.addr()).await),
            Fault::NoTls => self.up.set_mode(Mode::NoTls),
            Fault::HttpInsteadOfTls => self.up.set_mode(Mode::HttpInsteadOfTls),
            Fault::Stall => self.up.set_mode(Mode::Stall),
            Fault::ResetMidResponse => self.up.set_mode(Mode::ResetMidResponse),
            Fault::CloseOnQuery => self.up.set_mode(Mode::CloseOnQuery),
            Fault::Garbage => self.up.set_mode(Mode::Garbage),
            Fault::LengthOverrun => self.up.set_mode(Mode::LengthOverrun),
            Fault::WrongId => self.up.set_mode(Mode::WrongId),
            Fault::WrongQuestion => self.up.set_mode(Mode::WrongQuestion),
            Fault::Truncated => self.up.set_mode(Mode::Truncated),
            Fault::Cert(kind) => self.up.set_cert(kind),
        }
        if fault.at_connect() && !matches!(fault, Fault::Refused | Fault::Blackhole) {
            self.up.restart().await;
        }
    }

    async fn fix_upstream(&mut self, fault: Fault) {
        match fault {
            Fault::Refused => self.up.restart().await,
            Fault::Blackhole => {
                self.blackhole = None;
                self.up.restart().await;
            }
            Fault::Cert(_) => self.up.set_cert(CertKind::Valid),
            _ => self.up.set_mode(Mode::Normal),
        }
    }

    /// Connection attempts the daemon made to the failing upstream so far. Where the kernel
    /// turns them away (refused, SYN dropped) the fake never sees them: the daemon's log line
    /// for each failed attempt counts them instead.
    fn attempts(&self, fault: Fault) -> usize {
        match fault {
            Fault::Refused | Fault::Blackhole => self
                .proxy
                .log_lines()
                .iter()
                .filter(|l| l.contains(" is down: ") || l.contains("still down: "))
                .count(),
            _ => self.up.connections(),
        }
    }

    /// The "upstream … is down" warnings logged after line `mark`.
    fn down_warnings(&self, mark: usize) -> Vec<String> {
        self.proxy.log_lines()[mark..]
            .iter()
            .filter(|l| l.contains(" is down: "))
            .inspect(|l| assert!(l.contains(" WARN "), "not logged as a warning: {l}"))
            .cloned()
            .collect()
    }
}

/// The value of `error_kind=` in a text log line.
fn error_kind(line: &str) -> Option<String> {
    let rest = &line[line.find("error_kind=")? + "error_kind=".len()..];
    let value = rest.split_whitespace().next()?;
    Some(value.trim_matches('"').to_string())
}

/// Prints one row of the matrix: the fault, what clients saw, the longest time to SERVFAIL,
/// the time from the fix to the first answer, connection attempts meanwhile, and how queries
/// fared with a healthy second upstream ("-" where a column does not apply).
fn print_row(
    fault: &str,
    outcome: &str,
    servfail: Option<Duration>,
    recovery: Option<Duration>,
    attempts: &str,
    failover: &str,
) {
    let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{} ms", d.as_millis()));
    eprintln!(
        "fault-matrix | {fault} | {outcome} | {} | {} | {attempts} | {failover}",
        ms(servfail),
        ms(recovery)
    );
}

/// Steady queries for `STEADY`, one every `STEADY_INTERVAL`: each gets SERVFAIL in time, and
/// the daemon makes at most `MAX_ATTEMPTS` connection attempts meanwhile. Returns the attempts
/// and the slowest SERVFAIL.
async fn steady_servfail_without_storm(bench: &Bench, fault: Fault) -> (usize, Duration) {
    let udp = bench.proxy.udp4();
    let before = bench.attempts(fault);
    let start = Instant::now();
    let mut steady = JoinSet::new();
    while start.elapsed() < STEADY {
        steady.spawn(timed_udp(udp, "steady", "example"));
        tokio::time::sleep(STEADY_INTERVAL).await;
    }
    let attempts = bench.attempts(fault) - before;
    let sent = steady.len();
    let mut slowest = Duration::ZERO;
    while let Some(done) = steady.join_next().await {
        let (answer, elapsed) = done.expect("query task");
        assert_servfail_in_time(&answer, elapsed, &format!("{} (steady)", fault.name()));
        slowest = slowest.max(elapsed);
    }
    assert!(
        attempts <= MAX_ATTEMPTS,
        "{}: {attempts} connection attempts in {STEADY:?} of {sent} queries (at most \
         {MAX_ATTEMPTS}: the daemon backs off)",
        fault.name()
    );
    (attempts, slowest)
}

/// Queries (several at a time, one every 25 ms) until one is answered by `up`; the time from
/// `fixed` to that answer. Only SERVFAIL is allowed meanwhile.
async fn time_to_recover(proxy: &Proxy, up: &FakeUpstream, fixed: Instant) -> Duration {
    let recovered = Arc::new(AtomicBool::new(false));
    let mut queries = JoinSet::new();
    let mut first = None;
    while first.is_none() {
        assert!(
            fixed.elapsed() < Duration::from_secs(10),
            "no answer 10 s after the upstream was fixed"
        );
        if !recovered.load(Ordering::SeqCst) {
            let server = proxy.udp4();
            let recovered = recovered.clone();
            queries.spawn(async move {
                let (answer, _) = timed_udp(server, "recover", "example").await;
                let at = fixed.elapsed();
                if answer.metadata.response_code == ResponseCode::NoError {
                    recovered.store(true, Ordering::SeqCst);
                }
                (answer, at)
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        while let Some(done) = queries.try_join_next() {
            let (answer, at) = done.expect("query task");
            if answer.metadata.response_code == ResponseCode::NoError {
                assert_a(&answer, up.answer());
                first = Some(first.map_or(at, |f: Duration| f.min(at)));
            } else {
                assert_servfail(&answer);
            }
        }
    }
    // Any answer still on its way is either kind; none may be wrong.
    while let Some(done) = within(TIMEOUT * 4, "last recovery queries", queries.join_next()).await {
        let (answer, _) = done.expect("query task");
        if answer.metadata.response_code == ResponseCode::NoError {
            assert_a(&answer, up.answer());
        } else {
            assert_servfail(&answer);
        }
    }
    first.unwrap_or_default()
}

/// Runs the matrix for one fault (see the module documentation) and prints its row.
async fn fault_gives_servfail_in_time_without_storm_and_recovers(fault: Fault) {
    let mut bench = Bench::start(HEALTHY_ANSWER, matrix_config).await;
    let udp = bench.proxy.udp4();
    let (answer, _) = timed_udp(udp, "warm", HEALTHY_ZONE).await;
    assert_a(&answer, HEALTHY_ANSWER);
    let mark = bench.proxy.log_mark();
    bench.break_upstream(fault).await;
    let queries_before = bench.up.queries();

    // 1 and 2: SERVFAIL within the budget, while the healthy zone is answered at once.
    let mut servfail = Duration::ZERO;
    for i in 0..3 {
        let ((bad, bad_time), (good, good_time)) =
            tokio::join!(timed_udp(udp, "fault", "example"), async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                timed_udp(udp, "meanwhile", HEALTHY_ZONE).await
            });
        assert_servfail_in_time(&bad, bad_time, &format!("{} (UDP query {i})", fault.name()));
        servfail = servfail.max(bad_time);
        assert_a(&good, HEALTHY_ANSWER);
        assert!(
            good_time <= HEALTHY_LIMIT,
            "{}: the healthy zone took {good_time:?} meanwhile",
            fault.name()
        );
    }
    let (bad, bad_time) = timed_tcp(bench.proxy.tcp4(), "faulttcp", "example").await;
    assert_servfail_in_time(&bad, bad_time, &format!("{} (TCP)", fault.name()));
    servfail = servfail.max(bad_time);

    // 3: steady queries, a bounded number of connection attempts.
    let (attempts, slowest) = steady_servfail_without_storm(&bench, fault).await;
    servfail = servfail.max(slowest);

    // The log says what went wrong, once (and again only when the cause changes).
    let warnings = bench.down_warnings(mark);
    let kinds: Vec<String> = warnings.iter().filter_map(|l| error_kind(l)).collect();
    match fault.down() {
        Some((kind, cause)) => {
            assert_eq!(
                kinds,
                vec![kind.to_string()],
                "{}: the \"is down\" warnings' error kinds: {warnings:#?}",
                fault.name()
            );
            assert!(
                warnings[0].contains(cause),
                "{}: {}",
                fault.name(),
                warnings[0]
            );
        }
        None => assert!(
            warnings.is_empty(),
            "{}: the upstream was marked down: {warnings:#?}",
            fault.name()
        ),
    }
    if let Fault::Cert(_) = fault {
        assert_eq!(
            bench.up.queries(),
            queries_before,
            "{}: a query was sent over a connection whose certificate failed",
            fault.name()
        );
    }

    // 4: recovery.
    bench.fix_upstream(fault).await;
    let fixed = Instant::now();
    let recovery = time_to_recover(&bench.proxy, &bench.up, fixed).await;
    let limit = BACKOFF_MAX + RECOVERY_MARGIN;
    assert!(
        recovery <= limit,
        "{}: first answer {recovery:?} after the fix (at most {limit:?})",
        fault.name()
    );
    let (answer, _) = timed_tcp(bench.proxy.tcp4(), "aftertcp", "example").await;
    assert_a(&answer, bench.up.answer());
    let (answer, _) = timed_udp(bench.proxy.udp6(), "after6", "example").await;
    assert_a(&answer, bench.up.answer());

    // 5: nothing in plain text, to either upstream.
    assert_only_tls(&bench.up, fault.name());
    assert_only_tls(&bench.healthy, fault.name());
    bench.proxy.assert_running();

    drop(bench);

    let failover = failover_to_second_upstream(fault).await;
    print_row(
        fault.name(),
        &match kinds.first() {
            Some(kind) => format!("SERVFAIL, upstream down ({kind})"),
            None => "SERVFAIL, upstream stays up".to_string(),
        },
        Some(servfail),
        Some(recovery),
        &format!("{attempts} in {} s", STEADY.as_secs()),
        &format!(
            "{} of {} failed or late, slowest {} ms",
            failover.affected,
            failover.total,
            failover.slowest.as_millis()
        ),
    );
}

/// How queries fared with a healthy second upstream.
struct Failover {
    /// SERVFAIL, or later than `LATE`.
    affected: usize,
    total: usize,
    slowest: Duration,
}

/// An answer later than this counts as affected by the fault, though it came from the second
/// upstream: it waited on the first.
const LATE: Duration = Duration::from_millis(250);

/// With `up` failing as `fault` and a healthy upstream second in line: once the daemon has
/// marked `up` down, steady queries for `STEADY` are answered by the second upstream at once,
/// even where the fault hangs: the query that tries `up` again after its backoff asks the
/// second upstream at the same time. Only a loaded machine's hiccup may delay an answer.
async fn failover_to_second_upstream(fault: Fault) -> Failover {
    const BACKUP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    let mut bench = Bench::start(BACKUP, |up, backup| {
        // Second in line: `failover` keeps the order (`fastest` would try the unmeasured
        // backup first).
        let mut config = ProxyConfig::new(up.spec())
            .timeout("500ms")
            .extra("cache_serve_stale = \"0s\"")
            .extra("strategy = \"failover\"");
        config.upstreams.push(backup.spec());
        config
    })
    .await;
    let udp = bench.proxy.udp4();
    let mark = bench.proxy.log_mark();
    bench.break_upstream(fault).await;
    // The first query finds the fault (and may wait for it); the rest must not.
    let (answer, _) = timed_udp(udp, "detect", "example").await;
    if answer.metadata.response_code == ResponseCode::NoError {
        assert_a(&answer, BACKUP);
    }
    if fault.down().is_some() {
        bench
            .proxy
            .wait_for_log_after(mark, " is down: ", Duration::from_secs(5))
            .await;
    }
    let start = Instant::now();
    let mut steady = JoinSet::new();
    while start.elapsed() < STEADY {
        steady.spawn(timed_udp(udp, "failover", "example"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut result = Failover {
        affected: 0,
        total: 0,
        slowest: Duration::ZERO,
    };
    while let Some(done) = steady.join_next().await {
        let (answer, elapsed) = done.expect("query task");
        result.total += 1;
        result.slowest = result.slowest.max(elapsed);
        assert!(
            elapsed <= TIMEOUT + MARGIN,
            "{}: an answer after {elapsed:?} with a second upstream",
            fault.name()
        );
        if answer.metadata.response_code == ResponseCode::NoError {
            assert_a(&answer, BACKUP);
        } else {
            assert_servfail(&answer);
        }
        if answer.metadata.response_code != ResponseCode::NoError || elapsed > LATE {
            result.affected += 1;
        }
    }
    let allowed = 3;
    assert!(
        result.affected <= allowed,
        "{}: {} of {} queries failed or took over {LATE:?} with a healthy second upstream (at \
         most {allowed})",
        fault.name(),
        result.affected,
        result.total
    );
    assert_only_tls(&bench.up, fault.name());
    assert_only_tls(&bench.healthy, fault.name());
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connection() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Refused).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_never_starts() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::NoTls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_instead_of_tls() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::HttpInsteadOfTls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stall_after_handshake() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Stall).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_response() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::ResetMidResponse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_on_query() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::CloseOnQuery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_answer() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Garbage).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_prefix_beyond_the_data() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::LengthOverrun).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_id() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::WrongId).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_question() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::WrongQuestion).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answer() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Truncated).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_wrong_name() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Cert(CertKind::WrongName)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_untrusted_ca() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Cert(CertKind::UnknownCa)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_expired() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Cert(CertKind::Expired)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_not_yet_valid() {
    fault_gives_servfail_in_time_without_storm_and_recovers(Fault::Cert(CertKind::NotYetValid))
        .await;
}

/// An upstream may close a connection after some queries (servers limit them): the query caught
/// by the close is retried on a new connection, so clients never notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_after_n_queries_is_answered_on_a_new_connection() {
    const N: usize = 3;
    const QUERIES: usize = 30;
    let bench = Bench::start(HEALTHY_ANSWER, matrix_config).await;
    bench.up.set_mode(Mode::CloseAfter(N));
    let before = bench.up.connections();
    let mut slowest = Duration::ZERO;
    for i in 0..QUERIES {
        let (answer, elapsed) = if i % 2 == 0 {
            timed_udp(bench.proxy.udp4(), "closeafter", "example").await
        } else {
            timed_tcp(bench.proxy.tcp4(), "closeaftertcp", "example").await
        };
        assert_a(&answer, bench.up.answer());
        slowest = slowest.max(elapsed);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connections = bench.up.connections() - before;
    // The connection opened before the switch serves the first queries too.
    assert!(
        (QUERIES / N..=QUERIES / N + 1).contains(&connections),
        "{connections} connections for {QUERIES} queries, {N} per connection"
    );
    assert!(slowest <= TIMEOUT, "slowest answer {slowest:?}");
    assert!(
        bench.down_warnings(0).is_empty(),
        "an upstream closing after answering was marked down"
    );
    assert_only_tls(&bench.up, "closes after N queries");
    print_row(
        &format!("closes after {N} queries"),
        "answered: the query caught by the close is retried on a new connection",
        None,
        None,
        &format!("{connections} for {QUERIES} queries"),
        "-",
    );
}

/// An established connection goes silent (no answer, no close): the first query that times
/// out on it without anything coming back takes it out of use; the next queries do not wait on
/// it, and a new connection answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_connection_is_abandoned_after_one_timeout() {
    let bench = Bench::start(HEALTHY_ANSWER, matrix_config).await;
    let udp = bench.proxy.udp4();
    let before = bench.up.connections();
    bench.up.freeze_connections();

    // A few queries at once: all are on the dead connection.
    let mut first = JoinSet::new();
    for _ in 0..5 {
        first.spawn(timed_udp(udp, "halfopen", "example"));
    }
    let mut servfail = Duration::ZERO;
    while let Some(done) = first.join_next().await {
        let (answer, elapsed) = done.expect("query task");
        assert_servfail_in_time(&answer, elapsed, "half-open connection");
        servfail = servfail.max(elapsed);
    }
    let detected = Instant::now();

    // None of the next queries waits for the timeout; within the first backoff (125 ms) they
    // are answered on a new connection.
    let mut answered = None;
    for _ in 0..10 {
        let (answer, elapsed) = timed_udp(udp, "afterhalfopen", "example").await;
        assert!(
            elapsed < TIMEOUT / 2,
            "a query after the half-open connection was detected took {elapsed:?}"
        );
        if answer.metadata.response_code == ResponseCode::NoError {
            assert_a(&answer, bench.up.answer());
            answered.get_or_insert(detected.elapsed());
        } else {
            assert_servfail(&answer);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answered = answered.expect("no answer in 10 queries after the half-open connection");
    assert!(
        answered <= Duration::from_millis(125) + RECOVERY_MARGIN,
        "first answer {answered:?} after the half-open connection was abandoned"
    );
    assert_eq!(
        bench.up.connections() - before,
        1,
        "one new connection replaces the half-open one"
    );
    assert_only_tls(&bench.up, "half-open");
    print_row(
        "half-open: silent on an open connection",
        "SERVFAIL for the queries on it, then answered on a new connection",
        Some(servfail),
        Some(answered),
        "1",
        "-",
    );
}

/// A server that speaks only TLS 1.1 (openssl s_server): rustls offers TLS 1.2 and 1.3 only,
/// so the handshake fails, the client gets SERVFAIL, and the log says why (`tls`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_1_only_upstream_gives_servfail_with_a_tls_error() {
    if !require_tool("openssl") {
        return;
    }
    let dir = crate::support::upstream::open_temp_dir();
    let cert = issue_cert("dns.test", false);
    let cert_file = dir.path().join("cert.pem");
    let key_file = dir.path().join("key.pem");
    let ca_file = dir.path().join("ca.pem");
    write_file(&cert_file, &cert.cert_pem, 0o644);
    write_file(&key_file, &cert.key_pem, 0o600);
    write_file(&ca_file, crate::support::upstream::ca_pem(), 0o644);
    let port = crate::support::proxy::free_port();
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut server = tokio::process::Command::new("openssl")
        .args(["s_server", "-accept", &address.to_string(), "-tls1_1"])
        .args(["-cipher", "DEFAULT@SECLEVEL=0", "-quiet"])
        .arg("-cert")
        .arg(&cert_file)
        .arg("-key")
        .arg(&key_file)
        // s_server stops at the end of its input: keep it open.
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start openssl s_server");
    within(
        Duration::from_secs(10),
        "openssl s_server listening",
        async {
            while TcpStream::connect(address).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await;

    let spec = crate::support::proxy::UpstreamSpec {
        address,
        tls_name: Some("dns.test".to_string()),
        ca_file: Some(ca_file),
        pin_sha256: Vec::new(),
    };
    let proxy = Proxy::start(
        &ProxyConfig::new(spec)
            .timeout("500ms")
            .extra("cache_serve_stale = \"0s\""),
    )
    .await;
    let mut servfail = Duration::ZERO;
    for i in 0..3 {
        let (answer, elapsed) = timed_udp(proxy.udp4(), "tls11", "example").await;
        assert_servfail_in_time(&answer, elapsed, &format!("TLS 1.1 server (query {i})"));
        servfail = servfail.max(elapsed);
    }
    let (answer, elapsed) = timed_tcp(proxy.tcp4(), "tls11tcp", "example").await;
    assert_servfail_in_time(&answer, elapsed, "TLS 1.1 server (TCP)");
    let line = proxy
        .wait_for_log(" is down: ", Duration::from_secs(5))
        .await;
    assert_eq!(error_kind(&line).as_deref(), Some("tls"), "{line}");
    assert!(line.contains("TLS handshake failed"), "{line}");
    proxy.assert_running();
    let _ = server.start_kill();
    print_row(
        "server offering only TLS 1.1",
        "SERVFAIL, upstream down (tls)",
        Some(servfail.max(elapsed)),
        None,
        "-",
        "-",
    );
    eprintln!("TLS 1.1 server: {line}");
}

/// With serve-stale on, a name whose cached answer has expired gets that answer, within the
/// timeout, whatever the fault; a name never seen still gets SERVFAIL.
async fn stale_answer_is_served_for(faults: &[Fault]) {
    let mut bench = Bench::start(HEALTHY_ANSWER, |up, _| {
        ProxyConfig::new(up.spec())
            .timeout("500ms")
            .extra("cache_max_ttl = \"1s\"")
    })
    .await;
    let udp = bench.proxy.udp4();
    let names: Vec<String> = faults.iter().map(|_| unique("stale", "example")).collect();
    for name in &names {
        let answer = crate::support::client::udp_query(udp, name, RecordType::A, None, false).await;
        assert_a(&answer, bench.up.answer());
    }
    // Every entry expires (TTL clamped to 1 s); serve-stale keeps them for a day.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for (fault, name) in faults.iter().zip(&names) {
        bench.break_upstream(*fault).await;
        let query = make_query(name, RecordType::A, None, false);
        let start = Instant::now();
        let (answer, _) = udp_exchange(udp, &query).await;
        let stale_after = start.elapsed();
        assert_a(&answer, bench.up.answer());
        assert!(
            answer.answers[0].ttl <= 30,
            "{}: a stale answer has a TTL of at most 30 s",
            fault.name()
        );
        assert!(
            stale_after <= TIMEOUT + MARGIN,
            "{}: stale answer after {stale_after:?}",
            fault.name()
        );
        let (answer, elapsed) = timed_udp(udp, "neverseen", "example").await;
        assert_servfail_in_time(&answer, elapsed, fault.name());
        eprintln!(
            "fault-matrix stale | {} | stale answer after {} ms",
            fault.name(),
            stale_after.as_millis()
        );
        bench.fix_upstream(*fault).await;
        time_to_recover(&bench.proxy, &bench.up, Instant::now()).await;
    }
    assert_only_tls(&bench.up, "serve-stale");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answer_is_served_when_connecting_fails() {
    stale_answer_is_served_for(&[
        Fault::Refused,
        Fault::Blackhole,
        Fault::NoTls,
        Fault::HttpInsteadOfTls,
        Fault::Cert(CertKind::WrongName),
        Fault::Cert(CertKind::UnknownCa),
        Fault::Cert(CertKind::Expired),
        Fault::Cert(CertKind::NotYetValid),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_answer_is_served_when_answers_fail() {
    stale_answer_is_served_for(&[
        Fault::Stall,
        Fault::ResetMidResponse,
        Fault::CloseOnQuery,
        Fault::Garbage,
        Fault::LengthOverrun,
        Fault::WrongId,
        Fault::WrongQuestion,
        Fault::Truncated,
    ])
    .await;
}

/// Two upstreams, 2000 queries at a steady 500 per second, the first upstream killed halfway:
/// every query is answered, at most 1 % with SERVFAIL or later than `LATE` beyond the slowest
/// percent of the queries sent before the kill (on a machine busy with other work every query
/// is slower, and that is not the failover's doing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_first_upstream_dies_under_load() {
    const QUERIES: usize = 2000;
    const INTERVAL: Duration = Duration::from_millis(2);
    const LATE: Duration = Duration::from_millis(250);
    const SECOND: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
    let mut bench = Bench::start(SECOND, |up, second| {
        // `failover`: the first carries the load until it dies.
        let mut config = ProxyConfig::new(up.spec())
            .timeout("500ms")
            .extra("cache_serve_stale = \"0s\"")
            .extra("strategy = \"failover\"");
        config.upstreams.push(second.spec());
        config
    })
    .await;
    let udp = bench.proxy.udp4();
    let mut queries = JoinSet::new();
    let start = Instant::now();
    let mut killed = None;
    for i in 0..QUERIES {
        if i == QUERIES / 2 {
            bench.up.stop().await;
            killed = Some(bench.up.queries());
        }
        queries.spawn(async move { (i, timed_udp(udp, "load", "example").await) });
        // A steady rate: the schedule, not the time each spawn took, sets the next send.
        let next = start + INTERVAL * (i as u32 + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    let (mut failed, mut by_first, mut by_second) = (0, 0, 0);
    let mut slowest = Duration::ZERO;
    let mut elapsed_by_query = vec![Duration::ZERO; QUERIES];
    while let Some(done) = within(Duration::from_secs(10), "answers", queries.join_next()).await {
        let (i, (answer, elapsed)) = done.expect("query task");
        slowest = slowest.max(elapsed);
        elapsed_by_query[i] = elapsed;
        match answer.metadata.response_code {
            ResponseCode::NoError => match a_records(&answer)[..] {
                [a] if a == bench.up.answer() => by_first += 1,
                [a] if a == SECOND => by_second += 1,
                _ => panic!("query {i}: unexpected answer {answer}"),
            },
            _ => {
                assert_servfail(&answer);
                failed += 1;
            }
        }
    }
    let mut before_kill = elapsed_by_query[..QUERIES / 2].to_vec();
    before_kill.sort();
    let baseline = before_kill[before_kill.len() * 99 / 100];
    let late = elapsed_by_query[QUERIES / 2..]
        .iter()
        .filter(|elapsed| **elapsed > baseline + LATE)
        .count();
    let affected = failed + late;
    eprintln!(
        "fault-matrix | first of two upstreams killed under load | {by_first} answered by the \
         first, {by_second} by the second, {failed} SERVFAIL, {late} later than {LATE:?} past \
         {baseline:?} (the 99th percentile before the kill), slowest {slowest:?} | rate {:.0}/s",
        QUERIES as f64 / start.elapsed().as_secs_f64()
    );
    assert!(
        affected * 100 <= QUERIES,
        "{affected} of {QUERIES} queries failed or were late"
    );
    assert!(
        by_first >= QUERIES / 3,
        "the first upstream answered only {by_first}"
    );
    assert!(
        by_second >= QUERIES / 3,
        "the second upstream answered only {by_second}"
    );
    assert!(killed.is_some_and(|k| k >= QUERIES / 3));
    assert_only_tls(&bench.up, "failover under load");
    assert_only_tls(&bench.healthy, "failover under load");
}

// Regression tests, one per fault the daemon used to handle wrongly.

/// An upstream that completes TLS and then closes every connection without answering used to
/// count as up (the handshake worked), so every query opened two new connections (query and
/// retry): about 40 a second here. A connection that dies before its first answer now counts
/// as a failed attempt, and the upstream is up again only once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dropping_every_query_is_backed_off_not_redialled_per_query() {
    let mut bench = Bench::start(HEALTHY_ANSWER, matrix_config).await;
    bench.break_upstream(Fault::CloseOnQuery).await;
    let (attempts, _) = steady_servfail_without_storm(&bench, Fault::CloseOnQuery).await;
    assert!(
        attempts >= 2,
        "the upstream was not retried ({attempts} attempts)"
    );
}

/// Answers with ids nobody asked for used to count as signs of life, so the connection was
/// never found stalled: the upstream stayed up and every query waited out its whole budget on
/// it, never failing over. Now only answers to a waiting query count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answering_only_wrong_ids_is_marked_down() {
    let mut bench = Bench::start(HEALTHY_ANSWER, matrix_config).await;
    let udp = bench.proxy.udp4();
    let mark = bench.proxy.log_mark();
    bench.break_upstream(Fault::WrongId).await;
    let (answer, elapsed) = timed_udp(udp, "wrongid", "example").await;
    assert_servfail_in_time(&answer, elapsed, "wrong ids");
    let line = bench
        .proxy
        .wait_for_log_after(mark, " is down: ", Duration::from_secs(2))
        .await;
    assert_eq!(error_kind(&line).as_deref(), Some("timeout"), "{line}");
    // Down now: the next query fails at once instead of waiting on the upstream again.
    let (answer, elapsed) = timed_udp(udp, "wrongid", "example").await;
    assert_servfail(&answer);
    assert!(elapsed < TIMEOUT / 2, "the next query took {elapsed:?}");
}

/// While a down upstream was tried again after its backoff, every query arriving meanwhile
/// waited on that try, which can hang until the deadline (SYN dropped, TLS never starting, a
/// stalled connection): with a healthy second upstream, about a third of the queries still
/// waited up to the whole timeout. Now one query at a time tries a down upstream, asking the
/// next one at the same time, and the others go straight to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_skip_a_hanging_upstream_while_it_is_retried() {
    for fault in [Fault::NoTls, Fault::Stall] {
        let failover = failover_to_second_upstream(fault).await;
        eprintln!(
            "{}: {} of {} queries failed or late",
            fault.name(),
            failover.affected,
            failover.total
        );
    }
}

/// The backoff used to run from the end of a failed try: when the upstream recovered just
/// after a try had started that then hung until its deadline, the next try came a whole
/// backoff after that, up to `TIMEOUT` + `BACKOFF_MAX` after the fix. It now runs from the
/// start of the try, so a recovered upstream is used again within `BACKOFF_MAX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_fixed_during_a_hanging_attempt_is_used_within_the_backoff() {
    let mut bench = Bench::start(HEALTHY_ANSWER, matrix_config).await;
    let mark = bench.proxy.log_mark();
    bench.break_upstream(Fault::NoTls).await;
    // Queries all along, as clients would send them.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let udp = bench.proxy.udp4();
        tokio::spawn(async move {
            let mut queries = JoinSet::new();
            while !stop.load(Ordering::SeqCst) {
                queries.spawn(timed_udp(udp, "hang", "example"));
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            while let Some(done) = queries.join_next().await {
                let (answer, _) = done.expect("query task");
                if answer.metadata.response_code != ResponseCode::NoError {
                    assert_servfail(&answer);
                }
            }
        })
    };
    // Four failed tries: the backoff is at its ceiling (125, 250, 500 ms, then 1 s).
    within(Duration::from_secs(10), "four failed tries", async {
        loop {
            let failed = bench.proxy.log_lines()[mark..]
                .iter()
                .filter(|l| l.contains(" is down: ") || l.contains("still down: "))
                .count();
            if failed >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The upstream recovers just as the next try starts; that try hangs to its deadline.
    let tries = bench.up.connections();
    bench
        .up
        .wait_until(
            "tried again",
            |up| up.connections() > tries,
            Duration::from_secs(5),
        )
        .await;
    bench.fix_upstream(Fault::NoTls).await;
    let fixed = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let recovery = time_to_recover(&bench.proxy, &bench.up, fixed).await;
    load.await.expect("load task");
    assert!(
        recovery <= BACKOFF_MAX + RECOVERY_MARGIN,
        "first answer {recovery:?} after the upstream recovered (backoff at most {BACKOFF_MAX:?})"
    );
    eprintln!("recovered {recovery:?} after a fix during a hanging try");
}

/// The upstream is down when the daemon starts: READY=1 comes all the same, queries get
/// SERVFAIL in time, and answers start within the backoff once the upstream is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_at_start_gives_servfail_then_answers_once_it_is_up() {
    let mut up = FakeUpstream::start().await;
    up.stop().await;
    let proxy = Proxy::start(
        &ProxyConfig::new(up.spec())
            .timeout("500ms")
            .extra("cache_serve_stale = \"0s\""),
    )
    .await;
    let (answer, udp_elapsed) = timed_udp(proxy.udp4(), "early", "example").await;
    assert_servfail_in_time(&answer, udp_elapsed, "down at start (UDP)");
    let (answer, tcp_elapsed) = timed_tcp(proxy.tcp6(), "early6", "example").await;
    assert_servfail_in_time(&answer, tcp_elapsed, "down at start (TCP, IPv6)");
    up.restart().await;
    let recovery = time_to_recover(&proxy, &up, Instant::now()).await;
    assert!(
        recovery <= BACKOFF_MAX + RECOVERY_MARGIN,
        "first answer {recovery:?} after the upstream came up"
    );
    let (answer, _) = timed_tcp(proxy.tcp4(), "latetcp", "example").await;
    assert_a(&answer, up.answer());
    let (answer, _) = timed_udp(proxy.udp6(), "late6", "example").await;
    assert_a(&answer, up.answer());
    assert_only_tls(&up, "down at start");
    print_row(
        "down when the daemon starts",
        "SERVFAIL until it is up; READY=1 all the same",
        Some(udp_elapsed.max(tcp_elapsed)),
        Some(recovery),
        "-",
        "-",
    );
}
