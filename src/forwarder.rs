//! Turns a validated client query into the answer the client gets: from the cache, or from an
//! upstream (one query for all clients asking the same question at once), retried once when a
//! connection dies under it. Every failure becomes a stale answer (serve-stale) or SERVFAIL
//! within the query's time budget. This is the one place errors become DNS answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use crate::cache::{Cache, Key, Lookup};
use crate::coalesce::{self, Coalescer, Role};
use crate::config::{Config, ZoneUpstream};
use crate::dns::{self, Query, Rcode, Response};
use crate::plain::PlainUpstream;
use crate::ratelimit::RateLimiter;
use crate::stats::Stats;
use crate::tls::TlsSetupError;
use crate::upstream::{Upstream, UpstreamError};
use crate::zones::{Route, Router};

/// An upstream's response and who sent it, shared by every client of a coalesced query.
type Resolved = Result<(Arc<Response>, SocketAddr), UpstreamError>;

/// Where an answer came from, for the query log.
enum Source {
    Upstream(SocketAddr),
    Cache,
    Stale,
    Local,
    Failed,
}

/// One upstream resolver of any kind.
enum Resolver {
    Tls(Box<Upstream>),
    /// Only in forward zones that ask for plain DNS.
    Plain(PlainUpstream),
}

impl Resolver {
    fn address(&self) -> SocketAddr {
        match self {
            Resolver::Tls(upstream) => upstream.address(),
            Resolver::Plain(upstream) => upstream.address(),
        }
    }

    /// Plain upstreams keep no connection, so there is no state to back off from.
    fn is_available(&self, now: Instant) -> bool {
        match self {
            Resolver::Tls(upstream) => upstream.is_available(now),
            Resolver::Plain(_) => true,
        }
    }

    fn describe(&self) -> String {
        match self {
            Resolver::Tls(upstream) => upstream.describe(),
            Resolver::Plain(upstream) => format!("{} (plain DNS)", upstream.address()),
        }
    }
}

pub struct Forwarder {
    /// The default upstreams, in order of preference: the first available one is used.
    upstreams: Vec<Resolver>,
    /// The upstreams of each forward zone, in configuration order.
    zones: Vec<Vec<Resolver>>,
    router: Router,
    timeout: Duration,
    log_queries: bool,
    stats: Arc<Stats>,
    /// `None` when the cache is off.
    cache: Option<Cache>,
    in_flight: Coalescer<Resolved>,
    /// `None` when `rate_limit` is 0. Lives here so a reload resets it with the rest.
    limiter: Option<RateLimiter>,
}

