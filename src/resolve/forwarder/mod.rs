//! Turns a validated client query into the answer the client gets: from the cache, or from an
//! upstream (one query for all clients asking the same question at once), retried once when a
//! connection dies under it. Every failure becomes a stale answer (serve-stale) or SERVFAIL
//! within the query's time budget. This is the one place errors become DNS answers.
//!
//! An upstream that does not answer must not spend the whole budget when another could
//! answer: a firewall that drops packets makes a connect hang, with no refusal to say so. So a
//! query that has to wait for a connection to open also asks the next upstream once a share of
//! its budget has gone by ([`CONNECT_SHARE`]), and one that probes a down upstream asks the
//! next at once (see [`Forwarder::attempt`]).
//!
//! Split DNS is a [`Router`] table with the groups it names. The zones learned at run time
//! (the links') are swapped in whole, with a new table, while queries run: a query takes the
//! table in force when it misses the cache and finishes with it.
//!
//! With `dnssec = "validate"`, an answer from the default upstreams (or a forward zone that
//! asks for it) is fetched with DO and CD set, whatever the client set, and validated once
//! (`dnssec::validator`), asking the same upstreams for keys and delegations (`Fetcher`); each
//! client then gets its own view of it (AD, DNSSEC records, SERVFAIL with an Extended DNS
//! Error when bogus, the data itself when it set CD), cached under its own key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::{debug, info};

use crate::common::error::UpstreamError;
use crate::common::lock;
use crate::common::metrics::{CacheMetrics, GaugeGuard, Metrics};
use crate::common::snapshot;
use crate::common::transport::Transport;
use crate::config::{Config, Dnssec, Hedge, Strategy, ZoneUpstream};
use crate::dnssec::anchors;
use crate::dnssec::chain::{Fetch, FetchError};
use crate::dnssec::validator::Validator;
use crate::dnssec::verdict::{Security, Verdict};
use crate::policy::ratelimit::RateLimiter;
use crate::resolve::cache::{Cache, Key, Lookup};
use crate::resolve::coalesce::{self, Coalescer, Role};
use crate::resolve::zones::{LearnedZones, Route, Router};
use crate::upstream::bootstrap::{AddressBook, Bootstrap};
use crate::upstream::build::Encrypted;
use crate::upstream::exchange::{Exchange, Readiness};
use crate::upstream::group::{AnyUpstream, Group, Pick};
use crate::upstream::plain::PlainUpstream;
use crate::upstream::tls::TlsSetupError;
use crate::wire::dns::{self, Query, Rcode, Response};
use crate::wire::name::ZoneName;
use crate::wire::view::View;

/// An upstream's response and who sent it, shared by every client of a coalesced query.
type Resolved = Result<(Arc<Checked>, SocketAddr), UpstreamError>;

/// An upstream's response and, when it was validated, the verdict on it.
#[derive(Debug)]
struct Checked {
    response: Arc<Response>,
    verdict: Option<Verdict>,
}

/// Record type DS, whose owner's parent zone holds it.
const TYPE_DS: u16 = 43;

/// A query that has to wait for a connection to an upstream to open waits this share of
/// `timeout` (a quarter) before it also asks the next upstream, and takes the first answer.
///
/// Why a race and not a shorter connect deadline: a connect that is merely slow (a far
/// resolver, a lost SYN retransmitted after a second) still completes, in the background, for
/// the queries after this one, and an upstream is marked down only when its connect really
/// fails or runs out the whole `timeout`, never for being slower than a guess. Why a quarter:
/// it covers a TCP and TLS 1.3 handshake (two round trips) at 250 ms of round trip with the
/// default 2 s, and leaves three quarters of the budget for the next upstream's own connect
/// and answer. Only the first query to find the upstream unreachable pays it: the others skip
/// an upstream whose connect is under way, or down.
const CONNECT_SHARE: u32 = 4;

/// Where an answer came from, for the query log.
enum Source {
    Upstream(SocketAddr),
    Cache,
    Stale,
    Local,
    Failed,
}

/// The series a forwarder counts in (clones of handles into the daemon's registry).
struct Counts {
    cache: CacheMetrics,
    local: Counter,
    hedged: Counter,
    queries_in_flight: Gauge,
    /// Indexed like `metrics::DNSSEC_VERDICTS`.
    dnssec: [Counter; 4],
}

/// How a query's answer is had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Privacy {
    /// Here, by a built-in local zone.
    Local,
    /// From encrypted upstreams only (DoT or DoH).
    Encrypted,
    /// From an upstream asked in plain DNS (a forward zone's or a link's).
    Plaintext,
}

