//! A scripted DNS-over-HTTPS upstream, in process on the test's runtime: TLS (rustls, ALPN
//! `h2` only) with a certificate for [`DOH_SERVER_NAME`] from the test CA, and HTTP/2 served by
//! hyper. Every request gets what the server's [`Behaviour`] says (switchable while it runs),
//! from a correct answer to an HTTP error, a GOAWAY, a reset stream or nothing at all. It
//! counts the TCP connections it accepts and the requests it receives, and keeps what each
//! request was, for tests to check what dns-proxy sent and whether it still asks a server that
//! misbehaves.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hickory_proto::op::Message;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::upstream::{a_response, ca_pem, issue_cert, open_temp_dir, write_file};

/// The name in the server's certificate, and the host of its URL.
pub const DOH_SERVER_NAME: &str = "fake-doh.test";
/// The path it answers on.
pub const DOH_SERVER_PATH: &str = "/dns-query";
const DNS_MESSAGE: &str = "application/dns-message";
/// Largest request body read: a DNS message is at most 65535 bytes.
const MAX_BODY: usize = 65_535;

/// What the server does with every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// A `200 application/dns-message` answer to the POSTed query: one A record of the
    /// server's address (TTL 30) to an A question, no records to others, the query's id (0,
    /// as RFC 8484 has clients send) echoed.
    Answer,
    /// This status, with a `text/plain` body.
    Status(u16),
    /// `200` with a `text/html` page, as a captive portal or a web server at that path.
    WrongType,
    /// Starts a graceful shutdown of the connection (GOAWAY) and never answers the request.
    GoAway,
    /// Starts a graceful shutdown of the connection (GOAWAY), then answers as `Answer` does
    /// after this delay: a server restarting, or rotating its connections.
    GoAwayThenAnswer(Duration),
    /// Resets the request's stream (RST_STREAM, INTERNAL_ERROR).
    Reset,
    /// Takes the request and never answers it.
    Stall,
}

/// One request as the server received it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// When its head arrived.
    pub at: Instant,
    pub method: Method,
    pub path: String,
    pub content_type: Option<String>,
    /// The id and the question's name of the DNS query in the body, when the body was read
    /// and parsed (only an answering server reads it).
    pub dns_id: Option<u16>,
    pub name: Option<String>,
}

/// State shared between the handle and the serving tasks.
struct Shared {
    behaviour: Mutex<Behaviour>,
    answer: Ipv4Addr,
    connections: AtomicUsize,
    requests: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
    /// Bumped on every counter change, for waiting without polling.
    events: watch::Sender<u64>,
    /// Cancelled when the server is dropped: requests left unanswered end then.
    stop: CancellationToken,
}

impl Shared {
    fn bump(&self) {
        self.events.send_modify(|v| *v += 1);
    }
}

/// A running scripted DoH server on 127.0.0.1; stops when dropped.
pub struct DohServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    _dir: TempDir,
    ca_file: PathBuf,
    task: JoinHandle<()>,
}

impl DohServer {
    /// A server doing `behaviour` with every request, putting `answer` in A records.
    pub async fn start(behaviour: Behaviour, answer: Ipv4Addr) -> DohServer {
        let dir = open_temp_dir();
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, ca_pem(), 0o644);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind the DoH server");
        let addr = listener.local_addr().expect("local address");
        let (events, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(behaviour),
            answer,
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
            events,
            stop: CancellationToken::new(),
        });
        let task = tokio::spawn(accept_loop(listener, acceptor(), shared.clone()));
        DohServer {
            shared,
            addr,
            _dir: dir,
            ca_file,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL, with the name in its certificate as the host.
    pub fn url(&self) -> String {
        format!(
            "https://{DOH_SERVER_NAME}:{}{DOH_SERVER_PATH}",
            self.addr.port()
        )
    }

    /// The test CA's certificate, to configure as `ca_file`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// This server as an `[[upstream]]` table: its URL, at 127.0.0.1, trusting the test CA.
    pub fn upstream_toml(&self) -> String {
        format!(
            "[[upstream]]\nurl = {:?}\naddress = \"127.0.0.1\"\nca_file = {:?}\n",
            self.url(),
            self.ca_file.display().to_string(),
        )
    }

    /// Does `behaviour` with the requests from now on, on the connections open too.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// The address in its A records.
    pub fn answer(&self) -> Ipv4Addr {
        self.shared.answer
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// HTTP requests received so far (counted when their head arrives).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request received so far, in order of arrival.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests have been received; panics after `limit`.
    pub async fn wait_requests(&self, n: usize, limit: Duration) {
        super::wait_for(
            &self.shared.events,
            || self.requests() >= n,
            limit,
            || {
                format!(
                    "the DoH server received {} requests, not {n},",
                    self.requests()
                )
            },
        )
        .await;
    }
}

impl Drop for DohServer {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.task.abort();
    }
}

