//! The kinds of key ([`Key`]): what each accepts and why it refuses the rest, so that a
//! checked `Config` cannot hold a wrong value. Also the types of the tables (`[[upstream]]`,
//! `[[forward_zone]]`, `[metrics]`), which are read and checked here as one key each.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;

use super::declare::{Key, Reason};
use super::endpoint::{Endpoint, HttpsUrl, parse_host_endpoint, parse_https_url};
use super::units::{
    RawDuration, RawSize, parse_duration, toml_duration, toml_list, toml_size, toml_string,
};
use crate::dnssec::anchors::{self, Anchor};
use crate::policy::access::{DenyAction, Network};
use crate::wire::name::{ZoneName, ZoneNameError};

/// DoT port (RFC 7858), used when an upstream address has none.
pub(crate) const DOT_PORT: u16 = 853;
/// Plain DNS port, for forward-zone upstreams with `protocol = "udp"`.
const DNS_PORT: u16 = 53;

/// Keys that take any value of their type, written as Rust prints it.
macro_rules! any_value {
    ($($type:ty),*) => {$(
        impl Key for $type {
            type Raw = $type;
            type Value = $type;

            fn check(raw: $type) -> Result<$type, Reason> {
                Ok(raw)
            }

            fn toml(value: &$type) -> Option<String> {
                Some(value.to_string())
            }
        }
    )*};
}

any_value!(bool, u32);

