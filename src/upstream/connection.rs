//! One DNS-over-TLS connection to an upstream, carrying many queries at once (RFC 7858 §3.3,
//! RFC 7766 §6.2.1.1): each query gets an id of ours that no other outstanding query on the
//! connection has, and responses are matched by id *and* question, in whatever order they come.
//!
//! A reader task and a writer task own the two halves of the TLS stream. When either fails,
//! or the upstream closes, or the connection sits idle, every waiting query is failed at once
//! with [`UpstreamError::Closed`] so the forwarder can retry it elsewhere without waiting for its
//! timeout. Choosing, opening and replacing connections is `pool.rs`'s job.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::common::error::{Handshake, UpstreamError};
use crate::common::lock;
use crate::common::metrics::{GaugeGuard, UpstreamMetrics};
use crate::wire::dns;
use crate::wire::framing::{self, FrameReader};

/// How long a closing connection may take to send its TLS close_notify.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// A live connection; dropping it closes it.
pub(crate) struct Connection {
    frames: mpsc::Sender<Vec<u8>>,
    shared: Arc<Shared>,
}

/// State the query path, the reader and the writer all see.
struct Shared {
    state: Mutex<State>,
    /// Cancelled when the connection is closing, for whatever reason.
    closed: CancellationToken,
    /// Responses handed to a waiting query so far: a query that times out while this did not
    /// move shows the connection is stalled (half-open), not merely that one name is slow.
    /// Responses to no outstanding query do not count: an upstream answering only with wrong
    /// ids is as useless as a silent one.
    responses: AtomicU64,
    max_in_flight: usize,
}

struct State {
    open: bool,
    waiters: HashMap<u16, Waiter>,
    next_id: u16,
    /// Tells apart two registrations that reused the same id, so a late cleanup never removes
    /// its successor.
    next_ticket: u64,
}

struct Waiter {
    ticket: u64,
    question: Box<[u8]>,
    reply: oneshot::Sender<Vec<u8>>,
}

