//! The forwarder's concurrent logic (retry, hedging, coalescing, serve-stale, the budget,
//! failover) against scripted upstreams on a paused clock: each upstream does per call what
//! its script says, after a scripted delay, and every call is logged with its time, so a test
//! asserts who was asked, in which order, at which instant, and what the client got.
//!
//! Then upstreams whose connections are scripted but whose pool, health, backoff and probing
//! are the daemon's own (`PooledUpstream`): one black-holed (its connect never completes)
//! beside a healthy one, under each strategy.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::time::Instant;

use super::Forwarder;
use crate::common::error::UpstreamError;
use crate::common::metrics::{Metrics, UpstreamMetrics};
use crate::common::transport::Transport;
use crate::config::{Config, Dnssec, Hedge, Strategy};
use crate::resolve::zones::LearnedZones;
use crate::upstream::exchange::{Exchange, Readiness};
use crate::upstream::group::Group;
use crate::upstream::pool::{Channel, Connector, PooledUpstream};
use crate::wire::dns::{self, Query};
use crate::wire::name::ZoneName;

/// The query budget (`timeout`) of every test.
const BUDGET: Duration = Duration::from_secs(1);
/// The TTL of every scripted answer.
const TTL: u32 = 60;

/// What a scripted upstream does with one call.
#[derive(Clone)]
enum Step {
    /// Answers after this long with one A record: the upstream's own address, so the client's
    /// answer says who answered.
    Answer(Duration),
    /// Fails with the error after this long.
    Fail(Duration, UpstreamError),
    /// Fails with the error at once and is down from then on, as a DoT upstream is when its
    /// connection dies before answering anything.
    FailDown(UpstreamError),
    /// Never answers.
    Hang,
}

/// Who was asked, and when.
type Log = Arc<Mutex<Vec<(SocketAddr, Instant)>>>;

/// An upstream that follows its script, one step per call; a call beyond the script panics.
/// Like the real ones, it never runs past the deadline it is given.
struct Scripted {
    address: SocketAddr,
    metrics: UpstreamMetrics,
    script: Mutex<VecDeque<Step>>,
    available: AtomicBool,
    /// True for a DoT-like upstream, false for a plain-DNS-like one.
    detects_failure: bool,
    log: Log,
}

impl Exchange for Scripted {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    fn readiness(&self, _now: Instant) -> Readiness {
        match self.available.load(Ordering::Relaxed) {
            true => Readiness::Ready,
            false => Readiness::Down,
        }
    }

    fn is_up(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        format!("{} (scripted)", self.address)
    }

    fn detects_failure(&self) -> bool {
        self.detects_failure
    }

    async fn exchange(
        &self,
        _query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        self.log
            .lock()
            .unwrap()
            .push((self.address, Instant::now()));
        let step = self.script.lock().unwrap().pop_front();
        let Some(step) = step else {
            panic!("{} was asked more often than scripted", self.address);
        };
        let (after, result) = match step {
            Step::Answer(after) => (after, Ok(response(self.address, frame))),
            Step::Fail(after, error) => (after, Err(error)),
            Step::FailDown(error) => {
                self.available.store(false, Ordering::Relaxed);
                (Duration::ZERO, Err(error))
            }
            Step::Hang => (Duration::MAX, Err(UpstreamError::Timeout)),
        };
        match tokio::time::timeout_at(deadline, tokio::time::sleep(after)).await {
            Ok(()) => result,
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

/// The response of the upstream at `address` to the upstream query in `frame` (2-byte
/// length, then the message): one A record, that address.
fn response(address: SocketAddr, frame: &[u8]) -> Vec<u8> {
    let request = Message::from_vec(&frame[2..]).unwrap();
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    let std::net::IpAddr::V4(ip) = address.ip() else {
        panic!("scripted upstreams are on IPv4");
    };
    let name = request.queries[0].name().clone();
    response.add_answer(Record::from_rdata(name, TTL, RData::A(A(ip))));
    response.to_vec().unwrap()
}

/// A test's upstreams (127.0.0.1, .2, … in that order) and their shared call log.
struct Upstreams {
    log: Log,
    members: Vec<Scripted>,
}

impl Upstreams {
    fn new() -> Upstreams {
        Upstreams {
            log: Log::default(),
            members: Vec::new(),
        }
    }

    /// Adds a DoT-like upstream (it tells a dead connection by itself) with this script.
    fn tls(self, script: &[Step]) -> Upstreams {
        self.add(script, true)
    }

    /// Adds a plain-DNS-like upstream with this script.
    fn plain(self, script: &[Step]) -> Upstreams {
        self.add(script, false)
    }

    fn add(mut self, script: &[Step], detects_failure: bool) -> Upstreams {
        let address = upstream(self.members.len());
        self.members.push(Scripted {
            address,
            metrics: Metrics::new().upstream(address),
            script: Mutex::new(script.iter().cloned().collect()),
            available: AtomicBool::new(true),
            detects_failure,
            log: self.log.clone(),
        });
        self
    }

    /// The forwarder over these upstreams, with `BUDGET` and no forward zones.
    fn forwarder(
        self,
        strategy: Strategy,
        hedge: Hedge,
        cache: bool,
    ) -> (Arc<Forwarder<Scripted>>, Log) {
        // These tests are about upstreams, not validation: see `dnssec` for that.
        let mut config = Config {
            timeout: BUDGET,
            strategy,
            hedge,
            dnssec: Dnssec::Off,
            ..Config::default()
        };
        config.cache.enabled = cache;
        let group = Group::new(self.members, strategy, hedge);
        let forwarder =
            Forwarder::assemble(&config, &Metrics::new(), group, Vec::new(), Vec::new());
        (Arc::new(forwarder), self.log)
    }
}

/// The address of the `index`th upstream.
fn upstream(index: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1 + index as u8], 853))
}

