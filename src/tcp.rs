//! The TCP side for clients (RFC 7766): length-prefixed messages, many queries per connection
//! answered as each completes, an idle timeout, a cap on connections and on outstanding
//! queries per connection. A connection that sends a bad length or garbage is closed; it
//! shares nothing with other connections, so they carry on.

use std::net::SocketAddr;
use std::sync::Arc;
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

/// Serves one TCP listener until `shutdown`. `connections` caps open connections across all
/// listeners; a permit is taken before accepting so excess clients wait in the backlog.
pub async fn serve(
    listener: TcpListener,
    context: Arc<Context>,
    connections: Arc<Semaphore>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = connections.clone().acquire_owned() => match permit {
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
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection(
                    stream,
                    client,
                    context.clone(),
                    shutdown.clone(),
                    tracker.clone(),
                    permit,
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
    _connection_permit: OwnedSemaphorePermit,
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
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            next = tokio::time::timeout(config.tcp_idle_timeout, frames.next()) => next,
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
            Ok(query) if !allowed => {
                metrics.tcp.answered(Rcode::Refused.value());
                if let Some(framed) = framing::frame(&query.error_answer(Rcode::Refused)) {
                    let _ = answers.send(framed).await;
                }
            }
            Ok(query) => {
                let forwarder = context.forwarder();
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
