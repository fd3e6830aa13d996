//! What the forwarder needs of an upstream of any kind: send it one query and wait, until a
//! deadline at the latest, for the response; say how ready it is to be asked now. The DoT
//! [`TlsUpstream`](crate::upstream::dot::TlsUpstream) and the plain-DNS
//! [`PlainUpstream`](crate::upstream::plain::PlainUpstream) implement it, and so do the scripted
//! fakes the forwarder's unit tests drive with paused time.
//!
//! Callers are generic over it, never `dyn`: the daemon's forwarder is compiled for
//! [`AnyUpstream`](crate::upstream::group::AnyUpstream), an enum of the real kinds, so a query costs one
//! `match`, as before, and no boxed future.

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::common::error::UpstreamError;
use crate::common::metrics::UpstreamMetrics;
use crate::wire::dns::Query;

/// How an upstream stands for a query that would ask it now: what `Group::pick` chooses
/// among, and what tells the forwarder how long to wait for it before also asking another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Asked at once: on a live connection, or with no connection to make (plain DNS).
    Ready,
    /// Up, but with no live connection: the query waits for one to open.
    Connect,
    /// Down, and its backoff is over: the query that asks it now probes it.
    Probe,
    /// Asking it means waiting on something already under way and not done (another query's
    /// connection attempt), or on a server that stopped answering: asked only when no other
    /// upstream can be.
    LastResort,
    /// Not asked: backing off after a failure, or another query is probing it.
    Down,
}

/// Sends a query to one upstream and waits for its response.
pub(crate) trait Exchange: Send + Sync + 'static {
    fn address(&self) -> SocketAddr;

    /// Handles to this upstream's series.
    fn metrics(&self) -> &UpstreamMetrics;

    /// How ready it is for a query now.
    fn readiness(&self, now: Instant) -> Readiness;

    /// For the health check: up, or not known to be down.
    fn is_up(&self) -> bool;

    /// The upstream and its state, for the status line.
    fn describe(&self) -> String;

    /// Forgets what failures taught about it, so the next query may try it at once
    /// (`ResetServerFeatures`); nothing for kinds that keep no such state.
    fn forget_failures(&self) {}

    /// Whether a try notices a dead upstream by itself (a connection that closes or stalls)
    /// and so may use the whole budget; if not, each try gets a share of what is left.
    fn detects_failure(&self) -> bool;

    /// The response to `query` (`frame` is its upstream form, built once per query), at the
    /// latest at `deadline`: past it, the result is [`UpstreamError::Timeout`].
    fn exchange(
        &self,
        query: &Query,
        frame: &[u8],
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send;
}
