//! The admin HTTP endpoint: `GET /metrics` (every series, Prometheus text format 0.0.4) and
//! `GET /healthz` (200 `ok`, or 503 with the reason), on hyper's HTTP/1.1 server.
//!
//! It knows nothing of the daemon: it is handed a function that renders the metrics and one
//! that says whether the daemon is healthy, and `daemon.rs` wires both. Each connection
//! carries one request (keep-alive off: a scrape every few seconds gains nothing from reuse),
//! and is bounded everywhere: the request head must arrive within `header_timeout` and fit in
//! [`MAX_REQUEST_HEAD`] bytes (else 431), the whole exchange within `connection_timeout`, and at
//! most `max_connections` are served at once (further ones wait in the listen backlog).
//! Anything but `GET` or `HEAD` of the two paths is 404; request bodies are never read.

use std::convert::Infallible;
use std::fmt;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::prometheus_text;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

/// Longest request head (request line and headers) read; a scrape request is ~100 bytes.
/// hyper's read buffer cannot be smaller.
pub(crate) const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// Time a client gets to close its side after the response, before we close anyway.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and discarded while lingering.
const LINGER_BYTES: usize = 8 * MAX_REQUEST_HEAD;
/// Time a connection still gets after shutdown: enough to finish a response under way.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// Pause after an accept error (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

const TEXT: &str = "text/plain; charset=utf-8";

/// Renders every series in the Prometheus text format, version 0.0.4.
pub(crate) type RenderMetrics = dyn Fn() -> Result<String, fmt::Error> + Send + Sync;
/// `Ok` while the daemon is healthy, else why not (the body of the 503).
pub(crate) type HealthCheck = dyn Fn() -> Result<(), &'static str> + Send + Sync;

/// The bounds on each client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Time a client gets to send the whole request head, from the moment it is accepted.
    pub(crate) header_timeout: Duration,
    /// Time one connection may take in all, request and response: a client that does not read
    /// its response cannot keep a connection slot longer.
    pub(crate) connection_timeout: Duration,
    /// Connections served at once.
    pub(crate) max_connections: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

/// The endpoint: what it serves and its limits.
pub(crate) struct Admin {
    render: Box<RenderMetrics>,
    health: Box<HealthCheck>,
    limits: Limits,
}

impl Admin {
    pub(crate) fn new(
        render: impl Fn() -> Result<String, fmt::Error> + Send + Sync + 'static,
        health: impl Fn() -> Result<(), &'static str> + Send + Sync + 'static,
    ) -> Admin {
        Admin {
            render: Box::new(render),
            health: Box::new(health),
            limits: Limits::default(),
        }
    }

    #[cfg(test)]
    pub(crate) fn with_limits(self, limits: Limits) -> Admin {
        Admin { limits, ..self }
    }

    /// Serves the endpoint on `listener` until `shutdown`; each connection is a task on
    /// `tracker`.
    pub(crate) async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
            };
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, _)) => {
                    let admin = self.clone();
                    let shutdown = shutdown.clone();
                    tracker.spawn(async move {
                        admin.connection(stream, &shutdown).await;
                        drop(permit);
                    });
                }
                Err(error) => {
                    debug!("metrics accept: {error}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    }

    /// One request and its response, within the limits. On shutdown a connection that has
    /// not sent its request is closed; one already under way gets [`SHUTDOWN_GRACE`].
    async fn connection(self: Arc<Self>, mut stream: TcpStream, shutdown: &CancellationToken) {
        let admin = self.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let response = admin.respond(request.method(), request.uri().path());
            async move { Ok::<_, Infallible>(response) }
        });
        let exchange = async {
            let mut connection = pin!(
                http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(self.limits.header_timeout)
                    .max_buf_size(MAX_REQUEST_HEAD)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(&mut stream), service)
            );
            tokio::select! {
                served = connection.as_mut() => Some(served),
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, connection).await.ok()
                }
            }
        };
        match tokio::time::timeout(self.limits.connection_timeout, exchange).await {
            Ok(Some(served)) => {
                // A response went out, ours or hyper's 400 or 431 for a bad request, unless
                // the head timed out or the client left; only then may the client still be
                // sending.
                let answered = match served {
                    Ok(()) => true,
                    Err(error) => {
                        debug!("metrics connection: {error}");
                        error.is_parse()
                    }
                };
                if answered {
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = linger(&mut stream) => {}
                    }
                }
            }
            Ok(None) => debug!("metrics connection: closed by shutdown"),
            Err(_) => debug!(
                "metrics connection: not done within {:?}",
                self.limits.connection_timeout
            ),
        }
    }

    /// The response to `method` on `path`.
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return response(StatusCode::NOT_FOUND, TEXT, "not found".into());
        }
        match path {
            "/metrics" => match (self.render)() {
                Ok(body) => response(StatusCode::OK, prometheus_text::CONTENT_TYPE, body.into()),
                Err(_) => response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    TEXT,
                    "cannot encode metrics".into(),
                ),
            },
            "/healthz" => match (self.health)() {
                Ok(()) => response(StatusCode::OK, TEXT, "ok".into()),
                Err(reason) => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, reason.into()),
            },
            _ => response(StatusCode::NOT_FOUND, TEXT, "not found".into()),
        }
    }
}