/// Each item of a list key checked by `parse`; a refusal names the item (`[i]`).
fn each<T>(raw: &[String], parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, Reason> {
    raw.iter()
        .enumerate()
        .map(|(i, text)| parse(text).map_err(|reason| Reason::at(format!("[{i}]"), reason)))
        .collect()
}

/// The value of an enumerated key: the one of `all` that `name` gives as `text`.
fn one_of<T: Copy>(text: &str, all: &[T], name: fn(T) -> &'static str) -> Result<T, String> {
    all.iter()
        .copied()
        .find(|value| name(*value) == text.trim())
        .ok_or_else(|| {
            let names: Vec<_> = all.iter().map(|value| name(*value)).collect();
            format!("{text:?} is not one of: {}", names.join(", "))
        })
}

/// `file` in the service's runtime directory under systemd (the first, if `RuntimeDirectory=`
/// lists several); none for a daemon started by hand, which may not own `/run`.
fn runtime_file(file: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os(RUNTIME_DIRECTORY)?;
    let first = std::env::split_paths(&dirs).next()?;
    let path = first.join(file);
    path.is_absolute().then_some(path)
}

/// An optional file path: absolute, not a directory; `""` for none. `what` and `example` say
/// what the file is.
fn optional_file(raw: &str, what: &str, example: &str) -> Result<Option<PathBuf>, Reason> {
    if raw.is_empty() {
        return Ok(None);
    }
    let path = PathBuf::from(raw);
    if !path.is_absolute() || raw.ends_with('/') || raw.contains('\0') {
        return Err(Reason::new(format!(
            "{raw:?} is not an absolute path to {what} (e.g. \"{example}\"; \"\" for none)"
        )));
    }
    Ok(Some(path))
}

/// An optional path as TOML: `""` for none.
fn toml_optional_path(path: Option<&Path>) -> Option<String> {
    Some(toml_string(
        &path
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
    ))
}

/// A count from `MIN` to `MAX`: these size semaphores and queues, so no value may exhaust
/// memory or panic.
pub(crate) enum Between<const MIN: usize, const MAX: usize> {}

impl<const MIN: usize, const MAX: usize> Key for Between<MIN, MAX> {
    type Raw = usize;
    type Value = usize;

    fn check(raw: usize) -> Result<usize, Reason> {
        if (MIN..=MAX).contains(&raw) {
            Ok(raw)
        } else {
            Err(Reason::new(format!("must be between {MIN} and {MAX}")))
        }
    }

    fn toml(value: &usize) -> Option<String> {
        Some(value.to_string())
    }
}

/// A duration greater than zero.
pub(crate) enum Positive {}

impl Key for Positive {
    type Raw = RawDuration;
    type Value = Duration;

    fn check(raw: RawDuration) -> Result<Duration, Reason> {
        match raw.0 {
            zero if zero.is_zero() => Err(Reason::new("must be greater than 0")),
            duration => Ok(duration),
        }
    }

    fn toml(value: &Duration) -> Option<String> {
        Some(toml_duration(*value))
    }
}

/// A TTL-like duration: whole seconds, which keep countdowns exact, that fit the 32 bits of a
/// DNS TTL.
pub(crate) enum Ttl {}

/// Largest [`Ttl`].
const MAX_TTL: Duration = Duration::from_secs(u32::MAX as u64);

impl Key for Ttl {
    type Raw = RawDuration;
    type Value = Duration;

    fn check(raw: RawDuration) -> Result<Duration, Reason> {
        match raw.0 {
            ttl if ttl.subsec_nanos() != 0 || ttl > MAX_TTL => {
                Err(Reason::new("must be whole seconds, at most 68 years"))
            }
            ttl => Ok(ttl),
        }
    }

    fn toml(value: &Duration) -> Option<String> {
        Some(toml_duration(*value))
    }
}

/// The cache's size in bytes: at least enough for some answers, at most what a host can spare.
pub(crate) enum CacheSize {}

const MIN_CACHE_SIZE: usize = 64 << 10;
const MAX_CACHE_SIZE: usize = 64 << 30;

impl Key for CacheSize {
    type Raw = RawSize;
    type Value = usize;

    fn check(raw: RawSize) -> Result<usize, Reason> {
        if (MIN_CACHE_SIZE..=MAX_CACHE_SIZE).contains(&raw.0) {
            Ok(raw.0)
        } else {
            Err(Reason::new(format!(
                "must be between {} and {} (set cache = false to turn the cache off)",
                toml_size(MIN_CACHE_SIZE),
                toml_size(MAX_CACHE_SIZE)
            )))
        }
    }

    fn toml(value: &usize) -> Option<String> {
        Some(toml_size(*value))
    }
}

/// Addresses to bind, each `IP:port`.
pub(crate) enum SocketAddrs {}

impl Key for SocketAddrs {
    type Raw = Vec<String>;
    type Value = Vec<SocketAddr>;

    fn check(raw: Vec<String>) -> Result<Vec<SocketAddr>, Reason> {
        each(&raw, |text| {
            text.trim().parse::<SocketAddr>().map_err(|_| {
                format!(
                    "{text:?} is not an IP:port address (e.g. \"127.0.0.1:5300\" or \"[::1]:5300\")"
                )
            })
        })
    }

    fn toml(value: &Vec<SocketAddr>) -> Option<String> {
        Some(toml_list(value))
    }
}

/// Plain DNS servers that resolve upstream host names (`bootstrap`), each `IP` or `IP:port`
/// (port 53 when omitted): addresses only, since a name would need them to be resolved.
pub(crate) enum BootstrapServers {}

impl Key for BootstrapServers {
    type Raw = Vec<String>;
    type Value = Vec<SocketAddr>;

    fn check(raw: Vec<String>) -> Result<Vec<SocketAddr>, Reason> {
        each(&raw, |text| {
            parse_upstream_address(text, DNS_PORT).ok_or_else(|| {
                format!(
                    "{text:?} is not an IP address (e.g. \"9.9.9.9\" or \"[2620:fe::fe]:53\"): bootstrap servers resolve names, so they cannot be names"
                )
            })
        })
    }

    fn toml(value: &Vec<SocketAddr>) -> Option<String> {
        Some(toml_list(value))
    }
}

/// Addresses to bind for a TLS-based listener, each `IP:port` or a bare IP address, which
/// takes the transport's port `PORT` (853 for DNS over TLS, 443 for DNS over HTTPS).
pub(crate) enum ListenAddrs<const PORT: u16> {}

impl<const PORT: u16> Key for ListenAddrs<PORT> {
    type Raw = Vec<String>;
    type Value = Vec<SocketAddr>;

    fn check(raw: Vec<String>) -> Result<Vec<SocketAddr>, Reason> {
        each(&raw, |text| {
            parse_address(text, PORT).ok_or_else(|| {
                format!(
                    "{text:?} is not an IP address or IP:port (e.g. \"192.0.2.1\", \
                     \"192.0.2.1:{PORT}\" or \"[2001:db8::1]:{PORT}\")"
                )
            })
        })
    }

    fn toml(value: &Vec<SocketAddr>) -> Option<String> {
        Some(toml_list(value))
    }
}

/// A file named by an optional key (`tls_certificate`, `tls_key`); not read here.
pub(crate) enum FilePath {}

impl Key for FilePath {
    type Raw = PathBuf;
    type Value = Option<PathBuf>;

    fn check(raw: PathBuf) -> Result<Option<PathBuf>, Reason> {
        if raw.as_os_str().is_empty() {
            return Err(Reason::new("must name a file"));
        }
        Ok(Some(raw))
    }

    fn toml(value: &Option<PathBuf>) -> Option<String> {
        value
            .as_ref()
            .map(|path| toml_string(&path.display().to_string()))
    }
}

/// The path of DNS over HTTPS requests: an absolute path of visible ASCII characters, without
/// a query or fragment, since the query string carries `dns=`.
pub(crate) enum HttpsPath {}

/// Longest `https_path`: far more than any real one, little against the request-head limit.
const MAX_HTTPS_PATH: usize = 256;

impl Key for HttpsPath {
    type Raw = String;
    type Value = String;

    fn check(path: String) -> Result<String, Reason> {
        let visible = path
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'?' && b != b'#');
        if !path.starts_with('/') || !visible || path.len() > MAX_HTTPS_PATH {
            return Err(Reason::new(format!(
                "{path:?} is not an absolute URL path of at most {MAX_HTTPS_PATH} visible ASCII \
                 characters without '?' or '#' (e.g. \"/dns-query\")"
            )));
        }
        Ok(path)
    }

    fn toml(value: &String) -> Option<String> {
        Some(toml_string(value))
    }
}

