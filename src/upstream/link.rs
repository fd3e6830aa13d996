//! What an encrypted upstream's pool needs of one open connection, whatever carries the
//! queries on it: DNS over TLS's pipelined [`Connection`], or DNS over HTTPS's HTTP/2
//! [`H2Connection`](crate::upstream::doh::H2Connection). `TlsUpstream` (health, backoff, pool,
//! the stall rule) is written once over this trait, so both kinds fail, back off and recover
//! alike.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::common::error::{Handshake, UpstreamError};
use crate::common::metrics::UpstreamMetrics;
use crate::upstream::connection::Connection;

/// One open connection to an upstream, carrying many queries at once.
pub(crate) trait Link: Send + Sync + Sized + 'static {
    /// What opening one needs besides the address and TLS (DoH: the URL).
    type Settings: Send + Sync + 'static;

    /// The ALPN protocols offered in the TLS handshake; empty for none.
    const ALPN: &'static [&'static [u8]];

    /// Connects to `address`, validates the certificate for `name`, and starts serving queries;
    /// `metrics` counts the handshake and the connection while it is open.
    fn open(
        address: SocketAddr,
        name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        idle_timeout: Duration,
        max_in_flight: usize,
        settings: &Self::Settings,
        metrics: &UpstreamMetrics,
    ) -> impl Future<Output = Result<(Self, Handshake), UpstreamError>> + Send;

    /// Sends one query (a framed query from `Query::upstream_frame`) and waits for its
    /// response. No timeout of its own: the caller bounds the wait.
    fn query(
        &self,
        frame: Vec<u8>,
        question: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send;

    /// Whether new queries may still be sent on it.
    fn is_open(&self) -> bool;

    /// Queries waiting for their response on it.
    fn outstanding(&self) -> usize;

    /// Responses delivered so far: one that does not move while a query times out shows the
    /// connection is stalled.
    fn responses(&self) -> u64;

    /// Closes it, failing every outstanding query.
    fn close(&self);
}

impl Link for Connection {
    type Settings = ();

    const ALPN: &'static [&'static [u8]] = &[];

    async fn open(
        address: SocketAddr,
        name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        idle_timeout: Duration,
        max_in_flight: usize,
        _: &(),
        metrics: &UpstreamMetrics,
    ) -> Result<(Connection, Handshake), UpstreamError> {
        Connection::open(address, name, tls, idle_timeout, max_in_flight, metrics).await
    }

    async fn query(&self, frame: Vec<u8>, question: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        Connection::query(self, frame, question).await
    }

    fn is_open(&self) -> bool {
        Connection::is_open(self)
    }

    fn outstanding(&self) -> usize {
        Connection::outstanding(self)
    }

    fn responses(&self) -> u64 {
        Connection::responses(self)
    }

    fn close(&self) {
        Connection::close(self)
    }
}
