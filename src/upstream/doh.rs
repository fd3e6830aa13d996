//! One DNS-over-HTTPS connection to an upstream (RFC 8484): HTTP/2 over TLS on the `h2`
//! crate, each query a stream of its own, so many are outstanding at once on one connection.
//!
//! Queries are POSTs of `application/dns-message` bodies, not GETs: the message travels as
//! it is (a GET adds a third for base64url), the query name never appears in a URL that a
//! server's access log would keep, and GET's one advantage, HTTP caching, has no cache to use
//! between dns-proxy and its upstream; dns-proxy caches the answers itself. The message is
//! the DoT one, padded to 128 bytes (RFC 8467), with id 0 (RFC 8484 §4.1).
//!
//! `h2` rather than hyper's client on top of it: a query queues its HEADERS and DATA frames
//! itself and reads its response in its own task, so the connection's task is woken once to
//! write both in one segment. hyper hands each request to its dispatcher and the body to a
//! task of its own, two more task hops and a segment per frame, which showed at light load.
//!
//! A response that is not a 2xx `application/dns-message` is an upstream failure
//! ([`UpstreamError::Http`]), and so is a request whose stream the server resets; a
//! connection that breaks or that the server closes fails its outstanding queries with
//! [`UpstreamError::Closed`], retried like DoT's. A server's GOAWAY only retires the
//! connection: the query that finds it fails the same way, but the requests the server took
//! are still answered on it (a server restarting or rotating its connections says GOAWAY and
//! finishes them), and a server that never answers them is a stall like any other. Idle
//! connections close after `upstream_idle_timeout`; the pool, health and backoff around them
//! are DoT's too ([`PooledUpstream`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{self, SendRequest};
use h2::{Ping, PingPong, RecvStream};
use hyper::header::{ACCEPT, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
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
/// The most header bytes a response may carry: a DNS answer needs a few dozen, and the
/// crate's own default (16 MiB) would let an upstream make each stream hold that much.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// One DNS-over-HTTPS upstream: its connections, health and backoff.
pub(crate) type DohUpstream = PooledUpstream<DohConnector>;

/// Opens HTTP/2 connections to one upstream.
pub(crate) struct DohConnector {
    target: Target,
    name: ServerName<'static>,
    /// Kept for the life of the upstream: it holds the TLS session cache for resumption.
    tls: Arc<ClientConfig>,
    idle_timeout: Duration,
    /// Every query's request but its body: built once, since parsing the URL and headers
    /// again for each query would only repeat the same work.
    request: Request<()>,
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
    let request = Uri::builder()
        .scheme("https")
        .authority(url.authority.as_str())
        .path_and_query(url.path.as_str())
        .build()
        .and_then(|uri| {
            Request::builder()
                .method(Method::POST)
                .uri(uri)
                .header(CONTENT_TYPE, DNS_MESSAGE)
                .header(ACCEPT, DNS_MESSAGE)
                .body(())
        })
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
        request,
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
    sender: SendRequest<Bytes>,
    request: Request<()>,
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
    /// New queries may go on it: false once it is closing or the server has said GOAWAY.
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
        let http2 = client::Builder::new()
            .enable_push(false)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake(stream);
        let (sender, mut connection) = tokio::time::timeout_at(deadline, http2)
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
        let pings = connection.ping_pong();
        tokio::spawn(drive(
            connection,
            pings,
            shared.clone(),
            connector.idle_timeout,
            address,
            metrics.connection_opened(),
        ));
        debug!(upstream = %address, resumed = handshake == Handshake::Resumed, "DoH upstream connection opened");
        Ok(H2Connection {
            sender,
            request: connector.request.clone(),
            shared,
        })
    }

    /// Sends `body` as one POST; the response's body, once its status and content type pass.
    async fn exchange(&self, body: Bytes) -> Result<Vec<u8>, Failure> {
        // Waits only while the server's limit on concurrent streams is reached.
        let mut sender = self.sender.clone().ready().await?;
        let (response, mut request_body) = sender.send_request(self.request.clone(), false)?;
        request_body.send_data(body, true)?;
        let (head, body) = response.await?.into_parts();
        let content_type = head.headers.get(CONTENT_TYPE).map(|v| v.as_bytes());
        doh_response::check_head(head.status.as_u16(), content_type).map_err(Failure::Rejected)?;
        read_body(body).await
    }
}