/// Client networks; at least one, so that the resolver is not refused to everyone by mistake.
pub(crate) enum Networks {}

impl Key for Networks {
    type Raw = Vec<String>;
    type Value = Vec<Network>;

    fn check(raw: Vec<String>) -> Result<Vec<Network>, Reason> {
        if raw.is_empty() {
            return Err(Reason::new(
                "must list at least one network (loopback: \"127.0.0.0/8\", \"::1\")",
            ));
        }
        each(&raw, |text| {
            text.parse::<Network>().map_err(|e| e.to_string())
        })
    }

    fn toml(value: &Vec<Network>) -> Option<String> {
        Some(toml_list(value))
    }
}

/// A log level name.
pub(crate) enum LogLevel {}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Key for LogLevel {
    type Raw = String;
    type Value = String;

    fn check(level: String) -> Result<String, Reason> {
        if LOG_LEVELS.contains(&level.as_str()) {
            Ok(level)
        } else {
            Err(Reason::new(format!(
                "{level:?} is not a log level (expected one of: {})",
                LOG_LEVELS.join(", ")
            )))
        }
    }

    fn toml(value: &String) -> Option<String> {
        Some(toml_string(value))
    }
}

impl Key for DenyAction {
    type Raw = String;
    type Value = DenyAction;

    fn check(action: String) -> Result<DenyAction, Reason> {
        DenyAction::parse(&action)
            .ok_or_else(|| Reason::new(format!("{action:?} is not one of: refuse, drop")))
    }

    fn toml(value: &DenyAction) -> Option<String> {
        Some(toml_string(value.as_str()))
    }
}

/// How a query picks among the available upstreams (`strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strategy {
    /// The lowest smoothed latency, with an occasional probe of the others.
    Fastest,
    /// The first in configuration order.
    Failover,
    /// Each in turn.
    RoundRobin,
}

impl Strategy {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Strategy::Fastest => "fastest",
            Strategy::Failover => "failover",
            Strategy::RoundRobin => "round-robin",
        }
    }
}

impl Key for Strategy {
    type Raw = String;
    type Value = Strategy;

    fn check(text: String) -> Result<Strategy, Reason> {
        let all = [Strategy::Fastest, Strategy::Failover, Strategy::RoundRobin];
        one_of(&text, &all, Strategy::as_str).map_err(Reason::new)
    }

    fn toml(value: &Strategy) -> Option<String> {
        Some(toml_string(value.as_str()))
    }
}

