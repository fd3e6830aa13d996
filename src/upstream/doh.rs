//! One DNS-over-HTTPS connection to an upstream (RFC 8484): HTTP/2 over TLS on hyper's client,
//! each query a stream of its own, so many are outstanding at once on one connection.
//!
//! Queries are POSTs of `application/dns-message` bodies, not GETs: the message travels as
//! it is (a GET adds a third for base64url), the query name never appears in a URL that a
//! server's access log would keep, and GET's one advantage, HTTP caching, has no cache to use
//! between dns-proxy and its upstream; dns-proxy caches the answers itself. The message is
//! the DoT one, padded to 128 bytes (RFC 8467), with id 0 (RFC 8484 §4.1).
//!
//! A response that is not a 2xx `application/dns-message` is an upstream failure
//! ([`UpstreamError::Http`]); so is a connection the server ends (GOAWAY, reset, close): its
//! outstanding queries fail with [`UpstreamError::Closed`] and are retried like DoT's. Idle
//! connections close after `upstream_idle_timeout`; the pool, health and backoff around them
//! are DoT's too ([`PooledUpstream`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http2::{self, SendRequest};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::common::error::{Handshake, UpstreamError};
use crate::common::lock;
use crate::common::metrics::{GaugeGuard, UpstreamMetrics};
use crate::config::{HttpsUrl, UpstreamConfig};
use crate::upstream::bootstrap::Target;
use crate::upstream::connection::connect_tls;
use crate::upstream::doh_response::{self, DNS_MESSAGE, MAX_BODY, Rejection};
use crate::upstream::dot::MAX_IN_FLIGHT;
use crate::upstream::pool::{Channel, Connector, PooledUpstream};
use crate::upstream::tls::{self, TlsSetupError};

/// While queries are outstanding, an HTTP/2 PING this often shows the connection is alive.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// A PING unanswered this long closes the connection.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One DNS-over-HTTPS upstream: its connections, health and backoff.
pub(crate) type DohUpstream = PooledUpstream<DohConnector>;

/// Opens HTTP/2 connections to one upstream.
pub(crate) struct DohConnector {
    target: Target,
    name: ServerName<'static>,
    /// Kept for the life of the upstream: it holds the TLS session cache for resumption.
    tls: Arc<ClientConfig>,
    idle_timeout: Duration,
    /// The URL as the `:scheme`, `:authority` and `:path` of each request.
    uri: Uri,
}

impl DohConnector {
    /// The name its certificate must be valid for.
    pub(crate) fn tls_name(&self) -> String {
        self.name.to_str().into_owned()
    }
}

/// The DoH upstream `config` names (its `url` is `url`), reached at `target`, with a pool of
/// up to `pool_size` connections, each closed after `idle_timeout` without queries.
pub(crate) fn upstream(
    config: &UpstreamConfig,
    url: &HttpsUrl,
    target: Target,
    idle_timeout: Duration,
    pool_size: usize,
    metrics: UpstreamMetrics,
) -> Result<DohUpstream, TlsSetupError> {
    let uri = Uri::builder()
        .scheme("https")
        .authority(url.authority.as_str())
        .path_and_query(url.path.as_str())
        .build()
        .map_err(|_| TlsSetupError::Url {
            upstream: config.label(),
        })?;
    let mut tls = (*tls::client_config(config)?).clone();
    // HTTP/2 only: RFC 8484 §5.2 names it the minimum, and HTTP/1.1 cannot carry queries side
    // by side.
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = DohConnector {
        target,
        name: config.tls_name.clone(),
        tls: Arc::new(tls),
        idle_timeout,
        uri,
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

impl Connector for DohConnector {
    type Channel = H2Connection;

    fn address(&self) -> SocketAddr {
        self.target.current()
    }

    async fn connect(
        &self,
        deadline: Instant,
        metrics: &UpstreamMetrics,
    ) -> Result<H2Connection, UpstreamError> {
        self.target
            .connect(deadline, |address| {
                H2Connection::open(address, self, deadline, metrics)
            })
            .await
    }
}

/// A live HTTP/2 connection; dropping it closes it.
pub(crate) struct H2Connection {
    sender: SendRequest<Full<Bytes>>,
    uri: Uri,
    shared: Arc<Shared>,
}

/// What the queries and the task driving the connection both see.
struct Shared {
    state: Mutex<State>,
    /// Cancelled when the connection is closing, for whatever reason.
    closed: CancellationToken,
    /// Responses that were DNS answers (see `Link::responses`).
    responses: AtomicU64,
}

struct State {
    open: bool,
    outstanding: usize,
    max_in_flight: usize,
    /// The last time a query was sent or answered, for the idle timeout.
    last_active: Instant,
}

impl H2Connection {
    /// Connects to `address` (TCP without Nagle delay, every segment acknowledged at once),
    /// does the TLS handshake with certificate validation and ALPN h2, then the HTTP/2 one,
    /// and starts the task driving the connection, all by `deadline`.
    async fn open(
        address: SocketAddr,
        connector: &DohConnector,
        deadline: Instant,
        metrics: &UpstreamMetrics,
    ) -> Result<H2Connection, UpstreamError> {
        let (name, tls) = (connector.name.clone(), connector.tls.clone());
        let (stream, handshake) =
            connect_tls(
                address,
                name,
                tls,
                deadline,
                metrics,
                |session| match session.alpn_protocol() {
                    Some(b"h2") => Ok(()),
                    _ => Err(UpstreamError::Http(
                        "the server does not speak HTTP/2 (no ALPN h2)".into(),
                    )),
                },
            )
            .await?;
        let http2 = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .handshake(TokioIo::new(stream));
        let (sender, connection) = tokio::time::timeout_at(deadline, http2)
            .await
            .map_err(|_| UpstreamError::HandshakeTimeout)?
            .map_err(|error| {
                debug!(upstream = %address, "HTTP/2 handshake failed: {error}");
                UpstreamError::Closed
            })?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                open: true,
                outstanding: 0,
                max_in_flight: MAX_IN_FLIGHT,
                last_active: Instant::now(),
            }),
            closed: CancellationToken::new(),
            responses: AtomicU64::new(0),
        });
        tokio::spawn(drive(
            connection,
            shared.clone(),
            connector.idle_timeout,
            address,
            metrics.connection_opened(),
        ));
        debug!(upstream = %address, resumed = handshake == Handshake::Resumed, "DoH upstream connection opened");
        Ok(H2Connection {
            sender,
            uri: connector.uri.clone(),
            shared,
        })
    }
}

