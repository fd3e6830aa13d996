//! Fake DNS-over-TLS upstream (RFC 7858), in process on the test's tokio runtime.
//!
//! A test CA (one per test run, rcgen) issues the server certificate; the CA is written to a
//! temporary `ca.pem` for the proxy's `ca_file`. Each connection reads length-framed queries and
//! answers each one concurrently, so answers go out as they complete (out of order). Behaviour:
//! an A query gets one A record (the instance's address, TTL 60); TXT for `big.*` gets ~3 KB of
//! TXT records; `slow-<ms>.*` answers after that many milliseconds; misbehaviour is switched at
//! runtime with [`Mode`], the certificate with [`FakeUpstream::set_cert`], and the connections
//! open now can be made half-open with [`FakeUpstream::freeze_connections`]. Counters and the raw
//! bytes of the last query are exposed for checks, and so is what must never happen: a connection
//! whose first bytes are not a TLS ClientHello, or a UDP datagram to the upstream's port (a UDP
//! socket is bound on the same port for the life of the instance to see one).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
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
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::Rng;
use super::netns::Netns;
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
    /// New connections: accept TCP, read what comes, never start TLS.
    NoTls,
    /// New connections: answer the ClientHello with a plain-text HTTP error (not TLS at all).
    HttpInsteadOfTls,
    /// Write the first half of the answer's frame, then reset the connection (RST).
    ResetMidResponse,
    /// A length prefix 100 bytes larger than the answer that follows, then close.
    LengthOverrun,
    /// The answer cut short by 3 bytes (the length prefix matches the cut message).
    Truncated,
    /// Each connection answers this many queries, then closes (TLS close_notify, FIN).
    CloseAfter(usize),
}

/// Which certificate a fake upstream serves (see [`FakeUpstream::set_cert`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// For "dns.test", issued by the test CA, valid now.
    Valid,
    /// For "other.test".
    WrongName,
    /// For "dns.test", issued by a CA the proxy is not told to trust.
    UnknownCa,
    /// Valid 2000–2001 only.
    Expired,
    /// Valid from 2090 on.
    NotYetValid,
}

/// The test CA: one per test run.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn test_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| make_ca("dns-proxy integration test CA"))
}

/// A CA no proxy in the tests trusts.
fn untrusted_ca() -> &'static TestCa {
    static CA: OnceLock<TestCa> = OnceLock::new();
    CA.get_or_init(|| make_ca("dns-proxy untrusted test CA"))
}

fn make_ca(common_name: &str) -> TestCa {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
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
    let kind = if expired {
        CertKind::Expired
    } else {
        CertKind::Valid
    };
    issue_cert_of_kind(name, kind)
}

/// Issues a server certificate for `name`, with the flaw `kind` names (its `WrongName` is
/// ignored: the caller picks the name).
pub fn issue_cert_of_kind(name: &str, kind: CertKind) -> IssuedCert {
    let mut params = CertificateParams::new(vec![name.to_string()]).expect("cert params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    match kind {
        CertKind::Expired => {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        CertKind::NotYetValid => {
            params.not_before = rcgen::date_time_ymd(2090, 1, 1);
            params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        }
        CertKind::Valid | CertKind::WrongName | CertKind::UnknownCa => {}
    }
    let ca = match kind {
        CertKind::UnknownCa => untrusted_ca(),
        _ => test_ca(),
    };
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &ca.issuer).expect("server cert");
    IssuedCert {
        cert_pem: cert.pem(),
        cert_der: cert.der().clone(),
        key_pem: key.serialize_pem(),
        key_der: key.serialize_der(),
        spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
    }
}

/// PEM of a CA no proxy or client in the tests trusts unless told to.
pub fn untrusted_ca_pem() -> &'static str {
    &untrusted_ca().pem
}

/// Issues a server certificate for every name in `sans` (IP addresses become IP SANs), with
/// the first as its common name and a serial of our choosing, by the test CA.
pub fn issue_server_cert(sans: &[&str], serial: u64) -> IssuedCert {
    let names: Vec<String> = sans.iter().map(|name| name.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("cert params");
    params.distinguished_name.push(DnType::CommonName, sans[0]);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
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
    /// Serve a certificate valid only from 2090 on.
    pub not_yet_valid: bool,
    /// Port on 127.0.0.1; 0 for an ephemeral one.
    pub port: u16,
    /// Leave Nagle's algorithm on and write each answer's length prefix and message in two
    /// TLS records, as some servers do: the kernel then holds the message back until the
    /// client acknowledges the prefix.
    pub nagle: bool,
    /// Listen inside this network namespace (on its 127.0.0.1) instead of the test's own.
    pub netns: Option<Arc<Netns>>,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            answer: DEFAULT_ANSWER,
            cert_name: DEFAULT_TLS_NAME.to_string(),
            expired: false,
            not_yet_valid: false,
            port: 0,
            nagle: false,
            netns: None,
        }
    }
}

