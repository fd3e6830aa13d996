//! The TCP side for clients (RFC 7766): length-prefixed messages, many queries per connection
//! answered as each completes, an idle timeout, a cap on connections and on outstanding
//! queries per connection. A connection that sends a bad length or garbage is closed; it
//! shares nothing with other connections, so they carry on.
//!
//! DNS over TLS (`dot.rs`) and DNS over HTTPS (`doh.rs`) accept their connections here too
//! ([`accept`]), so one set of [`Slots`] bounds every client connection whatever it carries,
//! and DNS over TLS serves its decrypted stream with the same [`connection`] as plain TCP.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::common::lock;
use crate::common::metrics::GaugeGuard;
use crate::common::transport::Transport;
use crate::context::Context;
use crate::serve::admission::Admission;
use crate::wire::dns::{self, Rcode, Rejection};
use crate::wire::framing::{self, FrameReader};

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// How long a new connection may take to complete its first message (at most
/// `tcp_idle_timeout`). A client that connects has its query ready, usually the retry of a
/// truncated UDP answer; a connection still silent after this is a stalled one holding a slot.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connection slots shared by every TCP listener: a total, and a share per client address.
///
/// A new connection is always served (RFC 7766 §6.2.3). When its address has used its share,
/// one of that address's connections makes room, so no address can push out the others';
/// when only the total is full, one of all. The one closed is the connection idle or stalled
/// longest: no query outstanding, oldest last completed message (or opening). A connection
/// with queries outstanding is closed only when every candidate has some.
pub(crate) struct Slots {
    total: usize,
    per_client: usize,
    /// Zero of the `progress` clocks.
    epoch: Instant,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Open>,
    /// Connections per client address.
    clients: HashMap<IpAddr, usize>,
}

/// An open connection, as the table sees it.
struct Open {
    client: IpAddr,
    /// What it carries, to count it where it belongs when it is closed to make room.
    transport: Transport,
    activity: Arc<Activity>,
    /// Cancelled to close the connection to make room for a new one.
    close: CancellationToken,
}

/// What a connection reports, read when a victim is chosen.
#[derive(Default)]
struct Activity {
    /// Queries read and not answered yet.
    outstanding: AtomicUsize,
    /// When it last completed a message, or opened: milliseconds since the table's epoch.
    progress: AtomicU64,
}

/// A connection's hold on its slot; released when dropped.
pub(crate) struct Slot {
    slots: Arc<Slots>,
    id: u64,
    activity: Arc<Activity>,
    close: CancellationToken,
}