/// The routing table in force and the groups of the learned zones it names; replaced whole.
struct Routes<R> {
    router: Router,
    /// What the table was built from.
    learned: LearnedZones,
    /// One group per entry of `learned.zones`, shared with the next table when its servers
    /// stay the same (so their latency and state carry over).
    groups: Vec<Arc<Group<R>>>,
    /// The group of `learned.default`, when there is one.
    default: Option<Arc<Group<R>>>,
}

/// A route and the table it was found in, which stays alive while a query uses it.
struct Routed<R> {
    routes: Arc<Routes<R>>,
    route: Route,
}

impl<R> Clone for Routed<R> {
    fn clone(&self) -> Self {
        Routed {
            routes: Arc::clone(&self.routes),
            route: self.route,
        }
    }
}

/// Generic over how an upstream is asked so that unit tests can script one; the daemon's is a
/// `Forwarder<AnyUpstream>`, the real kinds.
pub(crate) struct Forwarder<R = AnyUpstream> {
    /// The default upstreams.
    upstreams: Group<R>,
    /// The upstreams of each forward zone, in configuration order.
    zones: Vec<Group<R>>,
    /// The zone names of each forward zone, to build the table again with learned zones.
    zone_names: Vec<Vec<ZoneName>>,
    routes: RwLock<Arc<Routes<R>>>,
    /// How learned zones' groups pick and hedge: in the servers' order, as a stub resolver
    /// does (the first is the one the network names first).
    hedge: Hedge,
    timeout: Duration,
    log_queries: bool,
    /// Handles to the series this forwarder counts; the registry outlives reloads.
    counts: Counts,
    /// `None` when the cache is off.
    cache: Option<Cache>,
    /// Upstream queries in flight, each shared by every client asking the same question.
    in_flight: Coalescer<Resolved>,
    /// `None` when `rate_limit` is 0. Lives here so a reload resets it with the rest.
    limiter: Option<RateLimiter>,
    /// `None` when `dnssec = "off"`.
    validator: Option<Validator>,
    /// For each forward zone, whether its answers are validated.
    zone_validates: Vec<bool>,
    /// The validator's key and delegation queries in flight, shared like clients' queries.
    fetches: Coalescer<Result<Arc<Response>, UpstreamError>>,
}

