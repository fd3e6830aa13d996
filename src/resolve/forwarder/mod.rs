//! Turns a validated client query into the answer the client gets: from the cache, or from an
//! upstream (one query for all clients asking the same question at once), retried once when a
//! connection dies under it. Every failure becomes a stale answer (serve-stale) or SERVFAIL
//! within the query's time budget. This is the one place errors become DNS answers.
//!
//! With `dnssec = "validate"`, an answer from the default upstreams (or a forward zone that
//! asks for it) is fetched with DO and CD set, whatever the client set, and validated once
//! (`dnssec::validator`), asking the same upstreams for keys and delegations (`Fetcher`); each
//! client then gets its own view of it (AD, DNSSEC records, SERVFAIL with an Extended DNS
//! Error when bogus, the data itself when it set CD), cached under its own key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::common::error::UpstreamError;
use crate::common::metrics::{CacheMetrics, GaugeGuard, Metrics};
use crate::common::snapshot;
use crate::common::transport::Transport;
use crate::config::{Config, Dnssec, ZoneUpstream};
use crate::dnssec::anchors;
use crate::dnssec::chain::{Fetch, FetchError};
use crate::dnssec::validator::Validator;
use crate::dnssec::verdict::{Security, Verdict};
use crate::policy::ratelimit::RateLimiter;
use crate::resolve::cache::{Cache, Key, Lookup};
use crate::resolve::coalesce::{self, Coalescer, Role};
use crate::resolve::zones::{Route, Router};
use crate::upstream::dot::TlsUpstream;
use crate::upstream::exchange::Exchange;
use crate::upstream::group::{AnyUpstream, Group};
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

/// Generic over how an upstream is asked so that unit tests can script one; the daemon's is a
/// `Forwarder<AnyUpstream>`, the real kinds.
pub(crate) struct Forwarder<R = AnyUpstream> {
    /// The default upstreams.
    upstreams: Group<R>,
    /// The upstreams of each forward zone, in configuration order.
    zones: Vec<Group<R>>,
    router: Router,
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
    /// Builds the upstreams, with handles to their series in `metrics` (which outlives us).
    pub(crate) fn new(config: &Config, metrics: &Metrics) -> Result<Forwarder, TlsSetupError> {
        let tls = |upstream| {
            TlsUpstream::new(
                upstream,
                config.upstream_idle_timeout,
                config.upstream_connections,
                metrics.upstream(upstream.address),
            )
            .map(|u| AnyUpstream::Tls(Box::new(u)))
        };
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
            config,
            metrics,
            upstreams,
            zones,
            Router::new(&zone_names),
        ))
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
        Forwarder::assemble(config, metrics, upstreams, Vec::new(), Router::new(&[]))
    }
}

impl<R: Exchange> Forwarder<R> {
    /// A forwarder over groups already built: `zones` holds one per forward zone, in the
    /// order `router` numbers them.
    fn assemble(
        config: &Config,
        metrics: &Metrics,
        upstreams: Group<R>,
        zones: Vec<Group<R>>,
        router: Router,
    ) -> Forwarder<R> {
        Forwarder {
            upstreams,
            zones,
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
            validator: (config.dnssec == Dnssec::Validate).then(|| validator(config, &router)),
            zone_validates: config
                .forward_zones
                .iter()
                .map(|zone| zone.dnssec == Dnssec::Validate)
                .collect(),
            fetches: Coalescer::default(),
            router,
        }
    }