impl Connection {
    /// Connects over TCP (no Nagle delay: queries are small and latency is the point; every
    /// segment acknowledged at once, see [`QuickAck`]), does the TLS handshake with certificate
    /// validation, and starts the reader and writer tasks, all by `deadline`: past it, the
    /// error says which step never finished (the TCP connect, as when a firewall drops the
    /// packets, or the TLS handshake).
    /// `metrics` counts the handshake and the connection while it is open.
    pub(crate) async fn open(
        address: SocketAddr,
        name: ServerName<'static>,
        tls: Arc<ClientConfig>,
        idle_timeout: Duration,
        max_in_flight: usize,
        deadline: Instant,
        metrics: &UpstreamMetrics,
    ) -> Result<(Connection, Handshake), UpstreamError> {
        let (stream, handshake) =
            connect_tls(address, name, tls, deadline, metrics, |_| Ok(())).await?;
        // Shared by the two tasks: the socket is closed once both have ended.
        let open = Arc::new(metrics.connection_opened());
        let (read, write) = tokio::io::split(stream);
        let (frames, queue) = mpsc::channel(max_in_flight.max(1));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                open: true,
                waiters: HashMap::new(),
                next_id: initial_id(),
                next_ticket: 0,
            }),
            closed: CancellationToken::new(),
            responses: AtomicU64::new(0),
            max_in_flight,
        });
        tokio::spawn(read_loop(
            FrameReader::new(read),
            shared.clone(),
            idle_timeout,
            address,
            open.clone(),
        ));
        tokio::spawn(write_loop(write, queue, shared.clone(), open));
        Ok((Connection { frames, shared }, handshake))
    }

    /// Sends one query and waits for its response.
    ///
    /// `frame` is a framed query from [`dns::Query::upstream_frame`]; its id is set here.
    /// No timeout of its own: the caller bounds the wait, and dropping the future withdraws the
    /// query.
    pub(crate) async fn query(
        &self,
        mut frame: Vec<u8>,
        question: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let (reply, response) = oneshot::channel();
        let (id, ticket) = self.shared.register(question, reply)?;
        let _registration = Registration {
            shared: &self.shared,
            id,
            ticket,
        };
        if frame.len() < 4 {
            return Err(UpstreamError::Protocol);
        }
        frame[2..4].copy_from_slice(&id.to_be_bytes());
        self.frames
            .send(frame)
            .await
            .map_err(|_| UpstreamError::Closed)?;
        response.await.map_err(|_| UpstreamError::Closed)
    }

    /// Whether new queries may still be sent on this connection.
    pub(crate) fn is_open(&self) -> bool {
        !self.shared.closed.is_cancelled()
    }

    /// Queries waiting for their response on this connection.
    pub(crate) fn outstanding(&self) -> usize {
        self.shared.lock().waiters.len()
    }

    /// Responses delivered so far (see [`Shared::responses`]).
    pub(crate) fn responses(&self) -> u64 {
        self.shared.responses.load(Ordering::Relaxed)
    }

    /// Closes the connection, failing every outstanding query.
    pub(crate) fn close(&self) {
        self.shared.close();
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.close();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the map half-updated in a way that
        // matters more than losing the connection, so a poisoned lock is still used.
        lock::lock(&self.state)
    }

    fn register(
        &self,
        question: &[u8],
        reply: oneshot::Sender<Vec<u8>>,
    ) -> Result<(u16, u64), UpstreamError> {
        let mut state = self.lock();
        if !state.open {
            return Err(UpstreamError::Closed);
        }
        if state.waiters.len() >= self.max_in_flight {
            return Err(UpstreamError::Busy);
        }
        // At most `max_in_flight` (< 65536) ids are taken, so this finds a free one.
        let mut id = state.next_id;
        while state.waiters.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        state.next_id = id.wrapping_add(1);
        let ticket = state.next_ticket;
        state.next_ticket += 1;
        state.waiters.insert(
            id,
            Waiter {
                ticket,
                question: question.into(),
                reply,
            },
        );
        Ok((id, ticket))
    }

    /// Hands a response to the query waiting for it.
    ///
    /// A response to an id nobody waits for is a late answer to a query that gave up: dropped.
    /// A response to a waiting id but for another question means the stream cannot be trusted:
    /// an error, and the caller closes the connection.
    fn deliver(&self, response: Vec<u8>) -> Result<(), UpstreamError> {
        let id = dns::message_id(&response).ok_or(UpstreamError::Protocol)?;
        let mut state = self.lock();
        let Some(waiter) = state.waiters.get(&id) else {
            debug!(id, "response for no outstanding query dropped");
            return Ok(());
        };
        if !dns::response_matches(&response, &waiter.question) {
            return Err(UpstreamError::Protocol);
        }
        if let Some(waiter) = state.waiters.remove(&id) {
            self.responses.fetch_add(1, Ordering::Relaxed);
            // The query may have given up just now; nothing to do then.
            let _ = waiter.reply.send(response);
        }
        Ok(())
    }

    /// Marks the connection closed if nothing is outstanding; true if it did.
    fn close_if_idle(&self) -> bool {
        let mut state = self.lock();
        if state.waiters.is_empty() {
            state.open = false;
            true
        } else {
            false
        }
    }

    fn close(&self) {
        let waiters = {
            let mut state = self.lock();
            state.open = false;
            std::mem::take(&mut state.waiters)
        };
        // Dropping the reply senders wakes every waiter with `Closed`.
        drop(waiters);
        self.closed.cancel();
    }
}

/// Withdraws a query's registration when its future ends, however it ends.
struct Registration<'a> {
    shared: &'a Shared,
    id: u16,
    ticket: u64,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if state
            .waiters
            .get(&self.id)
            .is_some_and(|w| w.ticket == self.ticket)
        {
            state.waiters.remove(&self.id);
        }
    }
}