/// A client's A query for `name`, with id `id`.
fn query(id: u16, name: &str) -> Query {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Question::query(
        Name::from_ascii(name).unwrap(),
        RecordType::A,
    ));
    dns::parse_query(&message.to_vec().unwrap()).unwrap()
}

const CLIENT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 5353);

/// The answer's id, response code and the addresses in its A records (who answered).
fn read(answer: &[u8]) -> (u16, ResponseCode, Vec<Ipv4Addr>) {
    let message = Message::from_vec(answer).unwrap();
    let addresses = message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(A(ip)) => Some(*ip),
            _ => None,
        })
        .collect();
    (
        message.metadata.id,
        message.metadata.response_code,
        addresses,
    )
}

/// The answer of `forwarder` to a client's A query for `name` with id `id`, over UDP, as
/// `read` gives it.
async fn ask<R: Exchange>(
    forwarder: &Arc<Forwarder<R>>,
    id: u16,
    name: &str,
) -> (u16, ResponseCode, Vec<Ipv4Addr>) {
    read(
        &forwarder
            .answer(&query(id, name), CLIENT, Transport::Udp)
            .await,
    )
}

/// What became of one client query.
struct Outcome {
    /// The response code and who answered.
    answer: (ResponseCode, Vec<Ipv4Addr>),
    /// The upstream calls made from the query on, as `calls` gives them.
    calls: Vec<(usize, u64)>,
    took: Duration,
}

/// Asks `forwarder` the client's A query for `example.com.` (id 7) now; `log` is its
/// upstreams' call log.
async fn ask_once<R: Exchange>(forwarder: &Arc<Forwarder<R>>, log: &Log) -> Outcome {
    let start = Instant::now();
    let (id, rcode, by) = ask(forwarder, 7, "example.com.").await;
    assert_eq!(id, 7);
    Outcome {
        answer: (rcode, by),
        calls: calls(log, start),
        took: start.elapsed(),
    }
}

/// The IPv4 address of the `index`th upstream, as its answers carry it.
fn answered_by(index: usize) -> Vec<Ipv4Addr> {
    match upstream(index).ip() {
        std::net::IpAddr::V4(ip) => vec![ip],
        std::net::IpAddr::V6(_) => unreachable!(),
    }
}

/// The log as (upstream index, milliseconds since `start`).
fn calls(log: &Log, start: Instant) -> Vec<(usize, u64)> {
    log.lock()
        .unwrap()
        .iter()
        .map(|(address, at)| {
            let index = (0..255).find(|&i| upstream(i) == *address).unwrap();
            (index, at.duration_since(start).as_millis() as u64)
        })
        .collect()
}

