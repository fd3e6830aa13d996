//! Configuration: the layered sources (built-in defaults, the TOML file, its drop-in directory,
//! `DNS_PROXY_*` environment variables, command-line flags), merged with figment, then checked
//! into a [`Config`] whose fields cannot be wrong. Nothing here opens sockets; the only I/O is
//! reading the TOML files and each upstream's `ca_file`.
//!
//! Each layer is a figment provider named after exactly where its values came from (a file
//! path, one environment variable, one flag), so error messages and `check-config` can say which
//! source set a key. The defaults are [`Config::default`], not a layer: a key that no layer sets
//! keeps its default, and its source is reported as "default".
//!
//! Loading has two phases. Figment extracts a `RawConfig`, which rejects unknown keys, wrong
//! types and malformed durations with the source and key figment attaches; then
//! `RawConfig::validate` checks what needs more than a type (addresses, names, certificates,
//! pins, ranges), finding the source of a bad value with `Figment::find_metadata`.

use std::fmt;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use figment::error::Kind;
use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::Deserialize;
use serde::de::{self, Unexpected, Visitor};

use crate::access::{DenyAction, Network};
use crate::zones::ZoneName;

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/dns-proxy/dns-proxy.toml";

/// DoT port (RFC 7858), used when an upstream address has none.
const DOT_PORT: u16 = 853;
/// Plain DNS port, for forward-zone upstreams with `protocol = "udp"`.
const DNS_PORT: u16 = 53;

/// Prefix of the environment variables that set configuration keys.
const ENV_PREFIX: &str = "DNS_PROXY_";

/// Legacy variables of the Go program this replaces, kept so existing deployments keep working.
/// The server and port together become the single upstream.
const SEED_SERVER: &str = "DNS_PROXY_UPSTREAM_SERVER";
const SEED_PORT: &str = "DNS_PROXY_UPSTREAM_PORT";
/// Legacy variables that are plain aliases of a key.
const SEED_ALIASES: [(&str, &str); 3] = [
    ("DNS_PROXY_UPSTREAM_TIMEOUT", "timeout"),
    ("DNS_PROXY_ENABLE_TCP", "tcp"),
    ("DNS_PROXY_ENABLE_UDP", "udp"),
];

/// Largest `upstream_connections`.
const MAX_UPSTREAM_CONNECTIONS: usize = 16;
/// Largest `threads`.
const MAX_THREADS: usize = 256;
/// Bounds of `cache_size`.
const MIN_CACHE_SIZE: usize = 64 << 10;
const MAX_CACHE_SIZE: usize = 64 << 30;
/// Largest TTL-like duration: what fits a 32-bit count of seconds.
const MAX_TTL: Duration = Duration::from_secs(u32::MAX as u64);

/// Largest `tcp_max_connections` and `tcp_max_queries`.
const MAX_LIMIT: usize = 65_535;
const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

const DURATION_EXPECTED: &str = r#"a duration like "2000ms", "2s", "5m", "1h" or "1d""#;
const SIZE_EXPECTED: &str = r#"a size in bytes like 1048576, "512KiB" or "32MiB""#;

/// The validated configuration the daemon runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Most client TCP connections open at once from one address, so one client (a slowloris)
    /// cannot take every slot.
    pub tcp_max_connections_per_client: usize,
    /// Most queries outstanding on one client TCP connection; reading pauses beyond it.
    pub tcp_max_queries: usize,
    /// An upstream TLS connection with no query outstanding is closed after this long.
    pub upstream_idle_timeout: Duration,
    /// Most TLS connections open to one upstream at once.
    pub upstream_connections: usize,
    /// Threads that run queries; 0 for one per CPU.
    pub threads: usize,
    /// How a query picks among the available upstreams.
    pub strategy: Strategy,
    /// When a query is also sent to a second upstream.
    pub hedge: Hedge,
    /// Log one line per query at info level (off by default for privacy).
    pub log_queries: bool,
    /// Default log level: error, warn, info, debug or trace.
    pub log_level: String,
    /// Clients that may use the resolver. Never empty.
    pub allow: Vec<Network>,
    /// What clients outside `allow` get.
    pub deny_action: DenyAction,
    /// Queries per second allowed per client address (IPv6: per /64); 0 is no limit.
    pub rate_limit: u32,
    /// What a client over `rate_limit` gets.
    pub rate_limit_action: DenyAction,
    /// The answer cache.
    pub cache: CacheConfig,
    /// Split DNS: zones with upstreams of their own, in configuration order.
    pub forward_zones: Vec<ForwardZone>,
    /// The Prometheus endpoint; `None` (the default) serves none, unless systemd passes a
    /// socket named `metrics`.
    pub metrics: Option<MetricsConfig>,
}

/// The `[metrics]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the HTTP endpoint (`/metrics`, `/healthz`).
    pub listen: SocketAddr,
}

/// A `[[forward_zone]]`: names under `zones` go to `upstreams` instead of the default ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardZone {
    /// Never empty.
    pub zones: Vec<ZoneName>,
    /// In order of preference. Never empty.
    pub upstreams: Vec<ZoneUpstream>,
}

/// An upstream of a forward zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneUpstream {
    /// DNS over TLS, as the default upstreams.
    Tls(UpstreamConfig),
    /// Plain DNS over UDP, retried over TCP when truncated: only ever used when a forward zone
    /// says `protocol = "udp"`, for a resolver inside the network.
    Plain(SocketAddr),
}

/// How a query picks among the available upstreams (`strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The lowest smoothed latency, with an occasional probe of the others.
    Fastest,
    /// The first in configuration order.
    Failover,
    /// Each in turn.
    RoundRobin,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Fastest => "fastest",
            Strategy::Failover => "failover",
            Strategy::RoundRobin => "round-robin",
        }
    }

    fn parse(text: &str) -> Option<Strategy> {
        [Strategy::Fastest, Strategy::Failover, Strategy::RoundRobin]
            .into_iter()
            .find(|s| s.as_str() == text.trim())
    }
}

/// Hedging (`hedge`): when no answer has come after a delay, the query is also sent to the
/// next upstream and the first answer wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hedge {
    Off,
    /// After the upstream's usual latency plus four deviations (about its 95th percentile).
    Auto,
    After(Duration),
}

/// The answer cache's settings (`cache*` keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Off: every query goes upstream.
    pub enabled: bool,
    /// Most bytes the cache holds, entries' bookkeeping included.
    pub size: usize,
    /// TTLs below this are raised to it.
    pub min_ttl: Duration,
    /// TTLs above this are lowered to it.
    pub max_ttl: Duration,
    /// Longest a negative answer (NXDOMAIN, NODATA) is kept.
    pub negative_ttl: Duration,
    /// How long after expiry an answer may still be served when every upstream fails; zero
    /// turns serve-stale off.
    pub serve_stale: Duration,
    /// Refresh entries still in use shortly before they expire.
    pub prefetch: bool,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig {
            enabled: true,
            size: 32 << 20,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(86_400),
            negative_ttl: Duration::from_secs(3600),
            serve_stale: Duration::from_secs(86_400),
            prefetch: true,
        }
    }
}

/// One upstream DoT resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl Default for Config {
    fn default() -> Config {
        // The name always parses (a test checks it); falling back to the IP address instead of
        // panicking still yields a working upstream, as Cloudflare's certificate has IP SANs.
        let cloudflare = |ip: [u8; 4]| UpstreamConfig {
            address: SocketAddr::from((ip, DOT_PORT)),
            tls_name: ServerName::try_from("cloudflare-dns.com")
                .map_or_else(|_| ServerName::from(IpAddr::from(ip)), |n| n.to_owned()),
            ca_file: None,
            ca_roots: None,
            pin_sha256: Vec::new(),
        };
        Config {
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 5300)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 5300)),
            ],
            udp: true,
            tcp: true,
            timeout: Duration::from_millis(2000),
            upstreams: vec![cloudflare([1, 1, 1, 1]), cloudflare([1, 0, 0, 1])],
            tcp_idle_timeout: Duration::from_secs(10),
            tcp_max_connections: 256,
            tcp_max_connections_per_client: 32,
            tcp_max_queries: 64,
            upstream_idle_timeout: Duration::from_secs(30),
            upstream_connections: 2,
            threads: 1,
            strategy: Strategy::Fastest,
            hedge: Hedge::Off,
            log_queries: false,
            log_level: "info".to_string(),
            allow: Network::loopback(),
            deny_action: DenyAction::Refuse,
            rate_limit: 0,
            // Answering a flood would reflect it at whoever the sources are spoofed as.
            rate_limit_action: DenyAction::Drop,
            cache: CacheConfig::default(),
            forward_zones: Vec::new(),
            metrics: None,
        }
    }
}

impl Config {
    /// The defaults overridden by one TOML document, without files, environment or flags: a
    /// way for tests to build a configuration exactly as a user would write it.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let layer = toml_layer("configuration string", toml)?;
        Ok(resolve(vec![layer])?.config)
    }
}

/// The command-line flags that override configuration keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--listen`, in order given; when any, they replace `listen`.
    pub listen: Vec<String>,
    /// `--log-level`; replaces `log_level`.
    pub log_level: Option<String>,
}

