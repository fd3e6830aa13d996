//! One DNS-over-TLS upstream: a [`PooledUpstream`] whose connections are TLS ones
//! (`connection`), with the upstream's TLS settings (`tls`), reached at its address or, for
//! one given by host name, at the addresses its [`Target`] knows, the first one first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tracing::debug;

use crate::common::error::{Handshake, UpstreamError};
use crate::common::metrics::UpstreamMetrics;
use crate::config::UpstreamConfig;
use crate::upstream::bootstrap::Target;
use crate::upstream::connection::Connection;
use crate::upstream::pool::{Channel, Connector, PooledUpstream};
use crate::upstream::tls::{self, TlsSetupError};

/// Most queries outstanding on one upstream connection.
pub(crate) const MAX_IN_FLIGHT: usize = 1024;

/// One DNS-over-TLS upstream: its connections, health and backoff.
pub(crate) type TlsUpstream = PooledUpstream<DotConnector>;

/// Opens TLS connections to one upstream.
pub(crate) struct DotConnector {
    target: Target,
    name: ServerName<'static>,
    /// Kept for the life of the upstream: it holds the TLS session cache for resumption.
    tls: Arc<ClientConfig>,
    idle_timeout: Duration,
}

impl DotConnector {
    /// The name its certificate must be valid for.
    pub(crate) fn tls_name(&self) -> String {
        self.name.to_str().into_owned()
    }
}

/// The DoT upstream `config` names, reached at `target`, with a pool of up to `pool_size`
/// connections, each closed after `idle_timeout` without queries.
pub(crate) fn upstream(
    config: &UpstreamConfig,
    target: Target,
    idle_timeout: Duration,
    pool_size: usize,
    metrics: UpstreamMetrics,
) -> Result<TlsUpstream, TlsSetupError> {
    let connector = DotConnector {
        target,
        name: config.tls_name.clone(),
        tls: tls::client_config(config)?,
        idle_timeout,
    };
    let label = connector.tls_name();
    Ok(PooledUpstream::new(
        config.label(),
        label,
        connector,
        pool_size,
        metrics,
    ))
}

impl Connector for DotConnector {
    type Channel = Connection;

    fn address(&self) -> SocketAddr {
        self.target.current()
    }

    async fn connect(
        &self,
        deadline: Instant,
        metrics: &UpstreamMetrics,
    ) -> Result<Connection, UpstreamError> {
        self.target
            .connect(deadline, |address| async move {
                let (connection, handshake) = Connection::open(
                    address,
                    self.name.clone(),
                    self.tls.clone(),
                    self.idle_timeout,
                    MAX_IN_FLIGHT,
                    deadline,
                    metrics,
                )
                .await?;
                debug!(upstream = %address, resumed = handshake == Handshake::Resumed, "upstream connection opened");
                Ok(connection)
            })
            .await
    }
}

impl Channel for Connection {
    fn query(
        &self,
        frame: Vec<u8>,
        question: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, UpstreamError>> + Send {
        Connection::query(self, frame, question)
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
