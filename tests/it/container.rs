//! The container image and the Kubernetes manifests, run as written. The binary is started with
//! exactly the ENTRYPOINT, CMD and ENV of the image's last stage in
//! packaging/container/Containerfile, on the dns-proxy.toml carried by the ConfigMap in
//! packaging/kubernetes/configmap.yaml. The test changes only what it must, and says so:
//!
//! - the configuration path of the image (`/etc/dns-proxy/dns-proxy.toml`) becomes a temporary
//!   file holding the ConfigMap's text unchanged;
//! - a drop-in file beside it (the daemon's own override mechanism) replaces `listen` with an
//!   ephemeral loopback port, the `[[upstream]]` list with the fake DoT upstream and its CA,
//!   and `metrics.listen` with another loopback port, and turns DNSSEC validation off (the
//!   fake upstream serves no signed root).
//!
//! The YAML is read line by line: the manifests are ours and simple, and a YAML parser would be
//! a dependency for two lookups. The remaining tests keep the image, the manifests and the
//! CoreDNS instructions in step (ports, address, probes, no `args:` overriding the image).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Format as _, Toml};
use figment::value::{Dict, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::support::assert_serves;
use crate::support::proxy::{BIN, Collector, START_TIMEOUT, collect_lines, free_port, run_binary};
use crate::support::upstream::{FakeUpstream, open_temp_dir, write_file};

const CONTAINERFILE: &str = "packaging/container/Containerfile";
const IMAGE_CONFIG: &str = "packaging/container/dns-proxy.toml";
const CONFIGMAP: &str = "packaging/kubernetes/configmap.yaml";
const DAEMONSET: &str = "packaging/kubernetes/daemonset.yaml";
const K8S_README: &str = "packaging/kubernetes/README.md";
/// Paths inside the image, replaced by the test's.
const BINARY_IN_IMAGE: &str = "/usr/bin/dns-proxy";
const CONFIG_IN_IMAGE: &str = "/etc/dns-proxy/dns-proxy.toml";
/// The ConfigMap's key holding the file.
const CONFIG_KEY: &str = "dns-proxy.toml";

fn read(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// What the last stage of the Containerfile sets for the running container.
#[derive(Debug, Default)]
struct Image {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    /// (port, "udp" or "tcp")
    expose: Vec<(u16, String)>,
    user: Option<String>,
}

impl Image {
    fn parse(text: &str) -> Image {
        // Continuation lines joined; comment lines (also inside a continuation) dropped.
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => current.push_str(part),
                None => {
                    current.push_str(trimmed);
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
        let mut image = Image::default();
        for instruction in instructions {
            let (keyword, rest) = instruction
                .split_once(char::is_whitespace)
                .unwrap_or((&instruction, ""));
            let rest = rest.trim();
            match keyword.to_ascii_uppercase().as_str() {
                // A new stage starts from scratch (the base image adds no entrypoint).
                "FROM" => image = Image::default(),
                "ENTRYPOINT" => image.entrypoint = exec_form("ENTRYPOINT", rest),
                "CMD" => image.cmd = exec_form("CMD", rest),
                "ENV" => image.env.extend(env_pairs(rest)),
                "EXPOSE" => image.expose.extend(rest.split_whitespace().map(|port| {
                    let (number, protocol) = port.split_once('/').unwrap_or((port, "tcp"));
                    let number = number
                        .parse()
                        .unwrap_or_else(|_| panic!("EXPOSE {port}: not a port"));
                    (number, protocol.to_ascii_lowercase())
                })),
                "USER" => image.user = Some(rest.to_string()),
                _ => {}
            }
        }
        image
    }

    /// The exposed ports of `protocol`.
    fn exposed(&self, protocol: &str) -> Vec<u16> {
        self.expose
            .iter()
            .filter(|(_, p)| p == protocol)
            .map(|(port, _)| *port)
            .collect()
    }

    /// The arguments after the program, with the image's configuration path replaced by
    /// `config` (the only change).
    fn args(&self, config: &Path) -> Vec<String> {
        assert_eq!(
            self.entrypoint.first().map(String::as_str),
            Some(BINARY_IN_IMAGE),
            "{CONTAINERFILE}: ENTRYPOINT must run {BINARY_IN_IMAGE}"
        );
        let mut args: Vec<String> = self.entrypoint[1..]
            .iter()
            .chain(&self.cmd)
            .cloned()
            .collect();
        let at = args
            .iter()
            .position(|arg| arg == CONFIG_IN_IMAGE)
            .unwrap_or_else(|| panic!("{CONTAINERFILE}: no {CONFIG_IN_IMAGE} argument"));
        args[at] = config.display().to_string();
        args
    }
}

/// `["a", "b"]`: the only form that runs without a shell, which the image does not have.
fn exec_form(keyword: &str, rest: &str) -> Vec<String> {
    serde_json::from_str(rest).unwrap_or_else(|e| {
        panic!("{CONTAINERFILE}: {keyword} {rest}: not the exec form (a JSON array): {e}")
    })
}

/// `KEY=value KEY2="value 2"` (the legacy `KEY value` form too).
fn env_pairs(rest: &str) -> Vec<(String, String)> {
    assert!(
        !rest.contains('$'),
        "{CONTAINERFILE}: ENV {rest}: substitutions are not supported by this test"
    );
    if !rest.split_whitespace().next().unwrap_or("").contains('=') {
        let (key, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        return vec![(key.to_string(), value.trim().to_string())];
    }
    let mut pairs = Vec::new();
    let mut chars = rest.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            value.extend(chars.by_ref().take_while(|c| *c != '"'));
        } else {
            value.extend(chars.by_ref().take_while(|c| !c.is_whitespace()));
        }
        pairs.push((key.trim().to_string(), value));
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
    }
    pairs
}

/// The text of the block scalar (`key: |`) named `key` in a YAML document, unindented.
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines();
    let header = lines
        .by_ref()
        .find(|line| {
            line.trim_start()
                .strip_prefix(key)
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|rest| matches!(rest.trim(), "|" | "|-" | "|+"))
        })
        .unwrap_or_else(|| panic!("no block scalar `{key}: |`"));
    let key_indent = indent(header);
    let mut block_indent = None;
    let mut text = String::new();
    for line in lines {
        if line.trim().is_empty() {
            text.push('\n');
            continue;
        }
        if indent(line) <= key_indent {
            break;
        }
        let at = *block_indent.get_or_insert(indent(line));
        text.push_str(
            line.get(at..)
                .unwrap_or_else(|| panic!("under-indented: {line:?}")),
        );
        text.push('\n');
    }
    format!("{}\n", text.trim_end())
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// The lines nested under the first line whose text is `header` (e.g. `containers:`).
fn section<'a>(yaml: &'a str, header: &str) -> Vec<&'a str> {
    let mut lines = yaml.lines();
    let start = lines
        .by_ref()
        .find(|line| line.trim() == header)
        .unwrap_or_else(|| panic!("no `{header}` in the manifest"));
    let start_indent = indent(start);
    // List items may sit at the header's own indentation.
    lines
        .take_while(|line| {
            line.trim().is_empty()
                || indent(line) > start_indent
                || (indent(line) == start_indent && line.trim_start().starts_with("- "))
        })
        .collect()
}

