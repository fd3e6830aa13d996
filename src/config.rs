//! Configuration: the layered sources (built-in defaults, the TOML file, its drop-in directory,
//! `DNS_PROXY_*` environment variables, command-line flags), merged with figment, then checked
//! into a [`Config`] whose fields cannot be wrong. Nothing here opens sockets.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Addresses bound for UDP and TCP when systemd passes no sockets.
    pub listen: Vec<SocketAddr>,
    /// Serve clients over UDP.
    pub udp: bool,
    /// Serve clients over TCP.
    pub tcp: bool,
    /// Budget for one query, from receipt to the answer, across retries and upstreams.
    pub timeout: Duration,
    /// Upstream DoT resolvers, in order of preference. Never empty.
    pub upstreams: Vec<UpstreamConfig>,
    /// A client TCP connection with nothing outstanding is closed after this long.
    pub tcp_idle_timeout: Duration,
    /// Most client TCP connections open at once; further clients wait in the kernel backlog.
    pub tcp_max_connections: usize,
    /// Most queries outstanding on one client TCP connection; reading pauses beyond it.
    pub tcp_max_queries: usize,
    /// An upstream TLS connection with no query outstanding is closed after this long.
    pub upstream_idle_timeout: Duration,
    /// Log one line per query at info level (off by default for privacy).
    pub log_queries: bool,
    /// Default log level: error, warn, info, debug or trace.
    pub log_level: String,
}

/// One upstream DoT resolver.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// IP address and port (853 when the config gives none).
    pub address: SocketAddr,
    /// Name checked in the certificate and sent as SNI; the IP address itself when not configured.
    pub tls_name: ServerName<'static>,
    /// Where `ca_roots` came from, for messages.
    pub ca_file: Option<PathBuf>,
    /// Certificates of a private CA: when present, the only roots trusted for this upstream.
    pub ca_roots: Option<Vec<CertificateDer<'static>>>,
    /// SHA-256 digests of acceptable SubjectPublicKeyInfo (RFC 7858 §4.2), checked on top of
    /// certificate validation. Empty: no pinning.
    pub pin_sha256: Vec<[u8; 32]>,
}