/// Everything a configuration is loaded from. Kept by the daemon so that a reload reads the
/// same file and applies the same environment and flags it started with.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The main TOML file; its drop-in directory is derived from it.
    pub file: PathBuf,
    /// True when given with `--config`: a missing file is then an error.
    pub file_required: bool,
    /// Snapshot of the environment (only `DNS_PROXY_*` variables matter).
    pub env: Vec<(String, String)>,
    /// The flags that override keys, applied last.
    pub flags: Flags,
}

impl Sources {
    /// Sources for this process: the given file (else [`DEFAULT_CONFIG_FILE`], which may be
    /// missing) and a snapshot of its `DNS_PROXY_*` environment variables.
    pub fn from_process(file: Option<PathBuf>, flags: Flags) -> Sources {
        // `vars_os`, not `vars`, which panics on a non-UTF-8 variable anywhere in the
        // environment; a mangled DNS_PROXY_ value then fails validation with its name.
        let env = std::env::vars_os()
            .map(|(name, value)| {
                (
                    name.to_string_lossy().into_owned(),
                    value.to_string_lossy().into_owned(),
                )
            })
            .filter(|(name, _)| name.starts_with(ENV_PREFIX))
            .collect();
        Sources {
            file_required: file.is_some(),
            file: file.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE)),
            env,
            flags,
        }
    }
}

/// A loaded configuration and where each of its values came from.
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The merged layers, kept to look up the source of each key for [`Loaded::describe`].
    figment: Figment,
}

impl Loaded {
    /// The effective configuration as TOML a user could paste into a file, each value followed
    /// by a comment naming its source (`check-config`).
    pub fn describe(&self) -> String {
        let config = &self.config;
        let listen: Vec<String> = config
            .listen
            .iter()
            .map(|address| toml_string(&address.to_string()))
            .collect();
        let allow: Vec<String> = config
            .allow
            .iter()
            .map(|network| toml_string(&network.to_string()))
            .collect();
        let top = [
            ("listen", format!("[{}]", listen.join(", "))),
            ("udp", config.udp.to_string()),
            ("tcp", config.tcp.to_string()),
            ("timeout", toml_duration(config.timeout)),
            ("tcp_idle_timeout", toml_duration(config.tcp_idle_timeout)),
            (
                "tcp_max_connections",
                config.tcp_max_connections.to_string(),
            ),
            (
                "tcp_max_connections_per_client",
                config.tcp_max_connections_per_client.to_string(),
            ),
            ("tcp_max_queries", config.tcp_max_queries.to_string()),
            (
                "upstream_idle_timeout",
                toml_duration(config.upstream_idle_timeout),
            ),
            (
                "upstream_connections",
                config.upstream_connections.to_string(),
            ),
            ("threads", config.threads.to_string()),
            ("strategy", toml_string(config.strategy.as_str())),
            (
                "hedge",
                match config.hedge {
                    Hedge::Off => toml_string("off"),
                    Hedge::Auto => toml_string("auto"),
                    Hedge::After(delay) => toml_duration(delay),
                },
            ),
            ("log_queries", config.log_queries.to_string()),
            ("log_level", toml_string(&config.log_level)),
            ("allow", format!("[{}]", allow.join(", "))),
            ("deny_action", toml_string(config.deny_action.as_str())),
            ("rate_limit", config.rate_limit.to_string()),
            (
                "rate_limit_action",
                toml_string(config.rate_limit_action.as_str()),
            ),
            ("cache", config.cache.enabled.to_string()),
            ("cache_size", toml_size(config.cache.size)),
            ("cache_min_ttl", toml_duration(config.cache.min_ttl)),
            ("cache_max_ttl", toml_duration(config.cache.max_ttl)),
            (
                "cache_negative_ttl",
                toml_duration(config.cache.negative_ttl),
            ),
            ("cache_serve_stale", toml_duration(config.cache.serve_stale)),
            ("cache_prefetch", config.cache.prefetch.to_string()),
        ];
        let mut out = String::from(
            "# Effective dns-proxy configuration; the comment after each value names its source.\n",
        );
        for (key, value) in top {
            out.push_str(&format!("{key} = {value}  # {}\n", self.origin(key)));
        }
        match &config.metrics {
            Some(metrics) => {
                out.push_str(&format!("\n[metrics]  # {}\n", self.origin("metrics")));
                out.push_str(&format!(
                    "listen = {}\n",
                    toml_string(&metrics.listen.to_string())
                ));
            }
            None => out.push_str(
                "\n# [metrics] not set: no metrics endpoint, unless systemd passes a socket \
                 named \"metrics\"\n",
            ),
        }
        for upstream in &config.upstreams {
            out.push_str(&format!("\n[[upstream]]  # {}\n", self.origin("upstream")));
            describe_tls_upstream(&mut out, upstream);
        }
        for zone in &config.forward_zones {
            let names: Vec<String> = zone
                .zones
                .iter()
                .map(|name| toml_string(&name.to_string()))
                .collect();
            out.push_str(&format!(
                "\n[[forward_zone]]  # {}\nzones = [{}]\n",
                self.origin("forward_zone"),
                names.join(", ")
            ));
            for upstream in &zone.upstreams {
                out.push_str("[[forward_zone.upstream]]\n");
                match upstream {
                    ZoneUpstream::Tls(upstream) => describe_tls_upstream(&mut out, upstream),
                    ZoneUpstream::Plain(address) => out.push_str(&format!(
                        "address = {}\nprotocol = \"udp\"\n",
                        toml_string(&address.to_string())
                    )),
                }
            }
        }
        out
    }

    fn origin(&self, key: &str) -> String {
        origin(&self.figment, key)
    }
}

/// The keys of a DNS-over-TLS upstream, for `check-config`.
fn describe_tls_upstream(out: &mut String, upstream: &UpstreamConfig) {
    out.push_str(&format!(
        "address = {}\nprotocol = \"tls\"\n",
        toml_string(&upstream.address.to_string())
    ));
    out.push_str(&format!(
        "tls_name = {}\n",
        toml_string(&upstream.tls_name.to_str())
    ));
    match &upstream.ca_file {
        Some(path) => out.push_str(&format!(
            "ca_file = {}\n",
            toml_string(&path.display().to_string())
        )),
        None => out.push_str("# ca_file not set: the system's trusted roots are used\n"),
    }
    let pins: Vec<String> = upstream
        .pin_sha256
        .iter()
        .map(|pin| toml_string(&STANDARD.encode(pin)))
        .collect();
    out.push_str(&format!("pin_sha256 = [{}]\n", pins.join(", ")));
}

/// A configuration that cannot be used. Displayed as one line naming the source (file,
/// environment variable or flag), the key and the reason, because it is what an administrator
/// sees from `check-config`, at start and in the log on a refused reload.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file or the drop-in directory could not be read.
    #[error("{}: cannot read: {error}", path.display())]
    Read { path: PathBuf, error: io::Error },
    /// A TOML file is not valid TOML.
    #[error("{origin}: line {line}, column {column}: {reason}")]
    Syntax {
        origin: String,
        line: usize,
        column: usize,
        reason: String,
    },
    /// A key that does not exist, most likely misspelled.
    #[error("{origin}: unknown key {key:?} (expected one of: {expected})")]
    UnknownKey {
        origin: String,
        key: String,
        expected: String,
    },
    /// A key whose value is wrong.
    #[error("{origin}: key {key:?}: {reason}")]
    Invalid {
        origin: String,
        key: String,
        reason: String,
    },
}

impl From<figment::Error> for ConfigError {
    /// Keeps only the first error: our providers never fail, so a figment error comes from
    /// extraction, which stops at the first bad value.
    fn from(error: figment::Error) -> ConfigError {
        let origin = error
            .metadata
            .as_ref()
            .map_or_else(|| "configuration".to_string(), |m| m.name.to_string());
        let key = key_path(&error.path);
        match error.kind {
            Kind::UnknownField(_, expected) => ConfigError::UnknownKey {
                origin,
                key,
                expected: expected.join(", "),
            },
            Kind::InvalidType(actual, expected) | Kind::InvalidValue(actual, expected) => {
                ConfigError::Invalid {
                    origin,
                    key,
                    reason: format!("expected {expected}, found {actual}"),
                }
            }
            kind => ConfigError::Invalid {
                origin,
                key,
                reason: kind.to_string(),
            },
        }
    }
}

/// Reads every source, merges them in order of precedence and validates the result.
pub fn load(sources: &Sources) -> Result<Loaded, ConfigError> {
    let mut layers = file_layers(&sources.file, sources.file_required)?;
    layers.extend(env_layers(&sources.env)?);
    layers.extend(flag_layers(&sources.flags));
    resolve(layers)
}

/// Merges `layers`, each overriding the ones before, over the defaults, and validates.
fn resolve(layers: Vec<Layer>) -> Result<Loaded, ConfigError> {
    let figment = layers.into_iter().fold(Figment::new(), Figment::merge);
    let raw: RawConfig = figment.extract()?;
    let config = raw.validate(&figment)?;
    Ok(Loaded { config, figment })
}

/// The values of one source, named after exactly where they came from: figment tags every
/// value with its provider's metadata, which is how errors and `describe` find a key's source.
struct Layer {
    name: String,
    values: Dict,
}