/// The value of the first `key: value` among `lines`, without quotes.
fn value_of(lines: &[&str], key: &str) -> Option<String> {
    lines.iter().find_map(|line| {
        let rest = line.trim().trim_start_matches("- ").strip_prefix(key)?;
        let value = rest.strip_prefix(':')?.split(" #").next()?.trim();
        Some(value.trim_matches('"').to_string())
    })
}

/// `containerPort` of the port named `name`.
fn container_port(lines: &[&str], name: &str) -> u16 {
    let at = lines
        .iter()
        .position(|line| line.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("{DAEMONSET}: no port named {name}"));
    value_of(&lines[at + 1..], "containerPort")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("{DAEMONSET}: port {name} has no containerPort"))
}

/// The ConfigMap's dns-proxy.toml, parsed.
fn configmap_toml() -> (String, Dict) {
    let text = block_scalar(&read(CONFIGMAP), CONFIG_KEY);
    let dict = Toml::from_str::<Dict>(&text)
        .unwrap_or_else(|e| panic!("{CONFIGMAP}: {CONFIG_KEY} is not TOML: {e}\n{text}"));
    (text, dict)
}

fn string_at(dict: &Dict, path: &[&str]) -> Option<String> {
    let (last, tables) = path.split_last()?;
    let mut dict = dict;
    for table in tables {
        match dict.get(*table)? {
            Value::Dict(_, inner) => dict = inner,
            _ => return None,
        }
    }
    dict.get(*last)?.as_str().map(str::to_string)
}

