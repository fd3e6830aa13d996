//! The forwarder's concurrent logic (retry, hedging, coalescing, serve-stale, the budget,
//! failover) against scripted upstreams on a paused clock: each upstream does per call what
//! its script says, after a scripted delay, and every call is logged with its time, so a test
//! asserts who was asked, in which order, at which instant, and what the client got.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
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
use crate::resolve::zones::Router;
use crate::upstream::exchange::Exchange;
use crate::upstream::group::Group;
use crate::wire::dns::{self, Query};

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

    fn is_available(&self, _now: Instant) -> bool {
        self.available.load(Ordering::Relaxed)
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
            Step::Answer(after) => (after, Ok(self.response(frame))),
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

impl Scripted {
    /// The response to the upstream query in `frame` (2-byte length, then the message).
    fn response(&self, frame: &[u8]) -> Vec<u8> {
        let request = Message::from_vec(&frame[2..]).unwrap();
        let mut response = Message::response(request.metadata.id, OpCode::Query);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.recursion_available = true;
        response.add_queries(request.queries.iter().cloned());
        let std::net::IpAddr::V4(ip) = self.address.ip() else {
            panic!("scripted upstreams are on IPv4");
        };
        let name = request.queries[0].name().clone();
        response.add_answer(Record::from_rdata(name, TTL, RData::A(A(ip))));
        response.to_vec().unwrap()
    }
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
        let forwarder = Forwarder::assemble(
            &config,
            &Metrics::new(),
            group,
            Vec::new(),
            Router::new(&[]),
        );
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
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(0)));
    assert_eq!(calls(&log, start), vec![(0, 0), (0, 10)]);
    assert_eq!(start.elapsed(), ms(30));
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
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(1)));
    assert_eq!(calls(&log, start), vec![(0, 0), (0, 10), (1, 20)]);
}

#[tokio::test(start_paused = true)]
async fn a_dead_connection_to_an_upstream_now_down_is_retried_on_the_next() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::FailDown(UpstreamError::Closed)])
        .tls(&[Step::Answer(ms(5))])
        .forwarder(Strategy::Failover, Hedge::Off, false);
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(1)));
    assert_eq!(calls(&log, start), vec![(0, 0), (1, 0)]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_upstream_is_hedged_after_the_delay_and_the_first_answer_wins() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::Answer(ms(500))])
        .tls(&[Step::Answer(ms(10))])
        .forwarder(Strategy::Failover, Hedge::After(ms(50)), false);
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(1)));
    assert_eq!(calls(&log, start), vec![(0, 0), (1, 50)]);
    assert_eq!(
        start.elapsed(),
        ms(60),
        "the hedge's answer, not the first's"
    );
    assert_eq!(forwarder.counts.hedged.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedged_upstream_that_answers_first_still_wins() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::Answer(ms(70))])
        .tls(&[Step::Answer(ms(100))])
        .forwarder(Strategy::Failover, Hedge::After(ms(50)), false);
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(0)));
    assert_eq!(calls(&log, start), vec![(0, 0), (1, 50)]);
    assert_eq!(start.elapsed(), ms(70));
}

#[tokio::test(start_paused = true)]
async fn a_failed_hedge_leaves_the_first_upstream_to_answer() {
    let (forwarder, log) = Upstreams::new()
        .tls(&[Step::Answer(ms(200))])
        .tls(&[Step::Fail(ms(10), refused())])
        .forwarder(Strategy::Failover, Hedge::After(ms(50)), false);
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(0)));
    assert_eq!(calls(&log, start), vec![(0, 0), (1, 50)]);
    assert_eq!(start.elapsed(), ms(200));
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
            tokio::spawn(async move {
                forwarder
                    .answer(&query(id, "example.com."), CLIENT, Transport::Udp)
                    .await
            })
        })
        .collect();
    for (id, client) in clients.into_iter().enumerate() {
        let answer = client.await.unwrap();
        assert_eq!(
            read(&answer),
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
    let answer = forwarder
        .answer(&query(1, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (1, ResponseCode::NoError, answered_by(0)));
    tokio::time::advance(Duration::from_secs(u64::from(TTL) + 1)).await;

    let answer = forwarder
        .answer(&query(2, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (2, ResponseCode::NoError, answered_by(0)));
    assert_eq!(forwarder.counts.cache.stale.get(), 1);
    // A name never answered has nothing stale to fall back on.
    let answer = forwarder
        .answer(&query(3, "example.org."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (3, ResponseCode::ServFail, vec![]));
    assert_eq!(log.lock().unwrap().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_budget_is_servfail_and_no_other_upstream_is_asked() {
    let (forwarder, log) = Upstreams::new().tls(&[Step::Hang]).tls(&[]).forwarder(
        Strategy::Failover,
        Hedge::Off,
        false,
    );
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::ServFail, vec![]));
    assert_eq!(start.elapsed(), BUDGET);
    assert_eq!(calls(&log, start), vec![(0, 0)]);
}

#[tokio::test(start_paused = true)]
async fn plain_upstreams_share_the_budget_so_the_last_gets_its_try() {
    let (forwarder, log) = Upstreams::new()
        .plain(&[Step::Hang])
        .plain(&[Step::Hang])
        .plain(&[Step::Answer(ms(10))])
        .forwarder(Strategy::Failover, Hedge::Off, false);
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(2)));
    // A third of the budget each, then half of the rest (the timer rounds up to the ms).
    assert_eq!(calls(&log, start), vec![(0, 0), (1, 334), (2, 667)]);
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
    let start = Instant::now();
    let answer = forwarder
        .answer(&query(7, "example.com."), CLIENT, Transport::Udp)
        .await;
    assert_eq!(read(&answer), (7, ResponseCode::NoError, answered_by(3)));
    assert_eq!(calls(&log, start), vec![(1, 0), (2, 10), (3, 20)]);
}