/// TLS 1.3 or 1.2 with a certificate for [`DOH_SERVER_NAME`], ALPN `h2` only.
fn acceptor() -> TlsAcceptor {
    let cert = issue_cert(DOH_SERVER_NAME, false);
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.cert_der],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der)),
            )
            .expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// Accepts connections until the server is dropped (which aborts this task and, with its
/// `JoinSet`, every connection's).
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                shared.bump();
                connections.spawn(connection(tcp, acceptor.clone(), shared.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection: the TLS handshake, then HTTP/2 until the client or the server ends it.
async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    tcp.set_nodelay(true).ok();
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    // A request in `GoAway` mode asks the connection to shut down through this.
    let go_away = Arc::new(Notify::new());
    let service = {
        let (shared, go_away) = (shared.clone(), go_away.clone());
        service_fn(move |request| respond(request, shared.clone(), go_away.clone()))
    };
    let served =
        http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tls), service);
    tokio::pin!(served);
    tokio::select! {
        _ = served.as_mut() => return,
        _ = go_away.notified() => served.as_mut().graceful_shutdown(),
        _ = shared.stop.cancelled() => return,
    }
    // Shutting down: the connection ends once the requests it took are done, which a
    // `GoAway` request never is; the client gives up on it first.
    tokio::select! {
        _ = served => {}
        _ = shared.stop.cancelled() => {}
    }
}

type Reply = Result<Response<Full<Bytes>>, io::Error>;

async fn respond(request: Request<Incoming>, shared: Arc<Shared>, go_away: Arc<Notify>) -> Reply {
    let seen = Seen {
        at: Instant::now(),
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        content_type: request
            .headers()
            .get(CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        dns_id: None,
        name: None,
    };
    let index = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen);
        all.len() - 1
    };
    shared.requests.fetch_add(1, Ordering::SeqCst);
    shared.bump();
    let behaviour = *shared.behaviour.lock().unwrap();
    match behaviour {
        Behaviour::Answer => Ok(match read_query(request, &shared, index).await {
            Ok(query) => answer(&query, &shared),
            Err(refusal) => refusal,
        }),
        Behaviour::GoAwayThenAnswer(delay) => {
            // Read (and recorded) first: the client may give up on it during the delay.
            let query = read_query(request, &shared, index).await;
            go_away.notify_one();
            tokio::time::sleep(delay).await;
            Ok(match query {
                Ok(query) => answer(&query, &shared),
                Err(refusal) => refusal,
            })
        }
        Behaviour::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Ok(reply(
                status,
                "text/plain",
                Bytes::from("try again later\n"),
            ))
        }
        Behaviour::WrongType => {
            let page = "<!DOCTYPE html><html><body>Sign in to continue</body></html>\n";
            Ok(reply(StatusCode::OK, "text/html", Bytes::from(page)))
        }
        Behaviour::GoAway => {
            go_away.notify_one();
            shared.stop.cancelled().await;
            Err(io::Error::other("server stopped"))
        }
        Behaviour::Reset => Err(io::Error::other("scripted stream reset")),
        Behaviour::Stall => {
            shared.stop.cancelled().await;
            Err(io::Error::other("server stopped"))
        }
    }
}

/// The DNS query a request carries (recording its id and name in `seen[index]`), or the
/// error response to a request that is no RFC 8484 POST.
async fn read_query(
    request: Request<Incoming>,
    shared: &Shared,
    index: usize,
) -> Result<Bytes, Response<Full<Bytes>>> {
    let refuse = |status| reply(status, "text/plain", Bytes::new());
    if request.method() != Method::POST {
        return Err(refuse(StatusCode::METHOD_NOT_ALLOWED));
    }
    if request.uri().path() != DOH_SERVER_PATH {
        return Err(refuse(StatusCode::NOT_FOUND));
    }
    let content_type = request.headers().get(CONTENT_TYPE);
    if content_type.map(|v| v.as_bytes()) != Some(DNS_MESSAGE.as_bytes()) {
        return Err(refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE));
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE)),
    };
    if let Ok(query) = Message::from_vec(&body) {
        let mut seen = shared.seen.lock().unwrap();
        seen[index].dns_id = Some(query.metadata.id);
        seen[index].name = query.queries.first().map(|q| q.name().to_ascii());
    }
    Ok(body)
}

/// The answer to `query`: one A record of the server's address to an A question.
fn answer(query: &[u8], shared: &Shared) -> Response<Full<Bytes>> {
    match a_response(query, shared.answer) {
        Some(answer) => reply(StatusCode::OK, DNS_MESSAGE, Bytes::from(answer)),
        None => reply(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()),
    }
}

fn reply(status: StatusCode, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}
