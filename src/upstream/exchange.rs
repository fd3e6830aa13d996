//! What the forwarder needs of an upstream of any kind: send it one query and wait, until a
//! deadline at the latest, for the response; say whether it may be asked now. The DoT
//! [`TlsUpstream`](crate::upstream::dot::TlsUpstream) and the plain-DNS
//! [`PlainUpstream`](crate::upstream::plain::PlainUpstream) implement it, and so does the scripted fake
//! the forwarder's unit tests drive with paused time.
//!
//! Callers are generic over it, never `dyn`: the daemon's forwarder is compiled for
//! [`AnyUpstream`](crate::upstream::group::AnyUpstream), an enum of the real kinds, so a query costs one
//! `match`, as before, and no boxed future.

use std::net::SocketAddr;

use tokio::time::Instant;

use crate::common::error::UpstreamError;
use crate::common::metrics::UpstreamMetrics;
use crate::wire::dns::Query;

/// Sends a query to one upstream and waits for its response.
pub(crate) trait Exchange: Send + Sync + 'static {
    fn address(&self) -> SocketAddr;

    /// Handles to this upstream's series.
    fn metrics(&self) -> &UpstreamMetrics;

    /// Whether a query may be sent here now (not backing off after a failure).
    fn is_available(&self, now: Instant) -> bool;

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