/// Hedging (`hedge`): when no answer has come after a delay, the query is also sent to the
/// next upstream and the first answer wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hedge {
    Off,
    /// After the upstream's usual latency plus four deviations (about its 95th percentile).
    Auto,
    After(Duration),
}

impl Key for Hedge {
    type Raw = String;
    type Value = Hedge;

    fn check(hedge: String) -> Result<Hedge, Reason> {
        match hedge.trim() {
            "off" => Ok(Hedge::Off),
            "auto" => Ok(Hedge::Auto),
            text => match parse_duration(text) {
                Some(delay) if !delay.is_zero() => Ok(Hedge::After(delay)),
                _ => Err(Reason::new(format!(
                    "{hedge:?} is not \"off\", \"auto\" or a duration like \"50ms\""
                ))),
            },
        }
    }

    fn toml(value: &Hedge) -> Option<String> {
        Some(match value {
            Hedge::Off => toml_string("off"),
            Hedge::Auto => toml_string("auto"),
            Hedge::After(delay) => toml_duration(*delay),
        })
    }
}

/// The control socket's path (`control_socket`): absolute, short enough for a Unix socket
/// address; `""` for none.
pub(crate) enum ControlSocket {}

/// Longest socket path: `sun_path` holds 108 bytes, the last one a NUL.
const MAX_SOCKET_PATH: usize = 107;
/// What systemd's `RuntimeDirectory=` gives the service (the first, if it lists several).
const RUNTIME_DIRECTORY: &str = "RUNTIME_DIRECTORY";

impl ControlSocket {
    /// `control` in the service's runtime directory under systemd (`/run/dns-proxy/control`
    /// for the packaged unit); none for a daemon started by hand, which may not own `/run`.
    pub(crate) fn default_path() -> Option<PathBuf> {
        runtime_file("control").filter(|path| path.as_os_str().len() <= MAX_SOCKET_PATH)
    }
}

impl Key for ControlSocket {
    type Raw = String;
    type Value = Option<PathBuf>;

    fn check(raw: String) -> Result<Option<PathBuf>, Reason> {
        let path = optional_file(&raw, "a socket file", "/run/dns-proxy/control")?;
        if raw.len() > MAX_SOCKET_PATH {
            return Err(Reason::new(format!(
                "{raw:?} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have"
            )));
        }
        Ok(path)
    }

    fn toml(value: &Option<PathBuf>) -> Option<String> {
        toml_optional_path(value.as_deref())
    }
}

/// Which of the links' DNS settings (`link_dns`), pushed over `org.freedesktop.resolve1` by
/// NetworkManager or `resolvectl`, the daemon follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkDns {
    /// Each link's domains go to its servers over plain DNS; every other name stays on the
    /// default upstreams (DoT), whatever the link's default route says.
    Domains,
    /// As `Domains`, and names outside every zone go to the links that take the default route
    /// (`~.`, else DefaultRoute=yes), in plain DNS: for a VPN that must see every name.
    All,
    /// The bus name is not taken; nothing is learned.
    Off,
}

impl LinkDns {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            LinkDns::Domains => "domains",
            LinkDns::All => "all",
            LinkDns::Off => "off",
        }
    }
}

impl Key for LinkDns {
    type Raw = String;
    type Value = LinkDns;

    fn check(text: String) -> Result<LinkDns, Reason> {
        let all = [LinkDns::Domains, LinkDns::All, LinkDns::Off];
        one_of(&text, &all, LinkDns::as_str).map_err(Reason::new)
    }

    fn toml(value: &LinkDns) -> Option<String> {
        Some(toml_string(value.as_str()))
    }
}

/// The resolv.conf the daemon writes (`resolv_conf`): an absolute file path; `""` for none.
pub(crate) enum ResolvConf {}

impl ResolvConf {
    /// `resolv.conf` in the service's runtime directory under systemd
    /// (`/run/dns-proxy/resolv.conf` for the packaged unit); none for a daemon started by hand,
    /// which may not own `/run`.
    pub(crate) fn default_path() -> Option<PathBuf> {
        runtime_file("resolv.conf")
    }
}

impl Key for ResolvConf {
    type Raw = String;
    type Value = Option<PathBuf>;