fn refused() -> UpstreamError {
    UpstreamError::Connect(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)))
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn a_dead_connection_is_retried_once_on_the_same_upstream() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[
            Step::Fail(ms(10), UpstreamError::Closed),
            Step::Answer(ms(20)),
        ])
        .tls(&[])
        .forwarder(Strategy::Failover, Hedge::Off, false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(0)));
    assert_eq!(asked.calls, vec![(0, 0), (0, 10)]);
    assert_eq!(asked.took, ms(30));
}

#[tokio::test(start_paused = true)]
async fn a_second_dead_connection_goes_to_the_next_upstream() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[
            Step::Fail(ms(10), UpstreamError::Closed),
            Step::Fail(ms(10), UpstreamError::Closed),
        ])
        .tls(&[Step::Answer(ms(5))])
        .forwarder(Strategy::Failover, Hedge::Off, false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(1)));
    assert_eq!(asked.calls, vec![(0, 0), (0, 10), (1, 20)]);
}

#[tokio::test(start_paused = true)]
async fn a_dead_connection_to_an_upstream_now_down_is_retried_on_the_next() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::FailDown(UpstreamError::Closed)])
        .tls(&[Step::Answer(ms(5))])
        .forwarder(Strategy::Failover, Hedge::Off, false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(1)));
    assert_eq!(asked.calls, vec![(0, 0), (1, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_upstream_is_hedged_after_the_delay_and_the_first_answer_wins() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::Answer(ms(500))])
        .tls(&[Step::Answer(ms(10))])
        .forwarder(Strategy::Failover, Hedge::After(ms(50)), false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(1)));
    assert_eq!(asked.calls, vec![(0, 0), (1, 50)]);
    assert_eq!(asked.took, ms(60), "the hedge's answer, not the first's");
    assert_eq!(forwarder.counts.hedged.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedged_upstream_that_answers_first_still_wins() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::Answer(ms(70))])
        .tls(&[Step::Answer(ms(100))])
        .forwarder(Strategy::Failover, Hedge::After(ms(50)), false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(0)));
    assert_eq!(asked.calls, vec![(0, 0), (1, 50)]);
    assert_eq!(asked.took, ms(70));
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_leaves_the_first_upstream_to_answer() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::Answer(ms(200))])
        .tls(&[Step::Fail(ms(10), refused())])
        .forwarder(Strategy::Failover, Hedge::After(ms(50)), false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(0)));
    assert_eq!(asked.calls, vec![(0, 0), (1, 50)]);
    assert_eq!(asked.took, ms(200));
}

