//! DNS over TLS for clients (RFC 7858): a TCP listener whose connections do a TLS handshake
//! (ALPN `dot`) and then carry exactly what plain TCP carries, served by `tcp.rs`'s connection
//! loop: many queries answered out of order, the idle timeout, the connection slots and their
//! eviction, the allow list and the rate limit. The handshake holds a slot like any connection,
//! so clients that never finish it are closed to make room (they have completed no message),
//! and after [`tls_server::HANDSHAKE_TIMEOUT`] in any case.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

use crate::serve::admission::Admission;
use crate::serve::tcp::{self, Serve, Slot};
use crate::serve::tls_server;

/// Serves one DNS-over-TLS listener until `serve.shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: Arc<tcp::Slots>,
    serve: Serve,
) {
    accept(
        listener,
        acceptor,
        connections,
        serve,
        |stream, client, admission, serve, slot| async move {
            let (read, write) = tokio::io::split(stream);
            tcp::connection(read, write, client, admission, &serve, slot).await;
        },
    )
    .await;
}

/// Accepts TLS connections until `serve.shutdown`: a client the allow list admits gets its
/// handshake, then `connection` serves the decrypted stream. DNS over TLS and over HTTPS both
/// come in this way, so slots, admission and the handshake deadline are the same for both.
pub(crate) async fn accept<C, F>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: Arc<tcp::Slots>,
    serve: Serve,
    connection: C,
) where
    C: Fn(TlsStream<TcpStream>, SocketAddr, Admission, Serve, Slot) -> F + Clone + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let shared = serve.clone();
    tcp::accept(listener, connections, serve, move |stream, client, slot| {
        let (serve, acceptor, connection) = (shared.clone(), acceptor.clone(), connection.clone());
        async move {
            let Some(admission) = serve.admit_client(client) else {
                return;
            };
            let Some(stream) = handshake(&acceptor, stream, &serve, &slot, client).await else {
                return;
            };
            connection(stream, client, admission, serve, slot).await;
        }
    })
    .await;
}

/// The client's handshake, unless it fails, takes too long, the connection is closed to make
/// room or the daemon stops first.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    serve: &Serve,
    slot: &Slot,
    client: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let outcome = tokio::select! {
        outcome = tls_server::handshake(acceptor, stream) => outcome,
        _ = slot.closed() => {
            debug!(%client, "closing a TLS handshake to make room for a new connection");
            return None;
        }
        _ = serve.shutdown.cancelled() => return None,
    };
    match outcome {
        Ok(stream) => Some(stream),
        Err(error) => {
            debug!(%client, transport = serve.transport.as_str(), "{error}");
            None
        }
    }
}
