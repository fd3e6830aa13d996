//! Arbitrary text as a configuration file: `Config::from_toml_str` returns a result, never
//! panics, and gives the same result twice. A configuration it accepts keeps the guarantees
//! `Config` documents, loads the same from a file, and `check-config`'s output for it
//! (`Loaded::describe`) loads back to the same configuration.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use dns_proxy::config::{self, Config, Flags, Sources, TlsFiles};
use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `ca_file`, `tls_certificate` and `tls_key` make validation read that path: the fuzzer
    // must not open /dev/stdin or /dev/zero. The same parser as the crate's decides whether
    // a key is there.
    if Toml::from_str::<Dict>(text).is_ok_and(|dict| reads_files(&dict)) {
        return;
    }
    let first = Config::from_toml_str(text);
    let second = Config::from_toml_str(text);
    let config = match (first, second) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b);
            a
        }
        (Err(a), Err(b)) => {
            let message = a.to_string();
            assert_eq!(message, b.to_string());
            assert!(!message.contains('\n'), "an error is one line: {message:?}");
            return;
        }
        (a, b) => panic!("parsing twice disagreed: {a:?} then {b:?}"),
    };
    check_guarantees(&config);

    let loaded = load(text);
    assert_eq!(loaded.config, config, "a file reads like the string");
    let described = loaded.describe();
    let reloaded = load(&described);
    assert_eq!(
        reloaded.config, config,
        "check-config's output:\n{described}"
    );
    // With every key now set in the file, describing is a fixed point.
    let again = reloaded.describe();
    assert_eq!(load(&again).describe(), again);
});

/// What `Config`'s documentation promises of a validated configuration.
fn check_guarantees(config: &Config) {
    assert!(!config.upstreams.is_empty());
    assert!(!config.allow.is_empty());
    assert!(config.udp || config.tcp);
    assert!(config.tls_certificate.is_none() && config.tls_key.is_none());
    assert!(config.https_path.starts_with('/'));
    assert!((1..=65_535).contains(&config.tcp_max_connections));
    assert!((1..=65_535).contains(&config.tcp_max_queries));
    for timeout in [
        config.timeout,
        config.tcp_idle_timeout,
        config.upstream_idle_timeout,
    ] {
        assert!(timeout > Duration::ZERO);
    }
    assert!(["error", "warn", "info", "debug", "trace"].contains(&config.log_level.as_str()));
    for upstream in &config.upstreams {
        assert_ne!(upstream.address.port(), 0);
        assert!(upstream.ca_file.is_none() && upstream.ca_roots.is_none());
    }
}

/// Whether any table in `dict`, at any depth, has a key naming a file to read.
fn reads_files(dict: &Dict) -> bool {
    fn value(v: &Value) -> bool {
        match v {
            Value::Dict(_, dict) => reads_files(dict),
            Value::Array(_, items) => items.iter().any(value),
            _ => false,
        }
    }
    ["ca_file", "tls_certificate", "tls_key"]
        .iter()
        .any(|key| dict.contains_key(*key))
        || dict.values().any(value)
}

/// `text` loaded the way the daemon loads its file: no drop-ins, environment or flags.
fn load(text: &str) -> config::Loaded {
    std::fs::write(file(), text).expect("write the configuration file");
    let sources = Sources {
        file: file().clone(),
        file_required: true,
        env: Vec::new(),
        flags: Flags::default(),
        credentials: None,
        tls_files: TlsFiles::Read,
    };
    config::load(&sources).expect("a configuration accepted once loads again")
}

/// A file in a directory of this process's own; `fuzz/run` points TMPDIR at a directory it
/// removes afterwards.
fn file() -> &'static PathBuf {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("dns-proxy-fuzz-config")
            .tempdir()
            .expect("create a temporary directory")
            .keep();
        dir.join("dns-proxy.toml")
    })
}