#[tokio::test(start_paused = true)]
async fn identical_queries_in_flight_make_one_upstream_call() {
    let (forwarder, log) = Upstreams::new().tls(&[Step::Answer(ms(100))]).forwarder(
        Strategy::Failover,
        Hedge::Off,
        false,
    );
    let start = Instant::now();
    let clients: Vec<_> = (0..10)
        .map(|id| {
            let forwarder = forwarder.clone();
            tokio::spawn(async move { ask(&forwarder, id, "example.com.").await })
        })
        .collect();
    for (id, client) in clients.into_iter().enumerate() {
        assert_eq!(
            client.await.unwrap(),
            (id as u16, ResponseCode::NoError, answered_by(0))
        );
    }
    assert_eq!(calls(&log, start), vec![(0, 0)]);
    assert_eq!(start.elapsed(), ms(100));
    assert!(forwarder.in_flight.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_expired_answer_is_served_when_the_upstream_fails() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[
            Step::Answer(ms(0)),
            Step::Fail(ms(10), refused()),
            Step::Fail(ms(10), refused()),
        ])
        .forwarder(Strategy::Failover, Hedge::Off, true);
    assert_eq!(
        ask(&forwarder, 1, "example.com.").await,
        (1, ResponseCode::NoError, answered_by(0))
    );
    tokio::time::advance(Duration::from_secs(u64::from(TTL) + 1)).await;

    assert_eq!(
        ask(&forwarder, 2, "example.com.").await,
        (2, ResponseCode::NoError, answered_by(0))
    );
    assert_eq!(forwarder.counts.cache.stale.get(), 1);
    // A name never answered has nothing stale to fall back on.
    assert_eq!(
        ask(&forwarder, 3, "example.org.").await,
        (3, ResponseCode::ServFail, vec![])
    );
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_is_servfail_and_no_other_upstream_is_asked() {
    let (forwarder, log) = Upstreams::new().tls(&[Step::Hang]).tls(&[]).forwarder(
        Strategy::Failover,
        Hedge::Off,
        false,
    );
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::ServFail, vec![]));
    assert_eq!(asked.took, BUDGET);
    assert_eq!(asked.calls, vec![(0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn plain_upstreams_share_the_budget_so_the_last_gets_its_try() {
    let (forwarder, log) = Upstreams::new()
        .plain(&[Step::Hang])
        .plain(&[Step::Hang])
        .plain(&[Step::Answer(ms(10))])
        .forwarder(Strategy::Failover, Hedge::Off, false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(2)));
    // A third of the budget each, then half of the rest (the timer rounds up to the ms).
    assert_eq!(asked.calls, vec![(0, 0), (1, 334), (2, 667)]);
}

#[tokio::test(start_paused = true)]
async fn failover_asks_in_configuration_order_and_skips_the_down() {
    let upstreams = Upstreams::new()
        .tls(&[])
        .tls(&[Step::Fail(ms(10), refused())])
        .tls(&[Step::Fail(ms(10), UpstreamError::Protocol)])
        .tls(&[Step::Answer(ms(10))])
        .tls(&[]);
    upstreams.members[0]
        .available
        .store(false, Ordering::Relaxed);
    let (forwarder, log) = upstreams.forwarder(Strategy::Failover, Hedge::Off, false);
    let asked = ask_once(&forwarder, &log).await;
    assert_eq!(asked.answer, (ResponseCode::NoError, answered_by(3)));
    assert_eq!(asked.calls, vec![(1, 0), (2, 10), (3, 20)]);
}

// Upstreams over scripted connections, with the daemon's own pool, health, backoff and probing.

/// The budget of these tests, as in the measurement that found the fault: a hanging connect's
/// first SYN retransmission (after 1 s) falls within it, as it does with the default 2 s.
const LONG_BUDGET: Duration = Duration::from_millis(1500);
/// How long a scripted connection takes to open (TCP and TLS), and to answer a query.
const CONNECT: Duration = Duration::from_millis(20);
const ANSWER: Duration = Duration::from_millis(10);
/// Queries of the steady load come this far apart.
const INTERVAL: Duration = Duration::from_millis(150);
/// Every strategy, for the tests that hold under each.
const STRATEGIES: [Strategy; 3] = [Strategy::Failover, Strategy::RoundRobin, Strategy::Fastest];
/// The longest backoff of a down upstream.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What becomes of packets to a scripted upstream (`OPEN`, `BLACK_HOLED`, `REFUSED`);
/// switched during a test.
type Path = Arc<AtomicU8>;
const OPEN: u8 = 0;
/// Every packet dropped: nothing ever comes back.
const BLACK_HOLED: u8 = 1;
/// Nothing listens: the connect is refused at once.
const REFUSED: u8 = 2;

/// Opens scripted connections, as TCP does: the SYN, then its retransmissions 1, 3, 7 and 15 s
/// later; the connect completes `CONNECT` after the first that finds the path open (or is
/// refused at once), or fails with a connect timeout at the deadline.
struct ScriptedConnector {
    address: SocketAddr,
    path: Path,
    /// Connection attempts, with their time.
    log: Log,
}

impl Connector for ScriptedConnector {
    type Channel = ScriptedChannel;

    fn address(&self) -> SocketAddr {
        self.address
    }

    async fn connect(
        &self,
        deadline: Instant,
        _metrics: &UpstreamMetrics,
    ) -> Result<ScriptedChannel, UpstreamError> {
        let start = Instant::now();
        self.log.lock().unwrap().push((self.address, start));
        for after in [0, 1, 3, 7, 15].map(Duration::from_secs) {
            if start + after >= deadline {
                break;
            }
            tokio::time::sleep_until(start + after).await;
            if self.path.load(Ordering::SeqCst) == REFUSED {
                return Err(refused());
            }
            if self.path.load(Ordering::SeqCst) == OPEN {
                let connected = tokio::time::timeout_at(deadline, tokio::time::sleep(CONNECT));
                return match connected.await {
                    Ok(()) => Ok(ScriptedChannel {
                        address: self.address,
                        open: AtomicBool::new(true),
                        outstanding: AtomicUsize::new(0),
                        responses: AtomicU64::new(0),
                    }),
                    Err(_) => Err(UpstreamError::ConnectTimeout),
                };
            }
        }
        tokio::time::sleep_until(deadline).await;
        Err(UpstreamError::ConnectTimeout)
    }
}

/// A scripted connection: answers every query `ANSWER` after it is sent.
struct ScriptedChannel {
    address: SocketAddr,
    open: AtomicBool,
    outstanding: AtomicUsize,
    responses: AtomicU64,
}

impl Channel for ScriptedChannel {
    async fn query(&self, frame: Vec<u8>, _question: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        self.outstanding.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(ANSWER).await;
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.responses.fetch_add(1, Ordering::SeqCst);
        Ok(response(self.address, &frame))
    }

    fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::SeqCst)
    }

    fn responses(&self) -> u64 {
        self.responses.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }
}

