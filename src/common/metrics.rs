//! Prometheus metrics: the series (one registry, owned by the daemon, so counters survive a
//! reload that replaces the forwarder) and their rendering in the text format 0.0.4, which
//! `admin.rs` serves over HTTP. This module imports nothing of the daemon or the upstream code:
//! what it labels by (error kinds, handshake outcomes) comes from the leaf module `error.rs`.
//!
//! Counting is always on and costs one relaxed atomic operation per event: every labelled
//! series is created up front (at start, or when a forwarder is built for its upstreams) and
//! its handle kept, so the query path never looks up a label set or takes a lock. The
//! `[metrics]` setting, or a socket systemd passes under the name `metrics`, only decides
//! whether the endpoint is served.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::common::error::{Handshake, UpstreamErrorKind};
use crate::common::snapshot;
use crate::common::transport::Transport;

/// Prefix of every series name.
const PREFIX: &str = "dns_proxy";

/// Label values of `rcode`: the codes a stub resolver sees, and `other` for the rest (the
/// UPDATE and zone codes, which answers to plain queries do not carry).
const RCODES: [&str; 8] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "BADVERS", "other",
];

/// Label values of `verdict` for DNSSEC validation, indexed as in [`Metrics::dnssec`].
pub(crate) const DNSSEC_VERDICTS: [&str; 4] = ["secure", "insecure", "bogus", "indeterminate"];

/// Label values of `outcome` for TLS handshakes, indexed as in [`UpstreamMetrics::handshakes`].
const HANDSHAKE_OUTCOMES: [&str; 3] = ["full", "resumed", "failed"];

/// Upper bounds of the upstream latency buckets, in nanoseconds: 0.1 ms (a resolver on the
/// same host) to 5 s (beyond any sensible `timeout`).
const LATENCY_BOUNDS_NANOS: [u64; 15] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
];

/// Every series of the daemon.
///
/// There is no separate set of counters for the systemd `STATUS=` line: [`Metrics::summary`]
/// reads these same atomics, so each event is counted once and the two views cannot disagree.
pub(crate) struct Metrics {
    registry: Registry,
    /// Queries that came in over UDP.
    pub(crate) udp: TransportMetrics,
    /// Queries that came in over TCP.
    pub(crate) tcp: TransportMetrics,
    /// Queries that came in over DNS over TLS.
    pub(crate) tls: TransportMetrics,
    /// Queries that came in over DNS over HTTPS.
    pub(crate) https: TransportMetrics,
    /// Lookups asked over D-Bus (`org.freedesktop.resolve1`).
    pub(crate) bus: TransportMetrics,
    /// What the links pushed over `org.freedesktop.resolve1`.
    pub(crate) links: LinkMetrics,
    /// Queries being forwarded right now (inside [`crate::resolve::forwarder::Forwarder::answer`]).
    pub(crate) queries_in_flight: Gauge,
    /// Client connections open right now on TCP, DNS over TLS and DNS over HTTPS.
    pub(crate) tcp_connections: Gauge,
    pub(crate) cache: CacheMetrics,
    /// Queries answered by a built-in local zone (localhost, private reverse zones).
    pub(crate) local_answers: Counter,
    /// Queries also sent to a second upstream because the first was slow to answer or to
    /// connect (hedging), or was being probed.
    pub(crate) hedged: Counter,
    /// Client queries over the per-client rate limit.
    pub(crate) rate_limited: Counter,
    /// Answers by DNSSEC verdict, indexed like [`DNSSEC_VERDICTS`].
    pub(crate) dnssec: [Counter; DNSSEC_VERDICTS.len()],
    upstream_queries: Family<UpstreamLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    upstream_latency: Family<UpstreamLabels, LatencyHistogram>,
    upstream_connections: Family<UpstreamLabels, Gauge>,
    tls_handshakes: Family<HandshakeLabels, Counter>,
}

#[derive(Clone)]
/// Counters of the response cache. Every cache lookup increments exactly one of the three.
/// The cache code increments them; where no cache runs they stay 0.
pub(crate) struct CacheMetrics {
    /// Lookups answered from a fresh cache entry.
    pub(crate) hits: Counter,
    /// Lookups that found no usable entry, so the query went upstream.
    pub(crate) misses: Counter,
    /// Lookups answered from an expired entry (serve-stale, RFC 8767).
    pub(crate) stale: Counter,
}

