//! The layers a configuration is read from, each a figment provider named after exactly where
//! its values came from (a file path, one environment variable, one flag): the TOML file, its
//! drop-in directory, `DNS_PROXY_*` environment variables (and the legacy variables of the Go
//! program this replaces), and command-line flags. Figment tags every value with its layer,
//! which is how errors and `check-config` name a key's source.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use super::ConfigError;
use super::types::DOT_PORT;

/// The configuration file read when `--config` is not given.
pub(crate) const DEFAULT_CONFIG_FILE: &str = "/etc/dns-proxy/dns-proxy.toml";

/// The environment variable systemd sets to the directory of a service's credentials.
pub(crate) const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

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

/// The command-line flags that override configuration keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--listen`, in order given; when any, they replace `listen`.
    pub(crate) listen: Vec<String>,
    /// `--log-level`; replaces `log_level`.
    pub(crate) log_level: Option<String>,
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
    /// `$CREDENTIALS_DIRECTORY`: where systemd puts the files `LoadCredential=` passes, and
    /// where relative `tls_certificate` and `tls_key` paths are read from.
    pub credentials: Option<PathBuf>,
    /// Whether the TLS certificate and key are read and checked.
    pub tls_files: TlsFiles,
}

/// Whether loading a configuration reads the TLS certificate and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFiles {
    /// Always, as the daemon does: it serves them.
    Read,
    /// Unless one is a relative path and `$CREDENTIALS_DIRECTORY` is not set. `check-config`
    /// and `apply-ip-allow`, run by the unit's `ExecReload=` (and `ExecStartPre=` before
    /// systemd 254), do not get the service's credentials and need only the rest; the daemon
    /// still reads and checks the pair, at start and at each reload.
    WhenReachable,
}

impl Sources {
    /// Sources for this process: the given file (else `DEFAULT_CONFIG_FILE`, which may be
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
            credentials: std::env::var_os(CREDENTIALS_DIRECTORY)
                .filter(|directory| !directory.is_empty())
                .map(PathBuf::from),
            tls_files: TlsFiles::Read,
        }
    }
}

/// The values of one source, named after exactly where they came from: figment tags every
/// value with its provider's metadata, which is how errors and `describe` find a key's source.
pub(crate) struct Layer {
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
pub(crate) fn file_layers(file: &Path, required: bool) -> Result<Vec<Layer>, ConfigError> {
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
pub(crate) fn drop_in_dir(file: &Path) -> PathBuf {
    let mut name = file.file_stem().unwrap_or_default().to_os_string();
    name.push(".d");
    file.with_file_name(name)
}

/// Parses one TOML document; a syntax error is reported on one line with its position.
pub(crate) fn toml_layer(origin: &str, text: &str) -> Result<Layer, ConfigError> {
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
pub(crate) fn env_layers(env: &[(String, String)]) -> Result<Vec<Layer>, ConfigError> {
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
pub(crate) fn flag_layers(flags: &Flags) -> Vec<Layer> {
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

/// The name of the layer that set top-level `key`, or "default" when none did.
pub(crate) fn origin(figment: &Figment, key: &str) -> String {
    figment
        .find_metadata(key)
        .map_or_else(|| "default".to_string(), |m| m.name.to_string())
}

/// `["upstream", "0", "address"]` → `upstream[0].address`.
pub(crate) fn key_path(path: &[String]) -> String {
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

/// The value of top-level key `name` as `T`. Figment's errors carry the layer of the bad value;
/// `extract_inner` appends `name` after the path inside the value, so it is moved to the front.
pub(crate) fn extract<T: DeserializeOwned>(
    figment: &Figment,
    name: &str,
) -> Result<T, ConfigError> {
    figment
        .extract_inner(name)
        .map_err(|mut error: figment::Error| {
            if error.path.last().is_some_and(|last| last == name) {
                error.path.pop();
                error.path.insert(0, name.to_string());
            }
            ConfigError::from(error)
        })
}

/// The top-level keys the layers set, in order, each with the name of the layer that set it.
pub(crate) fn keys_set(figment: &Figment) -> Result<Vec<(String, String)>, ConfigError> {
    let data = figment.data()?;
    let keys = data.get(&Profile::Default).map(|dict| {
        dict.iter()
            .map(|(key, value)| {
                let origin = figment
                    .get_metadata(value.tag())
                    .map_or_else(|| "configuration".to_string(), |m| m.name.to_string());
                (key.clone(), origin)
            })
            .collect()
    });
    Ok(keys.unwrap_or_default())
}