type Pooled = PooledUpstream<ScriptedConnector>;

/// The upstreams `upstream(i)` for each `(i, path)`, in that order, with scripted
/// connections, and their paths and connection log.
fn pooled(upstreams: &[(usize, u8)]) -> (Vec<Pooled>, Vec<Path>, Log) {
    let log = Log::default();
    let mut paths = Vec::new();
    let members = upstreams
        .iter()
        .map(|&(index, path)| {
            let address = upstream(index);
            let path = Path::new(AtomicU8::new(path));
            paths.push(path.clone());
            let connector = ScriptedConnector {
                address,
                path,
                log: log.clone(),
            };
            let metrics = Metrics::new().upstream(address);
            PooledUpstream::new(
                address.to_string(),
                "scripted".into(),
                connector,
                2,
                metrics,
            )
        })
        .collect();
    (members, paths, log)
}

/// A forwarder with `LONG_BUDGET` and `strategy` over `upstreams` as its default upstreams,
/// or as the upstreams of the forward zone `zone.test` when `zone` (the default ones are then
/// `upstream(9)`, reachable).
fn pooled_forwarder(
    upstreams: &[(usize, u8)],
    strategy: Strategy,
    zone: bool,
) -> (Arc<Forwarder<Pooled>>, Vec<Path>, Log) {
    let config = Config {
        timeout: LONG_BUDGET,
        strategy,
        dnssec: Dnssec::Off,
        ..Config::default()
    };
    let (members, paths, log) = pooled(upstreams);
    let group = Group::new(members, strategy, Hedge::Off);
    let forwarder = if zone {
        let (default, _, _) = pooled(&[(9, OPEN)]);
        let default = Group::new(default, strategy, Hedge::Off);
        let zone = vec![ZoneName::parse("zone.test").unwrap()];
        Forwarder::assemble(&config, &Metrics::new(), default, vec![group], vec![zone])
    } else {
        Forwarder::assemble(&config, &Metrics::new(), group, Vec::new(), Vec::new())
    };
    (Arc::new(forwarder), paths, log)
}

/// One query of the steady load: its response code, who answered, when it was asked (from the
/// start of the load) and how long it took.
struct Asked {
    rcode: ResponseCode,
    by: Vec<Ipv4Addr>,
    at: Duration,
    took: Duration,
}

/// `count` queries for new names under `zone`, one every `INTERVAL` from now, each answered
/// whenever it is (they overlap when slow).
async fn steady<R: Exchange>(
    forwarder: &Arc<Forwarder<R>>,
    count: usize,
    zone: &str,
) -> Vec<Asked> {
    let start = Instant::now();
    let queries: Vec<_> = (0..count)
        .map(|i| {
            let forwarder = forwarder.clone();
            let name = format!("q{i}.{zone}.");
            tokio::spawn(async move {
                tokio::time::sleep_until(start + INTERVAL * i as u32).await;
                let asked = Instant::now();
                let (id, rcode, by) = ask(&forwarder, i as u16, &name).await;
                assert_eq!(id, i as u16);
                Asked {
                    rcode,
                    by,
                    at: asked.duration_since(start),
                    took: asked.elapsed(),
                }
            })
        })
        .collect();
    let mut asked = Vec::new();
    for query in queries {
        asked.push(query.await.unwrap());
    }
    asked
}