/// The per-link DNS learned over `org.freedesktop.resolve1`.
pub(crate) struct LinkMetrics {
    /// Links with DNS settings now.
    pub(crate) links: Gauge,
    /// Zones learned from them in force now.
    pub(crate) zones: Gauge,
    /// Requests to change them, by outcome, indexed like [`LINK_OUTCOMES`].
    updates: [Counter; LINK_OUTCOMES.len()],
}

/// Label values of `outcome` for link updates: put in force, the same as in force already,
/// refused as invalid, denied to the caller.
const LINK_OUTCOMES: [&str; 4] = ["applied", "unchanged", "invalid", "denied"];

/// What became of a request to change a link's DNS settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkOutcome {
    Applied,
    Unchanged,
    Invalid,
    Denied,
}

impl LinkMetrics {
    /// Counts a request.
    pub(crate) fn update(&self, outcome: LinkOutcome) {
        self.updates[outcome as usize].inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

/// The answers and drops of one client transport.
pub(crate) struct TransportMetrics {
    /// Indexed like [`RCODES`].
    answers: [Counter; RCODES.len()],
    dropped: Counter,
}

/// Handles to one upstream's series, created when a forwarder is built. Upstreams with the
/// same address (in one configuration or across a reload) share their series.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamMetrics {
    queries: Counter,
    /// Indexed by [`UpstreamErrorKind`].
    errors: [Counter; UpstreamErrorKind::ALL.len()],
    latency: LatencyHistogram,
    connections: Gauge,
    /// Indexed like [`HANDSHAKE_OUTCOMES`].
    handshakes: [Counter; HANDSHAKE_OUTCOMES.len()],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    transport: &'static str,
    rcode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabels {
    transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    upstream: String,
    outcome: &'static str,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register(
            "build",
            "Version of the running dns-proxy, in the version label; the value is always 1",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let answers = Family::<QueryLabels, Counter>::default();
        registry.register(
            "queries",
            "Client queries answered, by transport (udp, tcp, tls, https, dbus) and response code \
             of the answer sent",
            answers.clone(),
        );
        let dropped = Family::<TransportLabels, Counter>::default();
        registry.register(
            "queries_dropped",
            "Client packets or connections given no answer: shorter than a DNS header, responses, \
             over the in-flight limit, or from clients outside allow with deny_action drop",
            dropped.clone(),
        );
        let queries_in_flight = Gauge::default();
        registry.register(
            "queries_in_flight",
            "Client queries being forwarded right now",
            queries_in_flight.clone(),
        );
        let tcp_connections = Gauge::default();
        registry.register(
            "client_tcp_connections",
            "Client TCP connections open right now, plain, DNS over TLS and DNS over HTTPS",
            tcp_connections.clone(),
        );
        let upstream_queries = Family::default();
        registry.register(
            "upstream_queries",
            "Queries sent to an upstream, including attempts that failed",
            upstream_queries.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Queries to an upstream that got no usable answer, by kind of error",
            upstream_errors.clone(),
        );
        let upstream_latency = Family::default();
        registry.register(
            "upstream_latency_seconds",
            "Time from handing a query to an upstream to its answer, including opening a \
             connection when one was needed; answered queries only",
            upstream_latency.clone(),
        );
        let upstream_connections = Family::default();
        registry.register(
            "upstream_connections",
            "TLS connections to an upstream open right now",
            upstream_connections.clone(),
        );
        let tls_handshakes = Family::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes with an upstream, by outcome: full, resumed (an earlier session) \
             or failed (error, or the query's time ran out during it)",
            tls_handshakes.clone(),
        );
        let cache = CacheMetrics {
            hits: Counter::default(),
            misses: Counter::default(),
            stale: Counter::default(),
        };
        registry.register(
            "cache_hits",
            "Queries answered from a fresh cache entry",
            cache.hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Cache lookups that found no usable entry, so the query went upstream",
            cache.misses.clone(),
        );
        registry.register(
            "cache_stale",
            "Queries answered from an expired cache entry (serve-stale)",
            cache.stale.clone(),
        );
        let local_answers = Counter::default();
        registry.register(
            "local_answers",
            "Queries answered by a built-in local zone (localhost, private and special reverse \
             zones) without asking any upstream",
            local_answers.clone(),
        );
        let hedged = Counter::default();
        registry.register(
            "hedged_queries",
            "Queries also sent to a second upstream: the first had not answered within the \
             hedging delay or connected within a quarter of the timeout, or was being probed \
             after a backoff",
            hedged.clone(),
        );
        let rate_limited = Counter::default();
        registry.register(
            "rate_limited",
            "Client queries over the per-client rate limit (dropped or refused per \
             rate_limit_action)",
            rate_limited.clone(),
        );
        let link_updates = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "link_updates",
            "Requests over org.freedesktop.resolve1 to change a link's DNS settings, by outcome: \
             applied, unchanged (already in force), invalid (refused) or denied (caller not \
             allowed)",
            link_updates.clone(),
        );
        let links = LinkMetrics {
            links: Gauge::default(),
            zones: Gauge::default(),
            updates: LINK_OUTCOMES
                .map(|outcome| link_updates.get_or_create_owned(&OutcomeLabels { outcome })),
        };
        registry.register(
            "links",
            "Network links with DNS settings learned over org.freedesktop.resolve1",
            links.links.clone(),
        );
        registry.register(
            "link_zones",
            "Zones learned from the links in force: their names go to the link's servers",
            links.zones.clone(),
        );
        let verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "dnssec_answers",
            "Answers from upstreams validated here, by DNSSEC verdict (secure, insecure, bogus, \
             indeterminate), cache hits included",
            verdicts.clone(),
        );
        let dnssec =
            DNSSEC_VERDICTS.map(|verdict| verdicts.get_or_create_owned(&VerdictLabels { verdict }));
        Metrics {
            registry,
            links,
            dnssec,
            local_answers,
            hedged,
            rate_limited,
            udp: TransportMetrics::new("udp", &answers, &dropped),
            tcp: TransportMetrics::new("tcp", &answers, &dropped),
            tls: TransportMetrics::new("tls", &answers, &dropped),
            https: TransportMetrics::new("https", &answers, &dropped),
            bus: TransportMetrics::new("dbus", &answers, &dropped),
            queries_in_flight,
            tcp_connections,
            cache,
            upstream_queries,
            upstream_errors,
            upstream_latency,
            upstream_connections,
            tls_handshakes,
        }
    }

    /// The handles of the upstream at `address`, creating its series on first use.
    pub(crate) fn upstream(&self, address: SocketAddr) -> UpstreamMetrics {
        self.upstream_labelled(&address.to_string())
    }

    /// The handles of the upstream labelled `upstream` (an address, a DoH URL), creating its
    /// series on first use.
    pub(crate) fn upstream_labelled(&self, upstream: &str) -> UpstreamMetrics {
        let upstream = upstream.to_string();
        let labels = UpstreamLabels {
            upstream: upstream.clone(),
        };
        UpstreamMetrics {
            queries: self.upstream_queries.get_or_create_owned(&labels),
            errors: UpstreamErrorKind::ALL.map(|kind| {
                self.upstream_errors
                    .get_or_create_owned(&UpstreamErrorLabels {
                        upstream: upstream.clone(),
                        kind: kind.as_str(),
                    })
            }),
            latency: self.upstream_latency.get_or_create_owned(&labels),
            connections: self.upstream_connections.get_or_create_owned(&labels),
            handshakes: HANDSHAKE_OUTCOMES.map(|outcome| {
                self.tls_handshakes.get_or_create_owned(&HandshakeLabels {
                    upstream: upstream.clone(),
                    outcome,
                })
            }),
        }
    }

    /// Every series in the Prometheus text format, version 0.0.4.
    pub(crate) fn render(&self) -> Result<String, fmt::Error> {
        let mut out = String::new();
        prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// The series of one client transport.
    pub(crate) fn transport(&self, transport: Transport) -> &TransportMetrics {
        match transport {
            Transport::Udp => &self.udp,
            Transport::Tcp => &self.tcp,
            Transport::Tls => &self.tls,
            Transport::Https => &self.https,
            Transport::Bus => &self.bus,
        }
    }

    /// Answers by response code and drops, by client transport, for `dns-proxy status`.
    pub(crate) fn transports_snapshot(&self) -> BTreeMap<String, snapshot::Transport> {
        Transport::ALL
            .into_iter()
            .map(|transport| {
                let series = self.transport(transport);
                let answers = RCODES
                    .iter()
                    .zip(&series.answers)
                    .map(|(rcode, counter)| (rcode.to_string(), counter.get()))
                    .collect();
                let counts = snapshot::Transport {
                    answers,
                    dropped: series.dropped.get(),
                };
                (transport.as_str().to_string(), counts)
            })
            .collect()
    }

    /// One line for `STATUS=`: what has been served so far. DNS over TLS and HTTPS are named
    /// only once they carried a query, to keep the line short where they are not served.
    pub(crate) fn summary(&self) -> String {
        let all = Transport::ALL.map(|transport| self.transport(transport));
        let answered = |rcode: u16| {
            let i = rcode_index(rcode);
            all.iter().map(|t| t.answers[i].get()).sum::<u64>()
        };
        let (noerror, servfail, nxdomain) = (answered(0), answered(2), answered(3));
        let answers: u64 = all.iter().map(|t| t.answered_total()).sum();
        let dropped: u64 = all.iter().map(|t| t.dropped.get()).sum();
        let mut total = 0;
        let mut parts = Vec::new();
        for transport in Transport::ALL {
            let count = self.transport(transport).total();
            total += count;
            if count > 0 || matches!(transport, Transport::Udp | Transport::Tcp) {
                parts.push(format!("{} {count}", transport.as_str()));
            }
        }
        format!(
            "{total} queries ({}): {noerror} NOERROR, {nxdomain} NXDOMAIN, \
             {servfail} SERVFAIL, {} other answers, {dropped} dropped; {} in flight",
            parts.join(", "),
            answers - noerror - nxdomain - servfail,
            self.queries_in_flight.get(),
        )
    }
}

