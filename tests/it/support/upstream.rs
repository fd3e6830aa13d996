//! Fake DNS-over-TLS upstream (RFC 7858), in process on the test's tokio runtime.
//!
//! A test CA (one per test run, rcgen) issues the server certificate; the CA is written to a
//! temporary `ca.pem` for the proxy's `ca_file`. Each connection reads length-framed queries and
//! answers each one concurrently, so answers go out as they complete (out of order). Behaviour:
//! an A query gets one A record (the instance's address, TTL 60); TXT for `big.*` gets ~3 KB of
//! TXT records; `slow-<ms>.*` answers after that many milliseconds; misbehaviour is switched at
//! runtime with [`Mode`]. Counters and the raw bytes of the last query are exposed for checks.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::Rng;
use super::proxy::UpstreamSpec;

/// Name in the default server certificate.
pub const DEFAULT_TLS_NAME: &str = "dns.test";
/// Address in the A records of a default instance.
pub const DEFAULT_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Number of TXT records in the answer to `big.*` TXT queries.
pub const BIG_TXT_RECORDS: usize = 25;

/// How the upstream treats queries; switchable at runtime with [`FakeUpstream::set_mode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer properly.
    Normal,
    /// Accept and read queries, never answer.
    Stall,
    /// Close the connection when a query arrives.
    CloseOnQuery,
    /// Answer with the query id + 1.
    WrongId,
    /// Answer with the right id but another question name.
    WrongQuestion,
    /// Answer with random bytes behind a valid length prefix (unparseable, query id kept).
    Garbage,
}

/// The test CA: one per test run.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params
            .distinguished_name
            .push(DnType::CommonName, "dns-proxy integration test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    })
}

/// PEM of the test CA certificate.
pub fn ca_pem() -> &'static str {
    &test_ca().pem
}

/// A server certificate and its key, issued by the test CA.
pub struct IssuedCert {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
    /// DER SubjectPublicKeyInfo of the key (what `pin_sha256` digests).
    pub spki_der: Vec<u8>,
}