/// Two upstreams, the first black-holed from the start and back after `back` (when given): every
/// query is answered; the first waits at most one connect share longer than with the healthy
/// upstream alone, the others at most 50 ms longer; once back, the first upstream is up again
/// within its longest backoff and answers queries again. Returns the queries' fates.
async fn black_holed_first_of_two(
    strategy: Strategy,
    zone: bool,
    back: Option<Duration>,
) -> Vec<Asked> {
    const QUERIES: usize = 40;
    let name = if zone { "zone.test" } else { "example" };
    let (alone, _, _) = pooled_forwarder(&[(1, OPEN)], strategy, zone);
    let baseline = steady(&alone, QUERIES, name).await;

    let (forwarder, paths, log) = pooled_forwarder(&[(0, BLACK_HOLED), (1, OPEN)], strategy, zone);
    let start = Instant::now();
    let watcher = back.map(|back| {
        let (forwarder, path) = (forwarder.clone(), paths[0].clone());
        tokio::spawn(async move {
            tokio::time::sleep_until(start + back).await;
            path.store(OPEN, Ordering::SeqCst);
            let group = match zone {
                true => &forwarder.zones[0],
                false => &forwarder.upstreams,
            };
            while !group.members[0].upstream.is_up() {
                tokio::time::sleep(ms(1)).await;
            }
            start.elapsed()
        })
    });
    let asked = steady(&forwarder, QUERIES, name).await;

    let share = LONG_BUDGET / 4;
    for (i, (query, alone)) in asked.iter().zip(&baseline).enumerate() {
        let what = format!("{strategy:?}, query {i} at {:?}", query.at);
        assert_eq!(query.rcode, ResponseCode::NoError, "{what}");
        assert!(
            query.by == answered_by(0) || query.by == answered_by(1),
            "{what}: answered by {:?}",
            query.by
        );
        let allowed = alone.took + if i == 0 { share } else { ms(50) };
        assert!(
            query.took <= allowed,
            "{what} took {:?}, {:?} with the healthy upstream alone",
            query.took,
            alone.took
        );
    }
    let connects = calls(&log, start)
        .iter()
        .filter(|(upstream, _)| *upstream == 0)
        .count();
    let worst = asked
        .iter()
        .zip(&baseline)
        .skip(1)
        .map(|(query, alone)| query.took.saturating_sub(alone.took))
        .max()
        .unwrap_or_default();
    eprintln!(
        "black hole | {strategy:?}{} | first {:?} (alone {:?}) | past the first at most {worst:?} \
         longer | {connects} connects to it",
        if zone { ", forward zone" } else { "" },
        asked[0].took,
        baseline[0].took,
    );
    match back {
        None => {
            assert!(
                asked.iter().all(|query| query.by == answered_by(1)),
                "{strategy:?}: the black-holed upstream answered"
            );
            // One hanging connect at a time, each run out by its deadline, then the backoff:
            // 6 s of queries make 4.
            assert!(
                (3..=5).contains(&connects),
                "{strategy:?}: {connects} connects to the black-holed upstream"
            );
        }
        Some(back) => {
            let up = watcher.unwrap().await.unwrap() - back;
            assert!(
                up <= BACKOFF_MAX,
                "{strategy:?}: up again {up:?} after it came back"
            );
            let answering = asked
                .iter()
                .filter(|query| query.at > back + up && query.by == answered_by(0))
                .count();
            assert!(
                answering > 0,
                "{strategy:?}: not used again after it came back"
            );
            if strategy == Strategy::Failover {
                assert!(
                    asked
                        .iter()
                        .filter(|query| query.at > back + up + INTERVAL)
                        .all(|query| query.by == answered_by(0)),
                    "failover keeps to the first upstream once it is back"
                );
            }
        }
    }
    asked
}

#[tokio::test(start_paused = true)]
async fn a_black_holed_upstream_costs_only_the_first_query_a_connect_share() {
    for strategy in STRATEGIES {
        black_holed_first_of_two(strategy, false, None).await;
    }
}