    fn check(raw: String) -> Result<Option<PathBuf>, Reason> {
        optional_file(&raw, "a file", "/run/dns-proxy/resolv.conf")
    }

    fn toml(value: &Option<PathBuf>) -> Option<String> {
        toml_optional_path(value.as_deref())
    }
}

/// Whether answers are validated (`dnssec`, and `dnssec` in a `[[forward_zone]]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dnssec {
    /// Every answer is checked from the trust anchors down.
    Validate,
    /// Answers pass as the upstream sent them.
    Off,
}

impl Dnssec {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Dnssec::Validate => "validate",
            Dnssec::Off => "off",
        }
    }

    fn parse(text: &str) -> Result<Dnssec, String> {
        one_of(text, &[Dnssec::Validate, Dnssec::Off], Dnssec::as_str)
    }
}

impl Key for Dnssec {
    type Raw = String;
    type Value = Dnssec;

    fn check(text: String) -> Result<Dnssec, Reason> {
        Dnssec::parse(&text).map_err(Reason::new)
    }

    fn toml(value: &Dnssec) -> Option<String> {
        Some(toml_string(value.as_str()))
    }
}

/// The `trust_anchors` file, read and checked when the configuration is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchorFile {
    pub(crate) path: PathBuf,
    pub(crate) anchors: Vec<Anchor>,
}

/// `trust_anchors`: a file of DS or DNSKEY records; `""` for the built-in root anchors.
pub(crate) enum TrustAnchors {}

impl Key for TrustAnchors {
    type Raw = PathBuf;
    type Value = Option<TrustAnchorFile>;

    fn check(path: PathBuf) -> Result<Option<TrustAnchorFile>, Reason> {
        if path.as_os_str().is_empty() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Reason::new(format!("cannot read {}: {e}", path.display())))?;
        let anchors =
            anchors::parse(&text).map_err(|e| Reason::new(format!("{}: {e}", path.display())))?;
        Ok(Some(TrustAnchorFile { path, anchors }))
    }

    fn toml(value: &Option<TrustAnchorFile>) -> Option<String> {
        toml_optional_path(value.as_ref().map(|file| file.path.as_path()))
    }
}

/// A list of zones below the root (`negative_trust_anchors`).
pub(crate) enum Zones {}

impl Key for Zones {
    type Raw = Vec<String>;
    type Value = Vec<ZoneName>;

    fn check(raw: Vec<String>) -> Result<Vec<ZoneName>, Reason> {
        each(&raw, |text| {
            ZoneName::parse(text).map_err(|e| {
                let reason = match e {
                    ZoneNameError::Root => {
                        "is the root zone: set dnssec = \"off\" to validate nothing".to_string()
                    }
                    other => other.to_string(),
                };
                format!("{text:?} {reason}")
            })
        })
    }

    fn toml(value: &Vec<ZoneName>) -> Option<String> {
        Some(toml_list(value))
    }
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MetricsConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`).
    pub(crate) listen: SocketAddr,
}

/// The `[metrics]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    listen: String,
}

/// The optional `[metrics]` table.
pub(crate) enum Metrics {}

impl Key for Metrics {
    type Raw = RawMetrics;
    type Value = Option<MetricsConfig>;

    fn check(raw: RawMetrics) -> Result<Option<MetricsConfig>, Reason> {
        let listen = raw.listen.trim().parse::<SocketAddr>().map_err(|_| {
            let reason = format!(
                "{:?} is not an IP:port address (e.g. \"127.0.0.1:9153\")",
                raw.listen
            );
            Reason::at(".listen", reason)
        })?;
        Ok(Some(MetricsConfig { listen }))
    }

    fn toml(_: &Option<MetricsConfig>) -> Option<String> {
        None
    }
}