impl Channel for H2Connection {
    async fn query(&self, mut frame: Vec<u8>, question: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        let _outstanding = self.shared.register()?;
        // The frame's 2-byte length goes; the id is 0, so equal queries are equal requests.
        if frame.len() < 4 {
            return Err(UpstreamError::Protocol);
        }
        frame[2..4].copy_from_slice(&[0, 0]);
        let body = Bytes::from(frame).slice(2..);
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(CONTENT_TYPE, DNS_MESSAGE)
            .header(ACCEPT, DNS_MESSAGE)
            .body(Full::new(body))
            .map_err(|_| UpstreamError::Protocol)?;
        let mut sender = self.sender.clone();
        let response = sender.send_request(request).await.map_err(|error| {
            // GOAWAY, a reset or a closed connection: no new query goes on it.
            debug!("DoH request failed: {error}");
            self.shared.close();
            UpstreamError::Closed
        })?;
        let (head, body) = response.into_parts();
        let content_type = head.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
        doh_response::check_head(head.status.as_u16(), content_type).map_err(rejected)?;
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(
                |error| match error.downcast_ref::<http_body_util::LengthLimitError>() {
                    Some(_) => rejected(Rejection::TooLong),
                    None => {
                        self.shared.close();
                        UpstreamError::Closed
                    }
                },
            )?
            .to_bytes();
        let message = doh_response::check_body(&body, question).map_err(rejected)?;
        self.shared.responses.fetch_add(1, Ordering::Relaxed);
        Ok(message.to_vec())
    }

    fn is_open(&self) -> bool {
        !self.shared.closed.is_cancelled() && !self.sender.is_closed()
    }

    fn outstanding(&self) -> usize {
        self.shared.lock().outstanding
    }

    fn responses(&self) -> u64 {
        self.shared.responses.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.shared.close();
    }
}

impl Drop for H2Connection {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// The error a rejected response is.
fn rejected(rejection: Rejection) -> UpstreamError {
    if rejection.is_server_failure() {
        UpstreamError::Http(rejection.to_string().into())
    } else {
        UpstreamError::Protocol
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock::lock(&self.state)
    }

    /// Counts a query in, unless the connection is closed or full.
    fn register(&self) -> Result<Outstanding<'_>, UpstreamError> {
        let mut state = self.lock();
        if !state.open {
            return Err(UpstreamError::Closed);
        }
        if state.outstanding >= state.max_in_flight {
            return Err(UpstreamError::Busy);
        }
        state.outstanding += 1;
        state.last_active = Instant::now();
        Ok(Outstanding(self))
    }

    /// Marks the connection closed if nothing is outstanding and it has been quiet for
    /// `idle_timeout`; otherwise, when to look again.
    fn close_if_idle(&self, idle_timeout: Duration) -> Option<Instant> {
        let mut state = self.lock();
        let quiet_until = state.last_active + idle_timeout;
        if state.outstanding == 0 && quiet_until <= Instant::now() {
            state.open = false;
            return None;
        }
        Some(quiet_until.max(Instant::now() + idle_timeout / 8))
    }

    fn close(&self) {
        self.lock().open = false;
        self.closed.cancel();
    }
}

/// A query counted in, counted out when its future ends, however it ends.
struct Outstanding<'a>(&'a Shared);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.outstanding -= 1;
        state.last_active = Instant::now();
    }
}

/// Runs the HTTP/2 connection until the upstream ends it, it fails, we close it, or it has sat
/// idle for `idle_timeout`; dropping it then closes the socket and fails what is outstanding.
async fn drive<F>(
    connection: F,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    address: SocketAddr,
    _open: GaugeGuard,
) where
    F: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(connection);
    let closed = shared.closed.cancelled();
    tokio::pin!(closed);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let reason = loop {
        tokio::select! {
            ended = &mut connection => break match ended {
                Ok(()) => "closed by the upstream".to_string(),
                Err(error) => format!("error: {error}"),
            },
            _ = &mut closed => break "closed by us".to_string(),
            _ = &mut idle => match shared.close_if_idle(idle_timeout) {
                Some(again) => idle.as_mut().reset(again),
                None => break "idle".to_string(),
            },
        }
    };
    shared.close();
    debug!(upstream = %address, reason, "DoH upstream connection closed");
}