impl Forwarder {
    /// Builds the upstreams, with handles to their series in `metrics` and the addresses of
    /// host-name upstreams in `book` (both outlive us).
    pub(crate) fn new(
        config: &Config,
        metrics: &Metrics,
        book: &AddressBook,
    ) -> Result<Forwarder, TlsSetupError> {
        let encrypted = Encrypted {
            idle_timeout: config.upstream_idle_timeout,
            pool_size: config.upstream_connections,
            metrics,
            bootstrap: Arc::new(Bootstrap::new(&config.bootstrap, metrics)),
            book,
        };
        let tls = |upstream| encrypted.build(upstream);
        let group = |resolvers| Group::new(resolvers, config.strategy, config.hedge);
        let upstreams = group(config.upstreams.iter().map(tls).collect::<Result<_, _>>()?);
        let zones = config
            .forward_zones
            .iter()
            .map(|zone| {
                zone.upstreams
                    .iter()
                    .map(|upstream| match upstream {
                        ZoneUpstream::Tls(upstream) => tls(upstream),
                        ZoneUpstream::Plain(address) => Ok(AnyUpstream::Plain(Box::new(
                            PlainUpstream::new(*address, metrics.upstream(*address)),
                        ))),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(group)
            })
            .collect::<Result<_, _>>()?;
        let zone_names: Vec<_> = config
            .forward_zones
            .iter()
            .map(|z| z.zones.clone())
            .collect();
        Ok(Forwarder::assemble(
            config, metrics, upstreams, zones, zone_names,
        ))
    }

    /// Puts `learned` in force (queries already routed finish where they went), asking its
    /// servers over plain DNS; false when it is already in force.
    pub(crate) fn set_learned(&self, learned: &LearnedZones, metrics: &Metrics) -> bool {
        self.set_learned_with(learned, |address| {
            AnyUpstream::Plain(Box::new(PlainUpstream::new(
                address,
                metrics.upstream(address),
            )))
        })
    }

    /// How `query` would be answered: here, over DoT only, or with a plaintext hop.
    pub(crate) fn privacy(&self, query: &Query) -> Privacy {
        let routes = self.routes();
        let Ok(route) = routes.router.route(query) else {
            return Privacy::Local;
        };
        let group = self.group(&routes, route);
        match group
            .members
            .iter()
            .all(|member| matches!(member.upstream, AnyUpstream::Tls(_) | AnyUpstream::Https(_)))
        {
            true => Privacy::Encrypted,
            false => Privacy::Plaintext,
        }
    }

    /// Forgets what was learned about every upstream (latency, backoff), as systemd-resolved's
    /// `ResetServerFeatures` forgets what it learned about its servers.
    pub(crate) fn forget_upstream_state(&self) {
        let routes = self.routes();
        let learned = routes
            .groups
            .iter()
            .map(|g| &**g)
            .chain(routes.default.as_deref());
        for group in std::iter::once(&self.upstreams)
            .chain(&self.zones)
            .chain(learned)
        {
            group.forget();
        }
    }

    /// The learned zones' upstreams, in the order of [`LearnedZones::zones`], for `dns-proxy
    /// status`.
    pub(crate) fn learned_snapshot(&self) -> Vec<snapshot::ForwardZone> {
        let routes = self.routes();
        let mut zones: Vec<snapshot::ForwardZone> = routes
            .learned
            .zones
            .iter()
            .zip(&routes.groups)
            .map(|((zones, _), group)| snapshot::ForwardZone {
                zones: zones.iter().map(ToString::to_string).collect(),
                upstreams: group.snapshot(),
            })
            .collect();
        if let Some(group) = &routes.default {
            zones.push(snapshot::ForwardZone {
                zones: vec![".".to_string()],
                upstreams: group.snapshot(),
            });
        }
        zones
    }

    /// The default upstreams' state and counts, for `dns-proxy status`.
    pub(crate) fn upstreams_snapshot(&self) -> Vec<snapshot::Upstream> {
        self.upstreams.snapshot()
    }

    /// Each forward zone's upstreams, in configuration order; none while degraded.
    pub(crate) fn zones_snapshot(&self) -> Vec<Vec<snapshot::Upstream>> {
        self.zones.iter().map(Group::snapshot).collect()
    }

    /// A forwarder with no upstream at all: the built-in local zones are answered, every other
    /// name gets SERVFAIL at once. What the daemon serves while it is degraded (a configuration
    /// or trust store it could not use at start).
    pub(crate) fn local_only(config: &Config, metrics: &Metrics) -> Forwarder {
        let upstreams = Group::new(Vec::new(), config.strategy, config.hedge);
        Forwarder::assemble(config, metrics, upstreams, Vec::new(), Vec::new())
    }
}

impl<R: Exchange> Forwarder<R> {
    /// A forwarder over groups already built: `zones` holds one per forward zone, with its
    /// names at the same index of `zone_names`. No learned zone is in force.
    fn assemble(
        config: &Config,
        metrics: &Metrics,
        upstreams: Group<R>,
        zones: Vec<Group<R>>,
        zone_names: Vec<Vec<ZoneName>>,
    ) -> Forwarder<R> {
        let routes = Routes {
            router: Router::new(&zone_names, &[]),
            learned: LearnedZones::default(),
            groups: Vec::new(),
            default: None,
        };
        let validator =
            (config.dnssec == Dnssec::Validate).then(|| validator(config, &routes.router));
        Forwarder {
            upstreams,
            zones,
            zone_names,
            routes: RwLock::new(Arc::new(routes)),
            hedge: config.hedge,
            timeout: config.timeout,
            log_queries: config.log_queries,
            counts: Counts {
                cache: metrics.cache.clone(),
                local: metrics.local_answers.clone(),
                hedged: metrics.hedged.clone(),
                queries_in_flight: metrics.queries_in_flight.clone(),
                dnssec: metrics.dnssec.clone(),
            },
            cache: config.cache.enabled.then(|| Cache::new(&config.cache)),
            in_flight: Coalescer::default(),
            limiter: (config.rate_limit > 0).then(|| RateLimiter::new(config.rate_limit)),
            validator,
            zone_validates: config
                .forward_zones
                .iter()
                .map(|zone| zone.dnssec == Dnssec::Validate)
                .collect(),
            fetches: Coalescer::default(),
        }
    }

    /// The routing table in force.
    fn routes(&self) -> Arc<Routes<R>> {
        lock::read(&self.routes).clone()
    }

    /// Puts `learned` in force, with `upstream` making each server's upstream; a group whose
    /// servers were in force already is kept. False when `learned` is in force already.
    fn set_learned_with(&self, learned: &LearnedZones, upstream: impl Fn(SocketAddr) -> R) -> bool {
        let old = self.routes();
        if old.learned == *learned {
            return false;
        }
        let mut kept: HashMap<&[SocketAddr], &Arc<Group<R>>> = old
            .learned
            .zones
            .iter()
            .map(|(_, servers)| servers.as_slice())
            .zip(&old.groups)
            .collect();
        if let Some(group) = &old.default {
            kept.insert(&old.learned.default, group);
        }
        let group = |servers: &[SocketAddr]| match kept.get(servers) {
            Some(group) => Arc::clone(group),
            None => Arc::new(Group::new(
                servers.iter().map(|s| upstream(*s)).collect(),
                Strategy::Failover,
                self.hedge,
            )),
        };
        let groups = learned.zones.iter().map(|(_, s)| group(s)).collect();
        let default = (!learned.default.is_empty()).then(|| group(&learned.default));
        let names: Vec<Vec<ZoneName>> = learned.zones.iter().map(|(z, _)| z.clone()).collect();
        let routes = Routes {
            router: Router::new(&self.zone_names, &names),
            learned: learned.clone(),
            groups,
            default,
        };
        *lock::write(&self.routes) = Arc::new(routes);
        true
    }

    /// Whether answers on `route` are validated: the default upstreams' and those of a forward
    /// zone that asks for it; a link's zones are insecure, as forward zones are by default.
    fn validates(&self, route: Route) -> bool {
        self.validator.is_some()
            && match route {
                Route::Default => true,
                Route::Forward(zone) => self.zone_validates.get(zone).copied().unwrap_or(false),
                Route::Learned(_) => false,
            }
    }

    /// Counts an answer's verdict, when validation is on.
    fn count(&self, security: Security) {
        if self.validator.is_none() {
            return;
        }
        let index = match security {
            Security::Secure => 0,
            Security::Insecure => 1,
            Security::Bogus => 2,
            Security::Indeterminate => 3,
            Security::Unchecked => return,
        };
        self.counts.dnssec[index].inc();
    }

    /// Names whose chain-of-trust state the validator holds.
    pub(crate) fn zones_cached(&self) -> u64 {
        self.validator
            .as_ref()
            .map_or(0, |v| v.zones_cached() as u64)
    }

    /// Whether a query from `client` is within the per-client rate limit (always, when off).
    pub(crate) fn admit(&self, client: std::net::IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|limiter| limiter.admit(client, Instant::now()))
    }

    /// The answer for `query`: from the cache or an upstream, else a stale answer or SERVFAIL
    /// once the time budget is spent or no upstream can be reached. Never fails and never
    /// waits past the budget.
    pub(crate) async fn answer(
        self: &Arc<Self>,
        query: &Query,
        client: SocketAddr,
        transport: Transport,
    ) -> Vec<u8> {
        let _forwarding = GaugeGuard::new(&self.counts.queries_in_flight);
        let started = Instant::now();
        // Boxed: the resolution's state is kilobytes, and a task's future is copied on
        // spawn and on completion; a pointer is cheaper to move than that.
        let (answer, source, security) = Box::pin(self.find_answer(query, started)).await;
        self.count(security);
        self.log(query, client, transport, &answer, source, security, started);
        answer
    }

    /// The answer from a fresh cache entry, if there is one. The UDP receive loops answer
    /// these in place: a hit needs no task, no lock and no wait.
    pub(crate) fn answer_cached(
        self: &Arc<Self>,
        query: &Query,
        client: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let cache = self.cache.as_ref()?;
        let started = Instant::now();
        let key = Key::of(query);
        let Lookup::Hit {
            answer,
            prefetch,
            security,
        } = cache.lookup(&key, query, started)
        else {
            return None;
        };
        self.counts.cache.hits.inc();
        if prefetch {
            self.prefetch(query.clone(), key);
        }
        self.count(security);
        self.log(
            query,
            client,
            transport,
            &answer,
            Source::Cache,
            security,
            started,
        );
        Some(answer)
    }

    #[allow(clippy::too_many_arguments)]
    fn log(
        &self,
        query: &Query,
        client: SocketAddr,
        transport: Transport,
        answer: &[u8],
        source: Source,
        security: Security,
        started: Instant,
    ) {
        if self.log_queries {
            let source = match source {
                Source::Upstream(address) => address.to_string(),
                Source::Cache => "cache".to_string(),
                Source::Stale => "cache (stale)".to_string(),
                Source::Local => "local zone".to_string(),
                Source::Failed => String::new(),
            };
            info!(
                client = %client,
                transport = transport.as_str(),
                question = %query.describe(),
                rcode = answer.get(3).map_or(0, |b| b & 0x0f),
                upstream = source,
                dnssec = security.as_str(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "query"
            );
        }
    }

    async fn find_answer(
        self: &Arc<Self>,
        query: &Query,
        started: Instant,
    ) -> (Vec<u8>, Source, Security) {
        let key = Key::of(query);
        let mut stale = None;
        if let Some(cache) = &self.cache {
            match cache.lookup(&key, query, started) {
                Lookup::Hit {
                    answer,
                    prefetch,
                    security,
                } => {
                    self.counts.cache.hits.inc();
                    if prefetch {
                        self.prefetch(query.clone(), key);
                    }
                    return (answer, Source::Cache, security);
                }
                // Counted as stale or as a miss once it is known whether it was served.
                Lookup::Stale(entry) => stale = Some(entry),
                Lookup::Miss => {
                    self.counts.cache.misses.inc();
                }
            }
        }
        let routes = self.routes();
        let routed = match routes.router.route(query) {
            Ok(route) => Routed { routes, route },
            Err(answer) => {
                self.counts.local.inc();
                return (answer, Source::Local, Security::Unchecked);
            }
        };
        let deadline = started + self.timeout;
        let failure = match self.resolve_for(query, &routed, deadline).await {
            Ok((checked, upstream)) => {
                let (view, security) = self.client_view(query, routed.route, &checked);
                // A failed validation is an answer; an upstream's failure is not, when a
                // stale answer can stand in for it.
                let failed = view.rcode() == dns::RCODE_SERVFAIL && security != Security::Bogus;
                if !failed || stale.is_none() {
                    if stale.is_some() {
                        self.counts.cache.misses.inc();
                    }
                    let view = self.store(&key, view, security);
                    return (query.answer(&view), Source::Upstream(upstream), security);
                }
                match checked.verdict.as_ref().and_then(Verdict::ede) {
                    Some(ede) => ede.to_string(),
                    None => "upstream answered SERVFAIL".to_string(),
                }
            }
            Err(error) => {
                debug!(error_kind = error.kind(), "query failed: {error}");
                error.to_string()
            }
        };
        if let Some(entry) = stale {
            debug!("serving a stale answer: {failure}");
            self.counts.cache.stale.inc();
            return (
                Cache::stale_answer(&entry, query),
                Source::Stale,
                entry.security(),
            );
        }
        (
            query.error_answer(Rcode::ServFail),
            Source::Failed,
            Security::Unchecked,
        )
    }

    /// Keeps a client's view under its key; returns what to answer with (TTLs clamped).
    fn store(&self, key: &Key, view: Arc<Response>, security: Security) -> Arc<Response> {
        match &self.cache {
            Some(cache) => cache.insert(key, view, Instant::now(), security),
            None => view,
        }
    }

    /// The response `query`'s client gets from what the upstream answered on `route`, and
    /// the verdict it carries.
    fn client_view(
        &self,
        query: &Query,
        route: Route,
        checked: &Checked,
    ) -> (Arc<Response>, Security) {
        let response = &checked.response;
        let Some(verdict) = &checked.verdict else {
            return match (self.validator.is_some(), self.validates(route)) {
                // Validation off: as the upstream sent it.
                (false, _) => (response.clone(), Security::Unchecked),
                // A forward zone not validated: never AD.
                (true, false) => (response.without_ad(), Security::Insecure),
                // Validated route, but an upstream error: nothing to validate.
                (true, true) => {
                    let view = View {
                        dnssec_ok: query.dnssec_ok(),
                        authentic: false,
                        checking_disabled: query.checking_disabled(),
                    };
                    (
                        response.for_client(query.qtype(), view, None),
                        Security::Unchecked,
                    )
                }
            };
        };
        let security = verdict.security();
        let data = |authentic: bool, ede: Option<(u16, &str)>| {
            let view = View {
                dnssec_ok: query.dnssec_ok(),
                authentic: authentic && query.wants_ad(),
                checking_disabled: query.checking_disabled(),
            };
            response.for_client(query.qtype(), view, ede)
        };
        let secure = security == Security::Secure;
        if query.checking_disabled() {
            // CD: the data, whatever the verdict (RFC 4035 §3.2.2).
            return (data(secure, None), security);
        }
        let view = match verdict {
            Verdict::Secure => data(true, None),
            Verdict::Insecure(info) => data(false, info.as_ref().map(|e| (e.code.0, &*e.text))),
            Verdict::Bogus(ede) | Verdict::Indeterminate(ede) => {
                Arc::new(query.error_response(Rcode::ServFail, Some((ede.code.0, &ede.text))))
            }
        };
        (view, security)
    }

    /// Resolves `query` on `route`: as the client asked, or, when validated, with DO and CD
    /// and then validated.
    async fn resolve_for(
        self: &Arc<Self>,
        query: &Query,
        routed: &Routed<R>,
        deadline: Instant,
    ) -> Resolved {
        if self.validates(routed.route) {
            let asked = query.validating();
            self.resolve_shared(&asked, &Key::of(&asked), routed, deadline)
                .await
        } else {
            self.resolve_shared(query, &Key::of(query), routed, deadline)
                .await
        }
    }

    /// Resolves `query` upstream, or waits for the identical query already in flight.
    async fn resolve_shared(
        self: &Arc<Self>,
        query: &Query,
        key: &Key,
        routed: &Routed<R>,
        deadline: Instant,
    ) -> Resolved {
        let flight = match self.in_flight.join(key.as_bytes()) {
            Role::Leader(flight) => flight,
            Role::Follower(receiver) => {
                if let Some(result) = coalesce::follow(receiver, deadline).await {
                    return result;
                }
                // The leader gave up without a result; this query still has its own budget.
                if Instant::now() >= deadline {
                    return Err(UpstreamError::Timeout);
                }
                return self.resolve_checked(query, routed, deadline).await;
            }
        };
        let result = self.resolve_checked(query, routed, deadline).await;
        flight.finish(result.clone());
        result
    }

    /// Resolves `query` upstream and validates the response when the route is validated.
    async fn resolve_checked(
        self: &Arc<Self>,
        query: &Query,
        routed: &Routed<R>,
        deadline: Instant,
    ) -> Resolved {
        let (response, upstream) = self.resolve(query, routed, deadline).await?;
        let validator = self
            .validator
            .as_ref()
            .filter(|_| self.validates(routed.route));
        let verdict = match validator {
            Some(validator)
                if matches!(response.rcode(), dns::RCODE_NOERROR | dns::RCODE_NXDOMAIN) =>
            {
                let fetcher = Fetcher {
                    forwarder: self,
                    routes: &routed.routes,
                    deadline,
                };
                Some(
                    validator
                        .validate(query.question(), &response, &fetcher)
                        .await,
                )
            }
            _ => None,
        };
        Ok((Arc::new(Checked { response, verdict }), upstream))
    }

    /// Refreshes a cache entry in the background, before it expires.
    fn prefetch(self: &Arc<Self>, query: Query, key: Key) {
        let routes = self.routes();
        // Cached answers come from upstreams, so the route is one.
        let Ok(route) = routes.router.route(&query) else {
            return;
        };
        let routed = Routed { routes, route };
        let forwarder = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + forwarder.timeout;
            match forwarder.resolve_for(&query, &routed, deadline).await {
                Ok((checked, _)) => {
                    let (view, security) = forwarder.client_view(&query, routed.route, &checked);
                    forwarder.store(&key, view, security);
                }
                Err(error) => debug!(error_kind = error.kind(), "prefetch failed: {error}"),
            }
        });
    }

