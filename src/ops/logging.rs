//! Log output: the systemd journal with structured fields (`UPSTREAM=`, `ERROR_KIND=`, …) when
//! running under systemd, human-readable text on stderr otherwise, JSON on stderr for
//! containers. Queries are not logged unless `log_queries` is on (privacy).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// The journal when systemd connected our output to it (`JOURNAL_STREAM`), else stderr.
    Auto,
    Journal,
    Stderr,
}

/// How logs on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot log to the journal: {0}")]
    Journal(std::io::Error),
    #[error("invalid log level {0:?}")]
    Level(String),
    #[error("a logger is already installed")]
    AlreadySet,
}

/// Installs the global logger.
pub fn init(target: LogTarget, format: LogFormat, level: &str) -> Result<(), LogError> {
    // zbus's own events describe its internals, not the daemon: warnings and errors only.
    let filter = || {
        EnvFilter::try_new(format!("{level},zbus=warn"))
            .map_err(|_| LogError::Level(level.to_string()))
    };
    let journal = match target {
        LogTarget::Journal => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    if journal {
        match tracing_journald::layer() {
            Ok(layer) => {
                return tracing_subscriber::registry()
                    .with(filter()?)
                    .with(layer.with_syslog_identifier("dns-proxy".to_string()))
                    .try_init()
                    .map_err(|_| LogError::AlreadySet);
            }
            Err(error) if target == LogTarget::Journal => return Err(LogError::Journal(error)),
            // JOURNAL_STREAM set but no journal socket (e.g. in a container): stderr still works.
            Err(_) => {}
        }
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter()?);
    match format {
        LogFormat::Text => registry.with(stderr).try_init(),
        LogFormat::Json => registry.with(stderr.json()).try_init(),
    }
    .map_err(|_| LogError::AlreadySet)
}