/// Issues a server certificate for `name` (a DNS name); `expired` makes it valid 2000–2001 only.
pub fn issue_cert(name: &str, expired: bool) -> IssuedCert {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("cert params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    }
    let key = KeyPair::generate().expect("server key");
    let cert = params
        .signed_by(&key, &test_ca().issuer)
        .expect("server cert");
    IssuedCert {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
    }
}

/// The SHA-256 of a SubjectPublicKeyInfo, base64: the form of a `pin_sha256` entry.
pub fn spki_pin(spki_der: &[u8]) -> String {
    use base64::Engine;
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Writes `contents` to `path` with mode `mode`.
pub fn write_file(path: &Path, contents: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A temporary directory readable by everyone (so a daemon running as `nobody` can read in it).
pub fn open_temp_dir() -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("dns-proxy-it-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// Options of a fake upstream instance.
#[derive(Clone, Debug)]
pub struct UpstreamOptions {
    /// Address put in A answers, so a test can tell which upstream answered.
    pub answer: Ipv4Addr,
    /// Name the server certificate is issued for.
    pub cert_name: String,
    /// Serve a certificate that expired in 2001.
    pub expired: bool,
    /// Port on 127.0.0.1; 0 for an ephemeral one.
    pub port: u16,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            answer: DEFAULT_ANSWER,
            cert_name: DEFAULT_TLS_NAME.to_string(),
            expired: false,
            port: 0,
        }
    }
}

/// State shared between the handle and the serving tasks.
struct Shared {
    answer: Ipv4Addr,
    mode: Mutex<Mode>,
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    resumed: AtomicUsize,
    queries: AtomicUsize,
    open_connections: AtomicUsize,
    last_query: Mutex<Option<Vec<u8>>>,
    /// Bumped on every counter change, for waiting without polling.
    events: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.events.send_modify(|v| *v += 1);
    }
}

/// A running fake DoT upstream (see the module documentation).
pub struct FakeUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    dir: TempDir,
    ca_file: PathBuf,
    cert: IssuedCert,
    acceptor: TlsAcceptor,
    server: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

impl FakeUpstream {
    /// A default upstream: certificate for "dns.test", answers 192.0.2.1, ephemeral port.
    pub async fn start() -> Self {
        Self::start_with(UpstreamOptions::default()).await
    }

    /// A default upstream answering A queries with `answer`.
    pub async fn start_answering(answer: Ipv4Addr) -> Self {
        Self::start_with(UpstreamOptions {
            answer,
            ..UpstreamOptions::default()
        })
        .await
    }

    pub async fn start_with(opts: UpstreamOptions) -> Self {
        let cert = issue_cert(&opts.cert_name, opts.expired);
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
                .expect("protocol versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.cert_der.clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone())),
                )
                .expect("server config");
        config.ticketer = rustls::crypto::ring::Ticketer::new().expect("ticketer");
        let acceptor = TlsAcceptor::from(Arc::new(config));

        let dir = open_temp_dir();
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, ca_pem(), 0o644);

        let (events, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            answer: opts.answer,
            mode: Mutex::new(Mode::Normal),
            connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
            queries: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            last_query: Mutex::new(None),
            events,
        });
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
            .await
            .expect("bind fake upstream");
        let addr = listener.local_addr().expect("local addr");
        let mut upstream = FakeUpstream {
            shared,
            addr,
            dir,
            ca_file,
            cert,
            acceptor,
            server: None,
        };
        upstream.serve(listener);
        upstream
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(
            listener,
            self.acceptor.clone(),
            self.shared.clone(),
            stop_rx,
        ));
        self.server = Some((stop_tx, task));
    }

    /// Address the upstream listens on (127.0.0.1).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate file to give the proxy as `ca_file`.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// The server certificate in use.
    pub fn cert(&self) -> &IssuedCert {
        &self.cert
    }

    /// The upstream's temporary directory (holds `ca.pem`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// This upstream as a config entry: its address, tls_name "dns.test", its CA file.
    pub fn spec(&self) -> UpstreamSpec {
        UpstreamSpec {
            address: self.addr,
            tls_name: Some(DEFAULT_TLS_NAME.to_string()),
            ca_file: Some(self.ca_file.clone()),
            pin_sha256: Vec::new(),
        }
    }

    /// Address in this upstream's A answers.
    pub fn answer(&self) -> Ipv4Addr {
        self.shared.answer
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// TCP connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.shared.handshakes.load(Ordering::SeqCst)
    }

    /// TLS handshakes completed so far that resumed an earlier session.
    pub fn resumed_handshakes(&self) -> usize {
        self.shared.resumed.load(Ordering::SeqCst)
    }

    /// DNS queries received so far.
    pub fn queries(&self) -> usize {
        self.shared.queries.load(Ordering::SeqCst)
    }

    /// Raw bytes (without the length prefix) of the last query received.
    pub fn last_query(&self) -> Option<Vec<u8>> {
        self.shared.last_query.lock().unwrap().clone()
    }

    /// Waits until at least `n` queries have been received in total.
    pub async fn wait_queries(&self, n: usize, timeout: Duration) {
        let mut rx = self.shared.events.subscribe();
        let res = tokio::time::timeout(timeout, async {
            while self.queries() < n {
                rx.changed().await.expect("upstream alive");
            }
        })
        .await;
        if res.is_err() {
            panic!(
                "upstream received {} queries, expected {n} within {timeout:?}",
                self.queries()
            );
        }
    }

    /// Waits until `pred` holds for this upstream (re-checked on every counter change); panics
    /// with `what` after `timeout`.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&Self) -> bool, timeout: Duration) {
        let mut rx = self.shared.events.subscribe();
        let res = tokio::time::timeout(timeout, async {
            while !pred(self) {
                rx.changed().await.expect("upstream alive");
            }
        })
        .await;
        if res.is_err() {
            panic!("fake upstream: not {what} within {timeout:?}");
        }
    }

    /// Closes the listener and every connection.
    pub async fn stop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            stop.send_replace(true);
            tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .expect("fake upstream stops within 5 s")
                .expect("fake upstream task");
        }
    }

    /// Listens again on the same address after [`stop`](Self::stop).
    pub async fn restart(&mut self) {
        assert!(self.server.is_none(), "restart() of a running upstream");
        let mut attempt = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    eprintln!("rebinding {} failed ({e}), retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot rebind fake upstream on {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.server.take() {
            stop.send_replace(true);
            task.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                shared.bump();
                conns.spawn(connection(tcp, acceptor.clone(), shared.clone()));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Decrements the open-connection count when a connection task ends, however it ends.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
        self.0.bump();
    }
}