async fn read_loop(
    mut frames: FrameReader<tokio::io::ReadHalf<TlsStream<QuickAck>>>,
    shared: Arc<Shared>,
    idle_timeout: Duration,
    address: SocketAddr,
    _open: Arc<GaugeGuard>,
) {
    // One cancellation future and one timer for the connection's life, not one of each per
    // response: the timer is moved only when it fires before the connection has been idle long.
    let closed = shared.closed.cancelled();
    tokio::pin!(closed);
    let idle = tokio::time::sleep(idle_timeout);
    tokio::pin!(idle);
    let mut last_read = Instant::now();
    let reason = loop {
        let next = tokio::select! {
            _ = &mut closed => break "closed by us",
            _ = &mut idle => {
                let quiet_until = last_read + idle_timeout;
                if quiet_until > Instant::now() {
                    idle.as_mut().reset(quiet_until);
                } else if shared.close_if_idle() {
                    break "idle";
                } else {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                }
                continue;
            }
            next = frames.next() => next,
        };
        last_read = Instant::now();
        match next {
            Ok(Some(response)) => {
                if shared.deliver(response).is_err() {
                    break "response that matches no query it was sent for";
                }
            }
            Ok(None) => break "closed by the upstream",
            Err(_) => break "read error",
        }
    };
    shared.close();
    debug!(upstream = %address, reason, "upstream connection closed");
}

async fn write_loop<W: AsyncWrite>(
    mut write: WriteHalf<W>,
    mut queue: mpsc::Receiver<Vec<u8>>,
    shared: Arc<Shared>,
    _open: Arc<GaugeGuard>,
) {
    let mut batch = Vec::new();
    let closed = shared.closed.cancelled();
    tokio::pin!(closed);
    loop {
        let first = tokio::select! {
            _ = &mut closed => break,
            frame = queue.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
        };
        // Queries that queued up meanwhile go out in the same TLS record.
        framing::gather(&mut batch, &first, &mut queue).await;
        let written = tokio::select! {
            _ = &mut closed => break,
            result = async {
                write.write_all(&batch).await?;
                write.flush().await
            } => result,
        };
        if written.is_err() {
            break;
        }
    }
    shared.close();
    // Tell the upstream we are done (TLS close_notify), but do not wait on it for long.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, write.shutdown()).await;
}

/// The upstream's TCP stream, acknowledging each segment as soon as it is read.
///
/// A server that leaves Nagle's algorithm on (unbound before 1.22.1, for one) holds back a
/// small write while an earlier small one is unacknowledged, and Linux delays our ACK (40 ms
/// and more) until that timer or our next write: the server's last handshake flight, and then
/// every answer, would wait for the next query. TCP_QUICKACK sends the pending ACK now and
/// leaves the delayed-ACK mode, but the kernel drops back into it by itself, so it is set
/// again after every read that returned data, from the handshake on.
pub(crate) struct QuickAck(pub(crate) TcpStream);

/// Connects to `address` over TCP without Nagle delay, every segment acknowledged at once,
/// then does the TLS handshake for `name` with certificate validation, all by `deadline`.
/// `accept` may still refuse the session (DoH wants ALPN h2); the handshake counts in
/// `metrics` as failed unless it completes and is accepted, also when the caller's deadline
/// cancels it. The stream, and whether the session was resumed.
pub(crate) async fn connect_tls(
    address: SocketAddr,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
    deadline: Instant,
    metrics: &UpstreamMetrics,
    accept: impl FnOnce(&rustls::ClientConnection) -> Result<(), UpstreamError>,
) -> Result<(TlsStream<QuickAck>, Handshake), UpstreamError> {
    let tcp = tokio::time::timeout_at(deadline, TcpStream::connect(address))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::connect)?;
    // Best effort: without it queries are only slower, never wrong.
    let _ = tcp.set_nodelay(true);
    let pending = metrics.handshake_started();
    let handshake = TlsConnector::from(tls).connect(name, QuickAck(tcp));
    let stream = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| UpstreamError::HandshakeTimeout)?
        .map_err(UpstreamError::from_handshake)?;
    accept(stream.get_ref().1)?;
    let handshake = match stream.get_ref().1.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => Handshake::Resumed,
        _ => Handshake::Full,
    };
    pending.completed(handshake);
    Ok((stream, handshake))
}

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Best effort: without it answers are only later, never wrong.
            let _ = socket2::SockRef::from(&self.0).set_tcp_quickack(true);
        }
        result
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// A starting id that differs between connections, so ids in captures are not all 0, 1, 2…
fn initial_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (nanos ^ (nanos >> 16)) as u16
}
