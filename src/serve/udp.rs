//! The UDP side for clients: receive, validate, forward, answer within the client's size limit.
//! Packets come in and answers go out in batches (recvmmsg/sendmmsg): on a busy socket one
//! system call moves many datagrams. Invalid packets and cache hits are answered within the
//! batch; every other query gets a task of its own, so a slow upstream never holds up the
//! next packet, and its answer joins the socket's [`Outbox`] to leave with the answers that
//! complete with it.
//!
//! On a wildcard socket (`0.0.0.0`, `[::]`) every answer leaves from the address its query
//! arrived at (IP_PKTINFO / IPV6_PKTINFO): the kernel would otherwise pick the source by route,
//! and a client that connected its socket drops an answer from any other address. A socket
//! bound to one address needs none of this and pays nothing for it.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::cmsg_space;
use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::common::lock;
use crate::common::transport::Transport;
use crate::context::Context;
use crate::serve::admission::Admission;
use crate::serve::listeners;
use crate::wire::dns::{self, Rcode, Rejection};

/// Most UDP queries being forwarded at once per socket; beyond it packets are dropped (the
/// client retries) rather than letting a flood grow memory without bound.
const MAX_FORWARDED: usize = 4096;

/// Datagrams moved per system call, at most.
const BATCH: usize = 32;

/// Room for one query. A larger datagram is cut short by the kernel and dropped: a DNS query,
/// even with EDNS options and padding, is far smaller.
const BUFFER: usize = 4096;

/// One received datagram: which receive buffer holds it, its sender and where it was sent to.
struct Datagram {
    buffer: usize,
    len: usize,
    /// Longer than its buffer: cut short by the kernel.
    truncated: bool,
    client: SocketAddr,
    local: Option<Local>,
}

/// The local address a query on a wildcard socket arrived at, which its answer leaves from.
/// IPv6 keeps the interface too: a link-local address means nothing without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Local {
    V4(Ipv4Addr),
    V6(Ipv6Addr, u32),
}

/// An answer on its way to `client`; `local: None` sends it from the socket's own address.
struct Reply {
    answer: Vec<u8>,
    client: SocketAddr,
    local: Option<Local>,
}

/// Answers to forwarded queries on their way out of one socket. One read of upstream
/// responses wakes the tasks of many queries at once; the first to post an answer lets the
/// others run and post theirs, then sends them all with one `sendmmsg`.
#[derive(Default)]
struct Outbox {
    replies: Mutex<Vec<Reply>>,
}