/// Why an exchange got no usable response.
enum Failure {
    /// The connection or the stream failed (GOAWAY, reset, I/O error).
    Http2(h2::Error),
    /// The response is not a DNS answer.
    Rejected(Rejection),
}

impl From<h2::Error> for Failure {
    fn from(error: h2::Error) -> Failure {
        Failure::Http2(error)
    }
}

/// The whole body, at most [`MAX_BODY`] bytes, handing each chunk's flow-control credit back
/// so the connection's window never runs dry.
async fn read_body(mut body: RecvStream) -> Result<Vec<u8>, Failure> {
    let mut collected = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        body.flow_control().release_capacity(chunk.len())?;
        if collected.len() + chunk.len() > MAX_BODY {
            return Err(Failure::Rejected(Rejection::TooLong));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(collected)
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
        let body = match self.exchange(body).await {
            Ok(body) => body,
            Err(Failure::Rejected(rejection)) => return Err(rejected(rejection)),
            Err(Failure::Http2(error)) => {
                debug!("DoH request failed: {error}");
                if error.is_remote() && error.is_reset() && !error.is_go_away() {
                    // The server refused or cancelled this request: a failure of the upstream
                    // like an error status, and the log says which.
                    let reason = error
                        .reason()
                        .map(|r| format!(" ({r:?})"))
                        .unwrap_or_default();
                    return Err(UpstreamError::Http(
                        format!("the upstream reset the request's stream{reason}").into(),
                    ));
                }
                if error.is_go_away() && error.is_remote() {
                    // The server is going away: no new query goes on it, but the requests
                    // it took are still answered there.
                    self.shared.retire();
                } else {
                    // A lost connection: it goes, and what is outstanding on it.
                    self.shared.close();
                }
                return Err(UpstreamError::Closed);
            }
        };
        let message = doh_response::check_body(&body, question).map_err(rejected)?;
        self.shared.responses.fetch_add(1, Ordering::Relaxed);
        Ok(message.to_vec())
    }

    fn is_open(&self) -> bool {
        self.shared.lock().open
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

    /// No new query goes on it; those outstanding finish, and it closes when the last
    /// handle on it goes, or when the server ends it.
    fn retire(&self) {
        self.lock().open = false;
    }

    fn close(&self) {
        self.retire();
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

/// Runs the HTTP/2 connection until the upstream ends it, it fails, a PING goes unanswered,
/// we close it, or it has sat idle for `idle_timeout`; dropping it then closes the socket and
/// fails what is outstanding.
async fn drive<F>(
    connection: F,
    pings: Option<PingPong>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    address: SocketAddr,
    _open: GaugeGuard,
) where
    F: Future<Output = Result<(), h2::Error>>,
{
    tokio::pin!(connection);
    let closed = shared.closed.cancelled();
    tokio::pin!(closed);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let alive = keep_alive(pings, &shared);
    tokio::pin!(alive);
    let reason = loop {
        tokio::select! {
            ended = &mut connection => break match ended {
                Ok(()) => "closed by the upstream".to_string(),
                Err(error) => format!("error: {error}"),
            },
            _ = &mut closed => break "closed by us".to_string(),
            dead = &mut alive => break dead,
            _ = &mut idle => match shared.close_if_idle(idle_timeout) {
                Some(again) => idle.as_mut().reset(again),
                None => break "idle".to_string(),
            },
        }
    };
    shared.close();
    debug!(upstream = %address, reason, "DoH upstream connection closed");
}

/// While queries are outstanding, a PING every [`KEEP_ALIVE_INTERVAL`]; returns why the
/// connection is dead once one goes unanswered for [`KEEP_ALIVE_TIMEOUT`].
async fn keep_alive(pings: Option<PingPong>, shared: &Shared) -> String {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if shared.lock().outstanding == 0 {
            continue;
        }
        match tokio::time::timeout(KEEP_ALIVE_TIMEOUT, pings.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return format!("PING failed: {error}"),
            Err(_) => return "PING unanswered".to_string(),
        }
    }
}