/// The first `listen` address of the ConfigMap and its `metrics.listen`.
fn configmap_addresses(dict: &Dict) -> (SocketAddr, SocketAddr) {
    let listen = match dict.get("listen") {
        Some(Value::Array(_, items)) => items.first().and_then(Value::as_str),
        _ => None,
    }
    .and_then(|text| text.parse().ok())
    .unwrap_or_else(|| panic!("{CONFIGMAP}: no `listen` address"));
    let metrics = string_at(dict, &["metrics", "listen"])
        .and_then(|text| text.parse().ok())
        .unwrap_or_else(|| panic!("{CONFIGMAP}: no `[metrics] listen` address"));
    (listen, metrics)
}

/// The daemon started the way the container starts it.
struct Container {
    child: Child,
    logs: Arc<Collector>,
    dns: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Container {
    /// `config` is the ConfigMap's text, written unchanged; the adaptations go to a drop-in.
    async fn start(config: &str, upstream: &FakeUpstream) -> Container {
        let image = Image::parse(&read(CONTAINERFILE));
        let dir = open_temp_dir();
        let config_path = dir.path().join("dns-proxy.toml");
        write_file(&config_path, config, 0o644);
        let dns = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let metrics_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let spec = upstream.spec();
        let mut adaptations = format!(
            "# The test's changes to the ConfigMap's configuration.\n\
             listen = [\"{dns}\"]\n\
             dnssec = \"off\"\n\n\
             [[upstream]]\n\
             address = \"{}\"\n\
             tls_name = \"{}\"\n\
             ca_file = \"{}\"\n",
            spec.address,
            spec.tls_name.expect("tls_name"),
            spec.ca_file.expect("ca_file").display()
        );
        adaptations.push_str(&format!("\n[metrics]\nlisten = \"{metrics_addr}\"\n"));
        let drop_ins = dir.path().join("dns-proxy.d");
        std::fs::create_dir(&drop_ins).expect("create drop-in dir");
        write_file(&drop_ins.join("zz-test.toml"), &adaptations, 0o644);

        let mut command = Command::new(BIN);
        command
            .args(image.args(&config_path))
            .env_clear()
            .envs(image.env.iter().map(|(k, v)| (k, v)))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn dns-proxy");
        let logs = Collector::new();
        tokio::spawn(collect_lines(child.stderr.take().unwrap(), logs.clone()));
        let mut container = Container {
            child,
            logs,
            dns,
            metrics: metrics_addr,
            _dir: dir,
        };
        container.wait_ready().await;
        container
    }

    /// Waits for the "ready" log line; panics with the log if the daemon exits first.
    async fn wait_ready(&mut self) {
        let ready = |line: &str| line.contains("ready: serving");
        let logs = self.logs.clone();
        tokio::select! {
            found = logs.wait(0, &ready, START_TIMEOUT) => {
                assert!(found.is_some(), "no ready line within {START_TIMEOUT:?}\n{}", self.log());
            }
            status = self.child.wait() => {
                // Let the last lines arrive.
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.exited(status.expect("wait for dns-proxy"));
            }
        }
    }

    fn exited(&self, status: ExitStatus) -> ! {
        let log = self.log();
        if status.code() == Some(78) && log.contains("unknown key \"metrics\"") {
            panic!(
                "dns-proxy does not know the [metrics] table of {CONFIGMAP} yet: this test \
                 passes once the metrics branch (GET /metrics and /healthz) is merged\n{log}"
            );
        }
        panic!("dns-proxy exited ({status}) before it was ready\n{log}");
    }

    fn log(&self) -> String {
        format!(
            "--- dns-proxy stderr ---\n{}\n--- end ---",
            self.logs.lines().join("\n")
        )
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
    }
}

/// The status code of `GET path` over HTTP/1.1, or an error text.
async fn http_get(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        // Only the status line matters: no need to wait for the server to close.
        let mut response = Vec::new();
        let mut chunk = [0u8; 1024];
        while !response.windows(2).any(|w| w == b"\r\n") {
            match stream.read(&mut chunk).await.map_err(|e| e.to_string())? {
                0 => break,
                n => response.extend_from_slice(&chunk[..n]),
            }
        }
        let response = String::from_utf8_lossy(&response);
        let status = response.lines().next().unwrap_or_default();
        status
            .strip_prefix("HTTP/1.")
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {response:?}"))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err("no response within 5 s".to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_answers_udp_and_tcp_with_the_configmap_and_logs_json() {
    let up = FakeUpstream::start().await;
    let (config, _) = configmap_toml();
    let container = Container::start(&config, &up).await;
    let container = &container;

    assert_serves(
        container.dns,
        container.dns,
        "container.example.",
        up.answer(),
    )
    .await;
    // The TCP query for the same name is answered from the cache.
    assert_eq!(up.queries(), 1, "the query went to the fake upstream");

    let lines = container.logs.lines();
    assert!(!lines.is_empty(), "nothing logged");
    for line in &lines {
        let object = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .filter(serde_json::Value::is_object)
            .unwrap_or_else(|| panic!("a stderr line is not a JSON object: {line:?}"));
        assert!(
            object.get("level").is_some() && object.pointer("/fields/message").is_some(),
            "a JSON log line without level or message: {line}"
        );
    }
    let ready = lines
        .iter()
        .find(|line| line.contains("ready: serving"))
        .expect("ready line");
    assert!(
        ready.contains(&container.dns.to_string()),
        "not serving {}: {ready}",
        container.dns
    );
}

/// Needs the `[metrics]` table, which the metrics branch adds; fails until it is merged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_healthz_answers_200() {
    let up = FakeUpstream::start().await;
    let (config, dict) = configmap_toml();
    // Panics unless the ConfigMap has a `[metrics]` table with a `listen` address.
    let _ = configmap_addresses(&dict);
    let container = Container::start(&config, &up).await;
    assert_serves(
        container.dns,
        container.dns,
        "healthz.example.",
        up.answer(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = http_get(container.metrics, "/healthz").await;
        if status == Ok(200) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GET /healthz on {}: {status:?}, not 200 with a healthy upstream\n{}",
            container.metrics,
            container.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_runs_unprivileged_and_its_own_config_serves_the_exposed_ports() {
    let image = Image::parse(&read(CONTAINERFILE));
    let uid = image
        .user
        .as_deref()
        .and_then(|user| user.split(':').next())
        .and_then(|uid| uid.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("{CONTAINERFILE}: USER must be a numeric uid (runAsNonRoot)"));
    assert_ne!(uid, 0, "{CONTAINERFILE}: the image must not run as root");
    assert!(
        image
            .args(Path::new("x"))
            .windows(2)
            .any(|w| w == ["--log-format", "json"]),
        "{CONTAINERFILE}: logs must be JSON"
    );

    // check-config with the image's arguments and environment, on the file the image carries.
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(IMAGE_CONFIG);
    let mut args = image.args(&config);
    args.push("check-config".to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = image
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = run_binary(&args, &env).await;
    assert_eq!(out.code(), Some(0), "{out}");
    let printed = Toml::from_str::<Dict>(&out.stdout).expect("check-config prints TOML");
    let Some(Value::Array(_, listen)) = printed.get("listen") else {
        panic!("no listen in:\n{out}");
    };
    for address in listen {
        let address: SocketAddr = address.as_str().and_then(|a| a.parse().ok()).unwrap();
        assert!(
            address.ip().is_unspecified(),
            "{IMAGE_CONFIG}: {address} is not every address of the container"
        );
        for protocol in ["udp", "tcp"] {
            assert!(
                image.exposed(protocol).contains(&address.port()),
                "{IMAGE_CONFIG} listens on {address} but {CONTAINERFILE} does not EXPOSE \
                 {}/{protocol}",
                address.port()
            );
        }
    }
}

#[test]
fn manifests_image_and_coredns_instructions_agree() {
    let image = Image::parse(&read(CONTAINERFILE));
    let (_, dict) = configmap_toml();
    let (listen, metrics) = configmap_addresses(&dict);
    let daemonset = read(DAEMONSET);

    // The image listens where the ConfigMap says: no args, command or env in the DaemonSet.
    let containers = section(&daemonset, "containers:");
    for key in ["args", "command", "env"] {
        assert!(
            value_of(&containers, key).is_none(),
            "{DAEMONSET}: `{key}:` in the dns-proxy container would change what \
             tests/it/container.rs runs; use the ConfigMap"
        );
    }
    for protocol in ["udp", "tcp"] {
        assert!(
            image.exposed(protocol).contains(&listen.port()),
            "{CONFIGMAP} listens on {listen}: not EXPOSEd in {CONTAINERFILE} ({protocol})"
        );
    }
    assert_eq!(container_port(&containers, "dns"), listen.port());
    assert_eq!(container_port(&containers, "dns-tcp"), listen.port());
    assert_eq!(container_port(&containers, "metrics"), metrics.port());
    let annotations = section(&daemonset, "annotations:");
    assert_eq!(
        value_of(&annotations, "prometheus.io/port"),
        Some(metrics.port().to_string()),
        "{DAEMONSET}: the scrape annotation names another port than [metrics] listen"
    );
    for probe in ["readinessProbe:", "livenessProbe:"] {
        let probe_lines = section(&daemonset, probe);
        assert_eq!(value_of(&probe_lines, "path").as_deref(), Some("/healthz"));
        assert_eq!(value_of(&probe_lines, "port").as_deref(), Some("metrics"));
    }
    // With hostNetwork the kubelet probes the node's IP: metrics must listen there.
    assert!(
        metrics.ip().is_unspecified(),
        "{CONFIGMAP}: the kubelet probes and Prometheus scrapes the node's address, not {metrics}"
    );

    // The init container puts the listen address on the node; CoreDNS forwards to it.
    let init = section(&daemonset, "initContainers:");
    let address_at = init
        .iter()
        .position(|line| line.trim() == "- name: ADDRESS")
        .expect("the init container's ADDRESS");
    assert_eq!(
        value_of(&init[address_at + 1..], "value").and_then(|v| v.parse::<IpAddr>().ok()),
        Some(listen.ip()),
        "{DAEMONSET}: the init container adds another address than {CONFIGMAP} listens on"
    );
    let forward = format!("forward . {listen}");
    assert!(
        read(K8S_README).contains(&forward),
        "{K8S_README} does not tell CoreDNS `{forward}`"
    );
}

#[test]
fn containerfile_parsing() {
    let image = Image::parse(
        "FROM rust AS build\nENV CARGO=1\nENTRYPOINT [\"/bin/build\"]\n\
         FROM base\n# comment\nENV A=1 B=\"two words\" \\\n    C=3\nENV D 4 5\n\
         EXPOSE 53/udp 53\nCMD [\"--x\", \\\n  \"y\"]\nUSER 1:1\n",
    );
    assert!(
        image.entrypoint.is_empty(),
        "the build stage's is not the image's"
    );
    assert_eq!(image.cmd, ["--x", "y"]);
    let env: Vec<(&str, &str)> = image
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        env,
        [("A", "1"), ("B", "two words"), ("C", "3"), ("D", "4 5")]
    );
    assert_eq!(image.exposed("udp"), [53]);
    assert_eq!(image.exposed("tcp"), [53]);
    assert_eq!(image.user.as_deref(), Some("1:1"));
    let yaml = "data:\n  a.toml: |\n    x = 1\n\n    [t]\n      y = 2\n  b: c\n";
    assert_eq!(block_scalar(yaml, "a.toml"), "x = 1\n\n[t]\n  y = 2\n");
}