/// Index in [`RCODES`] of a response code (12 bits, extended RCODE included).
fn rcode_index(rcode: u16) -> usize {
    match rcode {
        0..=5 => usize::from(rcode),
        16 => 6,
        _ => 7,
    }
}

impl TransportMetrics {
    fn new(
        transport: &'static str,
        answers: &Family<QueryLabels, Counter>,
        dropped: &Family<TransportLabels, Counter>,
    ) -> TransportMetrics {
        TransportMetrics {
            answers: RCODES
                .map(|rcode| answers.get_or_create_owned(&QueryLabels { transport, rcode })),
            dropped: dropped.get_or_create_owned(&TransportLabels { transport }),
        }
    }

    /// An answer with this response code went to a client.
    pub(crate) fn answered(&self, rcode: u16) {
        self.answers[rcode_index(rcode)].inc();
    }

    /// A packet or connection got no answer.
    pub(crate) fn dropped(&self) {
        self.dropped.inc();
    }

    fn answered_total(&self) -> u64 {
        self.answers.iter().map(Counter::get).sum()
    }

    /// Queries answered or dropped.
    fn total(&self) -> u64 {
        self.answered_total() + self.dropped.get()
    }
}

impl UpstreamMetrics {
    /// A query was handed to this upstream.
    pub(crate) fn query_sent(&self) {
        self.queries.inc();
    }

