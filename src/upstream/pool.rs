//! An upstream reached over connections it keeps: its pool (opened on demand, reused across
//! queries, replaced when they die) and its health. One connection carries many queries at
//! once; a second one opens only when the first is busy, so that with several `threads` more
//! cores can encrypt and decrypt, and the pool never grows past `upstream_connections`. An
//! upstream that cannot be reached is marked down with exponential backoff (`health`); while
//! down, queries skip it instead of each one paying for another connection attempt.
//!
//! Generic over how a connection is opened ([`Connector`]) and what it carries ([`Channel`]):
//! the daemon's is DNS over TLS (`dot`), the forwarder's unit tests script one whose connect
//! never completes. Everything else here, backoff and probing included, is the same code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::time::Instant;
use tracing::debug;

use crate::common::error::UpstreamError;
use crate::common::lock;
use crate::common::metrics::UpstreamMetrics;
use crate::upstream::exchange::{Exchange, Readiness};
use crate::upstream::health::Health;
use crate::wire::dns::Query;

/// Outstanding queries above which another connection of the pool is opened.
const BUSY: usize = 64;

/// Opens connections to one upstream.
pub(crate) trait Connector: Send + Sync + 'static {
    type Channel: Channel;

    /// The address it connects to first now.
    fn address(&self) -> SocketAddr;

    /// A new connection, at the latest at `deadline`; `metrics` counts it.
    fn connect(
        &self,
        deadline: Instant,
        metrics: &UpstreamMetrics,
    ) -> impl Future<Output = Result<Self::Channel, UpstreamError>> + Send;
}

/// One open connection, carrying many queries at once.
pub(crate) trait Channel: Send + Sync + 'static {
    /// Sends a framed query and waits for its response; dropping the future withdraws it.
    fn query(
        &self,
        frame: Vec<u8>,
        question: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send;

    /// Whether new queries may still be sent on it.
    fn is_open(&self) -> bool;

    /// Queries waiting for their response on it.
    fn outstanding(&self) -> usize;

    /// Responses handed to a waiting query so far.
    fn responses(&self) -> u64;

    /// Closes it, failing every outstanding query.
    fn close(&self);
}

/// One upstream: its connector, connections and health.
pub(crate) struct PooledUpstream<C: Connector> {
    /// How logs and the status line name it (`UpstreamConfig::label`).
    name: String,
    connector: C,
    /// Open connections, at most `pool_size`.
    pool: Mutex<Vec<Arc<C::Channel>>>,
    pool_size: usize,
    /// Held while connecting, so concurrent queries share one attempt instead of racing.
    connecting: tokio::sync::Mutex<()>,
    health: Health,
    /// Handles to this upstream's series, created once so a query only increments atomics.
    metrics: UpstreamMetrics,
}

impl<C: Connector> PooledUpstream<C> {
    /// `name` names it in logs and the status line, `label` beside it in the "is down"
    /// warning.
    pub(crate) fn new(
        name: String,
        label: String,
        connector: C,
        pool_size: usize,
        metrics: UpstreamMetrics,
    ) -> PooledUpstream<C> {
        PooledUpstream {
            name: name.clone(),
            connector,
            pool: Mutex::new(Vec::new()),
            pool_size: pool_size.max(1),
            connecting: tokio::sync::Mutex::new(()),
            health: Health::new(name, label),
            metrics,
        }
    }

    pub(crate) fn connector(&self) -> &C {
        &self.connector
    }

    /// How logs and the status line name it.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Whether it is up, and since when: for `dns-proxy status`.
    pub(crate) fn state(&self) -> (bool, SystemTime) {
        self.health.state()
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
        let probe = self.health.probe()?;
        let connection = self.connection(deadline).await?;
        let responses_before = connection.responses();
        match tokio::time::timeout_at(deadline, connection.query(frame, question)).await {
            Ok(Ok(response)) => {
                // An answer, not a handshake, shows a down upstream works again: some accept
                // TLS and then drop or ignore every query.
                if probe.is_some() {
                    self.health.record_success();
                }
                Ok(response)
            }
            // The connection died before answering anything: a failed attempt like a refused
            // one, backed off, instead of a new connection for every query.
            Ok(Err(UpstreamError::Closed)) if connection.responses() == 0 => {
                self.connection_failed(&connection, UpstreamError::Closed, started);
                Err(UpstreamError::Closed)
            }
            // A DoH upstream that answers with an HTTP error: failed like a dead connection,
            // which is dropped in case the next one fares better.
            Ok(Err(error @ UpstreamError::Http(_))) => {
                connection.close();
                self.connection_failed(&connection, error.clone(), started);
                Err(error)
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
        connection: &Arc<C::Channel>,
        error: UpstreamError,
        since: Instant,
    ) {
        let mut pool = lock::lock(&self.pool);
        let before = pool.len();
        pool.retain(|c| !Arc::ptr_eq(c, connection));
        if pool.len() < before {
            drop(pool);
            self.health.record_failure(error, since);
        }
    }

    /// The least busy live connection; opens one if there is none, or another if all are
    /// busy and the pool has room.
    async fn connection(&self, deadline: Instant) -> Result<Arc<C::Channel>, UpstreamError> {
        let failures = self.health.failures();
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
                    debug!(upstream = %self.name, "another connection failed: {error}");
                    connection
                }
            });
        }
        // Another query's attempt may have just failed while this one waited for the lock.
        if self.health.failures() > failures {
            return Err(UpstreamError::Down);
        }
        let started = Instant::now();
        // A connect that times out marks the upstream down as a refused one does. Up only
        // once it answers (see `query`).
        self.open(deadline).await.inspect_err(|error| {
            self.health.record_failure(error.clone(), started);
        })
    }

    /// Opens a connection and adds it to the pool.
    async fn open(&self, deadline: Instant) -> Result<Arc<C::Channel>, UpstreamError> {
        // Boxed: a handshake's state is kilobytes that would otherwise sit inline in every
        // query's future, while few queries open a connection.
        let connect = Box::pin(self.connector.connect(deadline, &self.metrics));
        let connection = Arc::new(connect.await?);
        let mut pool = lock::lock(&self.pool);
        pool.retain(|c| c.is_open());
        pool.push(connection.clone());
        Ok(connection)
    }

    /// The live connection with the fewest queries outstanding, and how many are live.
    fn least_busy(&self) -> (Option<Arc<C::Channel>>, usize) {
        let mut pool = lock::lock(&self.pool);
        pool.retain(|c| c.is_open());
        let least = pool.iter().min_by_key(|c| c.outstanding()).cloned();
        (least, pool.len())
    }
}

impl<C: Connector> Exchange for PooledUpstream<C> {
    fn address(&self) -> SocketAddr {
        self.connector.address()
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Up: no failure since the last successful connection (or none made yet).
    fn is_up(&self) -> bool {
        self.health.is_up()
    }

    /// Down: `Probe` or `Down` (see `Health`). Up: `Ready` with a live connection, else
    /// `Connect`, or `LastResort` while another query's connection attempt is under way (a
    /// query arriving then would wait on it, and it may hang until its deadline).
    fn readiness(&self, now: Instant) -> Readiness {
        if let Some(down) = self.health.down(now) {
            return down;
        }
        if lock::lock(&self.pool).iter().any(|c| c.is_open()) {
            return Readiness::Ready;
        }
        match self.connecting.try_lock() {
            Ok(_) => Readiness::Connect,
            Err(_) => Readiness::LastResort,
        }
    }

    fn describe(&self) -> String {
        self.health.describe()
    }

    fn forget_failures(&self) {
        self.health.retry_now();
    }

    /// A connection notices a close or a stall itself.
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