impl Forwarder {
    pub fn new(config: &Config, stats: Arc<Stats>) -> Result<Forwarder, TlsSetupError> {
        let tls = |upstream| {
            Upstream::new(upstream, config.upstream_idle_timeout)
                .map(|u| Resolver::Tls(Box::new(u)))
        };
        let upstreams = config.upstreams.iter().map(tls).collect::<Result<_, _>>()?;
        let zones = config
            .forward_zones
            .iter()
            .map(|zone| {
                zone.upstreams
                    .iter()
                    .map(|upstream| match upstream {
                        ZoneUpstream::Tls(upstream) => tls(upstream),
                        ZoneUpstream::Plain(address) => {
                            Ok(Resolver::Plain(PlainUpstream::new(*address)))
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<_, _>>()?;
        let zone_names: Vec<_> = config
            .forward_zones
            .iter()
            .map(|z| z.zones.clone())
            .collect();
        Ok(Forwarder {
            upstreams,
            zones,
            router: Router::new(&zone_names),
            timeout: config.timeout,
            log_queries: config.log_queries,
            stats,
            cache: config.cache.enabled.then(|| Cache::new(&config.cache)),
            in_flight: Coalescer::default(),
            limiter: (config.rate_limit > 0).then(|| RateLimiter::new(config.rate_limit)),
        })
    }

    /// Whether a query from `client` is within the per-client rate limit (always, when off).
    pub fn admit(&self, client: std::net::IpAddr) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|limiter| limiter.admit(client, Instant::now()))
    }

    /// The answer for `query`: from the cache or an upstream, else a stale answer or SERVFAIL
    /// once the time budget is spent or no upstream can be reached. Never fails and never
    /// waits past the budget.
    pub async fn answer(self: &Arc<Self>, query: &Query, client: SocketAddr) -> Vec<u8> {
        let started = Instant::now();
        let (answer, source) = self.find_answer(query, started).await;
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
                question = %query.describe(),
                rcode = answer.get(3).map_or(0, |b| b & 0x0f),
                upstream = source,
                elapsed_us = started.elapsed().as_micros() as u64,
                "query"
            );
        }
        answer
    }

    async fn find_answer(self: &Arc<Self>, query: &Query, started: Instant) -> (Vec<u8>, Source) {
        let key = Key::of(query);
        let mut stale = None;
        if let Some(cache) = &self.cache {
            match cache.lookup(&key, query, started) {
                Lookup::Hit { answer, prefetch } => {
                    Stats::add(&self.stats.cache_hits);
                    if prefetch {
                        self.prefetch(query.clone(), key);
                    }
                    return (answer, Source::Cache);
                }
                Lookup::Stale(entry) => stale = Some(entry),
                Lookup::Miss => {}
            }
            Stats::add(&self.stats.cache_misses);
        }
        let route = match self.router.route(query) {
            Ok(route) => route,
            Err(answer) => {
                Stats::add(&self.stats.local);
                return (answer, Source::Local);
            }
        };
        let deadline = started + self.timeout;
        let failure = match self.resolve_shared(query, &key, route, deadline).await {
            Ok((response, upstream))
                if response.rcode() != dns::RCODE_SERVFAIL || stale.is_none() =>
            {
                Stats::add(&self.stats.answered);
                return (query.answer(&response), Source::Upstream(upstream));
            }
            Ok(_) => "upstream answered SERVFAIL".to_string(),
            Err(error) => {
                debug!(error_kind = error.kind(), "query failed: {error}");
                error.to_string()
            }
        };
        if let Some(entry) = stale {
            debug!("serving a stale answer: {failure}");
            Stats::add(&self.stats.cache_stale);
            return (Cache::stale_answer(&entry, query), Source::Stale);
        }
        Stats::add(&self.stats.failed);
        (query.error_answer(Rcode::ServFail), Source::Failed)
    }

    /// Resolves `query` upstream, or waits for the identical query already in flight. The
    /// one that resolves caches the response.
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
                return self.resolve(query, route, deadline).await;
            }
        };
        let mut result = self.resolve(query, route, deadline).await;
        if let (Ok((response, _)), Some(cache)) = (&mut result, &self.cache) {
            *response = cache.insert(key, response.clone(), Instant::now());
        }
        flight.finish(result.clone());
        result
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
            if let Err(error) = forwarder
                .resolve_shared(&query, &key, route, deadline)
                .await
            {
                debug!(error_kind = error.kind(), "prefetch failed: {error}");
            }
        });
    }

    async fn resolve(&self, query: &Query, route: Route, deadline: Instant) -> Resolved {
        let upstreams = match route {
            Route::Forward(zone) => self.zones.get(zone).unwrap_or(&self.upstreams),
            Route::Default => &self.upstreams,
        };
        let frame = query.upstream_frame();
        let mut tried = vec![false; upstreams.len()];
        let mut retried = false;
        let mut next = None;
        let mut last_error = UpstreamError::Down;
        loop {
            let Some(index) = next.take().or_else(|| pick(upstreams, &tried)) else {
                return Err(last_error);
            };
            tried[index] = true;
            let upstream = &upstreams[index];
            let result = match upstream {
                Resolver::Tls(upstream) => {
                    upstream
                        .query(frame.clone(), query.question(), deadline)
                        .await
                }
                Resolver::Plain(upstream) => {
                    // No connection state tells a dead server from a slow one: give each
                    // server left an equal share of the budget, so the last still gets a try.
                    let left = tried.iter().filter(|t| !**t).count() as u32 + 1;
                    let now = Instant::now();
                    let share = deadline.saturating_duration_since(now) / left;
                    match upstream.query(query, now + share).await {
                        Err(UpstreamError::Timeout) if left > 1 => Err(UpstreamError::Down),
                        other => other,
                    }
                }
            };
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
                Err(UpstreamError::Timeout) => return Err(UpstreamError::Timeout),
                Err(error) => last_error = error,
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Timeout);
            }
        }
    }

    /// Upstream states for the status line.
    pub fn describe_upstreams(&self) -> String {
        let mut text = self
            .upstreams
            .iter()
            .map(Resolver::describe)
            .collect::<Vec<_>>()
            .join(", ");
        if !self.zones.is_empty() {
            let zones: Vec<String> = self
                .zones
                .iter()
                .flatten()
                .map(Resolver::describe)
                .collect();
            text.push_str(&format!("; forward zones: {}", zones.join(", ")));
        }
        text
    }
}

/// The first available upstream this query has not tried yet.
fn pick(upstreams: &[Resolver], tried: &[bool]) -> Option<usize> {
    let now = Instant::now();
    upstreams
        .iter()
        .enumerate()
        .find(|(i, upstream)| !tried[*i] && upstream.is_available(now))
        .map(|(i, _)| i)
}