/// State shared between the handle and the serving tasks.
struct Shared {
    answer: Ipv4Addr,
    nagle: bool,
    mode: Mutex<Mode>,
    connections: AtomicUsize,
    handshakes: AtomicUsize,
    resumed: AtomicUsize,
    queries: AtomicUsize,
    open_connections: AtomicUsize,
    /// Connections whose first bytes were a TLS handshake record (0x16 0x03).
    client_hellos: AtomicUsize,
    /// First bytes of connections that did not start with a TLS handshake record.
    not_tls: Mutex<Vec<Vec<u8>>>,
    /// UDP datagrams received on the upstream's port.
    udp_datagrams: AtomicUsize,
    /// Connections with a serial below this are half-open: they read but never answer.
    frozen_below: AtomicUsize,
    /// Serves new connections; replaced by [`FakeUpstream::set_cert`].
    acceptor: Mutex<TlsAcceptor>,
    last_query: Mutex<Option<Vec<u8>>>,
    /// Bumped on every counter change, for waiting without polling.
    events: watch::Sender<u64>,
}

impl Shared {
    fn bump(&self) {
        self.events.send_modify(|v| *v += 1);
    }

    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

/// A running fake DoT upstream (see the module documentation).
pub struct FakeUpstream {
    shared: Arc<Shared>,
    addr: SocketAddr,
    dir: TempDir,
    ca_file: PathBuf,
    cert: IssuedCert,
    server: Option<(watch::Sender<bool>, JoinHandle<()>)>,
    udp_watch: JoinHandle<()>,
    netns: Option<Arc<Netns>>,
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
        let kind = match (opts.expired, opts.not_yet_valid) {
            (true, _) => CertKind::Expired,
            (_, true) => CertKind::NotYetValid,
            _ => CertKind::Valid,
        };
        let cert = issue_cert_of_kind(&opts.cert_name, kind);
        let acceptor = acceptor_for(&cert);

        let dir = open_temp_dir();
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, ca_pem(), 0o644);

        let (events, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            answer: opts.answer,
            nagle: opts.nagle,
            mode: Mutex::new(Mode::Normal),
            connections: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            resumed: AtomicUsize::new(0),
            queries: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            client_hellos: AtomicUsize::new(0),
            not_tls: Mutex::new(Vec::new()),
            udp_datagrams: AtomicUsize::new(0),
            frozen_below: AtomicUsize::new(0),
            acceptor: Mutex::new(acceptor),
            last_query: Mutex::new(None),
            events,
        });
        // The UDP port of the same number must be ours too, to see any datagram sent to it.
        let mut attempt = 0;
        let (listener, udp) = loop {
            if let Some(netns) = &opts.netns {
                let (tcp, udp) = netns
                    .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
                    .expect("bind fake upstream in the namespace");
                break (
                    TcpListener::from_std(tcp).expect("tcp for tokio"),
                    UdpSocket::from_std(udp).expect("udp for tokio"),
                );
            }
            let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, opts.port)))
                .await
                .expect("bind fake upstream");
            let addr = listener.local_addr().expect("local addr");
            match UdpSocket::bind(addr).await {
                Ok(udp) => break (listener, udp),
                Err(_) if opts.port == 0 && attempt < 50 => attempt += 1,
                Err(e) => panic!("bind UDP on the fake upstream's address {addr}: {e}"),
            }
        };
        let addr = listener.local_addr().expect("local addr");
        let udp_watch = tokio::spawn(count_datagrams(udp, shared.clone()));
        let mut upstream = FakeUpstream {
            shared,
            addr,
            dir,
            ca_file,
            cert,
            server: None,
            udp_watch,
            netns: opts.netns,
        };
        upstream.serve(listener);
        upstream
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, self.shared.clone(), stop_rx));
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

    /// Serves a certificate of `kind` on new connections (for "dns.test", or "other.test" for
    /// `WrongName`). Each certificate comes with a new session ticket key, so no client resumes
    /// a session past the new certificate.
    pub fn set_cert(&self, kind: CertKind) {
        let name = match kind {
            CertKind::WrongName => "other.test",
            _ => DEFAULT_TLS_NAME,
        };
        let cert = issue_cert_of_kind(name, kind);
        *self.shared.acceptor.lock().unwrap() = acceptor_for(&cert);
    }

    /// Makes every connection open now half-open: it still reads queries but never answers
    /// again, and never closes. New connections are served normally.
    pub fn freeze_connections(&self) {
        let accepted = self.shared.connections.load(Ordering::SeqCst);
        self.shared.frozen_below.store(accepted, Ordering::SeqCst);
    }

    /// Connections that started with a TLS handshake record, as every connection must.
    pub fn client_hellos(&self) -> usize {
        self.shared.client_hellos.load(Ordering::SeqCst)
    }

    /// The first bytes of every connection that did not start with a TLS handshake record.
    pub fn not_tls(&self) -> Vec<Vec<u8>> {
        self.shared.not_tls.lock().unwrap().clone()
    }

    /// UDP datagrams received on the upstream's port (DNS over TLS never sends any).
    pub fn udp_datagrams(&self) -> usize {
        self.shared.udp_datagrams.load(Ordering::SeqCst)
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
        super::wait_for(
            &self.shared.events,
            || self.queries() >= n,
            timeout,
            || format!("upstream received {} queries, expected {n}", self.queries()),
        )
        .await;
    }

    /// Waits until `pred` holds for this upstream (re-checked on every counter change); panics
    /// with `what` after `timeout`.
    pub async fn wait_until(&self, what: &str, pred: impl Fn(&Self) -> bool, timeout: Duration) {
        super::wait_for(
            &self.shared.events,
            || pred(self),
            timeout,
            || format!("fake upstream: not {what}"),
        )
        .await;
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
            let bound = match &self.netns {
                Some(netns) => {
                    let addr = self.addr;
                    netns
                        .within(|| {
                            let listener = std::net::TcpListener::bind(addr)?;
                            listener.set_nonblocking(true)?;
                            Ok(listener)
                        })
                        .and_then(TcpListener::from_std)
                }
                None => TcpListener::bind(self.addr).await,
            };
            match bound {
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
        self.udp_watch.abort();
    }
}