async fn connection(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(shared.clone());
    tcp.set_nodelay(true).ok();
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        _ => return,
    };
    if tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
        shared.resumed.fetch_add(1, Ordering::SeqCst);
    }
    shared.handshakes.fetch_add(1, Ordering::SeqCst);
    shared.bump();

    let (mut rd, mut wr) = tokio::io::split(tls);
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = async move {
        while let Some(body) = rx.recv().await {
            let mut frame = (body.len() as u16).to_be_bytes().to_vec();
            frame.extend_from_slice(&body);
            if wr.write_all(&frame).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        // Dropping `wr` here (with `rd` gone) closes the connection.
    };
    let reader = async move {
        let mut handlers = JoinSet::new();
        loop {
            let mut len = [0u8; 2];
            if rd.read_exact(&mut len).await.is_err() {
                break;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if rd.read_exact(&mut query).await.is_err() {
                break;
            }
            let mode = *shared.mode.lock().unwrap();
            *shared.last_query.lock().unwrap() = Some(query.clone());
            shared.queries.fetch_add(1, Ordering::SeqCst);
            shared.bump();
            match mode {
                Mode::Stall => continue,
                Mode::CloseOnQuery => {
                    handlers.shutdown().await;
                    return;
                }
                _ => {}
            }
            let tx = tx.clone();
            let answer = shared.answer;
            handlers.spawn(async move {
                if let Some(resp) = respond(&query, mode, answer).await {
                    let _ = tx.send(resp);
                }
            });
            // Reap finished handlers so the set does not grow without bound.
            while handlers.try_join_next().is_some() {}
        }
        // End of input: let the answers still being prepared go out.
        while handlers.join_next().await.is_some() {}
    };
    tokio::join!(reader, writer);
}

/// The answer to one query (None: no answer at all).
async fn respond(query: &[u8], mode: Mode, answer: Ipv4Addr) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let question = msg.queries.first()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    let first_label = name.split('.').next().unwrap_or("");
    if let Some(ms) = first_label
        .strip_prefix("slow-")
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let id = msg.metadata.id;
    if mode == Mode::Garbage {
        let mut rng = Rng::from_entropy();
        let len = 20 + rng.below(60) as usize;
        let mut junk = rng.bytes(len);
        junk[..2].copy_from_slice(&id.to_be_bytes());
        // Claim 65535 questions: can never parse, whatever the random bytes are.
        junk[4] = 0xff;
        junk[5] = 0xff;
        return Some(junk);
    }

    let mut resp = Message::new(id, MessageType::Response, OpCode::Query);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    let mut q = question.clone();
    if mode == Mode::WrongQuestion {
        q.set_name(Name::from_ascii(format!("wrong.{name}")).expect("name"));
    }
    resp.add_query(q.clone());
    match q.query_type() {
        RecordType::A => {
            resp.add_answer(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(answer)),
            ));
        }
        RecordType::TXT if name.starts_with("big.") => {
            for i in 0..BIG_TXT_RECORDS {
                let text = format!("record-{i:02}-{}", "x".repeat(100));
                resp.add_answer(Record::from_rdata(
                    q.name().clone(),
                    60,
                    RData::TXT(TXT::new(vec![text])),
                ));
            }
        }
        _ => {}
    }
    if let Some(client_edns) = &msg.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(4096);
        edns.set_dnssec_ok(client_edns.flags().dnssec_ok);
        resp.set_edns(edns);
    }
    if mode == Mode::WrongId {
        resp.metadata.id = id.wrapping_add(1);
    }
    resp.to_vec().ok()
}
