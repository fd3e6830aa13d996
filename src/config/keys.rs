//! Every configuration key, declared once: its field, type, kind (what it accepts, in
//! `types.rs`), default and one-line doc. Loading, the checks, the list of valid keys in
//! errors and `check-config`'s output follow from these declarations; the man page documents
//! each key (`tests/it/man_page.rs` holds it to this list).
//!
//! Keys are listed in the order `check-config` prints them. The few rules that tie keys
//! together are in [`check_together`].

use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;

use super::ConfigError;
use super::declare::{Section, keys};
use super::endpoint::Endpoint;
use super::layers::origin;
use super::types::{
    Between, BootstrapServers, CacheSize, ControlSocket, Dnssec, FilePath, ForwardZone,
    ForwardZones, Hedge, HttpsPath, LinkDns, ListenAddrs, LogLevel, Metrics, MetricsConfig,
    Networks, Positive, ResolvConf, SocketAddrs, Strategy, TrustAnchorFile, TrustAnchors, Ttl,
    UpstreamConfig, Upstreams, Zones,
};
use super::units::toml_duration;
use crate::policy::access::{DenyAction, Network};
use crate::wire::name::ZoneName;

keys! {
    /// The validated configuration the daemon runs with.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Config {
        /// Addresses bound for UDP and TCP when systemd passes no sockets.
        pub(crate) listen: Vec<SocketAddr> as SocketAddrs = vec![
            SocketAddr::from(([127, 0, 0, 1], 5300)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 5300)),
        ];
        /// Serve clients over UDP.
        pub udp: bool = true;
        /// Serve clients over TCP.
        pub tcp: bool = true;
        /// Budget for one query, from receipt to the answer, across retries and upstreams.
        pub timeout: Duration as Positive = Duration::from_millis(2000);
        /// A client TCP connection with nothing outstanding is closed after this long.
        pub tcp_idle_timeout: Duration as Positive = Duration::from_secs(10);
        /// Most client TCP connections open at once; further clients wait in the kernel backlog.
        pub tcp_max_connections: usize as Between<1, 65_535> = 256;
        /// Most client TCP connections open at once from one address, so one client (a
        /// slowloris) cannot take every slot.
        pub(crate) tcp_max_connections_per_client: usize as Between<1, 65_535> = 32;
        /// Most queries outstanding on one client TCP connection; reading pauses beyond it.
        pub tcp_max_queries: usize as Between<1, 65_535> = 64;
        /// An upstream TLS connection with no query outstanding is closed after this long.
        pub upstream_idle_timeout: Duration as Positive = Duration::from_secs(30);
        /// Most TLS connections open to one upstream at once.
        pub(crate) upstream_connections: usize as Between<1, 16> = 2;
        /// Threads that run queries; 0 for one per CPU.
        pub threads: usize as Between<0, 256> = 1;
        /// How a query picks among the available upstreams.
        pub(crate) strategy: Strategy = Strategy::Fastest;
        /// When a query is also sent to a second upstream.
        pub(crate) hedge: Hedge = Hedge::Off;
        /// Log one line per query at info level (off by default for privacy).
        pub(crate) log_queries: bool = false;
        /// Default log level: error, warn, info, debug or trace.
        pub log_level: String as LogLevel = "info".to_string();
        /// Clients that may use the resolver. Never empty.
        pub allow: Vec<Network> as Networks = Network::loopback();
        /// What clients outside `allow` get.
        pub(crate) deny_action: DenyAction = DenyAction::Refuse;
        /// Queries per second allowed per client address (IPv6: per /64); 0 is no limit.
        pub(crate) rate_limit: u32 = 0;
        /// What a client over `rate_limit` gets. Dropped by default: answering a flood would
        /// reflect it at whoever the sources are spoofed as.
        pub(crate) rate_limit_action: DenyAction = DenyAction::Drop;
        /// Addresses bound for DNS over TLS when systemd passes no sockets (port 853 when
        /// omitted); needs `tls_certificate` and `tls_key`.
        pub listen_tls: Vec<SocketAddr> as ListenAddrs<853> = Vec::new();
        /// Addresses bound for DNS over HTTPS when systemd passes no sockets (port 443 when
        /// omitted); needs `tls_certificate` and `tls_key`.
        pub listen_https: Vec<SocketAddr> as ListenAddrs<443> = Vec::new();
        /// PEM certificate chain served to DNS over TLS and HTTPS clients, the server's first;
        /// a relative path is read from `$CREDENTIALS_DIRECTORY` when systemd sets it.
        pub tls_certificate: Option<PathBuf> as FilePath = None;
        /// PEM private key of `tls_certificate` (PKCS#8, RSA or EC); a relative path is read
        /// from `$CREDENTIALS_DIRECTORY` when systemd sets it (`LoadCredential=`).
        pub tls_key: Option<PathBuf> as FilePath = None;
        /// The URL path DNS over HTTPS answers on; every other path is 404.
        pub https_path: String as HttpsPath = "/dns-query".to_string();
        /// The answer cache (the `cache*` keys).
        pub(crate) cache: CacheConfig as Section<CacheConfig> = CacheConfig::default();
        /// Upstream resolvers (DNS over TLS, or over HTTPS with `url`), in order of
        /// preference. Never empty.
        #[key = "upstream"]
        pub upstreams: Vec<UpstreamConfig> as Upstreams = vec![
            UpstreamConfig::cloudflare([1, 1, 1, 1]),
            UpstreamConfig::cloudflare([1, 0, 0, 1]),
        ];
        /// Split DNS: zones with upstreams of their own, in configuration order.
        #[key = "forward_zone"]
        pub forward_zones: Vec<ForwardZone> as ForwardZones = Vec::new();
        /// Plain DNS servers (`IP` or `IP:port`) that resolve upstreams given by host name,
        /// and nothing else; never dns-proxy itself nor /etc/resolv.conf.
        pub bootstrap: Vec<SocketAddr> as BootstrapServers = Vec::new();
        /// Per-link DNS learned over `org.freedesktop.resolve1` (NetworkManager, resolvectl):
        /// "domains" sends each link's domains to its servers, "all" also its default route,
        /// "off" takes no bus name.
        pub(crate) link_dns: LinkDns = LinkDns::Domains;
        /// The resolv.conf written with the links' search domains: under systemd's
        /// RuntimeDirectory=, `resolv.conf` in it; otherwise none unless set; "" for none.
        pub(crate) resolv_conf: Option<PathBuf> as ResolvConf = ResolvConf::default_path();
        /// DNSSEC: "validate" checks every answer from the trust anchors down; "off" passes
        /// answers through as the upstream sent them.
        pub dnssec: Dnssec = Dnssec::Validate;
        /// A file of DS or DNSKEY records (zone-file syntax) that replaces the built-in root
        /// trust anchors; "" for the built-in ones.
        pub trust_anchors: Option<TrustAnchorFile> as TrustAnchors = None;
        /// Zones not validated (RFC 7646): their answers pass without AD, never SERVFAIL.
        pub negative_trust_anchors: Vec<ZoneName> as Zones = Vec::new();
        /// Unix socket of `dns-proxy status` and `flush`: under systemd's RuntimeDirectory=,
        /// `control` in it; otherwise none unless set.
        pub(crate) control_socket: Option<PathBuf> as ControlSocket = ControlSocket::default_path();
        /// The Prometheus endpoint; `None` (the default) serves none, unless systemd passes a
        /// socket named `metrics`.
        pub(crate) metrics: Option<MetricsConfig> as Metrics = None;
    }
}