fn acceptor_for(cert: &IssuedCert) -> TlsAcceptor {
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
    TlsAcceptor::from(Arc::new(config))
}

async fn count_datagrams(udp: UdpSocket, shared: Arc<Shared>) {
    let mut buf = [0u8; 2048];
    while udp.recv_from(&mut buf).await.is_ok() {
        shared.udp_datagrams.fetch_add(1, Ordering::SeqCst);
        shared.bump();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                // The mode when the connection came decides how its handshake goes.
                let mode = shared.mode();
                let serial = shared.connections.fetch_add(1, Ordering::SeqCst);
                shared.bump();
                conns.spawn(connection(tcp, serial, mode, shared.clone()));
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

/// What a connection's writer sends.
enum Out {
    /// A DNS message, framed.
    Frame(Vec<u8>),
    /// Bytes as they are, inside TLS.
    Raw(Vec<u8>),
    /// TLS close_notify, then close.
    Close,
    /// Close with a TCP reset (SO_LINGER 0).
    Reset,
}

/// The first two bytes a client sent; `None` if it sent fewer before closing or for 2 s.
async fn first_bytes(tcp: &TcpStream) -> Option<Vec<u8>> {
    let peek = async {
        let mut buf = [0u8; 2];
        loop {
            match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(2) => return Some(buf.to_vec()),
                // One byte so far: the rest is on its way.
                Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(2), peek)
        .await
        .ok()
        .flatten()
}

/// Reads and discards until the peer closes.
async fn drain(mut tcp: TcpStream) {
    let mut buf = [0u8; 4096];
    while matches!(tcp.read(&mut buf).await, Ok(n) if n > 0) {}
}

async fn connection(tcp: TcpStream, serial: usize, mode: Mode, shared: Arc<Shared>) {
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    let _guard = OpenGuard(shared.clone());
    tcp.set_nodelay(!shared.nagle).ok();
    // Every connection must open with a TLS handshake record (content type 22, version 3.x).
    if let Some(first) = first_bytes(&tcp).await {
        if first == [0x16, 0x03] {
            shared.client_hellos.fetch_add(1, Ordering::SeqCst);
        } else {
            shared.not_tls.lock().unwrap().push(first);
        }
        shared.bump();
    }
    match mode {
        Mode::NoTls => return drain(tcp).await,
        Mode::HttpInsteadOfTls => {
            let mut tcp = tcp;
            let reply = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
            if tcp.write_all(reply).await.is_ok() {
                drain(tcp).await;
            }
            return;
        }
        _ => {}
    }
    // A second handle on the socket, to reset it in `ResetMidResponse` mode.
    let socket: Option<OwnedFd> = tcp.as_fd().try_clone_to_owned().ok();
    let acceptor = shared.acceptor.lock().unwrap().clone();
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
    let (tx, mut rx) = mpsc::unbounded_channel::<Out>();
    let nagle = shared.nagle;
    let frozen = {
        let shared = shared.clone();
        move || serial < shared.frozen_below.load(Ordering::SeqCst)
    };
    let writer = async move {
        while let Some(out) = rx.recv().await {
            let bytes = match out {
                Out::Frame(body) if nagle => {
                    // Two small writes: with Nagle on, the second waits for the first's ACK.
                    let prefix = (body.len() as u16).to_be_bytes();
                    if wr.write_all(&prefix).await.is_err() || wr.flush().await.is_err() {
                        break;
                    }
                    body
                }
                Out::Frame(body) => {
                    let mut frame = (body.len() as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(&body);
                    frame
                }
                Out::Raw(bytes) => bytes,
                Out::Close => {
                    let _ = wr.shutdown().await;
                    break;
                }
                Out::Reset => {
                    if let Some(socket) = &socket {
                        let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
                    }
                    break;
                }
            };
            if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
                break;
            }
        }
        // Dropping `wr` here (with `rd` gone) closes the connection.
    };
    let reader = async move {
        let mut handlers = JoinSet::new();
        let mut received = 0;
        loop {
            let mut len = [0u8; 2];
            if rd.read_exact(&mut len).await.is_err() {
                break;
            }
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            if rd.read_exact(&mut query).await.is_err() {
                break;
            }
            let mode = shared.mode();
            *shared.last_query.lock().unwrap() = Some(query.clone());
            shared.queries.fetch_add(1, Ordering::SeqCst);
            shared.bump();
            received += 1;
            if frozen() {
                continue;
            }
            match mode {
                Mode::Stall => continue,
                Mode::CloseOnQuery => {
                    handlers.shutdown().await;
                    return;
                }
                Mode::ResetMidResponse | Mode::LengthOverrun => {
                    handlers.shutdown().await;
                    let Some(resp) = respond(&query, Mode::Normal, shared.answer).await else {
                        return;
                    };
                    let mut frame = (resp.len() as u16).to_be_bytes().to_vec();
                    frame.extend_from_slice(&resp);
                    if mode == Mode::ResetMidResponse {
                        frame.truncate(frame.len() / 2);
                        let _ = tx.send(Out::Raw(frame));
                        let _ = tx.send(Out::Reset);
                    } else {
                        frame[..2].copy_from_slice(&(resp.len() as u16 + 100).to_be_bytes());
                        let _ = tx.send(Out::Raw(frame));
                        let _ = tx.send(Out::Close);
                    }
                    return;
                }
                _ => {}
            }
            let answers = tx.clone();
            let answer = shared.answer;
            let frozen = frozen.clone();
            handlers.spawn(async move {
                if let Some(resp) = respond(&query, mode, answer).await {
                    // A connection frozen meanwhile answers nothing more.
                    if !frozen() {
                        let _ = answers.send(Out::Frame(resp));
                    }
                }
            });
            // Reap finished handlers so the set does not grow without bound.
            while handlers.try_join_next().is_some() {}
            if matches!(mode, Mode::CloseAfter(n) if received >= n) {
                while handlers.join_next().await.is_some() {}
                let _ = tx.send(Out::Close);
                return;
            }
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
    let mut bytes = resp.to_vec().ok()?;
    if mode == Mode::Truncated {
        bytes.truncate(bytes.len() - 3);
    }
    Some(bytes)
}

/// The start of a response to the DNS query in `query`: its id and question, RD echoed, RA
/// set, no records; with the question. `None` when it does not parse or asks nothing.
pub fn response_to(query: &[u8]) -> Option<(Message, Query)> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries.first()?.clone();
    let mut response = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    Some((response, question))
}

/// The response to the DNS query in `query`, as a plain DNS server that knows one address
/// sends it: `answer` (TTL 30) to an A question, no records to the others.
pub fn a_response(query: &[u8], answer: Ipv4Addr) -> Option<Vec<u8>> {
    let (mut response, question) = response_to(query)?;
    if question.query_type() == RecordType::A {
        let name = question.name().clone();
        response.add_answer(Record::from_rdata(name, 30, RData::A(A(answer))));
    }
    response.to_vec().ok()
}
