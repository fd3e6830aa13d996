//! Configuration: the layered sources (built-in defaults, the TOML file, its drop-in directory,
//! `DNS_PROXY_*` environment variables, command-line flags), merged with figment, then checked
//! into a [`Config`] whose fields cannot be wrong. Nothing here opens sockets; the only I/O is
//! reading the TOML files, each upstream's `ca_file`, and the server's certificate and key
//! (`tls_certificate`, `tls_key`), which are loaded and checked to match here so that a bad
//! pair is refused like any bad value, at start, by `check-config` and at a reload.
//!
//! # Layout
//! - `keys.rs`: every key, declared once (field, type, kind, default, doc); the only file to
//!   edit to add a key, with its man-page item in `man/dns-proxy.toml.5`.
//! - `declare.rs`: the `keys!` macro and what a declaration turns into.
//! - `types.rs`: the kinds of key, each checking what it accepts; the tables' types.
//! - `units.rs`: durations and sizes as written, and TOML text for values.
//! - `layers.rs`: the sources, each a figment provider named after where its values came from.
//! - `render.rs`: `check-config`'s output.
//!
//! The defaults are the declared ones, not a layer: a key that no layer sets keeps its default,
//! and its source is reported as "default". Loading has two phases, as a serde struct with
//! `deny_unknown_fields` and then a validation would: figment extracts each key's value as
//! written, refusing unknown keys, wrong types and malformed durations with the source and key
//! figment attaches; then each key's kind checks its value (addresses, names, certificates,
//! pins, ranges), naming the source found with `Figment::find_metadata`; last come the few
//! rules that tie keys together.

use std::io;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::error::Kind;

mod declare;
mod endpoint;
mod identity;
mod keys;
mod layers;
mod render;
#[cfg(test)]
mod tests;
mod types;
mod units;

use declare::Keys as _;
pub use endpoint::{Endpoint, HttpsUrl};
pub use keys::{CacheConfig, Config};
pub use layers::{Flags, Sources, TlsFiles};
use layers::{Layer, env_layers, file_layers, flag_layers, key_path, keys_set, origin, toml_layer};
pub use types::{Dnssec, ForwardZone, TrustAnchorFile, UpstreamConfig, ZoneUpstream};
pub(crate) use types::{Hedge, LinkDns, Strategy};

pub use identity::{Identity, IdentityError};

impl Config {
    /// The defaults overridden by one TOML document, without files, environment or flags: a
    /// way for tests to build a configuration exactly as a user would write it.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigError> {
        let layer = toml_layer("configuration string", toml)?;
        Ok(resolve(vec![layer], None, TlsFiles::Read)?.config)
    }

    /// The first upstream over TLS or HTTPS known only by host name (the default ones, then
    /// the forward zones'), with its key (`upstream[0]`, `forward_zone[1].upstream[0]`).
    pub(crate) fn first_named_upstream(&self) -> Option<(String, &UpstreamConfig)> {
        let defaults = self
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("upstream[{i}]"), u));
        let zones = self.forward_zones.iter().enumerate().flat_map(|(z, zone)| {
            zone.upstreams
                .iter()
                .enumerate()
                .filter_map(move |(i, upstream)| match upstream {
                    ZoneUpstream::Tls(u) => Some((format!("forward_zone[{z}].upstream[{i}]"), u)),
                    ZoneUpstream::Plain(_) => None,
                })
        });
        defaults
            .chain(zones)
            .find(|(_, upstream)| upstream.address.ip().is_none())
    }

    /// Every key's name and one-line doc, in declaration order.
    #[cfg(test)]
    pub(crate) fn key_docs() -> Vec<(&'static str, String)> {
        let mut docs = Vec::new();
        Config::docs(&mut docs);
        docs
    }
}

/// A loaded configuration and where each of its values came from.
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The certificate and key of `tls_certificate` and `tls_key`, read and checked to match.
    pub identity: Option<Identity>,
    /// The merged layers, kept to look up the source of each key for [`Loaded::describe`].
    figment: Figment,
    /// `$CREDENTIALS_DIRECTORY`, which relative `tls_certificate` and `tls_key` paths are in.
    credentials: Option<PathBuf>,
}

impl Loaded {
    fn origin(&self, key: &str) -> String {
        origin(&self.figment, key)
    }
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
    resolve(layers, sources.credentials.as_deref(), sources.tls_files)
}

/// Merges `layers`, each overriding the ones before, over the defaults, and validates;
/// relative TLS file paths are taken in `credentials` when it is given, and the files are read
/// as `tls_files` says.
fn resolve(
    layers: Vec<Layer>,
    credentials: Option<&Path>,
    tls_files: TlsFiles,
) -> Result<Loaded, ConfigError> {
    let figment = layers.into_iter().fold(Figment::new(), Figment::merge);
    // First what serde would refuse, in the same order: an unknown key or a value of the wrong
    // type, the first in key order; then each key's own checks, in declaration order.
    for (key, origin) in keys_set(&figment)? {
        match Config::parses(&key, &figment) {
            Some(parsed) => parsed?,
            None => {
                let mut names = Vec::new();
                Config::names(&mut names);
                let expected = names.join(", ");
                return Err(ConfigError::UnknownKey {
                    origin,
                    key,
                    expected,
                });
            }
        }
    }
    let mut config = Config::default();
    config.load(&figment)?;
    keys::check_together(&config, &figment)?;
    let unreachable = |path: &PathBuf| path.is_relative() && credentials.is_none();
    let identity = match (&config.tls_certificate, &config.tls_key) {
        (Some(certificate), Some(key))
            if tls_files == TlsFiles::WhenReachable
                && (unreachable(certificate) || unreachable(key)) =>
        {
            None
        }
        (Some(certificate), Some(key)) => {
            let (certificate, key) = (
                credential_path(certificate, credentials),
                credential_path(key, credentials),
            );
            let identity = Identity::load(&certificate, &key).map_err(|error| {
                let key = match error.is_about_key() {
                    true => "tls_key",
                    false => "tls_certificate",
                };
                ConfigError::Invalid {
                    origin: origin(&figment, key),
                    key: key.to_string(),
                    reason: error.to_string(),
                }
            })?;
            Some(identity)
        }
        _ => None,
    };
    Ok(Loaded {
        config,
        identity,
        figment,
        credentials: credentials.map(Path::to_path_buf),
    })
}

/// Where a `tls_certificate` or `tls_key` file is: a relative path (a bare name included) is
/// in `credentials`, the directory where systemd puts what `LoadCredential=` passes, when
/// there is one; otherwise the path is taken as written.
pub(crate) fn credential_path(path: &Path, credentials: Option<&Path>) -> PathBuf {
    match credentials {
        Some(directory) if path.is_relative() => directory.join(path),
        _ => path.to_path_buf(),
    }
}