/// One upstream resolver: DNS over TLS, or DNS over HTTPS when it has a `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Where to connect: an IP address and port (853 for DoT when the config gives none, the
    /// URL's port for DoH), or a host name resolved through `bootstrap`.
    pub address: Endpoint,
    /// Name checked in the certificate and sent as SNI: the configured one, else the host
    /// (DoT: the address, IP or name; DoH: the URL's host).
    pub(crate) tls_name: ServerName<'static>,
    /// Where `ca_roots` came from, for messages.
    pub ca_file: Option<PathBuf>,
    /// Certificates of a private CA: when present, the only roots trusted for this upstream.
    pub ca_roots: Option<Vec<CertificateDer<'static>>>,
    /// SHA-256 digests of acceptable SubjectPublicKeyInfo (RFC 7858 §4.2), checked on top of
    /// certificate validation. Empty: no pinning.
    pub(crate) pin_sha256: Vec<[u8; 32]>,
    /// DNS over HTTPS (RFC 8484) at this URL; `None` for DNS over TLS.
    pub(crate) url: Option<HttpsUrl>,
    /// Whether `address` was written (for DoH, where it may be left out).
    pub(crate) address_given: bool,
}

impl UpstreamConfig {
    /// Cloudflare's resolver at `ip`: the default upstreams.
    pub(crate) fn cloudflare(ip: [u8; 4]) -> UpstreamConfig {
        // The name always parses (a test checks it); falling back to the IP address instead of
        // panicking still yields a working upstream, as Cloudflare's certificate has IP SANs.
        UpstreamConfig {
            address: Endpoint::Ip(SocketAddr::from((ip, DOT_PORT))),
            tls_name: ServerName::try_from("cloudflare-dns.com")
                .map_or_else(|_| ServerName::from(IpAddr::from(ip)), |n| n.to_owned()),
            ca_file: None,
            ca_roots: None,
            pin_sha256: Vec::new(),
            url: None,
            address_given: true,
        }
    }

    /// How metrics, logs and `dns-proxy status` name it: `IP:port` or `name:port` for DoT,
    /// the URL for DoH, followed by `@IP:port` when `address` says where to connect.
    pub fn label(&self) -> String {
        match &self.url {
            None => self.address.to_string(),
            Some(url) if self.address_given => format!("{url}@{}", self.address),
            Some(url) => url.to_string(),
        }
    }
}

/// A `[[forward_zone]]`: names under `zones` go to `upstreams` instead of the default ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardZone {
    /// Never empty.
    pub(crate) zones: Vec<ZoneName>,
    /// In order of preference. Never empty.
    pub upstreams: Vec<ZoneUpstream>,
    /// Off by default: a zone served inside a network is usually unsigned, and validating it
    /// under a signed public parent would fail every answer.
    pub(crate) dnssec: Dnssec,
}

/// An upstream of a forward zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneUpstream {
    /// DNS over TLS or over HTTPS, as the default upstreams.
    Tls(UpstreamConfig),
    /// Plain DNS over UDP, retried over TCP when truncated: only ever used when a forward zone
    /// says `protocol = "udp"`, for a resolver inside the network.
    Plain(SocketAddr),
}

/// The default upstreams: at least one, each DNS over TLS or over HTTPS.
pub(crate) enum Upstreams {}

impl Key for Upstreams {
    type Raw = Vec<RawUpstream>;
    type Value = Vec<UpstreamConfig>;

    fn check(raw: Vec<RawUpstream>) -> Result<Vec<UpstreamConfig>, Reason> {
        if raw.is_empty() {
            return Err(Reason::new("must list at least one resolver"));
        }
        raw.into_iter()
            .enumerate()
            .map(|(i, raw)| match raw.validate() {
                Ok(ZoneUpstream::Tls(upstream)) => Ok(upstream),
                Ok(ZoneUpstream::Plain(_)) => Err(Reason::at(
                    format!("[{i}].protocol"),
                    "the default upstreams are always DNS over TLS or HTTPS; plain DNS is only \
                     for a [[forward_zone]] upstream inside your network",
                )),
                Err((field, reason)) => Err(Reason::at(format!("[{i}].{field}"), reason)),
            })
            .collect()
    }

    fn toml(_: &Vec<UpstreamConfig>) -> Option<String> {
        None
    }
}

/// Split DNS: the `[[forward_zone]]` tables.
pub(crate) enum ForwardZones {}

impl Key for ForwardZones {
    type Raw = Vec<RawForwardZone>;
    type Value = Vec<ForwardZone>;

    fn check(raw: Vec<RawForwardZone>) -> Result<Vec<ForwardZone>, Reason> {
        raw.into_iter()
            .enumerate()
            .map(|(i, raw)| {
                raw.validate()
                    .map_err(|(field, reason)| Reason::at(format!("[{i}].{field}"), reason))
            })
            .collect()
    }

