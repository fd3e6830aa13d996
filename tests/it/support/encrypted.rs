//! The daemon serving DNS over TLS and DNS over HTTPS on sockets passed as systemd passes them
//! (`dns-tls`, `dns-https`), with a certificate from the test CA for `dns.test` and
//! 127.0.0.1; a DNS-over-TLS client of our own (rustls, trusting the CA it is given) that
//! pipelines and shows the certificate it was served; and the real clients' command lines
//! (kdig, dig, curl), each bounded in time.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::Message;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::client::{decode, encode};
use super::proxy::{Proxy, ProxyConfig};
use super::upstream::{IssuedCert, ca_pem, issue_server_cert, open_temp_dir, write_file};
use super::within;

/// The name in the daemon's certificate (with the IP address 127.0.0.1).
pub const SERVER_NAME: &str = "dns.test";

/// The certificate and key files the daemon is configured with, and the test CA's file.
pub struct ServerFiles {
    pub dir: TempDir,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The test CA, which issued the certificate.
    pub ca_file: PathBuf,
    /// The certificate in the files now.
    pub cert: IssuedCert,
}

impl ServerFiles {
    /// A certificate for `dns.test` and 127.0.0.1 with serial `serial`, written out.
    pub fn new(serial: u64) -> ServerFiles {
        let dir = open_temp_dir();
        let ca_file = dir.path().join("ca.pem");
        write_file(&ca_file, ca_pem(), 0o644);
        let cert = issue_server_cert(&[SERVER_NAME, "127.0.0.1"], serial);
        let files = ServerFiles {
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server.key"),
            ca_file,
            cert,
            dir,
        };
        files.write(&files.cert.cert_pem, &files.cert.key_pem);
        files
    }

    /// Replaces both files' contents.
    pub fn write(&self, cert_pem: &str, key_pem: &str) {
        write_file(&self.cert_file, cert_pem, 0o644);
        write_file(&self.key_file, key_pem, 0o600);
    }

    /// A new certificate with serial `serial`, written over the old one.
    pub fn renew(&mut self, serial: u64) {
        self.cert = issue_server_cert(&[SERVER_NAME, "127.0.0.1"], serial);
        self.write(&self.cert.cert_pem, &self.cert.key_pem);
    }

    /// The configuration lines naming the two files.
    pub fn config_lines(&self) -> [String; 2] {
        [
            format!(
                "tls_certificate = {:?}",
                self.cert_file.display().to_string()
            ),
            format!("tls_key = {:?}", self.key_file.display().to_string()),
        ]
    }
}

/// A daemon serving plain DNS on 127.0.0.1 and ::1, DNS over TLS and HTTPS on 127.0.0.1.
pub struct EncryptedProxy {
    pub proxy: Proxy,
    pub files: ServerFiles,
    pub tls: SocketAddr,
    pub https: SocketAddr,
}

impl EncryptedProxy {
    /// Starts the daemon with `config` plus the certificate lines; waits for READY=1.
    pub async fn start(config: ProxyConfig) -> EncryptedProxy {
        let files = ServerFiles::new(1);
        let mut config = config;
        for line in files.config_lines() {
            config = config.extra(&line);
        }
        let tls_listener = loopback_listener();
        let https_listener = loopback_listener();
        let (tls, https) = (
            tls_listener.local_addr().unwrap(),
            https_listener.local_addr().unwrap(),
        );
        let proxy = Proxy::builder(&config)
            .named_socket("dns-tls", tls_listener)
            .named_socket("dns-https", https_listener)
            .start()
            .await;
        EncryptedProxy {
            proxy,
            files,
            tls,
            https,
        }
    }

    /// The DNS-over-HTTPS URL, with the name in the certificate.
    pub fn url(&self, path: &str) -> String {
        format!("https://{SERVER_NAME}:{}{path}", self.https.port())
    }

    /// `--resolve` for curl: the name in the certificate is 127.0.0.1.
    pub fn resolve(&self) -> String {
        format!("{SERVER_NAME}:{}:127.0.0.1", self.https.port())
    }

    /// Sends SIGHUP and waits for the reload's log line containing `outcome`.
    pub async fn reload(&self, outcome: &str) -> String {
        let mark = self.proxy.log_mark();
        self.proxy.signal("HUP");
        self.proxy
            .wait_for_log_after(mark, outcome, Duration::from_secs(10))
            .await
    }
}

/// A TCP listener on an ephemeral port of 127.0.0.1.
pub fn loopback_listener() -> TcpListener {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1")
}

/// A DNS-over-TLS connection of our own.
pub struct DotClient {
    stream: TlsStream<TcpStream>,
}

