//! A group of upstreams (the default ones, or a forward zone's) and how a query picks one:
//! `fastest` takes the lowest smoothed latency among those available and, once every
//! [`PROBE_EVERY`] queries, another one, so a recovered or improved upstream is noticed;
//! `failover` takes the first available in configuration order; `round-robin` each in turn.
//! Whatever the strategy, a down upstream whose backoff is over comes first (its probe costs
//! the query nothing: the forwarder asks the next one at once too), and one that would make
//! the query wait on a connection attempt already under way comes last.
//!
//! Latency is measured here around every attempt (a failure counts as the time it took), so
//! the choice follows what clients actually wait for; an upstream back up after being down
//! is measured afresh.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::common::error::UpstreamError;
use crate::common::lock;
use crate::common::metrics::UpstreamMetrics;
use crate::common::snapshot;
use crate::config::{Hedge, Strategy};
use crate::upstream::doh::DohUpstream;
use crate::upstream::dot::TlsUpstream;
use crate::upstream::exchange::{Exchange, Readiness};
use crate::upstream::plain::PlainUpstream;
use crate::wire::dns::Query;

/// One query in this many goes to an upstream other than the fastest.
pub(crate) const PROBE_EVERY: usize = 64;
/// Shortest automatic hedging delay: below it, hedging would double the load for nothing.
const HEDGE_FLOOR: Duration = Duration::from_millis(5);

/// One upstream, of any kind the configuration can name; what a [`Group`] holds
/// unless a test gives it another [`Exchange`].
pub(crate) enum AnyUpstream {
    Tls(Box<TlsUpstream>),
    /// DNS over HTTPS: the same pool, health and backoff as DoT, over HTTP/2.
    Https(Box<DohUpstream>),
    /// Only in forward zones that ask for plain DNS.
    Plain(Box<PlainUpstream>),
}

impl Exchange for AnyUpstream {
    fn address(&self) -> SocketAddr {
        match self {
            AnyUpstream::Tls(upstream) => upstream.address(),
            AnyUpstream::Https(upstream) => upstream.address(),
            AnyUpstream::Plain(upstream) => upstream.address(),
        }
    }

    fn metrics(&self) -> &UpstreamMetrics {
        match self {
            AnyUpstream::Tls(upstream) => upstream.metrics(),
            AnyUpstream::Https(upstream) => upstream.metrics(),
            AnyUpstream::Plain(upstream) => upstream.metrics(),
        }
    }

    fn readiness(&self, now: Instant) -> Readiness {
        match self {
            AnyUpstream::Tls(upstream) => upstream.readiness(now),
            AnyUpstream::Https(upstream) => upstream.readiness(now),
            AnyUpstream::Plain(upstream) => upstream.readiness(now),
        }
    }

    fn is_up(&self) -> bool {
        match self {
            AnyUpstream::Tls(upstream) => upstream.is_up(),
            AnyUpstream::Https(upstream) => upstream.is_up(),
            AnyUpstream::Plain(upstream) => upstream.is_up(),
        }
    }

    fn describe(&self) -> String {
        match self {
            AnyUpstream::Tls(upstream) => upstream.describe(),
            AnyUpstream::Https(upstream) => upstream.describe(),
            AnyUpstream::Plain(upstream) => upstream.describe(),
        }
    }

    fn forget_failures(&self) {
        match self {
            AnyUpstream::Tls(upstream) => upstream.forget_failures(),
            AnyUpstream::Https(upstream) => upstream.forget_failures(),
            AnyUpstream::Plain(upstream) => upstream.forget_failures(),
        }
    }

    fn detects_failure(&self) -> bool {
        match self {
            AnyUpstream::Tls(upstream) => upstream.detects_failure(),
            AnyUpstream::Https(upstream) => upstream.detects_failure(),
            AnyUpstream::Plain(upstream) => upstream.detects_failure(),
        }
    }