impl Layer {
    fn single(name: String, key: &str, value: Value) -> Layer {
        Layer {
            name,
            values: Dict::from([(key.to_string(), value)]),
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// The main file (when it exists, or always when required), then every `*.toml` in its
/// drop-in directory in lexical order, so packages and admins can add settings without
/// editing the main file.
fn file_layers(file: &Path, required: bool) -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::new();
    match fs::read_to_string(file) {
        Ok(text) => layers.push(toml_layer(&file.display().to_string(), &text)?),
        Err(error) if error.kind() == io::ErrorKind::NotFound && !required => {}
        Err(error) => {
            return Err(ConfigError::Read {
                path: file.to_path_buf(),
                error,
            });
        }
    }
    let dir = drop_in_dir(file);
    let read_error = |error| ConfigError::Read {
        path: dir.clone(),
        error,
    };
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(layers),
        Err(error) => return Err(read_error(error)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_error)?.path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            paths.push(path);
        }
    }
    paths.sort();
    for path in paths {
        let text = fs::read_to_string(&path).map_err(|error| ConfigError::Read {
            path: path.clone(),
            error,
        })?;
        layers.push(toml_layer(&path.display().to_string(), &text)?);
    }
    Ok(layers)
}

/// `/etc/dns-proxy/dns-proxy.toml` → `/etc/dns-proxy/dns-proxy.d`.
fn drop_in_dir(file: &Path) -> PathBuf {
    let mut name = file.file_stem().unwrap_or_default().to_os_string();
    name.push(".d");
    file.with_file_name(name)
}

/// Parses one TOML document; a syntax error is reported on one line with its position.
fn toml_layer(origin: &str, text: &str) -> Result<Layer, ConfigError> {
    let values = Toml::from_str::<Dict>(text).map_err(|error| {
        let offset = error.span().map_or(0, |span| span.start).min(text.len());
        let before = text.get(..offset).unwrap_or_default();
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        ConfigError::Syntax {
            origin: origin.to_string(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
            reason: error.message().trim().replace('\n', "; "),
        }
    })?;
    Ok(Layer {
        name: origin.to_string(),
        values,
    })
}

/// One layer per `DNS_PROXY_<KEY>` variable (sorted by name, for a stable result), then the
/// legacy Go variables, which therefore win over the generic ones.
fn env_layers(env: &[(String, String)]) -> Result<Vec<Layer>, ConfigError> {
    let mut vars: Vec<(&str, &str)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX))
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    vars.sort();
    let is_seed = |name: &str| {
        name == SEED_SERVER || name == SEED_PORT || SEED_ALIASES.iter().any(|(n, _)| *n == name)
    };
    let seed = |wanted: &str| {
        vars.iter()
            .find(|(name, _)| *name == wanted)
            .map(|(_, value)| *value)
    };
    let env_layer = |name: &str, key: &str, value: &str| {
        // Figment's `Env` syntax: `false`, `32`, `["a", "b"]`, `[{k = "v"}]`; else a string.
        let Ok(value) = value.parse::<Value>();
        Layer::single(format!("environment variable {name}"), key, value)
    };

    let mut layers = Vec::new();
    for &(name, value) in &vars {
        let key = name[ENV_PREFIX.len()..].trim().to_ascii_lowercase();
        if !key.is_empty() && !is_seed(name) {
            layers.push(env_layer(name, &key, value));
        }
    }
    for (name, key) in SEED_ALIASES {
        if let Some(value) = seed(name) {
            layers.push(env_layer(name, key, value));
        }
    }
    let invalid = |name: &str, reason: String| ConfigError::Invalid {
        origin: format!("environment variable {name}"),
        key: "upstream".to_string(),
        reason,
    };
    let port = match seed(SEED_PORT) {
        None => DOT_PORT,
        Some(port) => match port.trim().parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => {
                let reason = format!("{port:?} is not a port number (1-65535)");
                return Err(invalid(SEED_PORT, reason));
            }
        },
    };
    match seed(SEED_SERVER) {
        Some(server) => {
            let ip = server.trim().parse::<IpAddr>().map_err(|_| {
                invalid(
                    SEED_SERVER,
                    format!("{server:?} must be an IP address (e.g. \"9.9.9.9\")"),
                )
            })?;
            let entry = Dict::from([(
                "address".to_string(),
                Value::from(SocketAddr::new(ip, port).to_string()),
            )]);
            layers.push(Layer::single(
                format!("environment variable {SEED_SERVER}"),
                "upstream",
                Value::from(vec![Value::from(entry)]),
            ));
        }
        None if seed(SEED_PORT).is_some() => {
            return Err(invalid(
                SEED_PORT,
                format!("is set but {SEED_SERVER} is not; set both or neither"),
            ));
        }
        None => {}
    }
    Ok(layers)
}

/// `--listen` (all of them together replace `listen`) and `--log-level`.
fn flag_layers(flags: &Flags) -> Vec<Layer> {
    let mut layers = Vec::new();
    if !flags.listen.is_empty() {
        layers.push(Layer::single(
            "command line --listen".to_string(),
            "listen",
            Value::from(flags.listen.clone()),
        ));
    }
    if let Some(level) = &flags.log_level {
        layers.push(Layer::single(
            "command line --log-level".to_string(),
            "log_level",
            Value::from(level.as_str()),
        ));
    }
    layers
}

/// The keys as written; an absent key keeps its value from [`Config::default`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<Vec<String>>,
    udp: Option<bool>,
    tcp: Option<bool>,
    timeout: Option<RawDuration>,
    tcp_idle_timeout: Option<RawDuration>,
    tcp_max_connections: Option<usize>,
    tcp_max_connections_per_client: Option<usize>,
    tcp_max_queries: Option<usize>,
    upstream_idle_timeout: Option<RawDuration>,
    upstream_connections: Option<usize>,
    threads: Option<usize>,
    strategy: Option<String>,
    hedge: Option<String>,
    log_queries: Option<bool>,
    log_level: Option<String>,
    allow: Option<Vec<String>>,
    deny_action: Option<String>,
    rate_limit: Option<u32>,
    rate_limit_action: Option<String>,
    cache: Option<bool>,
    cache_size: Option<RawSize>,
    cache_min_ttl: Option<RawDuration>,
    cache_max_ttl: Option<RawDuration>,
    cache_negative_ttl: Option<RawDuration>,
    cache_serve_stale: Option<RawDuration>,
    cache_prefetch: Option<bool>,
    upstream: Option<Vec<RawUpstream>>,
    forward_zone: Option<Vec<RawForwardZone>>,
    metrics: Option<RawMetrics>,
}

/// The `[metrics]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

/// One `[[forward_zone]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawForwardZone {
    zones: Vec<String>,
    upstream: Vec<RawUpstream>,
}

/// One `[[upstream]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    address: String,
    protocol: Option<String>,
    tls_name: Option<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    pin_sha256: Vec<String>,
}

