//! The UDP side for clients: receive, validate, forward, answer within the client's size limit.
//! Invalid packets are answered or dropped right in the receive loop; each valid query gets a
//! task of its own so a slow upstream answer never holds up the next packet.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::access::{self, DenyAction};
use crate::daemon::Context;
use crate::dns::{self, Rcode, Rejection};

/// A socket's receive loops, at most: more than one per core only adds contention.
pub const MAX_RECEIVERS: usize = 4;

/// Most UDP queries being forwarded at once per socket; beyond it packets are dropped (the
/// client retries) rather than letting a flood grow memory without bound.
pub const MAX_IN_FLIGHT: usize = 4096;

/// Serves a UDP socket until `shutdown`. Several of these run on each socket, one per core,
/// so receiving, parsing and answering from the cache use every core; `in_flight` is the
/// socket's, shared by them.
pub async fn serve(
    socket: Arc<UdpSocket>,
    in_flight: Arc<Semaphore>,
    context: Arc<Context>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let metrics = context.metrics.clone();
    let mut buf = vec![0u8; 65_535];
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => received,
        };
        let (len, client) = match received {
            Ok(received) => received,
            Err(error) => {
                // ICMP errors from earlier answers surface here; they concern that client only.
                debug!("UDP receive: {error}");
                if !matches!(
                    error.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                continue;
            }
        };
        let (config, forwarder) = context.current();
        let allowed = access::allows(&config.allow, client.ip());
        if !allowed && config.deny_action == DenyAction::Drop {
            metrics.udp.dropped();
            continue;
        }
        let limited = allowed && !forwarder.admit(client.ip());
        if limited {
            metrics.rate_limited.inc();
            if config.rate_limit_action == DenyAction::Drop {
                metrics.udp.dropped();
                continue;
            }
        }
        match dns::parse_query(&buf[..len]) {
            Err(Rejection::Drop) => metrics.udp.dropped(),
            Err(Rejection::Answer(answer, rcode)) => {
                metrics.udp.answered(rcode.value());
                let answer = dns::truncate_for_udp(answer, dns::PLAIN_UDP_LIMIT);
                // Not worth waiting for: if the socket buffer is full the client retries.
                let _ = socket.try_send_to(&answer, client);
            }
            Ok(query) if !allowed || limited => {
                metrics.udp.answered(Rcode::Refused.value());
                let answer = query.error_answer(Rcode::Refused);
                let answer = dns::truncate_for_udp(answer, query.udp_limit());
                let _ = socket.try_send_to(&answer, client);
            }
            Ok(query) => {
                if let Some(answer) = forwarder.answer_cached(&query, client) {
                    metrics.udp.answered(dns::header_rcode(&answer));
                    let answer = dns::truncate_for_udp(answer, query.udp_limit());
                    if let Err(error) = socket.send_to(&answer, client).await {
                        debug!(%client, "UDP send: {error}");
                    }
                    continue;
                }
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    metrics.udp.dropped();
                    continue;
                };
                let socket = socket.clone();
                let metrics = metrics.clone();
                tracker.spawn(async move {
                    let answer = forwarder.answer(&query, client).await;
                    metrics.udp.answered(dns::header_rcode(&answer));
                    let answer = dns::truncate_for_udp(answer, query.udp_limit());
                    if let Err(error) = socket.send_to(&answer, client).await {
                        debug!(%client, "UDP send: {error}");
                    }
                    drop(permit);
                });
            }
        }
    }
}