    async fn exchange(
        &self,
        query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        match self {
            AnyUpstream::Tls(upstream) => upstream.exchange(query, frame, deadline).await,
            AnyUpstream::Https(upstream) => upstream.exchange(query, frame, deadline).await,
            AnyUpstream::Plain(upstream) => upstream.exchange(query, frame, deadline).await,
        }
    }
}

/// Smoothed round-trip time and its mean deviation, in microseconds (RFC 6298's estimator);
/// zero until the first observation. Updates may race; an estimate loses nothing by it.
#[derive(Default)]
struct RttEstimate {
    srtt: AtomicU32,
    rttvar: AtomicU32,
}

impl RttEstimate {
    fn observe(&self, rtt: Duration) {
        let rtt = rtt.as_micros().min(u128::from(u32::MAX / 8)) as u32;
        let srtt = self.srtt.load(Ordering::Relaxed);
        if srtt == 0 {
            self.srtt.store(rtt.max(1), Ordering::Relaxed);
            self.rttvar.store(rtt / 2, Ordering::Relaxed);
            return;
        }
        let rttvar = self.rttvar.load(Ordering::Relaxed);
        self.rttvar
            .store((3 * rttvar + srtt.abs_diff(rtt)) / 4, Ordering::Relaxed);
        self.srtt
            .store(((7 * srtt + rtt) / 8).max(1), Ordering::Relaxed);
    }

    fn srtt(&self) -> u32 {
        self.srtt.load(Ordering::Relaxed)
    }

    /// Forgets every observation: the next one starts the estimate anew.
    fn reset(&self) {
        self.srtt.store(0, Ordering::Relaxed);
        self.rttvar.store(0, Ordering::Relaxed);
    }

    /// About the 95th percentile: SRTT plus four deviations, as TCP's retransmit timer.
    fn high(&self) -> Option<Duration> {
        let srtt = self.srtt();
        (srtt > 0).then(|| {
            let high = srtt.saturating_add(4 * self.rttvar.load(Ordering::Relaxed));
            Duration::from_micros(u64::from(high)).max(HEDGE_FLOOR)
        })
    }
}

pub(crate) struct Member<R> {
    pub(crate) upstream: R,
    rtt: RttEstimate,
    /// The last attempt that got no usable answer, for `dns-proxy status`; written on
    /// failures only, so an answered query takes no lock for it.
    last_error: Mutex<Option<snapshot::LastError>>,
}

/// The upstream a query asks next, and how ready it was when picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pick {
    pub(crate) index: usize,
    pub(crate) readiness: Readiness,
}

pub(crate) struct Group<R = AnyUpstream> {
    pub(crate) members: Vec<Member<R>>,
    strategy: Strategy,
    hedge: Hedge,
    /// Queries picked so far: round-robin's turn and fastest's probe schedule.
    picks: AtomicUsize,
}

impl<R: Exchange> Group<R> {
    pub(crate) fn new(resolvers: Vec<R>, strategy: Strategy, hedge: Hedge) -> Group<R> {
        Group {
            members: resolvers
                .into_iter()
                .map(|upstream| Member {
                    upstream,
                    rtt: RttEstimate::default(),
                    last_error: Mutex::new(None),
                })
                .collect(),
            strategy,
            hedge,
            picks: AtomicUsize::new(0),
        }
    }