/// A rustls client configuration trusting the CA certificates in `ca_pem` only.
pub fn client_config(ca_pem: &str, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

impl DotClient {
    /// Connects to `server` and completes the handshake, trusting `ca_pem`, from `local` if
    /// given.
    pub async fn connect_with(
        server: SocketAddr,
        config: Arc<ClientConfig>,
        local: Option<SocketAddr>,
    ) -> std::io::Result<DotClient> {
        let tcp = match local {
            Some(local) => {
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(local)?;
                socket.connect(server).await?
            }
            None => TcpStream::connect(server).await?,
        };
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(SERVER_NAME).expect("server name");
        let stream = within(
            Duration::from_secs(10),
            "TLS handshake",
            TlsConnector::from(config).connect(name, tcp),
        )
        .await?;
        Ok(DotClient { stream })
    }

    /// Connects trusting the test CA, with ALPN `dot`; panics if it cannot.
    pub async fn connect(server: SocketAddr) -> DotClient {
        DotClient::connect_with(server, client_config(ca_pem(), &[b"dot"]), None)
            .await
            .expect("DNS over TLS connection")
    }

    /// The certificate the server presented.
    pub fn server_certificate(&self) -> CertificateDer<'static> {
        let (_, connection) = self.stream.get_ref();
        connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .expect("a server certificate")
            .clone()
            .into_owned()
    }

    /// Whether this session resumed an earlier one.
    pub fn resumed(&self) -> bool {
        let (_, connection) = self.stream.get_ref();
        connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn alpn(&self) -> Option<Vec<u8>> {
        let (_, connection) = self.stream.get_ref();
        connection.alpn_protocol().map(<[u8]>::to_vec)
    }

    pub async fn send(&mut self, query: &Message) {
        let body = encode(query);
        let mut framed = (body.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&body);
        self.stream.write_all(&framed).await.expect("write query");
        self.stream.flush().await.expect("flush query");
    }

    /// Sends every query in one write; a connection the server closes meanwhile is no error.
    pub async fn send_all(&mut self, queries: &[Message]) {
        let mut framed = Vec::new();
        for query in queries {
            let body = encode(query);
            framed.extend_from_slice(&(body.len() as u16).to_be_bytes());
            framed.extend_from_slice(&body);
        }
        let _ = self.stream.write_all(&framed).await;
        let _ = self.stream.flush().await;
    }

    /// Writes `bytes` as they are (e.g. part of an HTTP request on a DNS-over-HTTPS port).
    pub async fn write_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
        let _ = self.stream.flush().await;
    }

    /// Reads what the server sends until it closes the connection, within `limit`; `None`
    /// when it is still open then.
    pub async fn read_to_close(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let mut received = Vec::new();
        match tokio::time::timeout(limit, self.stream.read_to_end(&mut received)).await {
            Ok(_) => Some(received),
            Err(_) => None,
        }
    }

    /// The next message, or `None` when the connection ends first; bounded to 10 s.
    pub async fn try_recv(&mut self) -> Option<Message> {
        within(Duration::from_secs(10), "DNS over TLS answer", async {
            let mut length = [0u8; 2];
            self.stream.read_exact(&mut length).await.ok()?;
            let mut body = vec![0u8; usize::from(u16::from_be_bytes(length))];
            self.stream.read_exact(&mut body).await.ok()?;
            Some(decode(&body))
        })
        .await
    }

    pub async fn recv(&mut self) -> Message {
        self.try_recv()
            .await
            .expect("an answer before the connection closed")
    }

    pub async fn exchange(&mut self, query: &Message) -> Message {
        self.send(query).await;
        self.recv().await
    }
}

/// Output of a client program.
pub struct Ran {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` with `args`, bounded to 20 s.
pub async fn run(program: &str, args: &[String]) -> Ran {
    let out = within(
        Duration::from_secs(20),
        program,
        tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|e| panic!("run {program}: {e}"));
    Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What curl got.
#[derive(Debug)]
pub struct Fetched {
    /// The HTTP status; 0 when there was no response.
    pub status: u16,
    /// `1.1` or `2`.
    pub version: String,
    /// The response head, lower-cased (names and values).
    pub head: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl Fetched {
    /// The value of header `name` (lower case), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_string())
        })
    }
}

/// `curl` to `url` on the proxy's DNS-over-HTTPS socket, trusting the test CA; `extra` adds
/// the HTTP version, method, headers and data.
pub async fn curl(proxy: &EncryptedProxy, url: &str, extra: &[&str]) -> Fetched {
    let body_file = proxy
        .files
        .dir
        .path()
        .join(format!("body-{}", super::client::next_id()));
    let mut args: Vec<String> = vec![
        "--silent".into(),
        "--show-error".into(),
        "--max-time".into(),
        "10".into(),
        "--cacert".into(),
        proxy.files.ca_file.display().to_string(),
        "--resolve".into(),
        proxy.resolve(),
        "--dump-header".into(),
        "-".into(),
        "--output".into(),
        body_file.display().to_string(),
        "--write-out".into(),
        "\n%{http_code} %{http_version}".into(),
    ];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args.push(url.to_string());
    let ran = run("curl", &args).await;
    let (head, last) = ran.stdout.rsplit_once('\n').unwrap_or(("", &ran.stdout));
    let (status, version) = last.split_once(' ').unwrap_or(("0", ""));
    Fetched {
        status: status.trim().parse().unwrap_or(0),
        version: version.trim().to_string(),
        head: head.to_ascii_lowercase(),
        body: std::fs::read(&body_file).unwrap_or_default(),
        stderr: ran.stderr,
    }
}