    /// Whether answers on `route` are validated.
    fn validates(&self, route: Route) -> bool {
        self.validator.is_some()
            && match route {
                Route::Default => true,
                Route::Forward(zone) => self.zone_validates.get(zone).copied().unwrap_or(false),
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
        // Boxed: the resolution's state is some 5 KiB, and a task's future is copied on
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
        let route = match self.router.route(query) {
            Ok(route) => route,
            Err(answer) => {
                self.counts.local.inc();
                return (answer, Source::Local, Security::Unchecked);
            }
        };
        let deadline = started + self.timeout;
        let failure = match self.resolve_for(query, route, deadline).await {
            Ok((checked, upstream)) => {
                let (view, security) = self.client_view(query, route, &checked);
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
    async fn resolve_for(&self, query: &Query, route: Route, deadline: Instant) -> Resolved {
        if self.validates(route) {
            let asked = query.validating();
            self.resolve_shared(&asked, &Key::of(&asked), route, deadline)
                .await
        } else {
            self.resolve_shared(query, &Key::of(query), route, deadline)
                .await
        }
    }

    /// Resolves `query` upstream, or waits for the identical query already in flight.
    async fn resolve_shared(
        &self,
        query: &Query,
        key: &Key,
        route: Route,
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
                return self.resolve_checked(query, route, deadline).await;
            }
        };
        let result = self.resolve_checked(query, route, deadline).await;
        flight.finish(result.clone());
        result
    }

    /// Resolves `query` upstream and validates the response when the route is validated.
    async fn resolve_checked(&self, query: &Query, route: Route, deadline: Instant) -> Resolved {
        let (response, upstream) = self.resolve(query, route, deadline).await?;
        let validator = self.validator.as_ref().filter(|_| self.validates(route));
        let verdict = match validator {
            Some(validator)
                if matches!(response.rcode(), dns::RCODE_NOERROR | dns::RCODE_NXDOMAIN) =>
            {
                let fetcher = Fetcher {
                    forwarder: self,
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
        // Cached answers come from upstreams, so the route is one.
        let Ok(route) = self.router.route(&query) else {
            return;
        };
        let forwarder = self.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + forwarder.timeout;
            match forwarder.resolve_for(&query, route, deadline).await {
                Ok((checked, _)) => {
                    let (view, security) = forwarder.client_view(&query, route, &checked);
                    forwarder.store(&key, view, security);
                }
                Err(error) => debug!(error_kind = error.kind(), "prefetch failed: {error}"),
            }
        });
    }

    /// Asks `query` (one of the validator's own) on the route of `name`, sharing the flight
    /// with identical ones in progress.
    async fn fetch(
        &self,
        query: &Query,
        route: Route,
        deadline: Instant,
    ) -> Result<Arc<Response>, UpstreamError> {
        let key = Key::of(query);
        let flight = match self.fetches.join(key.as_bytes()) {
            Role::Leader(flight) => flight,
            Role::Follower(receiver) => {
                if let Some(result) = coalesce::follow(receiver, deadline).await {
                    return result;
                }
                return self.resolve(query, route, deadline).await.map(|(r, _)| r);
            }
        };
        let result = self.resolve(query, route, deadline).await.map(|(r, _)| r);
        flight.finish(result.clone());
        result
    }

    async fn resolve(
        &self,
        query: &Query,
        route: Route,
        deadline: Instant,
    ) -> Result<(Arc<Response>, SocketAddr), UpstreamError> {
        let group = match route {
            Route::Forward(zone) => self.zones.get(zone).unwrap_or(&self.upstreams),
            Route::Default => &self.upstreams,
        };
        let frame = query.upstream_frame();
        let mut tried = vec![false; group.members.len()];
        let mut retried = false;
        let mut next = None;
        let mut last_error = UpstreamError::Down;
        loop {
            let Some(index) = next.take().or_else(|| group.pick(&tried)) else {
                return Err(last_error);
            };
            tried[index] = true;
            let (result, index) = self
                .attempt(group, index, &mut tried, query, &frame, deadline)
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
                    if upstream.is_available(Instant::now()) {
                        next = Some(index);
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

    /// Asks upstream `index`; with hedging, also the next one if `index` is slow to answer.
    /// Returns the result and which upstream it came from.
    async fn attempt(
        &self,
        group: &Group<R>,
        index: usize,
        tried: &mut [bool],
        query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> (Result<Vec<u8>, UpstreamError>, usize) {
        let first_deadline = attempt_deadline(group, index, tried, deadline);
        let first = group.attempt(index, query, frame, first_deadline);
        let Some(delay) = group
            .hedge_delay(index)
            .filter(|delay| Instant::now() + *delay < deadline)
        else {
            return (first.await, index);
        };
        tokio::pin!(first);
        tokio::select! {
            result = &mut first => return (result, index),
            _ = tokio::time::sleep(delay) => {}
        }
        let Some(second) = group.pick(tried) else {
            return (first.await, index);
        };
        tried[second] = true;
        self.counts.hedged.inc();
        let second_deadline = attempt_deadline(group, second, tried, deadline);
        let other = group.attempt(second, query, frame, second_deadline);
        tokio::pin!(other);
        let (mut first_error, mut second_error) = (None, None);
        loop {
            tokio::select! {
                result = &mut first, if first_error.is_none() => match result {
                    Ok(response) => return (Ok(response), index),
                    Err(error) => first_error = Some(error),
                },
                result = &mut other, if second_error.is_none() => match result {
                    Ok(response) => return (Ok(response), second),
                    Err(error) => second_error = Some(error),
                },
            }
            if let (Some(error), Some(_)) = (&first_error, &second_error) {
                return (Err(error.clone()), index);
            }
        }
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
    forwarder: &'a Forwarder<R>,
    deadline: Instant,
}

impl<R: Exchange> Fetch for Fetcher<'_, R> {
    async fn fetch(&self, name: &[u8], qtype: u16) -> Result<Arc<Response>, FetchError> {
        let routed = match (qtype, name.first()) {
            (TYPE_DS, Some(&len)) if len > 0 => name.get(1 + usize::from(len)..).unwrap_or(name),
            _ => name,
        };
        let Some(route) = self.forwarder.router.route_name(routed) else {
            return Err(FetchError::Failed(
                "the name is in a local zone".to_string(),
            ));
        };
        let query = Query::internal(name, qtype);
        self.forwarder
            .fetch(&query, route, self.deadline)
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