    /// Asks `query` (one of the validator's own) on `routed`, sharing the flight with
    /// identical ones in progress.
    async fn fetch(
        self: &Arc<Self>,
        query: &Query,
        routed: &Routed<R>,
        deadline: Instant,
    ) -> Result<Arc<Response>, UpstreamError> {
        let key = Key::of(query);
        let flight = match self.fetches.join(key.as_bytes()) {
            Role::Leader(flight) => flight,
            Role::Follower(receiver) => {
                if let Some(result) = coalesce::follow(receiver, deadline).await {
                    return result;
                }
                return self.resolve(query, routed, deadline).await.map(|(r, _)| r);
            }
        };
        let result = self.resolve(query, routed, deadline).await.map(|(r, _)| r);
        flight.finish(result.clone());
        result
    }

    /// The group `route` names in `routes` (or in this forwarder's own).
    fn group<'a>(&'a self, routes: &'a Routes<R>, route: Route) -> &'a Group<R> {
        match route {
            Route::Forward(zone) => self.zones.get(zone).unwrap_or(&self.upstreams),
            Route::Learned(zone) => routes.groups.get(zone).map_or(&self.upstreams, |g| g),
            Route::Default => routes.default.as_deref().unwrap_or(&self.upstreams),
        }
    }

    /// The group `routed` leads to.
    fn group_of<'a>(&'a self, routed: &'a Routed<R>) -> &'a Group<R> {
        self.group(&routed.routes, routed.route)
    }