keys! {
    /// The answer cache's settings (`cache*` keys).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CacheConfig {
        /// Off: every query goes upstream.
        #[key = "cache"]
        pub enabled: bool = true;
        /// Most bytes the cache holds, entries' bookkeeping included.
        #[key = "cache_size"]
        pub size: usize as CacheSize = 32 << 20;
        /// TTLs below this are raised to it.
        #[key = "cache_min_ttl"]
        pub min_ttl: Duration as Ttl = Duration::ZERO;
        /// TTLs above this are lowered to it.
        #[key = "cache_max_ttl"]
        pub max_ttl: Duration as Ttl = Duration::from_secs(86_400);
        /// Longest a negative answer (NXDOMAIN, NODATA) is kept.
        #[key = "cache_negative_ttl"]
        pub negative_ttl: Duration as Ttl = Duration::from_secs(3600);
        /// How long after expiry an answer may still be served when every upstream fails; zero
        /// turns serve-stale off.
        #[key = "cache_serve_stale"]
        pub serve_stale: Duration as Ttl = Duration::from_secs(86_400);
        /// Refresh entries still in use shortly before they expire.
        #[key = "cache_prefetch"]
        pub prefetch: bool = true;
    }
}

/// The rules that involve more than one key, checked once each key is valid on its own.
pub(super) fn check_together(config: &Config, figment: &Figment) -> Result<(), ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        origin: origin(figment, key),
        key: key.to_string(),
        reason,
    };
    let encrypted = !config.listen_tls.is_empty() || !config.listen_https.is_empty();
    if !config.udp && !config.tcp && !encrypted {
        let reason = "udp and tcp are both off: nothing would be served".to_string();
        return Err(invalid("udp", reason));
    }
    match (&config.tls_certificate, &config.tls_key) {
        (Some(_), None) => {
            let reason = "must be set with tls_certificate: the certificate's private key";
            return Err(invalid("tls_key", reason.to_string()));
        }
        (None, Some(_)) => {
            let reason = "must be set with tls_key: the key's certificate chain";
            return Err(invalid("tls_certificate", reason.to_string()));
        }
        (None, None) if encrypted => {
            let listener = match config.listen_tls.is_empty() {
                true => "listen_https",
                false => "listen_tls",
            };
            let reason = format!("must be set for {listener}, with tls_key");
            return Err(invalid("tls_certificate", reason));
        }
        _ => {}
    }
    check_bootstrap(config, figment)?;
    let cache = &config.cache;
    for (key, ceiling) in [
        ("cache_max_ttl", cache.max_ttl),
        ("cache_negative_ttl", cache.negative_ttl),
    ] {
        if ceiling < cache.min_ttl {
            let reason = format!(
                "{} is below cache_min_ttl ({})",
                toml_duration(ceiling),
                toml_duration(cache.min_ttl)
            );
            return Err(invalid(key, reason));
        }
    }
    Ok(())
}

