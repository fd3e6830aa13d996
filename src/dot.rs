//! DNS over TLS for clients (RFC 7858): a TCP listener whose connections do a TLS handshake
//! (ALPN `dot`) and then carry exactly what plain TCP carries, served by `tcp.rs`'s connection
//! loop: many queries answered out of order, the idle timeout, the connection slots and their
//! eviction, the allow list and the rate limit. The handshake holds a slot like any connection,
//! so clients that never finish it are closed to make room (they have completed no message),
//! and after [`tls_server::HANDSHAKE_TIMEOUT`] in any case.

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use crate::tcp::{self, Serve, Slot};
use crate::tls_server;

/// Serves one DNS-over-TLS listener until `serve.shutdown`.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: std::sync::Arc<tcp::Slots>,
    serve: Serve,
) {
    let shared = serve.clone();
    tcp::accept(listener, connections, serve, move |stream, client, slot| {
        let (serve, acceptor) = (shared.clone(), acceptor.clone());
        async move {
            let Some(admission) = serve.admit_client(client) else {
                return;
            };
            let Some(stream) = handshake(&acceptor, stream, &serve, &slot, client).await else {
                return;
            };
            let (read, write) = tokio::io::split(stream);
            tcp::connection(read, write, client, admission, &serve, slot).await;
        }
    })
    .await;
}

/// The client's handshake, unless it fails, takes too long, the connection is closed to make
/// room or the daemon stops first. DNS over HTTPS shakes hands the same way.
pub(crate) async fn handshake(
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
