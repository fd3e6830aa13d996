//! Where the client sockets come from, decided once at start: handed over by systemd (socket
//! activation, `LISTEN_FDS`), or bound here from `listen`. The servers only ever see bound
//! sockets, so they do not care which. The same goes for the metrics endpoint's socket: passed
//! under the name `METRICS_FD_NAME`, or bound here from `[metrics] listen`; and for DNS over
//! TLS and HTTPS: passed under `TLS_FD_NAME` and `HTTPS_FD_NAME`, or bound here from
//! `listen_tls` and `listen_https`.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsFd;

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// The `FileDescriptorName=` of a socket passed for the metrics endpoint.
pub(crate) const METRICS_FD_NAME: &str = "metrics";
/// The `FileDescriptorName=` of a socket passed for DNS over TLS.
pub const TLS_FD_NAME: &str = "dns-tls";
/// The `FileDescriptorName=` of a socket passed for DNS over HTTPS.
pub const HTTPS_FD_NAME: &str = "dns-https";

/// Bound client sockets.
#[derive(Debug, Default)]
pub(crate) struct Listeners {
    pub(crate) udp: Vec<UdpSocket>,
    pub(crate) tcp: Vec<TcpListener>,
    /// DNS over TLS.
    pub(crate) tls: Vec<TcpListener>,
    /// DNS over HTTPS.
    pub(crate) https: Vec<TcpListener>,
}

/// Sockets systemd passed, with what could not be used.
#[derive(Debug)]
pub struct Inherited {
    pub(crate) listeners: Listeners,
    /// TCP listeners passed under the name `METRICS_FD_NAME`, for the metrics endpoint.
    pub(crate) metrics: Vec<TcpListener>,
    /// `LISTEN_FDNAMES`, for the log.
    pub(crate) names: Vec<String>,
    /// Descriptions of passed fds that are neither a TCP listener nor a UDP socket, or that are
    /// named for metrics, DNS over TLS or HTTPS but are no TCP listener.
    pub(crate) unusable: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot bind {transport} {address}: {source}")]
    Bind {
        transport: &'static str,
        address: SocketAddr,
        source: io::Error,
    },
    #[error(
        "nothing to listen on: both udp and tcp are off or listen is empty, and listen_tls and listen_https are empty"
    )]
    Nothing,
}

/// Takes the sockets systemd passed; `None` when the process was not socket-activated.
///
/// Call before any thread exists: listenfd clears `LISTEN_FDS` and `LISTEN_PID` from the
/// environment, so that child processes do not take the sockets for theirs.
pub fn inherited() -> Option<Inherited> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return None;
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    let mut inherited = Inherited {
        listeners: Listeners::default(),
        metrics: Vec::new(),
        names,
        unusable: Vec::new(),
    };
    for index in 0..fds.len() {
        // The socket itself says whether it is UDP or TCP; the name only matters for metrics,
        // DNS over TLS and HTTPS, so plain DNS sockets may be named anything (the packaged unit
        // calls them "dns").
        let name = inherited.names.get(index).map_or("", String::as_str);
        let named = match name {
            METRICS_FD_NAME => Some(&mut inherited.metrics),
            TLS_FD_NAME => Some(&mut inherited.listeners.tls),
            HTTPS_FD_NAME => Some(&mut inherited.listeners.https),
            _ => None,
        };
        if let Some(list) = named {
            match fds.take_tcp_listener(index) {
                Ok(Some(listener)) => list.push(listener),
                _ => inherited
                    .unusable
                    .push(format!("fd {} ({name}) is not a TCP listener", index + 3)),
            }
        } else if let Ok(Some(listener)) = fds.take_tcp_listener(index) {
            inherited.listeners.tcp.push(listener);
        } else if let Ok(Some(socket)) = fds.take_udp_socket(index) {
            inherited.listeners.udp.push(socket);
        } else {
            inherited.unusable.push(format!(
                "fd {} ({name}) is neither a TCP listener nor a UDP socket",
                index + 3
            ));
        }
    }
    Some(inherited)
}

/// Binds UDP and TCP on every `listen` address, for the transports that are on, and TCP on
/// every `listen_tls` and `listen_https` address.
pub(crate) fn bind(config: &Config) -> Result<Listeners, ListenError> {
    let mut listeners = Listeners::default();
    for &address in &config.listen {
        if config.udp {
            let socket = bind_udp(address).map_err(|source| ListenError::Bind {
                transport: "UDP",
                address,
                source,
            })?;
            listeners.udp.push(socket);
        }
        if config.tcp {
            let listener = bind_tcp(address).map_err(|source| ListenError::Bind {
                transport: "TCP",
                address,
                source,
            })?;
            listeners.tcp.push(listener);
        }
    }
    for (addresses, bound, transport) in [
        (&config.listen_tls, &mut listeners.tls, "DNS over TLS"),
        (&config.listen_https, &mut listeners.https, "DNS over HTTPS"),
    ] {
        for &address in addresses {
            let listener = bind_tcp(address).map_err(|source| ListenError::Bind {
                transport,
                address,
                source,
            })?;
            bound.push(listener);
        }
    }
    if listeners.udp.is_empty()
        && listeners.tcp.is_empty()
        && listeners.tls.is_empty()
        && listeners.https.is_empty()
    {
        return Err(ListenError::Nothing);
    }
    Ok(listeners)
}

/// Binds the metrics endpoint's TCP listener.
pub(crate) fn bind_metrics(address: SocketAddr) -> Result<TcpListener, ListenError> {
    bind_tcp(address).map_err(|source| ListenError::Bind {
        transport: "metrics TCP",
        address,
        source,
    })
}

fn socket(address: SocketAddr, kind: Type, protocol: Protocol) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(address), kind, Some(protocol))?;
    if address.is_ipv6() {
        // `[::]` must not also take the IPv4 port: `0.0.0.0` may be listed separately.
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// Receive buffer asked for on UDP sockets bound here (the kernel caps it at
/// `net.core.rmem_max`): the default ~200 KiB holds about 250 queries, so a pause of a few
/// hundred milliseconds at a thousand queries a second loses some before they are read.
/// `dns-proxy.socket` asks for the same with `ReceiveBuffer=`.
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

fn bind_udp(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket(address, Type::DGRAM, Protocol::UDP)?;
    // Best effort: a smaller buffer only means more loss under a stall.
    let _ = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER);
    if address.ip().is_unspecified() {
        // Before bind, so that no query is ever queued without its destination.
        report_destination(&socket, address)?;
    }
    socket.bind(&address.into())?;
    Ok(socket.into())
}

/// Asks the kernel to tell the destination of each datagram received on a wildcard UDP socket
/// (IP_PKTINFO, IPV6_RECVPKTINFO), so that its answer can leave from that address. A
/// datagram queued before this was set carries none: systemd's `PassPacketInfo=yes` sets it
/// on the sockets it binds.
pub(crate) fn report_destination(socket: &impl AsFd, address: SocketAddr) -> io::Result<()> {
    match address {
        SocketAddr::V4(_) => setsockopt(socket, sockopt::Ipv4PacketInfo, &true),
        // A dual-stack `[::]` socket reports IPv4 destinations this way too, IPv4-mapped.
        SocketAddr::V6(_) => setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true),
    }
    .map_err(io::Error::from)
}

fn bind_tcp(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = socket(address, Type::STREAM, Protocol::TCP)?;
    // A restart must not fail while old connections sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}