/// A host-name upstream needs `bootstrap`; a bootstrap server must not be one of dns-proxy's
/// own listeners, or resolving an upstream's name would ask dns-proxy, which needs the
/// upstream: the loop that leaves a host without DNS at boot.
fn check_bootstrap(config: &Config, figment: &Figment) -> Result<(), ConfigError> {
    if let Some((key, upstream)) = config.first_named_upstream()
        && config.bootstrap.is_empty()
    {
        let field = match (&upstream.url, upstream.address_given) {
            (Some(_), false) => "url",
            _ => "address",
        };
        let key = format!("{key}.{field}");
        let root = key.split(['[', '.']).next().unwrap_or("upstream");
        return Err(ConfigError::Invalid {
            origin: origin(figment, root),
            key,
            reason: format!(
                "{} is a host name and bootstrap is not set: list plain DNS servers to \
                 resolve it (bootstrap = [\"9.9.9.9\"]), or give its IP address",
                match &upstream.address {
                    Endpoint::Name { host, .. } => host.as_str(),
                    Endpoint::Ip(_) => "it",
                }
            ),
        });
    }
    for (i, server) in config.bootstrap.iter().enumerate() {
        let own = config.listen.iter().any(|listen| {
            listen.port() == server.port()
                && (listen.ip() == server.ip()
                    || (listen.ip().is_unspecified()
                        && (server.ip().is_loopback() || server.ip().is_unspecified())))
        });
        if own || server.ip().is_unspecified() {
            return Err(ConfigError::Invalid {
                origin: origin(figment, "bootstrap"),
                key: format!("bootstrap[{i}]"),
                reason: format!(
                    "{server} is dns-proxy's own listener: resolving an upstream's name through \
                     dns-proxy would wait for that upstream"
                ),
            });
        }
    }
    Ok(())
}