    /// The upstream to try next among those not `tried`, or `None` when none is available:
    /// the first due for a probe; else by the strategy among those ready or only to connect;
    /// else the first left as a last resort.
    pub(crate) fn pick(&self, tried: &[bool]) -> Option<Pick> {
        let now = Instant::now();
        let mut candidates = Vec::with_capacity(self.members.len());
        let mut last_resort = None;
        for (index, member) in self.members.iter().enumerate() {
            if tried[index] {
                continue;
            }
            match member.upstream.readiness(now) {
                Readiness::Probe => {
                    return Some(Pick {
                        index,
                        readiness: Readiness::Probe,
                    });
                }
                readiness @ (Readiness::Ready | Readiness::Connect) => {
                    candidates.push((index, readiness));
                }
                Readiness::LastResort => {
                    last_resort.get_or_insert(index);
                }
                Readiness::Down => {}
            }
        }
        if candidates.is_empty() {
            return last_resort.map(|index| Pick {
                index,
                readiness: Readiness::LastResort,
            });
        }
        let position = if candidates.len() == 1 || self.strategy == Strategy::Failover {
            0
        } else {
            let turn = self.picks.fetch_add(1, Ordering::Relaxed);
            let srtt = |&(i, _): &(usize, Readiness)| self.members[i].rtt.srtt();
            let fastest = (0..candidates.len()).min_by_key(|&p| srtt(&candidates[p]))?;
            match self.strategy {
                Strategy::RoundRobin => turn % candidates.len(),
                // A probe: the others in turn, never the current fastest.
                Strategy::Fastest if turn % PROBE_EVERY == PROBE_EVERY - 1 => {
                    let nth = (turn / PROBE_EVERY) % (candidates.len() - 1);
                    (0..candidates.len()).filter(|&p| p != fastest).nth(nth)?
                }
                _ => fastest,
            }
        };
        let (index, readiness) = candidates[position];
        Some(Pick { index, readiness })
    }

    /// Forgets what was learned about each upstream (latency, backoff): the next queries
    /// measure and try them afresh.
    pub(crate) fn forget(&self) {
        for member in &self.members {
            member.rtt.reset();
            member.upstream.forget_failures();
        }
    }

    /// How long to wait for `index` before also asking another upstream, if hedging is on.
    pub(crate) fn hedge_delay(&self, index: usize) -> Option<Duration> {
        match self.hedge {
            Hedge::Off => None,
            Hedge::After(delay) => Some(delay),
            Hedge::Auto => self.members[index].rtt.high(),
        }
    }

    /// The fixed hedging delay, if `hedge` sets one: it bounds a wait for a connection to
    /// open too. `"auto"` does not: a query's usual latency says nothing of how long a
    /// handshake takes.
    pub(crate) fn hedge_after(&self) -> Option<Duration> {
        match self.hedge {
            Hedge::After(delay) => Some(delay),
            Hedge::Off | Hedge::Auto => None,
        }
    }

    /// One attempt at the upstream `pick` names, at the latest at `deadline`; its time is
    /// recorded, except for a probe that answers: the upstream is back, and is measured
    /// afresh from its next query (this one included its connect).
    pub(crate) async fn attempt(
        &self,
        pick: Pick,
        query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        let member = &self.members[pick.index];
        let metrics = member.upstream.metrics();
        metrics.query_sent();
        let started = Instant::now();
        let result = member.upstream.exchange(query, frame, deadline).await;
        let elapsed = started.elapsed();
        match &result {
            Ok(_) => metrics.answered(elapsed),
            Err(error) => {
                metrics.failed(error.error_kind());
                if !matches!(error, UpstreamError::Down) {
                    *lock::lock(&member.last_error) = Some(snapshot::LastError {
                        kind: error.kind().to_string(),
                        message: error.to_string(),
                        at: snapshot::timestamp(SystemTime::now()),
                    });
                }
            }
        }
        match &result {
            Ok(_) if pick.readiness == Readiness::Probe => member.rtt.reset(),
            // `Down` made no attempt: there is no time to learn from.
            Err(UpstreamError::Down) => {}
            _ => member.rtt.observe(elapsed),
        }
        result
    }
}

