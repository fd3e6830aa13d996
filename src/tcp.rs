//! The TCP side for clients (RFC 7766): length-prefixed messages, many queries per connection
//! answered as each completes, an idle timeout, a cap on connections and on outstanding
//! queries per connection. A connection that sends a bad length or garbage is closed; it
//! shares nothing with other connections, so they carry on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::access::{self, DenyAction};
use crate::daemon::Context;
use crate::dns::{self, Rcode, Rejection};
use crate::framing::{self, FrameReader};
use crate::metrics::GaugeGuard;

/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Connection slots shared by every TCP listener: a total (beyond it, clients wait in the
/// kernel's backlog) and a share per client address, so that one client holding connections
/// open (a slowloris) cannot lock everyone else out; its connections also end after
/// `tcp_idle_timeout` unless they complete messages.
pub struct Slots {
    total: Arc<Semaphore>,
    per_client: usize,
    clients: Mutex<HashMap<IpAddr, usize>>,
}

/// A connection's hold on its slots; released when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    client: IpAddr,
    _total: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(total: usize, per_client: usize) -> Slots {
        Slots {
            total: Arc::new(Semaphore::new(total)),
            per_client,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes `client`'s share for a connection holding `total`; `None` when it has no more.
    fn take(self: &Arc<Self>, client: IpAddr, total: OwnedSemaphorePermit) -> Option<Slot> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        let held = clients.entry(client).or_insert(0);
        if *held >= self.per_client {
            return None;
        }
        *held += 1;
        Some(Slot {
            slots: self.clone(),
            client,
            _total: total,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut clients = self.slots.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(held) = clients.get_mut(&self.client) {
            *held -= 1;
            if *held == 0 {
                clients.remove(&self.client);
            }
        }
    }
}

/// Serves one TCP listener until `shutdown`. A slot of `connections` is taken before
/// accepting, so excess clients wait in the backlog.
pub async fn serve(
    listener: TcpListener,
    context: Arc<Context>,
    connections: Arc<Slots>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = connections.total.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let Some(slot) = connections.take(client.ip().to_canonical(), permit) else {
                    debug!(%client, "TCP client holds its share of connections; closing");
                    context.metrics.tcp.dropped();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection(
                    stream,
                    client,
                    context.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                    slot,
                ));
            }
            Err(error) => {
                debug!("TCP accept: {error}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(
    stream: TcpStream,
    client: SocketAddr,
    context: Arc<Context>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    _slot: Slot,
) {
    let metrics = context.metrics.clone();
    let _open = GaugeGuard::new(&metrics.tcp_connections);
    let config = context.config();
    let allowed = access::allows(&config.allow, client.ip());
    if !allowed && config.deny_action == DenyAction::Drop {
        debug!(%client, "TCP client not in allow; closing");
        metrics.tcp.dropped();
        return;
    }
    let (read, write) = stream.into_split();
    let mut frames = FrameReader::new(read);
    let (answers, queue) = mpsc::channel(config.tcp_max_queries);
    let writer = tokio::spawn(write_answers(write, queue, config.tcp_idle_timeout));
    let outstanding = Arc::new(Semaphore::new(config.tcp_max_queries));
    loop {
        // At the cap, stop reading until an answer goes out: backpressure, not buffering.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = outstanding.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        // Read first: a query the client already sent is answered even when shutdown has
        // begun (a restart), instead of the connection closing on it.
        let next = tokio::select! {
            biased;
            next = tokio::time::timeout(config.tcp_idle_timeout, frames.next()) => next,
            _ = shutdown.cancelled() => break,
        };
        let message = match next {
            Err(_idle) => {
                // Idle only counts when no answer is still owed to the client.
                if outstanding.available_permits() + 1 == config.tcp_max_queries {
                    debug!(%client, "closing idle TCP connection");
                    break;
                }
                continue;
            }
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => break,
            Ok(Err(error)) => {
                debug!(%client, "TCP read: {error}");
                break;
            }
        };
        if message.len() < dns::HEADER_LEN {
            debug!(%client, len = message.len(), "bad TCP message length; closing");
            metrics.tcp.dropped();
            break;
        }
        let forwarder = context.forwarder();
        let limited = allowed && !forwarder.admit(client.ip());
        if limited {
            metrics.rate_limited.inc();
            // Over TCP a query cannot be ignored without stalling those behind it.
            if config.rate_limit_action == DenyAction::Drop {
                metrics.tcp.dropped();
                debug!(%client, "TCP client over the rate limit; closing");
                break;
            }
        }
        match dns::parse_query(&message) {
            Err(Rejection::Drop) => {
                debug!(%client, "TCP client sent a response; closing");
                metrics.tcp.dropped();
                break;
            }
            Err(Rejection::Answer(answer, rcode)) => {
                metrics.tcp.answered(rcode.value());
                if let Some(framed) = framing::frame(&answer) {
                    let _ = answers.send(framed).await;
                }
                // After FORMERR the stream cannot be trusted to be in sync: answer and close.
                if rcode == Rcode::FormErr {
                    break;
                }
            }
            Ok(query) if !allowed || limited => {
                metrics.tcp.answered(Rcode::Refused.value());
                if let Some(framed) = framing::frame(&query.error_answer(Rcode::Refused)) {
                    let _ = answers.send(framed).await;
                }
            }
            Ok(query) => {
                let answers = answers.clone();
                let metrics = metrics.clone();
                tracker.spawn(async move {
                    let answer = forwarder.answer(&query, client).await;
                    let framed = match framing::frame(&answer) {
                        Some(framed) => {
                            metrics.tcp.answered(dns::header_rcode(&answer));
                            Some(framed)
                        }
                        None => {
                            metrics.tcp.answered(Rcode::ServFail.value());
                            framing::frame(&query.error_answer(Rcode::ServFail))
                        }
                    };
                    if let Some(framed) = framed {
                        let _ = answers.send(framed).await;
                    }
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
/// `stall_limit` per answer, then dropped, so it cannot pin a connection slot forever.
async fn write_answers(
    mut write: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Vec<u8>>,
    stall_limit: Duration,
) {
    while let Some(framed) = queue.recv().await {
        match tokio::time::timeout(stall_limit, write.write_all(&framed)).await {
            Ok(Ok(())) => {}
            _ => return,
        }
    }
    let _ = write.shutdown().await;
}
