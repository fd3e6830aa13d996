//! The configuration loader's unit tests: layers, every key, and the exact error texts.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::ServerName;

use super::layers::{DEFAULT_CONFIG_FILE, drop_in_dir};
use super::types::MetricsConfig;
use super::units::{toml_duration, toml_string};
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
        credentials: None,
        tls_files: TlsFiles::Read,
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
    assert_eq!(first.address.ip(), Some("9.9.9.9:8853".parse().unwrap()));
    assert_eq!(first.tls_name.to_str(), "dns.quad9.net");
    assert_eq!(first.pin_sha256, vec![[7u8; 32]]);
    assert_eq!(
        config.upstreams[1].address.ip(),
        Some("149.112.112.112:853".parse().unwrap())
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
    assert_eq!(tls.address.ip(), Some("10.0.0.3:853".parse().unwrap()));

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
            r#"key "forward_zone[0].upstream[0].tls_name": applies only to protocols "tls" and "https""#,
        ),
        (
            "[[forward_zone]]\nzones = [\"a\"]\n[[forward_zone.upstream]]\naddress = \"10.0.0.2\"\nprotocol = \"http\"",
            r#"key "forward_zone[0].upstream[0].protocol": "http" is not one of: tls, https, udp"#,
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
fn dnssec_keys() {
    let defaults = Config::default();
    assert_eq!(defaults.dnssec, Dnssec::Validate);
    assert_eq!(defaults.trust_anchors, None);
    assert!(defaults.negative_trust_anchors.is_empty());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("anchors");
    fs::write(&file, "test. IN DS 1 13 2 00ff\n").unwrap();
    let config = Config::from_toml_str(&format!(
        "dnssec = \"off\"\ntrust_anchors = {:?}\nnegative_trust_anchors = [\"Broken.Example.\"]\n\
         [[forward_zone]]\nzones = [\"corp.example\"]\ndnssec = \"validate\"\n\
         [[forward_zone.upstream]]\naddress = \"10.0.0.2\"\n\
         [[forward_zone]]\nzones = [\"lan\"]\n[[forward_zone.upstream]]\naddress = \"10.0.0.3\"\n",
        file.display().to_string()
    ))
    .unwrap();
    assert_eq!(config.dnssec, Dnssec::Off);
    let anchors = config.trust_anchors.as_ref().unwrap();
    assert_eq!(anchors.path, file);
    assert_eq!(anchors.anchors.len(), 1);
    assert_eq!(
        config.negative_trust_anchors[0].to_string(),
        "broken.example"
    );
    assert_eq!(config.forward_zones[0].dnssec, Dnssec::Validate);
    assert_eq!(
        config.forward_zones[1].dnssec,
        Dnssec::Off,
        "off by default"
    );

    fs::write(&file, ". IN DS 1 13 2 00\n. IN A 192.0.2.1\n").unwrap();
    let bad_file = format!("trust_anchors = {:?}", file.display().to_string());
    for (toml, expected) in [
        (
            "dnssec = \"yes\"",
            r#"key "dnssec": "yes" is not one of: validate, off"#,
        ),
        (
            "trust_anchors = \"/nonexistent/anchors\"",
            r#"key "trust_anchors": cannot read /nonexistent/anchors"#,
        ),
        (
            &bad_file,
            "line 2: A record: a trust anchor is a DS or DNSKEY record",
        ),
        (
            "negative_trust_anchors = [\"a\", \".\"]",
            r#"key "negative_trust_anchors[1]": "." is the root zone"#,
        ),
        (
            "[[forward_zone]]\nzones = [\"a\"]\ndnssec = \"on\"\n[[forward_zone.upstream]]\naddress = \"10.0.0.2\"",
            r#"key "forward_zone[0].dnssec": "on" is not one of: validate, off"#,
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
        message.ends_with(r#"key "upstream[0].address": dns.google is a host name and bootstrap is not set: list plain DNS servers to resolve it (bootstrap = ["9.9.9.9"]), or give its IP address"#),
        "{message}"
    );
    for bad in [
        "dns.google:0",
        "9.9.9.9:0",
        "9.9.9.9:99999",
        "",
        "not a name",
    ] {
        let message = toml_error(&format!("[[upstream]]\naddress = \"{bad}\""));
        assert!(
            message.contains("must be an IP address or a host name"),
            "{bad}: {message}"
        );
    }
    let message = toml_error(
        "[[forward_zone]]\nzones = [\"corp\"]\n[[forward_zone.upstream]]\naddress = \"dns.corp.example\"\nprotocol = \"udp\"",
    );
    assert!(message.contains("must be an IP address"), "{message}");
}

#[test]
fn dot_upstreams_by_host_name_resolve_through_bootstrap() {
    let config = Config::from_toml_str(
        "bootstrap = [\"192.0.2.53\", \"[2001:db8::53]:5353\"]\n[[upstream]]\naddress = \"Dns.Quad9.Net:8853\"\n",
    )
    .unwrap();
    let upstream = &config.upstreams[0];
    assert_eq!(upstream.address.to_string(), "dns.quad9.net:8853");
    assert_eq!(upstream.tls_name.to_str(), "dns.quad9.net");
    assert_eq!(upstream.label(), "dns.quad9.net:8853");
    let bootstrap: Vec<String> = config.bootstrap.iter().map(|a| a.to_string()).collect();
    assert_eq!(bootstrap, ["192.0.2.53:53", "[2001:db8::53]:5353"]);

    let message = toml_error("bootstrap = [\"dns.google\"]");
    assert!(
        message.contains(r#"key "bootstrap[0]": "dns.google" is not an IP address"#),
        "{message}"
    );
    // Its own listener would have dns-proxy ask itself.
    for listen in ["127.0.0.1:5353", "0.0.0.0:5353"] {
        let message = toml_error(&format!(
            "listen = [\"{listen}\"]\nbootstrap = [\"9.9.9.9\", \"127.0.0.1:5353\"]"
        ));
        assert!(
            message.contains(r#"key "bootstrap[1]": 127.0.0.1:5353 is dns-proxy's own listener"#),
            "{message}"
        );
    }
    let message = toml_error(
        "[[upstream]]\naddress = \"9.9.9.9\"\n[[forward_zone]]\nzones = [\"corp\"]\n[[forward_zone.upstream]]\naddress = \"dns.corp.example\"",
    );
    assert!(
        message.contains(r#"key "forward_zone[0].upstream[0].address": dns.corp.example is a host name and bootstrap is not set"#),
        "{message}"
    );
}

#[test]
fn doh_upstreams() {
    let upstream = one_upstream("url = \"https://dns.quad9.net/dns-query\"\naddress = \"9.9.9.9\"");
    let url = upstream.url.as_ref().unwrap();
    assert_eq!(url.to_string(), "https://dns.quad9.net/dns-query");
    assert_eq!(upstream.address.to_string(), "9.9.9.9:443");
    assert_eq!(upstream.tls_name.to_str(), "dns.quad9.net");
    assert_eq!(
        upstream.label(),
        "https://dns.quad9.net/dns-query@9.9.9.9:443"
    );

    let upstream = one_upstream(
        "url = \"https://127.0.0.1:8443/q\"\nprotocol = \"https\"\ntls_name = \"doh.test\"",
    );
    assert_eq!(upstream.address.to_string(), "127.0.0.1:8443");
    assert_eq!(upstream.tls_name.to_str(), "doh.test");
    assert_eq!(upstream.label(), "https://127.0.0.1:8443/q");

    let config = Config::from_toml_str(
        "bootstrap = [\"9.9.9.9\"]\n[[upstream]]\nurl = \"https://dns.quad9.net/dns-query\"",
    )
    .unwrap();
    assert_eq!(config.upstreams[0].address.to_string(), "dns.quad9.net:443");
    assert_eq!(
        config.upstreams[0].label(),
        "https://dns.quad9.net/dns-query"
    );

    for (body, key, reason) in [
        (
            "url = \"http://dns.quad9.net/dns-query\"",
            "url",
            "is not an https:// URL",
        ),
        ("url = \"https:///dns-query\"", "url", "has no host"),
        (
            "url = \"https://dns.quad9.net/q?x=1\"",
            "url",
            "has a query string",
        ),
        (
            "url = \"https://dns.quad9.net/q#x\"",
            "url",
            "has a fragment",
        ),
        (
            "url = \"https://dns.quad9.net\"",
            "url",
            "the path must start with '/'",
        ),
        (
            "url = \"https://dns.quad9.net:8443/q\"\naddress = \"9.9.9.9:443\"",
            "address",
            "has port 443, but the url's port is 8443",
        ),
        (
            "url = \"https://dns.quad9.net/q\"\naddress = \"dns9.quad9.net\"",
            "address",
            "must be an IP address",
        ),
        (
            "protocol = \"https\"\naddress = \"9.9.9.9\"",
            "url",
            "must be set for DNS over HTTPS",
        ),
        (
            "url = \"https://dns.quad9.net/q\"\nprotocol = \"tls\"",
            "url",
            "applies only to DNS over HTTPS",
        ),
        (
            "url = \"https://dns.quad9.net/q\"",
            "url",
            "dns.quad9.net is a host name and bootstrap is not set",
        ),
    ] {
        let message = toml_error(&format!("[[upstream]]\n{body}"));
        let expected = format!("key \"upstream[0].{key}\": ");
        assert!(
            message.contains(&expected) && message.contains(reason),
            "{body}: {message}"
        );
    }
    // A forward zone's upstream may be DoH too.
    let config = Config::from_toml_str(
        "[[forward_zone]]\nzones = [\"corp\"]\n[[forward_zone.upstream]]\nurl = \"https://10.0.0.3/dns-query\"",
    )
    .unwrap();
    let ZoneUpstream::Tls(upstream) = &config.forward_zones[0].upstreams[0] else {
        panic!("an encrypted upstream");
    };
    assert!(upstream.url.is_some());
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
    assert_eq!(
        config.upstreams[0].address.ip(),
        Some("9.9.9.9:853".parse().unwrap())
    );
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
    assert_eq!(
        config.upstreams[0].address.ip(),
        Some("9.9.9.9:853".parse().unwrap())
    );
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
        config.upstreams[0].address.ip(),
        Some("[2620:fe::fe]:8853".parse().unwrap())
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
            "{}: unknown key \"upstream[1].tls-name\" (expected one of: address, url, protocol, tls_name, ca_file, pin_sha256)",
            file.display()
        )
    );
    let message = toml_error("[[upstream]]\ntls_name = \"x.test\"");
    assert!(
        message.contains(r#"key "upstream[0].address": must be set"#),
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
        message.contains(r#"key "upstream[0].pin_sha256[0]": "not base64!" is not valid base64"#),
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
fn check_config_output_of_doh_and_host_name_upstreams_loads_back() {
    let (_dir, file) = setup(
        Some(
            "bootstrap = [\"192.0.2.53\"]\n\
             [[upstream]]\nurl = \"https://dns.quad9.net/dns-query\"\naddress = \"9.9.9.9\"\n\
             [[upstream]]\nurl = \"https://doh.example:8443/q\"\n\
             [[upstream]]\naddress = \"dns.example:8853\"\n",
        ),
        &[],
    );
    let loaded = load(&sources(&file, &[], Flags::default())).unwrap();
    let text = loaded.describe();
    for line in [
        "url = \"https://dns.quad9.net/dns-query\"\naddress = \"9.9.9.9:443\"\nprotocol = \"https\"",
        "url = \"https://doh.example:8443/q\"\n# address not set",
        "address = \"dns.example:8853\"\nprotocol = \"tls\"",
        "bootstrap = [\"192.0.2.53:53\"]",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(Config::from_toml_str(&text).unwrap(), loaded.config);
}

#[test]
fn control_socket() {
    let config = Config::from_toml_str("control_socket = \"/run/x/control\"").unwrap();
    assert_eq!(config.control_socket, Some(PathBuf::from("/run/x/control")));
    assert_eq!(
        Config::from_toml_str("control_socket = \"\"")
            .unwrap()
            .control_socket,
        None
    );
    assert_eq!(
        toml_error("control_socket = \"control\""),
        r#"configuration string: key "control_socket": "control" is not an absolute path to a socket file (e.g. "/run/dns-proxy/control"; "" for none)"#
    );
    for bad in ["/run/dns-proxy/", "/run/a\\u0000b"] {
        let message = toml_error(&format!("control_socket = \"{bad}\""));
        assert!(message.contains("is not an absolute path"), "{message}");
    }
    let long = format!("/{}", "x".repeat(107));
    let message = toml_error(&format!("control_socket = \"{long}\""));
    assert!(message.contains("longer than the 107 bytes"), "{message}");
    let longest = format!("/{}", "x".repeat(106));
    assert!(Config::from_toml_str(&format!("control_socket = \"{longest}\"")).is_ok());
    let message = toml_error("control_socket = false");
    assert!(
        message.contains(r#"key "control_socket": expected a string"#),
        "{message}"
    );

    let loaded = load_env(&[("DNS_PROXY_CONTROL_SOCKET", "/tmp/c")]).unwrap();
    assert_eq!(loaded.config.control_socket, Some(PathBuf::from("/tmp/c")));
    let described = loaded.describe();
    assert!(
        described.contains(
            "control_socket = \"/tmp/c\"  # environment variable DNS_PROXY_CONTROL_SOCKET"
        ),
        "{described}"
    );
    let off = load_env(&[("DNS_PROXY_CONTROL_SOCKET", "")]).unwrap();
    assert!(off.describe().contains("control_socket = \"\"  #"));
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

#[test]
fn every_declared_key_has_a_doc_and_a_man_page_item() {
    let page = include_str!("../../man/dns-proxy.toml.5");
    let items: Vec<&str> = page
        .lines()
        .filter_map(|line| line.strip_prefix(".B "))
        .map(|tag| tag.trim_start_matches('[').trim_end_matches(']'))
        .collect();
    let docs = Config::key_docs();
    let mut names = Vec::new();
    <Config as declare::Keys>::names(&mut names);
    assert_eq!(docs.iter().map(|(key, _)| *key).collect::<Vec<_>>(), names);
    for (key, doc) in docs {
        assert!(
            !doc.is_empty() && !doc.contains("  "),
            "{key} is declared without a one-line doc: {doc:?}"
        );
        assert!(
            items.contains(&key),
            "man/dns-proxy.toml.5 has no `.B {key}` item for the declared key {key}"
        );
    }
}