impl Group<AnyUpstream> {
    /// Each upstream's state and counts, in configuration order, for `dns-proxy status`.
    pub(crate) fn snapshot(&self) -> Vec<snapshot::Upstream> {
        self.members
            .iter()
            .map(|member| {
                let (protocol, address, tls_name, (up, since)) = match &member.upstream {
                    AnyUpstream::Tls(upstream) => (
                        "tls",
                        upstream.name().to_string(),
                        Some(upstream.connector().tls_name()),
                        upstream.state(),
                    ),
                    AnyUpstream::Https(upstream) => (
                        "https",
                        upstream.name().to_string(),
                        Some(upstream.connector().tls_name()),
                        upstream.state(),
                    ),
                    AnyUpstream::Plain(upstream) => {
                        let address = upstream.address().to_string();
                        ("udp", address, None, upstream.state())
                    }
                };
                let metrics = member.upstream.metrics();
                let srtt = member.rtt.srtt();
                snapshot::Upstream {
                    address,
                    protocol: protocol.to_string(),
                    tls_name,
                    state: match up {
                        true => snapshot::State::Up,
                        false => snapshot::State::Down,
                    },
                    since: snapshot::timestamp(since),
                    last_error: lock::lock(&member.last_error).clone(),
                    srtt_ms: (srtt > 0).then(|| f64::from(srtt) / 1000.0),
                    connections: metrics.open_connections(),
                    queries: metrics.queries(),
                    failures: metrics.failures(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: usize, strategy: Strategy) -> Group<AnyUpstream> {
        let resolvers = (0..n)
            .map(|i| {
                let address = SocketAddr::from(([127, 0, 0, 1], 5300 + i as u16));
                let metrics = crate::common::metrics::Metrics::new().upstream(address);
                AnyUpstream::Plain(Box::new(PlainUpstream::new(address, metrics)))
            })
            .collect();
        Group::new(resolvers, strategy, Hedge::Off)
    }

    fn counts(group: &Group, picks: usize) -> Vec<usize> {
        let mut counts = vec![0; group.members.len()];
        let tried = vec![false; group.members.len()];
        for _ in 0..picks {
            counts[group.pick(&tried).unwrap().index] += 1;
        }
        counts
    }

    #[tokio::test]
    async fn fastest_prefers_the_lowest_latency_and_probes_the_others() {
        let group = group(3, Strategy::Fastest);
        for (i, ms) in [(0, 30), (1, 5), (2, 40)] {
            group.members[i].rtt.observe(Duration::from_millis(ms));
        }
        let counts = counts(&group, 64 * 10);
        assert_eq!(counts[1], 63 * 10, "all but the probes go to the fastest");
        assert_eq!(counts[0] + counts[2], 10);
        assert!(
            counts[0] > 0 && counts[2] > 0,
            "every other upstream is probed: {counts:?}"
        );
    }

    #[tokio::test]
    async fn failover_takes_the_first_untried() {
        let group = group(3, Strategy::Failover);
        group.members[1].rtt.observe(Duration::from_millis(1));
        assert_eq!(counts(&group, 100), vec![100, 0, 0]);
        assert_eq!(
            group.pick(&[true, false, false]).map(|pick| pick.index),
            Some(1)
        );
        assert_eq!(group.pick(&[true, true, true]), None);
    }

    #[tokio::test]
    async fn round_robin_takes_each_in_turn() {
        let group = group(3, Strategy::RoundRobin);
        assert_eq!(counts(&group, 300), vec![100, 100, 100]);
    }

    #[test]
    fn latency_is_smoothed_and_auto_hedging_waits_for_its_high_end() {
        let latency = RttEstimate::default();
        assert_eq!(latency.high(), None, "no estimate before the first answer");
        latency.observe(Duration::from_millis(20));
        for _ in 0..50 {
            latency.observe(Duration::from_millis(10));
        }
        let srtt = latency.srtt();
        assert!((10_000..10_500).contains(&srtt), "{srtt}");
        let high = latency.high().unwrap();
        assert!(
            high >= HEDGE_FLOOR && high < Duration::from_millis(12),
            "{high:?}"
        );
    }
}