impl Outbox {
    async fn post(&self, socket: &UdpSocket, reply: Reply) {
        let first = {
            let mut replies = self.lock();
            replies.push(reply);
            replies.len() == 1
        };
        if !first {
            // The task that found the outbox empty sends this one too.
            return;
        }
        crate::common::defer::behind_queued_tasks().await;
        let mut replies = std::mem::take(&mut *self.lock());
        send_all(socket, &mut replies).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Reply>> {
        // Replies are only pushed and taken whole: a panic elsewhere leaves nothing half-done.
        lock::lock(&self.replies)
    }
}

/// Serves a UDP socket until `shutdown`: one loop per socket. Batching already drains a busy
/// socket, and forwarded queries run as tasks on the runtime's threads; a second loop on the
/// same socket costs more than it gains: both are woken on every packet and wake each other's
/// threads (docs/design-measurements.md).
pub(crate) async fn serve(
    socket: Arc<UdpSocket>,
    context: Arc<Context>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let metrics = context.metrics.clone();
    let forward_permits = Arc::new(Semaphore::new(MAX_FORWARDED));
    let outbox = Arc::new(Outbox::default());
    let fd = socket.as_raw_fd();
    let pktinfo = ask_destination(&socket);
    let mut buffers = vec![0u8; BATCH * BUFFER];
    let mut received: Vec<Datagram> = Vec::with_capacity(BATCH);
    let mut replies: Vec<Reply> = Vec::with_capacity(BATCH);
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    loop {
        let result = tokio::select! {
            _ = &mut stop => return,
            result = socket.async_io(Interest::READABLE, || recv_batch(fd, pktinfo, &mut buffers, &mut received)) => result,
        };
        if let Err(error) = result {
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
        // One look at the current config per batch: a reload applies from the next one.
        let (config, forwarder) = context.current();
        for datagram in received.drain(..) {
            let (client, local) = (datagram.client, datagram.local);
            if datagram.truncated {
                metrics.udp.dropped();
                continue;
            }
            let admission = Admission::of_client(&config, client.ip()).of_query(
                &config,
                &forwarder,
                &metrics,
                client.ip(),
            );
            if admission == Admission::Drop {
                metrics.udp.dropped();
                continue;
            }
            match dns::parse_query(&buffers[datagram.buffer * BUFFER..][..datagram.len]) {
                Err(Rejection::Drop) => metrics.udp.dropped(),
                Err(Rejection::Answer(answer, rcode)) => {
                    metrics.udp.answered(rcode.value());
                    let answer = dns::truncate_for_udp(answer, dns::PLAIN_UDP_LIMIT);
                    replies.push(Reply {
                        answer,
                        client,
                        local,
                    });
                }
                Ok(query) if admission == Admission::Refuse => {
                    metrics.udp.answered(Rcode::Refused.value());
                    let answer = query.error_answer(Rcode::Refused);
                    let answer = dns::truncate_for_udp(answer, query.udp_limit());
                    replies.push(Reply {
                        answer,
                        client,
                        local,
                    });
                }
                Ok(query) => {
                    if let Some(answer) = forwarder.answer_cached(&query, client, Transport::Udp) {
                        metrics.udp.answered(dns::header_rcode(&answer));
                        let answer = dns::truncate_for_udp(answer, query.udp_limit());
                        replies.push(Reply {
                            answer,
                            client,
                            local,
                        });
                        continue;
                    }
                    let Ok(permit) = forward_permits.clone().try_acquire_owned() else {
                        metrics.udp.dropped();
                        continue;
                    };
                    let socket = socket.clone();
                    let outbox = outbox.clone();
                    let metrics = metrics.clone();
                    let forwarder = forwarder.clone();
                    tracker.spawn(async move {
                        let answer = forwarder.answer(&query, client, Transport::Udp).await;
                        metrics.udp.answered(dns::header_rcode(&answer));
                        let answer = dns::truncate_for_udp(answer, query.udp_limit());
                        let reply = Reply {
                            answer,
                            client,
                            local,
                        };
                        outbox.post(&socket, reply).await;
                        drop(permit);
                    });
                }
            }
        }
        send_all(&socket, &mut replies).await;
        replies.clear();
    }
}

/// Asks the kernel for the destination of each datagram when `socket` is bound to a wildcard
/// address; returns whether it will say. Without it answers still go out, from the address the
/// kernel picks, so a refusal is logged and not fatal.
fn ask_destination(socket: &UdpSocket) -> bool {
    let Ok(address) = socket.local_addr() else {
        return false;
    };
    if !address.ip().is_unspecified() {
        return false;
    }
    // Already set on the sockets bound here; a socket systemd passed may have it too.
    match listeners::report_destination(socket, address) {
        Ok(()) => true,
        Err(error) => {
            warn!(%address, "cannot learn the destination of UDP queries, answers leave from the address the kernel picks: {error}");
            false
        }
    }
}

/// Receives what is waiting, up to one datagram per buffer, without blocking. The headers are
/// made per call: they hold raw pointers, so they cannot live across an await in a task.
fn recv_batch(
    fd: RawFd,
    pktinfo: bool,
    buffers: &mut [u8],
    received: &mut Vec<Datagram>,
) -> io::Result<()> {
    // Room for the larger of the two; a dual-stack socket gets IPV6_PKTINFO for both families.
    let control = pktinfo.then(|| cmsg_space!(libc::in6_pktinfo));
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, control);
    let mut slices: Vec<[IoSliceMut; 1]> = buffers
        .chunks_mut(BUFFER)
        .map(|buffer| [IoSliceMut::new(buffer)])
        .collect();
    let messages = recvmmsg(
        fd,
        &mut headers,
        slices.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )?;
    for (buffer, message) in messages.enumerate() {
        // A receive from a UDP socket always has an IPv4 or IPv6 sender.
        if let Some(client) = message.address.as_ref().and_then(socket_addr) {
            // Without the control message (none asked for, or cut short) the answer leaves
            // from the address the kernel picks, as it would have anyway.
            let local = message
                .cmsgs()
                .ok()
                .and_then(|mut cmsgs| cmsgs.find_map(destination));
            received.push(Datagram {
                buffer,
                len: message.bytes.min(BUFFER),
                truncated: message.flags.contains(MsgFlags::MSG_TRUNC),
                client,
                local,
            });
        }
    }
    Ok(())
}

/// Sends every reply, waiting for room in the socket buffer; a reply the kernel refuses
/// (e.g. an address it cannot route) is skipped, as the client would retry anyway.
async fn send_all(socket: &UdpSocket, replies: &mut [Reply]) {
    // One sendmmsg carries one source address for all its messages: group by it.
    replies.sort_by_key(|reply| reply.local);
    let fd = socket.as_raw_fd();
    let mut sent = 0;
    while sent < replies.len() {
        match socket
            .async_io(Interest::WRITABLE, || send_batch(fd, &replies[sent..]))
            .await
        {
            Ok(count) => sent += count,
            Err(error) => {
                debug!(client = %replies[sent].client, "UDP send: {error}");
                sent += 1;
            }
        }
    }
}

/// Sends, without blocking, the leading replies that leave from the same address (a batch at
/// most); returns how many went out (at least one).
fn send_batch(fd: RawFd, replies: &[Reply]) -> io::Result<usize> {
    let local = replies.first().and_then(|reply| reply.local);
    let count = replies
        .iter()
        .take(BATCH)
        .take_while(|reply| reply.local == local)
        .count();
    let replies = &replies[..count];
    let addresses: Vec<Option<SockaddrStorage>> = replies
        .iter()
        .map(|reply| Some(SockaddrStorage::from(reply.client)))
        .collect();
    let buffers: Vec<[IoSlice; 1]> = replies
        .iter()
        .map(|reply| [IoSlice::new(&reply.answer)])
        .collect();
    let v4;
    let v6;
    let (control, space) = match local {
        None => (None, None),
        Some(Local::V4(address)) => {
            v4 = libc::in_pktinfo {
                // The kernel picks the interface by route; only the source address matters.
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(address.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            (
                Some(ControlMessage::Ipv4PacketInfo(&v4)),
                Some(cmsg_space!(libc::in_pktinfo)),
            )
        }
        Some(Local::V6(address, interface)) => {
            v6 = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: address.octets(),
                },
                ipi6_ifindex: interface,
            };
            (
                Some(ControlMessage::Ipv6PacketInfo(&v6)),
                Some(cmsg_space!(libc::in6_pktinfo)),
            )
        }
    };
    // Each message's control buffer is exactly one message's space: the kernel reads all of it.
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(count, space);
    let sent = sendmmsg(
        fd,
        &mut headers,
        &buffers,
        &addresses,
        control.as_slice(),
        MsgFlags::MSG_DONTWAIT,
    )?
    .count();
    Ok(sent.max(1))
}

/// The destination a control message reports, if it is one that does.
fn destination(message: ControlMessageOwned) -> Option<Local> {
    match message {
        ControlMessageOwned::Ipv4PacketInfo(info) => Some(Local::V4(Ipv4Addr::from(
            info.ipi_spec_dst.s_addr.to_ne_bytes(),
        ))),
        ControlMessageOwned::Ipv6PacketInfo(info) => Some(Local::V6(
            Ipv6Addr::from(info.ipi6_addr.s6_addr),
            info.ipi6_ifindex,
        )),
        _ => None,
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    address
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}
