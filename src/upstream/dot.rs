//! One upstream resolver: its TLS settings, its pool of connections (opened on demand, reused
//! across queries, replaced when they die), and its health. One connection carries many
//! queries at once; a second one opens only when the first is busy, so that with several `threads` more cores can
//! encrypt and decrypt, and the pool never grows past `upstream_connections`. An upstream that cannot be reached
//! is marked down with exponential backoff; while down, queries fail fast instead of each one
//! paying for another connection attempt, and one attempt is made when the backoff ends.
//!
//! State changes (down with the real cause, up again) are logged once each, not per query.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::common::error::{Handshake, UpstreamError};
use crate::common::lock;
use crate::common::metrics::UpstreamMetrics;
use crate::config::UpstreamConfig;
use crate::upstream::connection::Connection;
use crate::upstream::exchange::Exchange;
use crate::upstream::tls::{self, TlsSetupError};
use crate::wire::dns::Query;

/// Backoff after the first failure; doubles with each further failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(125);
/// Longest backoff: also the longest a recovered upstream waits to be used again.
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Most queries outstanding on one upstream connection.
const MAX_IN_FLIGHT: usize = 1024;
/// Outstanding queries above which another connection of the pool is opened.
const BUSY: usize = 64;

/// One DNS-over-TLS upstream: its connections, health and backoff.
pub(crate) struct TlsUpstream {
    address: SocketAddr,
    name: ServerName<'static>,
    /// Kept for the life of the upstream: it holds the TLS session cache for resumption.
    tls: Arc<ClientConfig>,
    idle_timeout: Duration,
    /// Open connections, at most `pool_size`.
    pool: Mutex<Vec<Arc<Connection>>>,
    pool_size: usize,
    /// Held while connecting, so concurrent queries share one attempt instead of racing.
    connecting: tokio::sync::Mutex<()>,
    health: Mutex<Health>,
    /// Handles to this upstream's series, created once so a query only increments atomics.
    metrics: UpstreamMetrics,
}

struct Health {
    /// Failures since the last success; zero means up.
    failures: u32,
    /// When it last went down or came back up, or was set up: for `dns-proxy status`.
    since: SystemTime,
    /// No new connection attempt before this instant.
    retry_at: Option<Instant>,
    /// The cause of the last failure, for the status line and to log changes of cause.
    last_error: Option<UpstreamError>,
    /// A query is trying the upstream again after its backoff. Other queries skip it
    /// meanwhile: the try may hang until that query's deadline.
    probing: bool,
}

impl Health {
    fn new() -> Health {
        Health {
            failures: 0,
            since: SystemTime::now(),
            retry_at: None,
            last_error: None,
            probing: false,
        }
    }
}

/// The one query trying a down upstream again; the upstream is free for another try when it
/// ends, however it ends.
struct Probe<'a>(&'a TlsUpstream);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.health().probing = false;
    }
}

impl TlsUpstream {
    pub(crate) fn new(
        config: &UpstreamConfig,
        idle_timeout: Duration,
        pool_size: usize,
        metrics: UpstreamMetrics,
    ) -> Result<TlsUpstream, TlsSetupError> {
        Ok(TlsUpstream {
            address: config.address,
            name: config.tls_name.clone(),
            tls: tls::client_config(config)?,
            idle_timeout,
            pool: Mutex::new(Vec::new()),
            pool_size: pool_size.max(1),
            connecting: tokio::sync::Mutex::new(()),
            health: Mutex::new(Health::new()),
            metrics,
        })
    }