/// Back at several points of the probing cycle: during a probe's connect before its SYN is
/// retransmitted, just after, and between two probes.
#[tokio::test(start_paused = true)]
async fn a_black_holed_upstream_back_again_is_used_again_within_its_backoff() {
    for strategy in STRATEGIES {
        for back in [2600, 2700, 3200, 3500] {
            black_holed_first_of_two(strategy, false, Some(ms(back))).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_forward_zone_with_a_black_holed_resolver_answers_every_query_in_time() {
    for strategy in STRATEGIES {
        black_holed_first_of_two(strategy, true, None).await;
        black_holed_first_of_two(strategy, true, Some(ms(3000))).await;
    }
}

/// A single upstream that is black-holed: nothing to move on to, so the query waits its whole
/// budget for the connect (which may still complete), then gets SERVFAIL; the upstream is down
/// after that, and the next queries fail at once until its backoff is over.
#[tokio::test(start_paused = true)]
async fn a_black_holed_only_upstream_gets_the_whole_budget_then_is_backed_off() {
    let (forwarder, _, log) = pooled_forwarder(&[(0, BLACK_HOLED)], Strategy::Failover, false);
    let start = Instant::now();
    assert_eq!(
        ask(&forwarder, 1, "one.example.").await,
        (1, ResponseCode::ServFail, vec![])
    );
    assert_eq!(start.elapsed(), LONG_BUDGET);
    let again = Instant::now();
    assert_eq!(
        ask(&forwarder, 2, "two.example.").await,
        (2, ResponseCode::ServFail, vec![])
    );
    assert_eq!(again.elapsed(), Duration::ZERO);
    assert_eq!(calls(&log, start), vec![(0, 0)]);
}

/// Three upstreams: the first black-holed, the second refusing, the third healthy. When the
/// first two are both due for a probe, the second's fails at once while the first's hangs: the
/// third takes the second's place, and the query does not wait on the hanging probe.
#[tokio::test(start_paused = true)]
async fn a_refused_hedge_beside_a_hanging_probe_hands_over_to_the_next_upstream() {
    const QUERIES: usize = 40;
    for strategy in STRATEGIES {
        let (alone, _, _) = pooled_forwarder(&[(2, OPEN)], strategy, false);
        let baseline = steady(&alone, QUERIES, "example").await;
        let (forwarder, _, _) = pooled_forwarder(
            &[(0, BLACK_HOLED), (1, REFUSED), (2, OPEN)],
            strategy,
            false,
        );
        let asked = steady(&forwarder, QUERIES, "example").await;
        for (i, (query, alone)) in asked.iter().zip(&baseline).enumerate() {
            let what = format!("{strategy:?}, query {i} at {:?}", query.at);
            assert_eq!(query.rcode, ResponseCode::NoError, "{what}");
            assert_eq!(query.by, answered_by(2), "{what}");
            let allowed = alone.took + if i == 0 { LONG_BUDGET / 4 } else { ms(50) };
            assert!(query.took <= allowed, "{what} took {:?}", query.took);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn learned_zones_route_at_once_and_a_query_in_flight_finishes_where_it_went() {
    let mut upstreams = Upstreams::new()
        .tls(&[Step::Answer(ms(5))])
        .plain(&[Step::Answer(ms(100))]);
    let link = upstreams.members.pop().unwrap();
    let learned = LearnedZones {
        zones: vec![(
            vec![ZoneName::parse("corp.example").unwrap()],
            vec![link.address],
        )],
        default: Vec::new(),
    };
    let (forwarder, log) = upstreams.forwarder(Strategy::Failover, Hedge::Off, false);
    let link = Mutex::new(Some(link));
    assert!(forwarder.set_learned_with(&learned, |_| link.lock().unwrap().take().unwrap()));
    assert!(
        !forwarder.set_learned_with(&learned, |_| unreachable!()),
        "already in force"
    );
    let start = Instant::now();
    let in_flight = tokio::spawn({
        let forwarder = forwarder.clone();
        async move { ask(&forwarder, 1, "host.corp.example.").await }
    });
    tokio::time::sleep(ms(10)).await;
    assert!(forwarder.set_learned_with(&LearnedZones::default(), |_| unreachable!()));
    assert_eq!(
        in_flight.await.unwrap(),
        (1, ResponseCode::NoError, answered_by(1))
    );
    assert_eq!(
        ask(&forwarder, 2, "host.corp.example.").await,
        (2, ResponseCode::NoError, answered_by(0))
    );
    assert_eq!(calls(&log, start), vec![(1, 0), (0, 100)]);
}