    async fn resolve(
        self: &Arc<Self>,
        query: &Query,
        routed: &Routed<R>,
        deadline: Instant,
    ) -> Result<(Arc<Response>, SocketAddr), UpstreamError> {
        let group = self.group_of(routed);
        let frame = query.upstream_frame();
        let mut tried = vec![false; group.members.len()];
        let mut retried = false;
        let mut next = None;
        let mut last_error = UpstreamError::Down;
        loop {
            let Some(pick) = next.take().or_else(|| group.pick(&tried)) else {
                return Err(last_error);
            };
            tried[pick.index] = true;
            let (result, index) = self
                .attempt(routed, pick, &mut tried, query, &frame, deadline)
                .await;
            let upstream = &group.members[index].upstream;
            match result {
                Ok(response) => match Response::prepare(&response) {
                    Ok(response) => return Ok((Arc::new(response), upstream.address())),
                    Err(_) => last_error = UpstreamError::Protocol,
                },
                // The connection died under the query: once, try again on a fresh connection
                // to the same upstream, or on the next one if this one is now down.
                Err(UpstreamError::Closed) if !retried => {
                    retried = true;
                    let readiness = upstream.readiness(Instant::now());
                    if readiness != Readiness::Down {
                        next = Some(Pick { index, readiness });
                    }
                    last_error = UpstreamError::Closed;
                }
                Err(error) => last_error = error,
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Timeout);
            }
        }
    }

    /// Asks the upstream `first` names, and also the next one (the first answer wins) after
    /// [`Forwarder::hedge_delay`]: at once when `first` is a probe, after `CONNECT_SHARE` when
    /// it has to connect, after `hedge` when it is slow to answer. Returns the result and
    /// which upstream it came from.
    async fn attempt(
        self: &Arc<Self>,
        routed: &Routed<R>,
        first: Pick,
        tried: &mut [bool],
        query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> (Result<Vec<u8>, UpstreamError>, usize) {
        let group = self.group_of(routed);
        let delay = self
            .hedge_delay(group, first)
            .filter(|delay| Instant::now() + *delay < deadline);
        let one = self.start(routed, first, tried, query, frame, deadline);
        let Some(delay) = delay else {
            return (one.await, first.index);
        };
        tokio::pin!(one);
        if !delay.is_zero() {
            tokio::select! {
                result = &mut one => return (result, first.index),
                _ = tokio::time::sleep(delay) => {}
            }
        }
        let Some(second) = group.pick(tried) else {
            return (one.await, first.index);
        };
        tried[second.index] = true;
        self.counts.hedged.inc();
        // Boxed: another upstream may take its place.
        let mut other = Box::pin(self.start(routed, second, tried, query, frame, deadline));
        let mut other_index = second.index;
        let (mut first_error, mut other_done) = (None, false);
        loop {
            tokio::select! {
                result = &mut one, if first_error.is_none() => match result {
                    Ok(response) => return (Ok(response), first.index),
                    Err(error) => first_error = Some(error),
                },
                result = &mut other, if !other_done => match result {
                    Ok(response) => return (Ok(response), other_index),
                    // While the first may still answer, the next upstream left takes the
                    // failed one's place: a first that hangs (a probe, a connect) must not
                    // keep the query from the others.
                    Err(_) => match group.pick(tried).filter(|_| first_error.is_none()) {
                        Some(next) => {
                            tried[next.index] = true;
                            other = Box::pin(self.start(routed, next, tried, query, frame, deadline));
                            other_index = next.index;
                        }
                        None => other_done = true,
                    },
                },
            }
            if let (Some(error), true) = (&first_error, other_done) {
                return (Err(error.clone()), first.index);
            }
        }
    }

    /// How long to wait for the upstream `pick` names before also asking the next one:
    /// nothing for a probe (a down upstream's try must not cost the client its answer),
    /// `CONNECT_SHARE` of the budget (or `hedge`'s fixed delay, if shorter) for one that has to
    /// connect first, `hedge`'s for one that is ready.
    fn hedge_delay(&self, group: &Group<R>, pick: Pick) -> Option<Duration> {
        match pick.readiness {
            Readiness::Probe => Some(Duration::ZERO),
            Readiness::Connect | Readiness::LastResort => {
                let share = self.timeout / CONNECT_SHARE;
                Some(group.hedge_after().map_or(share, |delay| delay.min(share)))
            }
            Readiness::Ready | Readiness::Down => group.hedge_delay(pick.index),
        }
    }

    /// Starts one attempt at the upstream `pick` names. One that must connect first, or that
    /// probes a down upstream, runs as a task of its own: when another upstream answers the
    /// query first, the connect or probe still runs to its end, so that the upstream is marked
    /// down or up by how it went, instead of being left half-tried for the next query to
    /// wait on again.
    fn start<'a>(
        self: &'a Arc<Self>,
        routed: &'a Routed<R>,
        pick: Pick,
        tried: &[bool],
        query: &'a Query,
        frame: &'a [u8],
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send + 'a {
        let group = self.group_of(routed);
        let deadline = attempt_deadline(group, pick.index, tried, deadline);
        if !matches!(pick.readiness, Readiness::Connect | Readiness::Probe) {
            return Either::Left(group.attempt(pick, query, frame, deadline));
        }
        let forwarder = self.clone();
        let routed = routed.clone();
        let (query, frame) = (query.clone(), frame.to_vec());
        let task = tokio::spawn(async move {
            let group = forwarder.group_of(&routed);
            group.attempt(pick, &query, &frame, deadline).await
        });
        // The task ends by the deadline; it fails only if it panicked.
        Either::Right(async move { task.await.unwrap_or(Err(UpstreamError::Timeout)) })
    }

    /// The cache's entries, bytes held and bound, or `None` when it is off.
    pub(crate) fn cache_size(&self) -> Option<(u64, u64, u64)> {
        let cache = self.cache.as_ref()?;
        Some((cache.len() as u64, cache.weight(), cache.capacity()))
    }

    /// Removes `zones` and every name below them from the cache, or everything when `zones`
    /// is empty; returns how many entries went.
    pub(crate) fn flush(&self, zones: &[ZoneName]) -> u64 {
        if let Some(validator) = &self.validator {
            validator.flush(zones);
        }
        self.cache.as_ref().map_or(0, |cache| cache.flush(zones))
    }

    /// Whether at least one default upstream is up (for the health check).
    pub(crate) fn any_upstream_up(&self) -> bool {
        self.upstreams.members.iter().any(|m| m.upstream.is_up())
    }

    /// Upstream states for the status line.
    pub(crate) fn describe_upstreams(&self) -> String {
        let describe = |group: &Group<R>| -> Vec<String> {
            group
                .members
                .iter()
                .map(|m| m.upstream.describe())
                .collect()
        };
        let mut text = describe(&self.upstreams).join(", ");
        if !self.zones.is_empty() {
            let zones: Vec<String> = self.zones.iter().flat_map(describe).collect();
            text.push_str(&format!("; forward zones: {}", zones.join(", ")));
        }
        text
    }
}