    fn toml(_: &Vec<ForwardZone>) -> Option<String> {
        None
    }
}

/// One `[[forward_zone]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawForwardZone {
    zones: Vec<String>,
    upstream: Vec<RawUpstream>,
    dnssec: Option<String>,
}

/// One `[[upstream]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    address: Option<String>,
    url: Option<String>,
    protocol: Option<String>,
    tls_name: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pin_sha256: Vec<String>,
}

impl RawForwardZone {
    /// Checks one `[[forward_zone]]`; an error is the offending field and the reason.
    fn validate(self) -> Result<ForwardZone, (String, String)> {
        if self.zones.is_empty() {
            return Err((
                "zones".to_string(),
                "must list at least one zone".to_string(),
            ));
        }
        if self.upstream.is_empty() {
            let reason = "must list at least one resolver".to_string();
            return Err(("upstream".to_string(), reason));
        }
        let zones = self
            .zones
            .iter()
            .enumerate()
            .map(|(i, text)| {
                ZoneName::parse(text).map_err(|e| (format!("zones[{i}]"), format!("{text:?} {e}")))
            })
            .collect::<Result<_, _>>()?;
        let upstreams = self
            .upstream
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                raw.validate()
                    .map_err(|(field, reason)| (format!("upstream[{i}].{field}"), reason))
            })
            .collect::<Result<_, _>>()?;
        let dnssec = match self.dnssec {
            Some(text) => Dnssec::parse(&text).map_err(|reason| ("dnssec".to_string(), reason))?,
            None => Dnssec::Off,
        };
        Ok(ForwardZone {
            zones,
            upstreams,
            dnssec,
        })
    }
}

/// What an upstream speaks, from `protocol` (and `url`, which implies `https`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Tls,
    Https,
    Udp,
}