/// A query of a connection not answered yet; counted until dropped.
pub(crate) struct Outstanding(Arc<Activity>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slots {
    pub(crate) fn new(total: usize, per_client: usize) -> Slots {
        Slots {
            total,
            per_client,
            epoch: Instant::now(),
            table: Mutex::new(Table::default()),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A slot for a new connection from `client`, and the address and transport of the
    /// connection closed to make room for it, if one was.
    fn admit(
        self: &Arc<Self>,
        client: IpAddr,
        transport: Transport,
    ) -> (Slot, Option<(IpAddr, Transport)>) {
        let mut table = lock::lock(&self.table);
        let held = table.clients.get(&client).copied().unwrap_or(0);
        let evicted = if held >= self.per_client {
            table.evict(Some(client))
        } else if table.open.len() >= self.total {
            table.evict(None)
        } else {
            None
        };
        let id = table.next_id;
        table.next_id += 1;
        let activity = Arc::new(Activity {
            outstanding: AtomicUsize::new(0),
            progress: AtomicU64::new(self.now()),
        });
        let close = CancellationToken::new();
        table.open.insert(
            id,
            Open {
                client,
                transport,
                activity: activity.clone(),
                close: close.clone(),
            },
        );
        *table.clients.entry(client).or_insert(0) += 1;
        let slot = Slot {
            slots: self.clone(),
            id,
            activity,
            close,
        };
        (slot, evicted)
    }
}

impl Table {
    /// Closes the connection idle or stalled longest, among `client`'s or among all; returns
    /// its address and transport.
    fn evict(&mut self, client: Option<IpAddr>) -> Option<(IpAddr, Transport)> {
        let (&id, _) = self
            .open
            .iter()
            .filter(|(_, open)| client.is_none_or(|client| open.client == client))
            .min_by_key(|&(&id, open)| {
                (
                    open.activity.outstanding.load(Ordering::Relaxed) > 0,
                    open.activity.progress.load(Ordering::Relaxed),
                    id,
                )
            })?;
        let open = self.remove(id)?;
        open.close.cancel();
        Some((open.client, open.transport))
    }

    fn remove(&mut self, id: u64) -> Option<Open> {
        let open = self.open.remove(&id)?;
        if let Some(held) = self.clients.get_mut(&open.client) {
            *held -= 1;
            if *held == 0 {
                self.clients.remove(&open.client);
            }
        }
        Some(open)
    }
}

impl Slot {
    /// The connection completed a message: it is not stalled.
    pub(crate) fn completed_message(&self) {
        self.activity
            .progress
            .store(self.slots.now(), Ordering::Relaxed);
    }

    /// Counts a query as outstanding until the guard is dropped.
    pub(crate) fn query(&self) -> Outstanding {
        self.activity.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(self.activity.clone())
    }

    /// Resolves when the connection is to be closed to make room for a new one.
    pub(crate) async fn closed(&self) {
        self.close.cancelled().await;
    }

    /// Whether the connection has had no query outstanding and completed no message for
    /// `idle`; `None` when it is busy, else how long until it will have been idle that long.
    pub(crate) fn idle_for(&self, idle: Duration) -> Option<Duration> {
        if self.activity.outstanding.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = self
            .slots
            .now()
            .saturating_sub(self.activity.progress.load(Ordering::Relaxed));
        Some(idle.saturating_sub(Duration::from_millis(since)))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Already gone when the connection was closed to make room.
        let mut table = lock::lock(&self.slots.table);
        table.remove(self.id);
    }
}

/// Serves one plain TCP listener until `shutdown`. Every connection accepted is served; when
/// the slots are full another connection makes room (see [`Slots`]).
pub(crate) async fn serve(
    listener: TcpListener,
    context: Arc<Context>,
    connections: Arc<Slots>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let serve = Serve {
        context,
        shutdown,
        tracker,
        transport: Transport::Tcp,
    };
    accept(
        listener,
        connections,
        serve.clone(),
        move |stream, client, slot| {
            let serve = serve.clone();
            async move {
                let Some(admission) = serve.admit_client(client) else {
                    return;
                };
                let (read, write) = stream.into_split();
                connection(read, write, client, admission, &serve, slot).await;
            }
        },
    )
    .await;
}

/// What a connection of any TCP-based transport is served with.
#[derive(Clone)]
pub(crate) struct Serve {
    pub(crate) context: Arc<Context>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
    pub(crate) transport: Transport,
}

impl Serve {
    /// The allow list's decision for a new connection; `None` when it is to be closed at
    /// once, which is logged and counted.
    pub(crate) fn admit_client(&self, client: SocketAddr) -> Option<Admission> {
        let config = self.context.config();
        match Admission::of_client(&config, client.ip()) {
            Admission::Drop => {
                let transport = self.transport.as_str();
                debug!(%client, transport, "client not in allow; closing");
                self.context.metrics.transport(self.transport).dropped();
                None
            }
            admission => Some(admission),
        }
    }
}

/// Accepts connections on `listener` until `shutdown`, gives each a slot (closing another
/// connection to make room when they are full, see [`Slots`]) and runs `connection` for it as a
/// task. Every connection accepted is served (RFC 7766 §6.2.3).
pub(crate) async fn accept<F, C>(
    listener: TcpListener,
    connections: Arc<Slots>,
    serve: Serve,
    mut connection: C,
) where
    C: FnMut(TcpStream, SocketAddr, Slot) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let metrics = serve.context.metrics.clone();
    loop {
        let accepted = tokio::select! {
            _ = serve.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let (slot, evicted) =
                    connections.admit(client.ip().to_canonical(), serve.transport);
                let _ = stream.set_nodelay(true);
                let open = GaugeGuard::new(&metrics.tcp_connections);
                let served = connection(stream, client, slot);
                serve.tracker.spawn(async move {
                    served.await;
                    drop(open);
                });
                if let Some((evicted, transport)) = evicted {
                    let closed = transport.as_str();
                    debug!(%client, %evicted, closed, "connection slots full; closed the connection idle or stalled longest");
                    metrics.transport(transport).dropped();
                    // Under a burst of connections, let the ones accepted read what they were
                    // sent before more are let in: a client's query already waiting in its
                    // socket must not lose its slot to newer stalled connections unread.
                    tokio::task::yield_now().await;
                }
            }
            Err(error) => {
                debug!(transport = serve.transport.as_str(), "accept: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection carrying length-prefixed DNS messages, plain TCP or the decrypted
/// stream of DNS over TLS, read from `read` and answered on `write`, until the client closes
/// it, it idles, it is closed to make room or the daemon stops.
pub(crate) async fn connection<R, W>(
    read: R,
    write: W,
    client: SocketAddr,
    admission: Admission,
    serve: &Serve,
    slot: Slot,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let Serve {
        context,
        shutdown,
        tracker,
        transport,
    } = serve;
    let transport = *transport;
    let metrics = context.metrics.clone();
    let counts = metrics.transport(transport);
    let config = context.config();
    let mut frames = FrameReader::new(read);
    let (answers, queue) = mpsc::channel(config.tcp_max_queries);
    let writer = tokio::spawn(write_answers(write, queue, config.tcp_idle_timeout));
    let outstanding = Arc::new(Semaphore::new(config.tcp_max_queries));
    let first_message = FIRST_MESSAGE_TIMEOUT.min(config.tcp_idle_timeout);
    let mut completed = false;
    loop {
        // At the cap, stop reading until an answer goes out: backpressure, not buffering.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = slot.close.cancelled() => break,
            permit = outstanding.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let wait = if completed {
            config.tcp_idle_timeout
        } else {
            first_message
        };
        // Read first: a query the client already sent is answered even when shutdown has
        // begun (a restart), instead of the connection closing on it.
        let next = tokio::select! {
            biased;
            next = tokio::time::timeout(wait, frames.next()) => next,
            _ = shutdown.cancelled() => break,
            _ = slot.close.cancelled() => {
                debug!(%client, "closing TCP connection to make room for a new one");
                break;
            }
        };
        let message = match next {
            Err(_idle) => {
                // Idle only counts when no answer is still owed to the client.
                if outstanding.available_permits() + 1 == config.tcp_max_queries {
                    debug!(%client, completed, "closing idle TCP connection");
                    break;
                }
                continue;
            }
            Ok(Ok(Some(message))) => {
                completed = true;
                slot.completed_message();
                message
            }
            Ok(Ok(None)) => break,
            Ok(Err(error)) => {
                debug!(%client, "TCP read: {error}");
                break;
            }
        };
        if message.len() < dns::HEADER_LEN {
            debug!(%client, len = message.len(), "bad TCP message length; closing");
            counts.dropped();
            break;
        }
        let forwarder = context.forwarder();
        let admission = admission.of_query(&config, &forwarder, &metrics, client.ip());
        // Over TCP a query cannot be ignored without stalling those behind it.
        if admission == Admission::Drop {
            counts.dropped();
            debug!(%client, "TCP client over the rate limit; closing");
            break;
        }
        match dns::parse_query(&message) {
            Err(Rejection::Drop) => {
                debug!(%client, "TCP client sent a response; closing");
                counts.dropped();
                break;
            }
            Err(Rejection::Answer(answer, rcode)) => {
                counts.answered(rcode.value());
                if let Some(framed) = framing::frame(&answer) {
                    let _ = answers.send(framed).await;
                }
                // After FORMERR the stream cannot be trusted to be in sync: answer and close.
                if rcode == Rcode::FormErr {
                    break;
                }
            }
            Ok(query) if admission == Admission::Refuse => {
                counts.answered(Rcode::Refused.value());
                if let Some(framed) = framing::frame(&query.error_answer(Rcode::Refused)) {
                    let _ = answers.send(framed).await;
                }
            }
            Ok(query) => {
                let answers = answers.clone();
                let metrics = metrics.clone();
                let pending = slot.query();
                tracker.spawn(async move {
                    let counts = metrics.transport(transport);
                    let answer = forwarder.answer(&query, client, transport).await;
                    let framed = match framing::frame(&answer) {
                        Some(framed) => {
                            counts.answered(dns::header_rcode(&answer));
                            Some(framed)
                        }
                        None => {
                            counts.answered(Rcode::ServFail.value());
                            framing::frame(&query.error_answer(Rcode::ServFail))
                        }
                    };
                    if let Some(framed) = framed {
                        let _ = answers.send(framed).await;
                    }
                    drop(pending);
                    drop(permit);
                });
            }
        }
    }
    // Answers still being worked on are written before the connection closes: the writer
    // ends once every query task has dropped its sender.
    drop(answers);
    let _ = writer.await;
}

/// Writes answers in the order they complete. A client that stops reading is given
/// `stall_limit` per answer, then dropped, so it cannot pin a connection slot forever. The
/// stream is flushed whenever no further answer is queued: a TLS stream may hold written
/// bytes until then, plain TCP never does.
async fn write_answers<W: AsyncWrite + Unpin>(
    mut write: W,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stall_limit: Duration,
) {
    let mut batch = Vec::new();
    while let Some(framed) = queue.recv().await {
        // Answers that are ready go out together, not one TLS record each.
        framing::gather(&mut batch, &framed, &mut queue).await;
        let written = async {
            write.write_all(&batch).await?;
            if queue.is_empty() {
                write.flush().await?;
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(stall_limit, written).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = tokio::time::timeout(stall_limit, write.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn admit(slots: &Arc<Slots>, client: IpAddr) -> (Slot, Option<IpAddr>) {
        let (slot, evicted) = slots.admit(client, Transport::Tcp);
        (slot, evicted.map(|(address, _)| address))
    }

    fn held(slots: &Slots) -> (usize, HashMap<IpAddr, usize>) {
        let table = slots.table.lock().unwrap();
        (table.open.len(), table.clients.clone())
    }

    async fn later() {
        tokio::time::advance(Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_taken_without_closing_anything_until_full() {
        let slots = Arc::new(Slots::new(3, 2));
        let (a1, none1) = admit(&slots, A);
        let (_a2, none2) = admit(&slots, A);
        let (_b1, none3) = admit(&slots, B);
        assert_eq!((none1, none2, none3), (None, None, None));
        assert!(!a1.close.is_cancelled());
        assert_eq!(held(&slots).0, 3);
        drop(a1);
        assert_eq!(held(&slots), (2, HashMap::from([(A, 1), (B, 1)])));
    }

    #[tokio::test(start_paused = true)]
    async fn the_connection_stalled_longest_makes_room_and_busy_ones_stay() {
        let slots = Arc::new(Slots::new(100, 3));
        let (busy, _) = admit(&slots, A);
        let _pending = busy.query();
        later().await;
        let (stalled, _) = admit(&slots, A);
        later().await;
        let (idle, _) = admit(&slots, A);
        later().await;
        idle.completed_message();
        later().await;
        // Full share: the stalled one goes (no query outstanding, no message since it opened),
        // not the older one with a query outstanding.
        let (newest, evicted) = admit(&slots, A);
        assert_eq!(evicted, Some(A));
        assert!(stalled.close.is_cancelled());
        assert!(!busy.close.is_cancelled() && !idle.close.is_cancelled());
        // Next the idle one, though it opened after the busy one.
        later().await;
        let (_last, evicted) = admit(&slots, A);
        assert_eq!(evicted, Some(A));
        assert!(idle.close.is_cancelled());
        assert!(!busy.close.is_cancelled() && !newest.close.is_cancelled());
        // The closed ones dropping their slots later changes no count.
        drop((stalled, idle));
        assert_eq!(held(&slots), (3, HashMap::from([(A, 3)])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_connection_is_closed_only_when_all_are_busy() {
        let slots = Arc::new(Slots::new(100, 2));
        let (first, _) = admit(&slots, A);
        let _one = first.query();
        later().await;
        let (second, _) = admit(&slots, A);
        let _two = second.query();
        let (_third, evicted) = admit(&slots, A);
        assert_eq!(evicted, Some(A));
        assert!(first.close.is_cancelled(), "the oldest of the busy ones");
        assert!(!second.close.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_at_its_share_closes_its_own_connections_only() {
        let slots = Arc::new(Slots::new(100, 2));
        let (other, _) = admit(&slots, B);
        later().await;
        let (a1, _) = admit(&slots, A);
        let _pending = a1.query();
        let (a2, _) = admit(&slots, A);
        let _pending2 = a2.query();
        let (_a3, evicted) = admit(&slots, A);
        assert_eq!(evicted, Some(A));
        assert!(
            !other.close.is_cancelled(),
            "B's idle connection is not A's to take"
        );
        assert!(a1.close.is_cancelled());
        assert_eq!(held(&slots), (3, HashMap::from([(A, 2), (B, 1)])));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_total_closes_the_connection_idle_longest_of_any_address() {
        let slots = Arc::new(Slots::new(3, 3));
        let (a1, _) = admit(&slots, A);
        later().await;
        let (b1, _) = admit(&slots, B);
        later().await;
        let (a2, _) = admit(&slots, A);
        later().await;
        a1.completed_message();
        let (_b2, evicted) = admit(&slots, B);
        assert_eq!(evicted, Some(B));
        assert!(b1.close.is_cancelled());
        assert!(!a1.close.is_cancelled() && !a2.close.is_cancelled());
        assert_eq!(held(&slots), (3, HashMap::from([(A, 2), (B, 1)])));
    }
}