    /// `Ok(None)` when the upstream is up; when it is down, the probe for the one query that
    /// may try it now, or `Down` for the others.
    fn probe(&self) -> Result<Option<Probe<'_>>, UpstreamError> {
        let mut health = self.health();
        if health.failures == 0 {
            return Ok(None);
        }
        if health.probing || health.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(UpstreamError::Down);
        }
        health.probing = true;
        Ok(Some(Probe(self)))
    }

    /// Sends a framed query and waits, at most until `deadline`, for the response.
    async fn query(
        &self,
        frame: Vec<u8>,
        question: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        let started = Instant::now();
        // While down, only one query at a time waits on this upstream; the others go on to the
        // next one (or fail fast) instead of waiting out a try that may hang.
        let probe = self.probe()?;
        let connection = self.connection(deadline).await?;
        let responses_before = connection.responses();
        match tokio::time::timeout_at(deadline, connection.query(frame, question)).await {
            Ok(Ok(response)) => {
                // An answer, not a handshake, shows a down upstream works again: some accept
                // TLS and then drop or ignore every query.
                if probe.is_some() {
                    self.record_success();
                }
                Ok(response)
            }
            // The connection died before answering anything: a failed attempt like a refused
            // one, backed off, instead of a new connection for every query.
            Ok(Err(UpstreamError::Closed)) if connection.responses() == 0 => {
                self.connection_failed(&connection, UpstreamError::Closed, started);
                Err(UpstreamError::Closed)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                // Nothing at all came back while we waited: the connection is stalled or
                // half-open. Drop it so the next query does not wait on it too.
                if connection.responses() == responses_before {
                    connection.close();
                    self.connection_failed(&connection, UpstreamError::Timeout, started);
                }
                Err(UpstreamError::Timeout)
            }
        }
    }

    /// Counts the failure of `connection` once, however many queries saw it fail: the first
    /// to report it takes it out of the pool.
    fn connection_failed(
        &self,
        connection: &Arc<Connection>,
        error: UpstreamError,
        since: Instant,
    ) {
        let mut pool = lock::lock(&self.pool);
        let before = pool.len();
        pool.retain(|c| !Arc::ptr_eq(c, connection));
        if pool.len() < before {
            drop(pool);
            self.record_failure(error, since);
        }
    }

    /// The least busy live connection; opens one if there is none, or another if all are
    /// busy and the pool has room.
    async fn connection(&self, deadline: Instant) -> Result<Arc<Connection>, UpstreamError> {
        let failures = self.health().failures;
        let (least_busy, open) = self.least_busy();
        let _connecting = match least_busy {
            Some(connection) if open >= self.pool_size || connection.outstanding() < BUSY => {
                return Ok(connection);
            }
            // Busy: grow the pool, unless another query is already at it.
            Some(connection) => match self.connecting.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(connection),
            },
            None => tokio::time::timeout_at(deadline, self.connecting.lock())
                .await
                .map_err(|_| UpstreamError::Timeout)?,
        };
        let (least_busy, open) = self.least_busy();
        if let Some(connection) = least_busy {
            if open >= self.pool_size || connection.outstanding() < BUSY {
                return Ok(connection);
            }
            // A busy connection still works: a failure to add one does not mark us down.
            return Ok(match self.open(deadline).await {
                Ok(added) => added,
                Err(error) => {
                    debug!(upstream = %self.address, "another connection failed: {error}");
                    connection
                }
            });
        }
        // Another query's attempt may have just failed while this one waited for the lock.
        if self.health().failures > failures {
            return Err(UpstreamError::Down);
        }
        let started = Instant::now();
        // Up only once it answers (see `query`).
        self.open(deadline).await.inspect_err(|error| {
            self.record_failure(error.clone(), started);
        })
    }

    /// Opens a connection and adds it to the pool.
    async fn open(&self, deadline: Instant) -> Result<Arc<Connection>, UpstreamError> {
        let opened = tokio::time::timeout_at(
            deadline,
            Connection::open(
                self.address,
                self.name.clone(),
                self.tls.clone(),
                self.idle_timeout,
                MAX_IN_FLIGHT,
                &self.metrics,
            ),
        )
        .await;
        match opened {
            Ok(Ok((connection, handshake))) => {
                debug!(upstream = %self.address, resumed = handshake == Handshake::Resumed, "upstream connection opened");
                let connection = Arc::new(connection);
                let mut pool = lock::lock(&self.pool);
                pool.retain(|c| c.is_open());
                pool.push(connection.clone());
                Ok(connection)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }

    /// The live connection with the fewest queries outstanding, and how many are live.
    fn least_busy(&self) -> (Option<Arc<Connection>>, usize) {
        let mut pool = lock::lock(&self.pool);
        pool.retain(|c| c.is_open());
        let least = pool.iter().min_by_key(|c| c.outstanding()).cloned();
        (least, pool.len())
    }

    /// Whether it is up, and since when: for `dns-proxy status`.
    pub(crate) fn state(&self) -> (bool, SystemTime) {
        let health = self.health();
        (health.failures == 0, health.since)
    }

    /// The name its certificate must be valid for.
    pub(crate) fn tls_name(&self) -> String {
        self.name.to_str().into_owned()
    }

    /// A down upstream may be tried by the next query, its backoff forgotten.
    fn retry_now(&self) {
        self.health().retry_at = None;
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        lock::lock(&self.health)
    }

    fn record_success(&self) {
        let mut health = self.health();
        if health.failures > 0 {
            info!(upstream = %self.address, "upstream {} is up again", self.address);
            *health = Health::new();
        }
    }

    /// Counts a failed try that began at `since`. The backoff runs from there, not from now: a
    /// try that hung until its deadline has waited already, and an upstream that recovered
    /// during it is to be tried again within `BACKOFF_MAX` of recovering. Still, at least
    /// `BACKOFF_FIRST` passes after any failure, so queries asked one after the other do not
    /// each wait on an upstream that hangs.
    fn record_failure(&self, error: UpstreamError, since: Instant) {
        let mut health = self.health();
        let changed = health.failures == 0
            || health
                .last_error
                .as_ref()
                .is_none_or(|last| last.kind() != error.kind());
        if health.failures == 0 {
            health.since = SystemTime::now();
        }
        health.failures = health.failures.saturating_add(1);
        let doublings = (health.failures - 1).min(16);
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        health.retry_at = Some((since + backoff).max(Instant::now() + BACKOFF_FIRST));
        if changed {
            warn!(
                upstream = %self.address,
                error_kind = error.kind(),
                "upstream {} ({}) is down: {error}",
                self.address,
                self.name.to_str(),
            );
        } else {
            debug!(upstream = %self.address, error_kind = error.kind(), "upstream still down: {error}");
        }
        health.last_error = Some(error);
    }
}

impl Exchange for TlsUpstream {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Up: no failure since the last successful connection (or none made yet).
    fn is_up(&self) -> bool {
        self.health().failures == 0
    }

    /// Whether a query may be sent here now: up, or down with its backoff over and no other
    /// query trying it yet.
    fn is_available(&self, now: Instant) -> bool {
        let health = self.health();
        health.failures == 0 || (!health.probing && health.retry_at.is_none_or(|at| now >= at))
    }

    /// `1.1.1.1:853 up` or `1.1.1.1:853 down (TCP connect failed: …)`, for the status line.
    fn describe(&self) -> String {
        let health = self.health();
        match (&health.last_error, health.failures) {
            (Some(error), failures) if failures > 0 => {
                format!("{} down ({error})", self.address)
            }
            _ => format!("{} up", self.address),
        }
    }

    /// A DoT connection notices a close or a stall itself.
    fn forget_failures(&self) {
        self.retry_now();
    }

    fn detects_failure(&self) -> bool {
        true
    }

    async fn exchange(
        &self,
        query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        self.query(frame.to_vec(), query.question(), deadline).await
    }
}