    /// A query got a usable answer `elapsed` after it was handed over.
    pub(crate) fn answered(&self, elapsed: Duration) {
        self.latency.observe(elapsed);
    }

    /// A query got no usable answer, for an error of this kind.
    pub(crate) fn failed(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Queries handed to this upstream so far.
    pub(crate) fn queries(&self) -> u64 {
        self.queries.get()
    }

    /// Queries to this upstream that got no usable answer so far.
    pub(crate) fn failures(&self) -> u64 {
        self.errors.iter().map(Counter::get).sum()
    }

    /// TLS connections open to this upstream now.
    pub(crate) fn open_connections(&self) -> i64 {
        self.connections.get()
    }

    /// A TLS handshake starts: failed unless [`PendingHandshake::completed`] is called.
    pub(crate) fn handshake_started(&self) -> PendingHandshake<'_> {
        PendingHandshake {
            handshakes: &self.handshakes,
            done: false,
        }
    }

    /// A connection is open until the returned guard is dropped.
    pub(crate) fn connection_opened(&self) -> GaugeGuard {
        GaugeGuard::new(&self.connections)
    }
}

/// A TLS handshake under way; counted as failed if dropped before it completed, which also
/// covers a handshake abandoned when the query's time budget ran out.
pub(crate) struct PendingHandshake<'a> {
    handshakes: &'a [Counter; HANDSHAKE_OUTCOMES.len()],
    done: bool,
}