impl RawUpstream {
    /// Checks one upstream; an error is the offending field (with index, for pins) and the
    /// reason. Reads `ca_file` now, so an unreadable file stops loading instead of failing
    /// every later connection.
    fn validate(self) -> Result<ZoneUpstream, (String, String)> {
        let field = |field: &str, reason: String| (field.to_string(), reason);
        let protocol = match self.protocol.as_deref().map(str::trim) {
            None if self.url.is_some() => Protocol::Https,
            None | Some("tls") => Protocol::Tls,
            Some("https") => Protocol::Https,
            Some("udp") => Protocol::Udp,
            Some(other) => {
                let reason = format!("{other:?} is not one of: tls, https, udp");
                return Err(field("protocol", reason));
            }
        };
        let url = match (&self.url, protocol) {
            (Some(url), Protocol::Https) => {
                Some(parse_https_url(url).map_err(|r| field("url", r))?)
            }
            (Some(_), _) => {
                let reason = "applies only to DNS over HTTPS (protocol \"https\", implied by url)";
                return Err(field("url", reason.to_string()));
            }
            (None, Protocol::Https) => {
                let reason =
                    "must be set for DNS over HTTPS (e.g. \"https://dns.quad9.net/dns-query\")";
                return Err(field("url", reason.to_string()));
            }
            (None, _) => None,
        };
        let address_given = self.address.is_some();
        let address = match (&self.address, &url) {
            (None, Some(url)) => url.endpoint(),
            (None, None) => {
                let reason = "must be set (an IP address, e.g. \"9.9.9.9\", or for DNS over TLS a host name resolved through bootstrap)";
                return Err(field("address", reason.to_string()));
            }
            (Some(text), Some(url)) => {
                let address = parse_upstream_address(text, url.port).ok_or_else(|| {
                    let reason = format!(
                        "{text:?} must be an IP address (e.g. \"9.9.9.9\" or \"9.9.9.9:{}\"): where to reach {url} without a lookup",
                        url.port
                    );
                    field("address", reason)
                })?;
                if address.port() != url.port {
                    let reason = format!(
                        "{text:?} has port {}, but the url's port is {}",
                        address.port(),
                        url.port
                    );
                    return Err(field("address", reason));
                }
                Endpoint::Ip(address)
            }
            (Some(text), None) if protocol == Protocol::Udp => {
                let address = parse_upstream_address(text, DNS_PORT).ok_or_else(|| {
                    let reason = format!(
                        "{text:?} must be an IP address (e.g. \"10.0.0.2\" or \"10.0.0.2:{DNS_PORT}\")"
                    );
                    field("address", reason)
                })?;
                Endpoint::Ip(address)
            }
            (Some(text), None) => match parse_upstream_address(text, DOT_PORT) {
                Some(address) => Endpoint::Ip(address),
                None => parse_host_endpoint(text, DOT_PORT).ok_or_else(|| {
                    let reason = format!(
                        "{text:?} must be an IP address or a host name (e.g. \"9.9.9.9\", \"9.9.9.9:{DOT_PORT}\" or \"dns.quad9.net\")"
                    );
                    field("address", reason)
                })?,
            },
        };
        if protocol == Protocol::Udp {
            let tls_only = [
                ("tls_name", self.tls_name.is_some()),
                ("ca_file", self.ca_file.is_some()),
                ("pin_sha256", !self.pin_sha256.is_empty()),
            ];
            if let Some((name, _)) = tls_only.iter().find(|(_, set)| *set) {
                let reason = "applies only to protocols \"tls\" and \"https\"".to_string();
                return Err(field(name, reason));
            }
            // Always an address: checked above.
            return match address {
                Endpoint::Ip(address) => Ok(ZoneUpstream::Plain(address)),
                Endpoint::Name { .. } => Err(field("address", "must be an IP address".into())),
            };
        }
        let tls_name = match self.tls_name {
            // Without a name the certificate must hold the host: the URL's, or the address
            // (an IP SAN when it is an IP address).
            None => {
                let host = match (&url, &address) {
                    (Some(url), _) => url.host.clone(),
                    (None, Endpoint::Ip(address)) => address.ip().to_string(),
                    (None, Endpoint::Name { host, .. }) => host.clone(),
                };
                ServerName::try_from(host.clone()).map_err(|_| {
                    field(
                        "address",
                        format!("{host:?} is not a valid DNS name or IP address"),
                    )
                })?
            }
            Some(name) => ServerName::try_from(name.clone()).map_err(|_| {
                let reason = format!("{name:?} is not a valid DNS name or IP address");
                field("tls_name", reason)
            })?,
        };
        let ca_roots = match &self.ca_file {
            Some(path) => Some(read_ca_file(path).map_err(|r| field("ca_file", r))?),
            None => None,
        };
        let pin_sha256 = self
            .pin_sha256
            .iter()
            .enumerate()
            .map(|(i, pin)| decode_pin(pin).map_err(|r| (format!("pin_sha256[{i}]"), r)))
            .collect::<Result<_, _>>()?;
        Ok(ZoneUpstream::Tls(UpstreamConfig {
            address,
            tls_name,
            ca_file: self.ca_file,
            ca_roots,
            pin_sha256,
            url,
            address_given,
        }))
    }
}

/// `IP`, `IP:port`, `[v6]:port`, bare `v6` or `[v6]`; the port defaults to `port` and must
/// not be 0.
fn parse_upstream_address(text: &str, port: u16) -> Option<SocketAddr> {
    parse_address(text, port).filter(|address| address.port() != 0)
}

/// `IP`, `IP:port`, `[v6]:port`, bare `v6` or `[v6]`; the port defaults to `port`.
fn parse_address(text: &str, port: u16) -> Option<SocketAddr> {
    let text = text.trim();
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse::<SocketAddr>()
        .ok()
        .or_else(|| Some(SocketAddr::new(unbracketed.parse().ok()?, port)))
}

/// All certificates of a PEM file; none at all is an error, since trusting no root would make
/// every connection fail.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| format!("cannot read certificates from {}: {error}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!("{} contains no PEM certificate", path.display()));
    }
    Ok(certificates)
}

/// Standard base64 of a SHA-256 digest (as `openssl ... | base64` prints it).
fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(pin.trim())
        .map_err(|error| format!("{pin:?} is not valid base64: {error}"))?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
        format!(
            "{pin:?} decodes to {} bytes, a SHA-256 digest has 32",
            bytes.len()
        )
    })
}