/// The validator of a configuration: its trust anchors, and the zones it leaves alone
/// (negative trust anchors, forward zones not validated, the local zones).
fn validator(config: &Config, router: &Router) -> Validator {
    let anchors = config
        .trust_anchors
        .as_ref()
        .map_or_else(anchors::builtin, |file| file.anchors.clone());
    let mut exempt = config.negative_trust_anchors.clone();
    let mut validated = Vec::new();
    for zone in &config.forward_zones {
        match zone.dnssec {
            Dnssec::Off => exempt.extend(zone.zones.iter().cloned()),
            Dnssec::Validate => validated.extend(zone.zones.iter().cloned()),
        }
    }
    exempt.extend(router.local_zones());
    Validator::new(anchors, &exempt, &validated)
}

/// How the validator asks for keys and delegations: through the upstreams the name routes
/// to (a DS by its parent's name, the side of the cut that holds it), within the query's
/// budget.
struct Fetcher<'a, R> {
    forwarder: &'a Arc<Forwarder<R>>,
    /// The routing table of the query being validated.
    routes: &'a Arc<Routes<R>>,
    deadline: Instant,
}

impl<R: Exchange> Fetch for Fetcher<'_, R> {
    async fn fetch(&self, name: &[u8], qtype: u16) -> Result<Arc<Response>, FetchError> {
        let routed = match (qtype, name.first()) {
            (TYPE_DS, Some(&len)) if len > 0 => name.get(1 + usize::from(len)..).unwrap_or(name),
            _ => name,
        };
        let Some(route) = self.routes.router.route_name(routed) else {
            return Err(FetchError::Failed(
                "the name is in a local zone".to_string(),
            ));
        };
        let routed = Routed {
            routes: Arc::clone(self.routes),
            route,
        };
        let query = Query::internal(name, qtype);
        self.forwarder
            .fetch(&query, &routed, self.deadline)
            .await
            .map_err(|error| match error {
                UpstreamError::Timeout => FetchError::Timeout,
                other => FetchError::Failed(other.to_string()),
            })
    }
}

/// The deadline of one attempt. A plain-DNS server keeps no connection state that would tell
/// a dead server from a slow one, so each one left gets an equal share of the budget and the
/// last still gets its try; a DoT upstream detects failure itself and may use all of it.
fn attempt_deadline<R: Exchange>(
    group: &Group<R>,
    index: usize,
    tried: &[bool],
    deadline: Instant,
) -> Instant {
    if group.members[index].upstream.detects_failure() {
        return deadline;
    }
    let left = tried.iter().filter(|t| !**t).count() as u32 + 1;
    let now = Instant::now();
    now + deadline.saturating_duration_since(now) / left
}

#[cfg(test)]
mod tests;