impl RawConfig {
    /// Checks every value set and applies it over the defaults.
    fn validate(self, figment: &Figment) -> Result<Config, ConfigError> {
        let invalid = |key: &str, shown: String, reason: String| ConfigError::Invalid {
            origin: origin(figment, key),
            key: shown,
            reason,
        };
        // Both size a semaphore and a queue: bounded so no value can exhaust memory or panic.
        let in_range = |key: &str, value: usize| match value {
            1..=MAX_LIMIT => Ok(value),
            _ => Err(invalid(
                key,
                key.to_string(),
                format!("must be between 1 and {MAX_LIMIT}"),
            )),
        };
        let mut config = Config::default();
        if let Some(listen) = self.listen {
            config.listen = listen
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    text.trim().parse::<SocketAddr>().map_err(|_| {
                        let reason = format!(
                            "{text:?} is not an IP:port address (e.g. \"127.0.0.1:5300\" or \"[::1]:5300\")"
                        );
                        invalid("listen", format!("listen[{i}]"), reason)
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(upstream) = self.upstream {
            if upstream.is_empty() {
                let reason = "must list at least one resolver".to_string();
                return Err(invalid("upstream", "upstream".to_string(), reason));
            }
            config.upstreams = upstream
                .into_iter()
                .enumerate()
                .map(|(i, raw)| match raw.validate() {
                    Ok(ZoneUpstream::Tls(upstream)) => Ok(upstream),
                    Ok(ZoneUpstream::Plain(_)) => Err(invalid(
                        "upstream",
                        format!("upstream[{i}].protocol"),
                        "the default upstreams are always DNS over TLS; plain DNS is only for \
                         a [[forward_zone]] upstream inside your network"
                            .to_string(),
                    )),
                    Err((field, reason)) => Err(invalid(
                        "upstream",
                        format!("upstream[{i}].{field}"),
                        reason,
                    )),
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(zones) = self.forward_zone {
            config.forward_zones = zones
                .into_iter()
                .enumerate()
                .map(|(i, raw)| {
                    raw.validate().map_err(|(field, reason)| {
                        invalid("forward_zone", format!("forward_zone[{i}].{field}"), reason)
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(allow) = self.allow {
            if allow.is_empty() {
                let reason = "must list at least one network (loopback: \"127.0.0.0/8\", \"::1\")";
                return Err(invalid("allow", "allow".to_string(), reason.to_string()));
            }
            config.allow = allow
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    text.parse::<Network>()
                        .map_err(|e| invalid("allow", format!("allow[{i}]"), e.to_string()))
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(metrics) = self.metrics {
            let listen = metrics.listen.trim().parse::<SocketAddr>().map_err(|_| {
                let reason = format!(
                    "{:?} is not an IP:port address (e.g. \"127.0.0.1:9153\")",
                    metrics.listen
                );
                invalid("metrics", "metrics.listen".to_string(), reason)
            })?;
            config.metrics = Some(MetricsConfig { listen });
        }
        if let Some(action) = self.deny_action {
            config.deny_action = DenyAction::parse(&action).ok_or_else(|| {
                let reason = format!("{action:?} is not one of: refuse, drop");
                invalid("deny_action", "deny_action".to_string(), reason)
            })?;
        }
        if let Some(n) = self.upstream_connections {
            if !(1..=MAX_UPSTREAM_CONNECTIONS).contains(&n) {
                let reason = format!("must be between 1 and {MAX_UPSTREAM_CONNECTIONS}");
                return Err(invalid(
                    "upstream_connections",
                    "upstream_connections".to_string(),
                    reason,
                ));
            }
            config.upstream_connections = n;
        }
        if let Some(n) = self.threads {
            if n > MAX_THREADS {
                let reason = format!("must be between 0 (one per CPU) and {MAX_THREADS}");
                return Err(invalid("threads", "threads".to_string(), reason));
            }
            config.threads = n;
        }
        if let Some(strategy) = self.strategy {
            config.strategy = Strategy::parse(&strategy).ok_or_else(|| {
                let reason = format!("{strategy:?} is not one of: fastest, failover, round-robin");
                invalid("strategy", "strategy".to_string(), reason)
            })?;
        }
        if let Some(hedge) = self.hedge {
            config.hedge = match hedge.trim() {
                "off" => Hedge::Off,
                "auto" => Hedge::Auto,
                text => match parse_duration(text) {
                    Some(delay) if !delay.is_zero() => Hedge::After(delay),
                    _ => {
                        let reason = format!(
                            "{hedge:?} is not \"off\", \"auto\" or a duration like \"50ms\""
                        );
                        return Err(invalid("hedge", "hedge".to_string(), reason));
                    }
                },
            };
        }
        config.rate_limit = self.rate_limit.unwrap_or(config.rate_limit);
        if let Some(action) = self.rate_limit_action {
            config.rate_limit_action = DenyAction::parse(&action).ok_or_else(|| {
                let reason = format!("{action:?} is not one of: refuse, drop");
                invalid("rate_limit_action", "rate_limit_action".to_string(), reason)
            })?;
        }
        if let Some(level) = self.log_level {
            if !LOG_LEVELS.contains(&level.as_str()) {
                let reason = format!(
                    "{level:?} is not a log level (expected one of: {})",
                    LOG_LEVELS.join(", ")
                );
                return Err(invalid("log_level", "log_level".to_string(), reason));
            }
            config.log_level = level;
        }
        if let Some(n) = self.tcp_max_connections {
            config.tcp_max_connections = in_range("tcp_max_connections", n)?;
        }
        if let Some(n) = self.tcp_max_connections_per_client {
            config.tcp_max_connections_per_client = in_range("tcp_max_connections_per_client", n)?;
        }
        if let Some(n) = self.tcp_max_queries {
            config.tcp_max_queries = in_range("tcp_max_queries", n)?;
        }
        config.udp = self.udp.unwrap_or(config.udp);
        config.tcp = self.tcp.unwrap_or(config.tcp);
        if !config.udp && !config.tcp {
            let reason = "udp and tcp are both off: nothing would be served".to_string();
            return Err(invalid("udp", "udp".to_string(), reason));
        }
        config.log_queries = self.log_queries.unwrap_or(config.log_queries);
        let or = |raw: Option<RawDuration>, default: Duration| raw.map_or(default, |d| d.0);
        let positive =
            |key: &str, raw: Option<RawDuration>, default: Duration| match or(raw, default) {
                zero if zero.is_zero() => Err(invalid(
                    key,
                    key.to_string(),
                    "must be greater than 0".to_string(),
                )),
                duration => Ok(duration),
            };
        config.timeout = positive("timeout", self.timeout, config.timeout)?;
        config.tcp_idle_timeout = positive(
            "tcp_idle_timeout",
            self.tcp_idle_timeout,
            config.tcp_idle_timeout,
        )?;
        config.upstream_idle_timeout = positive(
            "upstream_idle_timeout",
            self.upstream_idle_timeout,
            config.upstream_idle_timeout,
        )?;

        let cache = &mut config.cache;
        cache.enabled = self.cache.unwrap_or(cache.enabled);
        cache.prefetch = self.cache_prefetch.unwrap_or(cache.prefetch);
        if let Some(size) = self.cache_size {
            if !(MIN_CACHE_SIZE..=MAX_CACHE_SIZE).contains(&size.0) {
                let reason = format!(
                    "must be between {} and {} (set cache = false to turn the cache off)",
                    toml_size(MIN_CACHE_SIZE),
                    toml_size(MAX_CACHE_SIZE)
                );
                return Err(invalid("cache_size", "cache_size".to_string(), reason));
            }
            cache.size = size.0;
        }
        cache.min_ttl = or(self.cache_min_ttl, cache.min_ttl);
        cache.max_ttl = or(self.cache_max_ttl, cache.max_ttl);
        cache.negative_ttl = or(self.cache_negative_ttl, cache.negative_ttl);
        cache.serve_stale = or(self.cache_serve_stale, cache.serve_stale);
        for (key, value) in [
            ("cache_min_ttl", cache.min_ttl),
            ("cache_max_ttl", cache.max_ttl),
            ("cache_negative_ttl", cache.negative_ttl),
            ("cache_serve_stale", cache.serve_stale),
        ] {
            // TTLs are 32-bit seconds; whole seconds keep countdowns exact.
            if value.subsec_nanos() != 0 || value > MAX_TTL {
                let reason = "must be whole seconds, at most 68 years".to_string();
                return Err(invalid(key, key.to_string(), reason));
            }
        }
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
                return Err(invalid(key, key.to_string(), reason));
            }
        }
        Ok(config)
    }
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
        Ok(ForwardZone { zones, upstreams })
    }
}

impl RawUpstream {
    /// Checks one upstream; an error is the offending field (with index, for pins) and the
    /// reason. Reads `ca_file` now, so an unreadable file stops loading instead of failing
    /// every later connection.
    fn validate(self) -> Result<ZoneUpstream, (String, String)> {
        let plain = match self.protocol.as_deref().map(str::trim) {
            None | Some("tls") => false,
            Some("udp") => true,
            Some(other) => {
                let reason = format!("{other:?} is not one of: tls, udp");
                return Err(("protocol".to_string(), reason));
            }
        };
        let port = if plain { DNS_PORT } else { DOT_PORT };
        let address = parse_upstream_address(&self.address, port).ok_or_else(|| {
            let reason = format!(
                "{:?} must be an IP address (e.g. \"9.9.9.9\" or \"9.9.9.9:{port}\")",
                self.address
            );
            ("address".to_string(), reason)
        })?;
        if plain {
            let tls_only = [
                ("tls_name", self.tls_name.is_some()),
                ("ca_file", self.ca_file.is_some()),
                ("pin_sha256", !self.pin_sha256.is_empty()),
            ];
            if let Some((field, _)) = tls_only.iter().find(|(_, set)| *set) {
                let reason = "applies only to protocol \"tls\"".to_string();
                return Err((field.to_string(), reason));
            }
            return Ok(ZoneUpstream::Plain(address));
        }
        let tls_name = match self.tls_name {
            // Without a name the certificate must hold the IP address (an IP SAN).
            None => ServerName::from(address.ip()),
            Some(name) => ServerName::try_from(name.clone()).map_err(|_| {
                let reason = format!("{name:?} is not a valid DNS name or IP address");
                ("tls_name".to_string(), reason)
            })?,
        };
        let ca_roots = match &self.ca_file {
            Some(path) => Some(read_ca_file(path).map_err(|r| ("ca_file".to_string(), r))?),
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
        }))
    }
}

/// `IP`, `IP:port`, `[v6]:port`, bare `v6` or `[v6]`; the port defaults to `port` and must
/// not be 0. Host names are refused: resolving them would need the DNS this daemon provides.
fn parse_upstream_address(text: &str, port: u16) -> Option<SocketAddr> {
    let text = text.trim();
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let address = text
        .parse::<SocketAddr>()
        .ok()
        .or_else(|| Some(SocketAddr::new(unbracketed.parse().ok()?, port)))?;
    (address.port() != 0).then_some(address)
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

/// A duration as written, `<integer><unit>` with unit `ms`, `s`, `m`, `h` or `d`. Parsed
/// while figment extracts, so that a bare number (e.g. `DNS_PROXY_TIMEOUT=1500`) gets the same
/// clear reason as a malformed string. Keys that need more than zero check it in `validate`.
#[derive(Debug)]
struct RawDuration(Duration);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<RawDuration, D::Error> {
        deserializer.deserialize_str(DurationVisitor)
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = RawDuration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(DURATION_EXPECTED)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RawDuration, E> {
        parse_duration(text)
            .map(RawDuration)
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let millis = number.parse::<u64>().ok()?.checked_mul(factor)?;
    Some(Duration::from_millis(millis))
}

/// The largest unit that shows `duration` exactly, as a TOML string.
fn toml_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1000, "s"),
    ];
    match units
        .iter()
        .find(|(factor, _)| millis > 0 && millis % factor == 0)
    {
        Some((factor, unit)) => format!("\"{}{unit}\"", millis / factor),
        None => format!("\"{millis}ms\""),
    }
}

/// A size in bytes: an integer, or a string with a binary unit (`"512KiB"`, `"32MiB"`,
/// `"1GiB"`; `K`, `M`, `G` mean the same).
#[derive(Debug)]
struct RawSize(usize);

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<RawSize, D::Error> {
        deserializer.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl Visitor<'_> for SizeVisitor {
    type Value = RawSize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(SIZE_EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<RawSize, E> {
        usize::try_from(bytes)
            .map(RawSize)
            .map_err(|_| E::invalid_value(Unexpected::Unsigned(bytes), &self))
    }

    fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<RawSize, E> {
        u64::try_from(bytes)
            .map_err(|_| E::invalid_value(Unexpected::Signed(bytes), &self))
            .and_then(|bytes| self.visit_u64(bytes))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<RawSize, E> {
        parse_size(text)
            .map(RawSize)
            .ok_or_else(|| E::invalid_value(Unexpected::Str(text), &self))
    }
}

fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    number.parse::<usize>().ok()?.checked_mul(1 << shift)
}

/// The largest binary unit that shows `bytes` exactly, as a TOML string.
fn toml_size(bytes: usize) -> String {
    let units = [(30, "GiB"), (20, "MiB"), (10, "KiB")];
    match units
        .iter()
        .find(|(shift, _)| bytes > 0 && bytes % (1 << shift) == 0)
    {
        Some((shift, unit)) => format!("\"{}{unit}\"", bytes >> shift),
        None => bytes.to_string(),
    }
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The name of the layer that set top-level `key`, or "default" when none did.
fn origin(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map_or_else(|| "default".to_string(), |m| m.name.to_string())
}

/// `["upstream", "0", "address"]` → `upstream[0].address`.
fn key_path(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if !key.is_empty() && part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temp dir holding `dns-proxy.toml` (when `main` is given) and `dns-proxy.d/` drop-ins.
    fn setup(main: Option<&str>, drop_ins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dns-proxy.toml");
        if let Some(text) = main {
            fs::write(&file, text).unwrap();
        }
        if !drop_ins.is_empty() {
            fs::create_dir(dir.path().join("dns-proxy.d")).unwrap();
        }
        for (name, text) in drop_ins {
            fs::write(dir.path().join("dns-proxy.d").join(name), text).unwrap();
        }
        (dir, file)
    }

    fn sources(file: &Path, env: &[(&str, &str)], flags: Flags) -> Sources {
        Sources {
            file: file.to_path_buf(),
            file_required: false,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            flags,
        }
    }

    fn load_env(env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let (_dir, file) = setup(None, &[]);
        load(&sources(&file, env, Flags::default()))
    }

    /// The error's message, checked to be a single line.
    fn error_of<T>(result: Result<T, ConfigError>) -> String {
        let message = match result {
            Ok(_) => panic!("expected an error"),
            Err(error) => error.to_string(),
        };
        assert!(!message.contains('\n'), "not one line: {message}");
        message
    }

    fn toml_error(toml: &str) -> String {
        error_of(Config::from_toml_str(toml))
    }

    const UPSTREAM: &str = "[[upstream]]\naddress = \"9.9.9.9\"\n";

    /// The one upstream configured by `body`, the keys of an `[[upstream]]` table.
    fn one_upstream(body: &str) -> UpstreamConfig {
        let config = Config::from_toml_str(&format!("[[upstream]]\n{body}")).unwrap();
        config.upstreams[0].clone()
    }

    fn pin_of(byte: u8, len: usize) -> String {
        STANDARD.encode(vec![byte; len])
    }

    #[test]
    fn threads_default_to_one_and_zero_means_one_per_cpu() {
        assert_eq!(Config::default().threads, 1);
        assert_eq!(Config::from_toml_str("threads = 0").unwrap().threads, 0);
        assert_eq!(Config::from_toml_str("threads = 4").unwrap().threads, 4);
        let message = error_of(load_env(&[("DNS_PROXY_THREADS", "257")]));
        assert!(message.contains("threads"), "{message}");
        assert!(message.contains("between 0"), "{message}");
    }

    #[test]
    fn defaults() {
        let config = Config::default();
        let addrs: Vec<String> = config.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(addrs, ["127.0.0.1:5300", "[::1]:5300"]);
        assert!(config.udp && config.tcp && !config.log_queries);
        assert_eq!(config.timeout, Duration::from_millis(2000));
        assert_eq!(config.tcp_idle_timeout, Duration::from_secs(10));
        assert_eq!(config.tcp_max_connections, 256);
        assert_eq!(config.tcp_max_queries, 64);
        assert_eq!(config.upstream_idle_timeout, Duration::from_secs(30));
        assert_eq!(config.log_level, "info");
        let upstreams: Vec<(String, String)> = config
            .upstreams
            .iter()
            .map(|u| (u.address.to_string(), u.tls_name.to_str().into_owned()))
            .collect();
        assert_eq!(
            upstreams,
            [
                ("1.1.1.1:853".to_string(), "cloudflare-dns.com".to_string()),
                ("1.0.0.1:853".to_string(), "cloudflare-dns.com".to_string()),
            ]
        );
        assert!(matches!(
            config.upstreams[0].tls_name,
            ServerName::DnsName(_)
        ));
        assert!(
            config
                .upstreams
                .iter()
                .all(|u| u.ca_file.is_none() && u.ca_roots.is_none() && u.pin_sha256.is_empty())
        );
        assert_eq!(Config::from_toml_str("").unwrap(), config);
    }

    #[test]
    fn every_key_is_parsed() {
        let pin = pin_of(7, 32);
        let config = Config::from_toml_str(&format!(
            r#"
            listen = ["0.0.0.0:53", "[::]:53"]
            udp = false
            tcp = true
            timeout = "1500ms"
            tcp_idle_timeout = "5s"
            tcp_max_connections = 10
            tcp_max_queries = 3
            upstream_idle_timeout = "2m"
            log_queries = true
            log_level = "debug"
            [[upstream]]
            address = "9.9.9.9:8853"
            tls_name = "dns.quad9.net"
            pin_sha256 = ["{pin}"]
            [[upstream]]
            address = "149.112.112.112"
            "#
        ))
        .unwrap();
        assert_eq!(
            config.listen,
            ["0.0.0.0:53".parse().unwrap(), "[::]:53".parse().unwrap()] as [SocketAddr; 2]
        );
        assert!(!config.udp && config.tcp && config.log_queries);
        assert_eq!(config.timeout, Duration::from_millis(1500));
        assert_eq!(config.tcp_idle_timeout, Duration::from_secs(5));
        assert_eq!(config.tcp_max_connections, 10);
        assert_eq!(config.tcp_max_queries, 3);
        assert_eq!(config.upstream_idle_timeout, Duration::from_secs(120));
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.upstreams.len(), 2);
        let first = &config.upstreams[0];
        assert_eq!(first.address, "9.9.9.9:8853".parse().unwrap());
        assert_eq!(first.tls_name.to_str(), "dns.quad9.net");
        assert_eq!(first.pin_sha256, vec![[7u8; 32]]);
        assert_eq!(
            config.upstreams[1].address,
            "149.112.112.112:853".parse().unwrap()
        );
    }

    #[test]
    fn forward_zones() {
        let config = Config::from_toml_str(
            "[[forward_zone]]\nzones = [\"Corp.Example.\", \"compute.internal\"]\n\
             [[forward_zone.upstream]]\naddress = \"10.0.0.2\"\nprotocol = \"udp\"\n\
             [[forward_zone.upstream]]\naddress = \"10.0.0.3\"\ntls_name = \"dns.corp.example\"\n",
        )
        .unwrap();
        let zone = &config.forward_zones[0];
        assert_eq!(zone.zones[0].to_string(), "corp.example");
        assert_eq!(
            zone.upstreams[0],
            ZoneUpstream::Plain("10.0.0.2:53".parse().unwrap())
        );
        let ZoneUpstream::Tls(tls) = &zone.upstreams[1] else {
            panic!("the default protocol is TLS");
        };
        assert_eq!(tls.address, "10.0.0.3:853".parse().unwrap());

        for (toml, expected) in [
            (
                "[[upstream]]\naddress = \"9.9.9.9\"\nprotocol = \"udp\"",
                r#"key "upstream[0].protocol": the default upstreams are always DNS over TLS"#,
            ),
            (
                "[[forward_zone]]\nzones = [\".\"]\n[[forward_zone.upstream]]\naddress = \"10.0.0.2\"",
                r#"key "forward_zone[0].zones[0]": "." is empty or the root zone"#,
            ),
            (
                "[[forward_zone]]\nzones = [\"a\"]\n[[forward_zone.upstream]]\naddress = \"10.0.0.2\"\nprotocol = \"udp\"\ntls_name = \"x\"",
                r#"key "forward_zone[0].upstream[0].tls_name": applies only to protocol "tls""#,
            ),
            (
                "[[forward_zone]]\nzones = [\"a\"]\n[[forward_zone.upstream]]\naddress = \"10.0.0.2\"\nprotocol = \"http\"",
                r#"key "forward_zone[0].upstream[0].protocol": "http" is not one of: tls, udp"#,
            ),
            (
                "[[forward_zone]]\nzones = []\nupstream = []",
                r#"key "forward_zone[0].zones": must list at least one zone"#,
            ),
        ] {
            let message = toml_error(toml);
            assert!(message.contains(expected), "{toml}: {message}");
        }
    }

    #[test]
    fn cache_keys() {
        let config = Config::from_toml_str(
            "cache_size = \"64MiB\"\ncache_min_ttl = \"30s\"\ncache_max_ttl = \"2h\"\n\
             cache_negative_ttl = \"5m\"\ncache_serve_stale = \"0s\"\ncache_prefetch = false",
        )
        .unwrap();
        let cache = &config.cache;
        assert_eq!(cache.size, 64 << 20);
        assert_eq!(cache.min_ttl, Duration::from_secs(30));
        assert_eq!(cache.max_ttl, Duration::from_secs(7200));
        assert_eq!(cache.negative_ttl, Duration::from_secs(300));
        assert!(cache.serve_stale.is_zero() && !cache.prefetch && cache.enabled);
        for (text, bytes) in [
            ("1048576", 1 << 20),
            ("\"512KiB\"", 512 << 10),
            ("\"1G\"", 1 << 30),
        ] {
            let config = Config::from_toml_str(&format!("cache_size = {text}")).unwrap();
            assert_eq!(config.cache.size, bytes, "{text}");
        }
        let loaded = load_env(&[
            ("DNS_PROXY_CACHE_SIZE", "8MiB"),
            ("DNS_PROXY_CACHE", "false"),
        ]);
        let loaded = loaded.unwrap();
        assert_eq!(loaded.config.cache.size, 8 << 20);
        assert!(!loaded.config.cache.enabled);
        assert!(
            loaded
                .describe()
                .contains("cache_size = \"8MiB\"  # environment variable DNS_PROXY_CACHE_SIZE")
        );

        for (toml, expected) in [
            (
                "cache_size = 1000",
                r#"key "cache_size": must be between "64KiB" and "64GiB""#,
            ),
            (
                "cache_size = \"32 furlongs\"",
                r#"key "cache_size": expected a size in bytes"#,
            ),
            (
                "cache_size = -1",
                r#"key "cache_size": expected a size in bytes"#,
            ),
            (
                "cache_max_ttl = \"1500ms\"",
                r#"key "cache_max_ttl": must be whole seconds"#,
            ),
            (
                "cache_min_ttl = \"1h\"\ncache_negative_ttl = \"5m\"",
                r#"key "cache_negative_ttl": "5m" is below cache_min_ttl ("1h")"#,
            ),
        ] {
            let message = toml_error(toml);
            assert!(message.contains(expected), "{toml}: {message}");
        }
    }

    #[test]
    fn durations() {
        for (text, millis) in [
            ("2000ms", 2000),
            ("2s", 2000),
            ("1m", 60_000),
            ("1ms", 1),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
        ] {
            let config = Config::from_toml_str(&format!("timeout = \"{text}\"")).unwrap();
            assert_eq!(config.timeout, Duration::from_millis(millis), "{text}");
        }
        for bad in [
            "\"fast\"", "\"2\"", "\"2w\"", "\"1.5s\"", "\"-1s\"", "\"\"", "\" 2s\"",
        ] {
            let message = toml_error(&format!("tcp_idle_timeout = {bad}"));
            assert!(
                message.contains(r#"key "tcp_idle_timeout": expected a duration like "2000ms", "2s", "5m", "1h" or "1d", found string"#),
                "{bad}: {message}"
            );
        }
        let message = toml_error("timeout = 2000");
        assert!(
            message.contains(r#"key "timeout": expected a duration like "2000ms", "2s""#)
                && message.contains("2000"),
            "{message}"
        );
        let message = toml_error("upstream_idle_timeout = \"0s\"");
        assert!(
            message.contains(r#"key "upstream_idle_timeout": must be greater than 0"#),
            "{message}"
        );
        let message = toml_error("timeout = \"99999999999999999m\"");
        assert!(message.contains("expected a duration"), "{message}");
    }

    #[test]
    fn upstream_address_forms() {
        for (text, expected) in [
            ("9.9.9.9", "9.9.9.9:853"),
            ("9.9.9.9:8853", "9.9.9.9:8853"),
            ("2620:fe::fe", "[2620:fe::fe]:853"),
            ("[2620:fe::fe]", "[2620:fe::fe]:853"),
            ("[2620:fe::fe]:8853", "[2620:fe::fe]:8853"),
        ] {
            let upstream = one_upstream(&format!("address = \"{text}\""));
            assert_eq!(upstream.address.to_string(), expected, "{text}");
        }
        let message = toml_error("[[upstream]]\naddress = \"dns.google\"");
        assert!(
            message.ends_with(r#"key "upstream[0].address": "dns.google" must be an IP address (e.g. "9.9.9.9" or "9.9.9.9:853")"#),
            "{message}"
        );
        for bad in ["dns.google:853", "9.9.9.9:0", "9.9.9.9:99999", ""] {
            let message = toml_error(&format!("[[upstream]]\naddress = \"{bad}\""));
            assert!(
                message.contains("must be an IP address"),
                "{bad}: {message}"
            );
        }
    }

    #[test]
    fn tls_name_defaults_to_the_ip_address() {
        let upstream = one_upstream("address = \"9.9.9.9\"");
        assert_eq!(
            upstream.tls_name,
            ServerName::from(IpAddr::from([9, 9, 9, 9]))
        );
        let upstream = one_upstream("address = \"9.9.9.9\"\ntls_name = \"149.112.112.112\"");
        assert_eq!(upstream.tls_name.to_str(), "149.112.112.112");
        let message = toml_error("[[upstream]]\naddress = \"9.9.9.9\"\ntls_name = \"not a name\"");
        assert!(
            message.contains(r#"key "upstream[0].tls_name": "not a name" is not a valid DNS name"#),
            "{message}"
        );
    }

    #[test]
    fn layers_override_in_order() {
        // Each layer sets the key that proves it beats the layer before it.
        let (dir, file) = setup(
            Some("udp = false\ntimeout = \"1s\"\nlog_level = \"error\"\ntcp_max_queries = 1\n"),
            &[
                ("20-b.toml", "timeout = \"3s\"\ntcp_max_queries = 3\n"),
                (
                    "10-a.toml",
                    "timeout = \"2s\"\ntcp_max_queries = 2\nlog_queries = true\n",
                ),
                ("ignored.conf", "this is not toml ["),
            ],
        );
        let env = [
            ("DNS_PROXY_TCP_MAX_QUERIES", "4"),
            ("DNS_PROXY_LOG_LEVEL", "warn"),
            ("DNS_PROXY_UDP", "true"),
            ("DNS_PROXY_ENABLE_UDP", "false"),
            ("OTHER_TIMEOUT", "9s"),
        ];
        let flags = Flags {
            listen: vec!["127.0.0.1:5399".into(), "[::1]:5399".into()],
            log_level: Some("trace".into()),
        };
        let loaded = load(&sources(&file, &env, flags)).unwrap();
        let config = &loaded.config;
        assert_eq!(config.timeout, Duration::from_secs(3));
        assert!(config.log_queries);
        assert_eq!(config.tcp_max_queries, 4);
        assert!(!config.udp);
        assert_eq!(config.log_level, "trace");
        assert_eq!(config.listen.len(), 2);
        let drop_in = |name: &str| {
            dir.path()
                .join("dns-proxy.d")
                .join(name)
                .display()
                .to_string()
        };
        assert_eq!(loaded.origin("timeout"), drop_in("20-b.toml"));
        assert_eq!(loaded.origin("log_queries"), drop_in("10-a.toml"));
        assert_eq!(
            loaded.origin("tcp_max_queries"),
            "environment variable DNS_PROXY_TCP_MAX_QUERIES"
        );
        assert_eq!(
            loaded.origin("udp"),
            "environment variable DNS_PROXY_ENABLE_UDP"
        );
        assert_eq!(loaded.origin("log_level"), "command line --log-level");
        assert_eq!(loaded.origin("listen"), "command line --listen");
        assert_eq!(loaded.origin("tcp"), "default");
    }

    #[test]
    fn main_file_alone_and_missing_files() {
        let (_dir, file) = setup(Some("tcp = false"), &[]);
        let loaded = load(&sources(&file, &[], Flags::default())).unwrap();
        assert!(!loaded.config.tcp);
        assert_eq!(loaded.origin("tcp"), file.display().to_string());

        // Drop-ins are read even without a main file.
        let (_dir, file) = setup(None, &[("x.toml", "tcp = false")]);
        assert!(
            !load(&sources(&file, &[], Flags::default()))
                .unwrap()
                .config
                .tcp
        );

        let (_dir, file) = setup(None, &[]);
        assert_eq!(
            load(&sources(&file, &[], Flags::default())).unwrap().config,
            Config::default()
        );
        let mut required = sources(&file, &[], Flags::default());
        required.file_required = true;
        let message = error_of(load(&required));
        assert!(
            message.starts_with(&format!("{}: cannot read", file.display())),
            "{message}"
        );
    }

    #[test]
    fn drop_in_dir_is_next_to_the_main_file() {
        assert_eq!(
            drop_in_dir(Path::new(DEFAULT_CONFIG_FILE)),
            Path::new("/etc/dns-proxy/dns-proxy.d")
        );
        assert_eq!(drop_in_dir(Path::new("my.conf")), Path::new("my.d"));
    }

    #[test]
    fn toml_syntax_error_names_the_file() {
        let (_dir, file) = setup(Some("udp = true\ntimeout = \"2s\n"), &[]);
        let message = error_of(load(&sources(&file, &[], Flags::default())));
        assert!(
            message.starts_with(&format!("{}: line 2, column", file.display())),
            "{message}"
        );
        let (dir, file) = setup(None, &[("bad.toml", "[[upstream]\n")]);
        let message = error_of(load(&sources(&file, &[], Flags::default())));
        let bad = dir.path().join("dns-proxy.d").join("bad.toml");
        assert!(
            message.starts_with(&format!("{}: line 1", bad.display())),
            "{message}"
        );
    }

    #[test]
    fn generic_environment_variables() {
        let loaded = load_env(&[
            ("DNS_PROXY_UDP", "false"),
            ("DNS_PROXY_TIMEOUT", "1500ms"),
            ("DNS_PROXY_TCP_MAX_CONNECTIONS", "12"),
            ("DNS_PROXY_LISTEN", r#"["127.0.0.1:5353"]"#),
            (
                "DNS_PROXY_UPSTREAM",
                r#"[{address="9.9.9.9",tls_name="dns.quad9.net"}]"#,
            ),
        ])
        .unwrap();
        let config = &loaded.config;
        assert!(!config.udp);
        assert_eq!(config.timeout, Duration::from_millis(1500));
        assert_eq!(config.tcp_max_connections, 12);
        assert_eq!(config.listen, vec!["127.0.0.1:5353".parse().unwrap()]);
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.upstreams[0].address, "9.9.9.9:853".parse().unwrap());
        assert_eq!(config.upstreams[0].tls_name.to_str(), "dns.quad9.net");
        assert_eq!(
            loaded.origin("timeout"),
            "environment variable DNS_PROXY_TIMEOUT"
        );
        assert_eq!(
            loaded.origin("upstream"),
            "environment variable DNS_PROXY_UPSTREAM"
        );
    }

    #[test]
    fn seed_variables() {
        let config = load_env(&[("DNS_PROXY_UPSTREAM_SERVER", "9.9.9.9")])
            .unwrap()
            .config;
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(config.upstreams[0].address, "9.9.9.9:853".parse().unwrap());
        assert_eq!(config.upstreams[0].tls_name.to_str(), "9.9.9.9");

        let loaded = load_env(&[
            (
                "DNS_PROXY_UPSTREAM",
                r#"[{address="1.1.1.1"},{address="1.0.0.1"}]"#,
            ),
            ("DNS_PROXY_UPSTREAM_SERVER", "2620:fe::fe"),
            ("DNS_PROXY_UPSTREAM_PORT", "8853"),
            ("DNS_PROXY_TIMEOUT", "1s"),
            ("DNS_PROXY_UPSTREAM_TIMEOUT", "3s"),
            ("DNS_PROXY_ENABLE_TCP", "false"),
            ("DNS_PROXY_ENABLE_UDP", "true"),
            ("DNS_PROXY_UDP", "false"),
        ])
        .unwrap();
        let config = &loaded.config;
        assert_eq!(config.upstreams.len(), 1);
        assert_eq!(
            config.upstreams[0].address,
            "[2620:fe::fe]:8853".parse().unwrap()
        );
        assert_eq!(config.timeout, Duration::from_secs(3));
        assert!(
            !config.tcp && config.udp,
            "the seed variable wins over DNS_PROXY_UDP"
        );
        assert_eq!(
            loaded.origin("upstream"),
            "environment variable DNS_PROXY_UPSTREAM_SERVER"
        );
        assert_eq!(
            loaded.origin("timeout"),
            "environment variable DNS_PROXY_UPSTREAM_TIMEOUT"
        );

        let message = error_of(load_env(&[("DNS_PROXY_UPSTREAM_PORT", "853")]));
        assert!(
            message.starts_with("environment variable DNS_PROXY_UPSTREAM_PORT: ")
                && message.contains("DNS_PROXY_UPSTREAM_SERVER is not"),
            "{message}"
        );
        let message = error_of(load_env(&[
            ("DNS_PROXY_UPSTREAM_SERVER", "9.9.9.9"),
            ("DNS_PROXY_UPSTREAM_PORT", "dot"),
        ]));
        assert!(
            message.starts_with("environment variable DNS_PROXY_UPSTREAM_PORT: "),
            "{message}"
        );
        let message = error_of(load_env(&[("DNS_PROXY_UPSTREAM_SERVER", "dns.google")]));
        assert!(
            message.starts_with("environment variable DNS_PROXY_UPSTREAM_SERVER: ")
                && message.contains("must be an IP address"),
            "{message}"
        );
        let message = error_of(load_env(&[("DNS_PROXY_ENABLE_TCP", "maybe")]));
        assert!(
            message.starts_with(r#"environment variable DNS_PROXY_ENABLE_TCP: key "tcp": "#),
            "{message}"
        );
    }

    #[test]
    fn environment_errors_name_the_variable() {
        let message = error_of(load_env(&[("DNS_PROXY_UDP", "maybe")]));
        assert_eq!(
            message,
            r#"environment variable DNS_PROXY_UDP: key "udp": expected a boolean, found string "maybe""#
        );
        let message = error_of(load_env(&[("DNS_PROXY_TIMEOUT", "fast")]));
        assert_eq!(
            message,
            r#"environment variable DNS_PROXY_TIMEOUT: key "timeout": expected a duration like "2000ms", "2s", "5m", "1h" or "1d", found string "fast""#
        );
        let message = error_of(load_env(&[("DNS_PROXY_TIMEOUT", "1500")]));
        assert!(
            message.starts_with(
                r#"environment variable DNS_PROXY_TIMEOUT: key "timeout": expected a duration"#
            ),
            "{message}"
        );
        let message = error_of(load_env(&[("DNS_PROXY_TIMOUT", "1s")]));
        assert!(
            message.starts_with(r#"environment variable DNS_PROXY_TIMOUT: unknown key "timout""#),
            "{message}"
        );
        let message = error_of(load_env(&[("DNS_PROXY_LISTEN", r#"["localhost:53"]"#)]));
        assert!(
            message.starts_with(
                r#"environment variable DNS_PROXY_LISTEN: key "listen[0]": "localhost:53""#
            ),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_in_file_names_file_and_key() {
        let (_dir, file) = setup(Some("timout = \"1s\""), &[]);
        let message = error_of(load(&sources(&file, &[], Flags::default())));
        assert!(
            message.starts_with(&format!(
                "{}: unknown key \"timout\" (expected one of: listen, udp, tcp, timeout,",
                file.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_with_newline_is_one_line() {
        // A quoted key may hold any character; printed raw it split the error over two lines.
        let message = toml_error("\"a\\nb\" = 1\n[[upstream]]\naddress = \"9.9.9.9\"\n");
        assert!(
            message.starts_with(r#"configuration string: unknown key "a\nb" (expected"#),
            "{message}"
        );
        let message = toml_error("[[upstream]]\naddress = \"9.9.9.9\"\n\"x\\ty\" = 1\n");
        assert!(
            message.contains(r#"unknown key "upstream[0].x\ty""#),
            "{message}"
        );
    }

    #[test]
    fn unknown_key_in_upstream() {
        let (_dir, file) = setup(
            Some(
                "[[upstream]]\naddress = \"9.9.9.9\"\n[[upstream]]\naddress = \"1.1.1.1\"\ntls-name = \"x\"\n",
            ),
            &[],
        );
        let message = error_of(load(&sources(&file, &[], Flags::default())));
        assert_eq!(
            message,
            format!(
                "{}: unknown key \"upstream[1].tls-name\" (expected one of: address, protocol, tls_name, ca_file, pin_sha256)",
                file.display()
            )
        );
        let message = toml_error("[[upstream]]\ntls_name = \"x.test\"");
        assert!(
            message.contains(r#"key "upstream[0]": missing field `address`"#),
            "{message}"
        );
    }

    #[test]
    fn ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        fs::write(&ca, cert.cert.pem()).unwrap();
        let upstream = one_upstream(&format!(
            "address = \"9.9.9.9\"\nca_file = {}",
            toml_string(&ca.display().to_string())
        ));
        assert_eq!(upstream.ca_file.as_deref(), Some(ca.as_path()));
        assert_eq!(upstream.ca_roots.map(|roots| roots.len()), Some(1));

        let missing = dir.path().join("missing.pem");
        let message = toml_error(&format!(
            "{UPSTREAM}ca_file = {}",
            toml_string(&missing.display().to_string())
        ));
        assert!(
            message.contains(r#"key "upstream[0].ca_file": cannot read certificates from"#)
                && message.contains(&missing.display().to_string()),
            "{message}"
        );
        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "no certificates here\n").unwrap();
        let message = toml_error(&format!(
            "{UPSTREAM}ca_file = {}",
            toml_string(&empty.display().to_string())
        ));
        assert!(
            message.contains(&format!(
                r#"key "upstream[0].ca_file": {} contains no PEM certificate"#,
                empty.display()
            )),
            "{message}"
        );
    }

    #[test]
    fn pins() {
        let upstream = one_upstream(&format!(
            "address = \"9.9.9.9\"\npin_sha256 = [\"{}\", \"{}\"]",
            pin_of(1, 32),
            pin_of(2, 32)
        ));
        assert_eq!(upstream.pin_sha256, vec![[1u8; 32], [2u8; 32]]);
        let message = toml_error(&format!(
            "{UPSTREAM}pin_sha256 = [\"{}\", \"{}\"]",
            pin_of(1, 32),
            pin_of(1, 20)
        ));
        assert!(
            message.contains(r#"key "upstream[0].pin_sha256[1]": "#)
                && message.contains("decodes to 20 bytes"),
            "{message}"
        );
        let message = toml_error(&format!("{UPSTREAM}pin_sha256 = [\"not base64!\"]"));
        assert!(
            message
                .contains(r#"key "upstream[0].pin_sha256[0]": "not base64!" is not valid base64"#),
            "{message}"
        );
    }

    #[test]
    fn value_checks() {
        let message = toml_error("upstream = []");
        assert!(
            message.ends_with(r#"key "upstream": must list at least one resolver"#),
            "{message}"
        );
        for key in ["tcp_max_connections", "tcp_max_queries"] {
            for value in [0, 65_536, usize::MAX / 2] {
                let message = toml_error(&format!("{key} = {value}"));
                assert!(
                    message.ends_with(&format!("key \"{key}\": must be between 1 and 65535")),
                    "{message}"
                );
            }
        }
        let message = toml_error("udp = false\ntcp = false");
        assert!(message.contains("nothing would be served"), "{message}");
        let message = toml_error("log_level = \"verbose\"");
        assert!(
            message.contains(r#"key "log_level": "verbose" is not a log level"#),
            "{message}"
        );
        let message = toml_error("listen = [\"127.0.0.1\"]");
        assert!(
            message.contains(r#"key "listen[0]": "127.0.0.1" is not an IP:port"#),
            "{message}"
        );
        let message = toml_error("udp = \"yes\"");
        assert!(
            message.starts_with("configuration string: key \"udp\""),
            "{message}"
        );
        let flags = Flags {
            listen: vec!["nowhere".into()],
            log_level: None,
        };
        let (_dir, file) = setup(None, &[]);
        let message = error_of(load(&sources(&file, &[], flags)));
        assert!(
            message.starts_with(r#"command line --listen: key "listen[0]": "nowhere""#),
            "{message}"
        );
    }

    #[test]
    fn describe_shows_values_and_sources() {
        let (dir, file) = setup(
            Some(&format!(
                "timeout = \"750ms\"\n[[upstream]]\naddress = \"9.9.9.9\"\ntls_name = \"dns.quad9.net\"\npin_sha256 = [\"{}\"]\n",
                pin_of(3, 32)
            )),
            &[],
        );
        let ca = dir.path().join("c\"a.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        fs::write(&ca, cert.cert.pem()).unwrap();
        let upstream_env = format!(
            "[{{address=\"9.9.9.9\",tls_name=\"dns.quad9.net\",pin_sha256=[\"{}\"]}},{{address=\"2620:fe::fe\",ca_file={}}}]",
            pin_of(3, 32),
            toml_string(&ca.display().to_string())
        );
        let env = [
            ("DNS_PROXY_TCP_IDLE_TIMEOUT", "7s"),
            ("DNS_PROXY_UPSTREAM", upstream_env.as_str()),
        ];
        let flags = Flags {
            listen: vec!["127.0.0.1:5399".into()],
            log_level: None,
        };
        let loaded = load(&sources(&file, &env, flags)).unwrap();
        let text = loaded.describe();
        let file_name = file.display().to_string();
        for line in [
            r#"listen = ["127.0.0.1:5399"]  # command line --listen"#,
            "udp = true  # default",
            "tcp = true  # default",
            &format!(r#"timeout = "750ms"  # {file_name}"#),
            r#"tcp_idle_timeout = "7s"  # environment variable DNS_PROXY_TCP_IDLE_TIMEOUT"#,
            "tcp_max_connections = 256  # default",
            "tcp_max_queries = 64  # default",
            r#"upstream_idle_timeout = "30s"  # default"#,
            "log_queries = false  # default",
            r#"log_level = "info"  # default"#,
            "[[upstream]]  # environment variable DNS_PROXY_UPSTREAM",
            r#"address = "9.9.9.9:853""#,
            r#"tls_name = "dns.quad9.net""#,
            &format!(r#"pin_sha256 = ["{}"]"#, pin_of(3, 32)),
            r#"address = "[2620:fe::fe]:853""#,
            r#"tls_name = "2620:fe::fe""#,
            &format!("ca_file = {}", toml_string(&ca.display().to_string())),
            "pin_sha256 = []",
            "# ca_file not set: the system's trusted roots are used",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // The output is itself a configuration that loads to the same values.
        assert_eq!(Config::from_toml_str(&text).unwrap(), loaded.config);
        let defaults = load_env(&[]).unwrap().describe();
        assert_eq!(Config::from_toml_str(&defaults).unwrap(), Config::default());
    }

    #[test]
    fn metrics_table() {
        assert_eq!(Config::default().metrics, None);
        for (text, expected) in [
            ("127.0.0.1:9153", "127.0.0.1:9153"),
            ("[::1]:9153", "[::1]:9153"),
        ] {
            let config = Config::from_toml_str(&format!("[metrics]\nlisten = \"{text}\"")).unwrap();
            let listen = expected.parse().unwrap();
            assert_eq!(config.metrics, Some(MetricsConfig { listen }));
        }
        assert_eq!(
            toml_error("[metrics]\nlisten = \"localhost:9153\""),
            r#"configuration string: key "metrics.listen": "localhost:9153" is not an IP:port address (e.g. "127.0.0.1:9153")"#
        );
        let message = toml_error("[metrics]\nlisten = \"127.0.0.1\"");
        assert!(
            message.contains(r#"key "metrics.listen": "127.0.0.1" is not an IP:port"#),
            "{message}"
        );
        let message = toml_error("[metrics]\nlisten = 9153");
        assert!(
            message.contains(r#"key "metrics.listen": expected a string"#),
            "{message}"
        );
        assert_eq!(
            toml_error("[metrics]\nport = 9153"),
            r#"configuration string: unknown key "metrics.port" (expected one of: listen)"#
        );
        let message = toml_error("[metrics]\n");
        assert!(
            message.contains(r#"key "metrics": missing field `listen`"#),
            "{message}"
        );
        let message = toml_error("metrics = \"127.0.0.1:9153\"");
        assert!(message.contains(r#"key "metrics": expected"#), "{message}");

        let loaded = load_env(&[("DNS_PROXY_METRICS", r#"{listen="127.0.0.1:9153"}"#)]).unwrap();
        assert!(loaded.config.metrics.is_some());
        assert_eq!(
            loaded.origin("metrics"),
            "environment variable DNS_PROXY_METRICS"
        );
        let message = error_of(load_env(&[("DNS_PROXY_METRICS", r#"{listen="nowhere"}"#)]));
        assert!(
            message.starts_with(
                r#"environment variable DNS_PROXY_METRICS: key "metrics.listen": "nowhere""#
            ),
            "{message}"
        );
        let (_dir, file) = setup(Some("[metrics]\nlisten = \"x\"\n"), &[]);
        let message = error_of(load(&sources(&file, &[], Flags::default())));
        assert!(
            message.starts_with(&format!(r#"{}: key "metrics.listen": "x""#, file.display())),
            "{message}"
        );

        // check-config prints the table with its source, and its output loads back.
        let (_dir, file) = setup(Some("[metrics]\nlisten = \"127.0.0.1:9153\"\n"), &[]);
        let loaded = load(&sources(&file, &[], Flags::default())).unwrap();
        let text = loaded.describe();
        let header = format!("[metrics]  # {}", file.display());
        assert!(text.lines().any(|l| l == header), "{text}");
        assert!(
            text.lines().any(|l| l == r#"listen = "127.0.0.1:9153""#),
            "{text}"
        );
        assert_eq!(Config::from_toml_str(&text).unwrap(), loaded.config);
        let text = load_env(&[]).unwrap().describe();
        assert!(text.contains("# [metrics] not set"), "{text}");
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
        assert_eq!(toml_duration(Duration::from_millis(1500)), "\"1500ms\"");
        assert_eq!(toml_duration(Duration::from_secs(120)), "\"2m\"");
        assert_eq!(toml_duration(Duration::from_secs(90)), "\"90s\"");
    }
}