impl PendingHandshake<'_> {
    pub(crate) fn completed(mut self, handshake: Handshake) {
        self.done = true;
        let outcome = match handshake {
            Handshake::Full => 0,
            Handshake::Resumed => 1,
        };
        self.handshakes[outcome].inc();
    }
}

impl Drop for PendingHandshake<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.handshakes[2].inc();
        }
    }
}

/// Keeps a gauge one higher for as long as it lives, however the code holding it ends.
#[derive(Debug)]
pub(crate) struct GaugeGuard(Gauge);

impl GaugeGuard {
    pub(crate) fn new(gauge: &Gauge) -> GaugeGuard {
        gauge.inc();
        GaugeGuard(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A histogram of durations with fixed buckets (`LATENCY_BOUNDS_NANOS`). prometheus-client's
/// own `Histogram` takes a mutex on every observation; this one is a few relaxed atomic adds.
/// The count is the sum of the buckets, so a scrape always sees them agree.
#[derive(Clone, Debug, Default)]
pub(crate) struct LatencyHistogram(Arc<HistogramCells>);

#[derive(Debug, Default)]
struct HistogramCells {
    /// Observations per bucket (not cumulative); the last one is above every bound.
    buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

impl LatencyHistogram {
    pub(crate) fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BOUNDS_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(LATENCY_BOUNDS_NANOS.len());
        self.0.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.0.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); LATENCY_BOUNDS_NANOS.len() + 1];
        for (i, (bound, count)) in buckets.iter_mut().enumerate() {
            if let Some(&nanos) = LATENCY_BOUNDS_NANOS.get(i) {
                *bound = nanos as f64 / 1e9;
            }
            *count = self.0.buckets[i].load(Ordering::Relaxed);
        }
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.0.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn series_are_created_up_front_and_count() {
        let metrics = Metrics::new();
        let upstream = metrics.upstream("192.0.2.53:853".parse().unwrap());
        metrics.udp.answered(0);
        metrics.udp.answered(0);
        metrics.udp.answered(16);
        metrics.udp.answered(9);
        metrics.tcp.answered(2);
        metrics.tcp.dropped();
        upstream.query_sent();
        upstream.failed(UpstreamErrorKind::Timeout);
        upstream.answered(Duration::from_micros(300));
        upstream.answered(Duration::from_secs(9));
        upstream.handshake_started().completed(Handshake::Resumed);
        drop(upstream.handshake_started());
        let open = upstream.connection_opened();
        let in_flight = GaugeGuard::new(&metrics.queries_in_flight);
        let text = metrics.render().unwrap();
        let value = |series: &str| {
            sample(&text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        };
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            value(&format!("dns_proxy_build_info{{version=\"{version}\"}}")),
            1.0
        );
        for (series, n) in [
            (
                r#"dns_proxy_queries_total{transport="udp",rcode="NOERROR"}"#,
                2.0,
            ),
            (
                r#"dns_proxy_queries_total{transport="udp",rcode="BADVERS"}"#,
                1.0,
            ),
            (
                r#"dns_proxy_queries_total{transport="udp",rcode="other"}"#,
                1.0,
            ),
            (
                r#"dns_proxy_queries_total{transport="tcp",rcode="SERVFAIL"}"#,
                1.0,
            ),
            (
                r#"dns_proxy_queries_total{transport="tcp",rcode="NXDOMAIN"}"#,
                0.0,
            ),
            (r#"dns_proxy_queries_dropped_total{transport="tcp"}"#, 1.0),
            ("dns_proxy_queries_in_flight", 1.0),
            ("dns_proxy_client_tcp_connections", 0.0),
        ] {
            assert_eq!(value(series), n, "{series}");
        }
        let up = r#"upstream="192.0.2.53:853""#;
        for (name, labels, n) in [
            ("queries_total", "", 1.0),
            ("errors_total", r#",kind="timeout""#, 1.0),
            ("errors_total", r#",kind="refused""#, 0.0),
            ("latency_seconds_bucket", r#",le="0.00025""#, 0.0),
            ("latency_seconds_bucket", r#",le="0.0005""#, 1.0),
            ("latency_seconds_bucket", r#",le="5""#, 1.0),
            ("latency_seconds_bucket", r#",le="+Inf""#, 2.0),
            ("latency_seconds_count", "", 2.0),
            ("latency_seconds_sum", "", 9.0003),
            ("connections", "", 1.0),
        ] {
            let series = format!("dns_proxy_upstream_{name}{{{up}{labels}}}");
            assert_eq!(value(&series), n, "{series}");
        }
        for (outcome, n) in [("full", 0.0), ("resumed", 1.0), ("failed", 1.0)] {
            let series = format!(r#"dns_proxy_tls_handshakes_total{{{up},outcome="{outcome}"}}"#);
            assert_eq!(value(&series), n, "{series}");
        }
        for cache in ["hits", "misses", "stale"] {
            assert_eq!(value(&format!("dns_proxy_cache_{cache}_total")), 0.0);
        }
        assert!(
            text.contains("# TYPE dns_proxy_queries_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE dns_proxy_upstream_latency_seconds histogram\n"));
        assert!(
            !text.contains("# EOF"),
            "OpenMetrics, not the 0.0.4 format:\n{text}"
        );
        assert_eq!(
            metrics.summary(),
            "6 queries (udp 4, tcp 2): 2 NOERROR, 0 NXDOMAIN, 1 SERVFAIL, 2 other answers, \
             1 dropped; 1 in flight"
        );

        // The same address again (a reload) shares the series; guards give back what they took.
        drop((open, in_flight));
        metrics
            .upstream("192.0.2.53:853".parse().unwrap())
            .query_sent();
        let text = metrics.render().unwrap();
        assert_eq!(
            sample(&text, &format!("dns_proxy_upstream_queries_total{{{up}}}")),
            Some(2.0)
        );
        assert_eq!(
            sample(&text, &format!("dns_proxy_upstream_connections{{{up}}}")),
            Some(0.0)
        );
        assert_eq!(sample(&text, "dns_proxy_queries_in_flight"), Some(0.0));
    }

    #[test]
    fn the_status_line_names_encrypted_transports_once_they_carried_queries() {
        let metrics = Metrics::new();
        metrics.udp.answered(0);
        assert!(
            metrics
                .summary()
                .starts_with("1 queries (udp 1, tcp 0): 1 NOERROR")
        );
        metrics.tls.answered(0);
        metrics.https.answered(3);
        metrics.https.dropped();
        assert!(
            metrics
                .summary()
                .starts_with("4 queries (udp 1, tcp 0, tls 1, https 2): 2 NOERROR, 1 NXDOMAIN"),
            "{}",
            metrics.summary()
        );
        let text = metrics.render().unwrap();
        for series in [
            r#"dns_proxy_queries_total{transport="tls",rcode="NOERROR"} 1"#,
            r#"dns_proxy_queries_total{transport="https",rcode="NXDOMAIN"} 1"#,
            r#"dns_proxy_queries_dropped_total{transport="https"} 1"#,
        ] {
            assert!(
                text.lines().any(|line| line == series),
                "{series} in:\n{text}"
            );
        }
    }

    #[test]
    fn rcode_labels() {
        for (rcode, label) in [
            (0, "NOERROR"),
            (1, "FORMERR"),
            (2, "SERVFAIL"),
            (3, "NXDOMAIN"),
        ]
        .into_iter()
        .chain([(4, "NOTIMP"), (5, "REFUSED"), (16, "BADVERS")])
        .chain([(6, "other"), (15, "other"), (23, "other"), (4095, "other")])
        {
            assert_eq!(RCODES[rcode_index(rcode)], label, "{rcode}");
        }
    }
}