/// A response with its body; hyper adds the length, and leaves the body out for `HEAD`.
fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Closing with unread input sends a reset, which may make the client's TCP discard the end of
/// the response (RFC 9112 §9.6): so, as there, half-close and read what the client still sends
/// until it closes its side, bounded in time and bytes.
async fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let _ = tokio::time::timeout(LINGER, async {
        let mut sink = [0u8; 1024];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::time::Instant;

    use super::*;

    /// Bound on every exchange of these tests.
    const BOUND: Duration = Duration::from_secs(10);

    struct Running {
        address: SocketAddr,
        shutdown: CancellationToken,
        tracker: TaskTracker,
        healthy: Arc<AtomicBool>,
    }

    const BODY: &str = "# TYPE x counter\nx_total 1\n";

    async fn start(limits: Limits) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let healthy = Arc::new(AtomicBool::new(true));
        let health = healthy.clone();
        let admin = Admin::new(
            || Ok(BODY.to_string()),
            move || match health.load(Ordering::Relaxed) {
                true => Ok(()),
                false => Err("no upstream is up"),
            },
        )
        .with_limits(limits);
        let (shutdown, tracker) = (CancellationToken::new(), TaskTracker::new());
        tracker.spawn(Arc::new(admin).serve(listener, shutdown.clone(), tracker.clone()));
        Running {
            address,
            shutdown,
            tracker,
            healthy,
        }
    }

    /// Everything the server sends on `stream` until it closes.
    async fn read_all(stream: &mut TcpStream) -> String {
        let mut received = Vec::new();
        tokio::time::timeout(BOUND, stream.read_to_end(&mut received))
            .await
            .expect("server did not close in time")
            .expect("read");
        String::from_utf8(received).unwrap()
    }

    async fn exchange(address: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(request).await.unwrap();
        read_all(&mut stream).await
    }

    fn head_and_body(response: &str) -> (&str, &str) {
        response
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head: {response:?}"))
    }

    #[tokio::test]
    async fn routes_statuses_and_headers() {
        let server = start(Limits::default()).await;
        let get = exchange(server.address, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let (head, body) = head_and_body(&get);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("\r\ncache-control: no-store"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(head.contains(&format!("\r\ncontent-length: {}", body.len())));
        assert_eq!(body, BODY);

        let head_only = exchange(server.address, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        let (head, body) = head_and_body(&head_only);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains(&format!("\r\ncontent-length: {}", BODY.len())),
            "{head}"
        );
        assert_eq!(body, "");

        let health = exchange(server.address, b"GET /healthz?verbose HTTP/1.1\r\n\r\n").await;
        assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
        assert!(health.ends_with("\r\n\r\nok"), "{health}");
        server.healthy.store(false, Ordering::Relaxed);
        let health = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(
            health.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{health}"
        );
        assert!(health.ends_with("\r\n\r\nno upstream is up"), "{health}");

        // Absolute form, which servers must accept.
        let absolute = exchange(
            server.address,
            b"GET http://127.0.0.1/metrics HTTP/1.1\r\n\r\n",
        );
        assert!(absolute.await.starts_with("HTTP/1.1 200 OK\r\n"));
        for request in [
            "GET / HTTP/1.1\r\n\r\n",
            "GET /metrics/ HTTP/1.1\r\n\r\n",
            "GET /Metrics HTTP/1.1\r\n\r\n",
            "POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "DELETE /healthz HTTP/1.1\r\n\r\n",
        ] {
            let response = exchange(server.address, request.as_bytes()).await;
            assert!(
                response.starts_with("HTTP/1.1 404 Not Found\r\n"),
                "{request:?}: {response}"
            );
        }
        for request in [
            "GET /metrics HTTP/9\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "G(T /metrics HTTP/1.1\r\n\r\n",
            "\x16\x03\x01\x02\x00\x01\x00\x01\x7f\x03\x03\n\n",
        ] {
            let response = exchange(server.address, request.as_bytes()).await;
            assert!(
                response.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{request:?}: {response}"
            );
        }
    }

    #[tokio::test]
    async fn oversized_requests_get_431_and_the_server_carries_on() {
        let server = start(Limits::default()).await;
        let long_header = format!(
            "GET /metrics HTTP/1.1\r\nX-Filler: {}\r\n\r\n",
            "y".repeat(MAX_REQUEST_HEAD)
        );
        // Over hyper's 100 header lines, although only ~1.5 KiB.
        let many_headers = format!("GET /metrics HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(200));
        for request in [long_header, many_headers] {
            let response = exchange(server.address, request.as_bytes()).await;
            assert!(
                response.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                "{response}"
            );
        }
        // A body is never read, however long: the request is answered and the rest discarded
        // without resetting the connection under the response.
        let post = format!(
            "POST /metrics HTTP/1.1\r\nContent-Length: 40000\r\n\r\n{}",
            "z".repeat(40_000)
        );
        let response = exchange(server.address, post.as_bytes()).await;
        assert!(
            response.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{response}"
        );
        let response = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }

    #[tokio::test]
    async fn a_slow_client_is_closed_after_the_header_timeout_while_others_are_served() {
        let header_timeout = Duration::from_secs(2);
        // Only the header timeout can close it within the test's bound.
        let server = start(Limits {
            header_timeout,
            connection_timeout: Duration::from_secs(60),
            ..Limits::default()
        })
        .await;
        let started = Instant::now();
        let mut slow = TcpStream::connect(server.address).await.unwrap();
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost")
            .await
            .unwrap();

        let response = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        // The slow client's connection was still open while the other one was served.
        let mut probe = [0u8; 64];
        match slow.try_read(&mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("slow connection not open while another was served: {other:?}"),
        }

        assert_eq!(
            read_all(&mut slow).await,
            "",
            "no response to half a request"
        );
        assert!(
            started.elapsed() >= header_timeout,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn connections_over_the_cap_wait_for_a_free_slot() {
        let header_timeout = Duration::from_millis(500);
        let server = start(Limits {
            header_timeout,
            max_connections: 1,
            ..Limits::default()
        })
        .await;
        let started = Instant::now();
        let mut slow = TcpStream::connect(server.address).await.unwrap();
        slow.write_all(b"GET /metr").await.unwrap();
        let response = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        // Served only once the slow client's slot was freed by its timeout.
        assert!(
            started.elapsed() >= header_timeout,
            "{:?}",
            started.elapsed()
        );
        assert_eq!(read_all(&mut slow).await, "");
    }

    #[tokio::test]
    async fn shutdown_closes_waiting_connections_and_stops_accepting() {
        let server = start(Limits {
            header_timeout: Duration::from_secs(60),
            connection_timeout: Duration::from_secs(60),
            ..Limits::default()
        })
        .await;
        let mut waiting = TcpStream::connect(server.address).await.unwrap();
        waiting
            .write_all(b"GET /metrics HTTP/1.1\r\n")
            .await
            .unwrap();
        // Accepted and waiting for the rest of its head before shutdown.
        let served = exchange(server.address, b"GET /healthz HTTP/1.1\r\n\r\n").await;
        assert!(served.starts_with("HTTP/1.1 200 OK\r\n"), "{served}");
        server.shutdown.cancel();
        server.tracker.close();
        tokio::time::timeout(BOUND, server.tracker.wait())
            .await
            .expect("connections still open after shutdown");
        assert_eq!(read_all(&mut waiting).await, "");
        assert!(TcpStream::connect(server.address).await.is_err());
    }
}
