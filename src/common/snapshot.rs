//! What `dns-proxy status` reports: a read-only snapshot of the running daemon (version,
//! uptime, configuration files, listeners, every upstream's health and counts, the cache and
//! the query counters), the shape of its `--json` output, and its rendering for people, laid
//! out like `resolvectl status`.
//!
//! Plain data and nothing else: the daemon's parts fill in their own pieces (the metrics their
//! counters, a group its upstreams, the cache its size), the control socket serializes the
//! whole, and the client deserializes and renders it. Fields are added, never renamed or
//! removed (dns-proxy(8) documents the shape); a field the other side lacks takes its default.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The whole daemon.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    /// When the daemon started (RFC 3339, UTC).
    pub started: String,
    pub uptime_seconds: u64,
    /// Why only the local zones are served, when the daemon is degraded.
    pub degraded: Option<String>,
    /// The configuration file and its drop-ins that a reload would read, in order.
    pub config_files: Vec<String>,
    pub listeners: Vec<Listener>,
    /// The default upstreams, in configuration order.
    pub upstreams: Vec<Upstream>,
    pub forward_zones: Vec<ForwardZone>,
    /// Per-link DNS over `org.freedesktop.resolve1`.
    pub link_dns: LinkDns,
    /// The links with DNS settings, by interface index.
    pub links: Vec<Link>,
    /// The zones learned from the links in force, with their servers (`.` for the default
    /// route under `link_dns = "all"`).
    pub link_zones: Vec<ForwardZone>,
    pub cache: Cache,
    /// Answers and drops by client transport (`udp`, `tcp`).
    pub queries: BTreeMap<String, Transport>,
    /// Client queries over `rate_limit`.
    pub rate_limited: u64,
    /// Queries answered by a built-in local zone.
    pub local_answers: u64,
    /// Queries also sent to a second upstream.
    pub hedged: u64,
    /// Client queries being forwarded now.
    pub in_flight: i64,
    pub dnssec: Dnssec,
}

/// DNSSEC validation: its mode and the verdicts on answers since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Dnssec {
    /// `validate` or `off`.
    pub mode: String,
    /// Zones and names whose keys, unsigned delegation or failure is cached.
    pub zones_cached: u64,
    pub secure: u64,
    pub insecure: u64,
    pub bogus: u64,
    pub indeterminate: u64,
}

/// A socket the daemon serves.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Listener {
    /// `udp`, `tcp`, `metrics` or `control`.
    pub kind: String,
    /// `IP:port`, or the path of a Unix socket.
    pub address: String,
}

/// Up: queries go to it. Down: it failed and is skipped until its backoff ends and a query
/// finds it working again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    #[default]
    Up,
    Down,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
        }
    }
}

/// One upstream resolver. Its counts are per address since the daemon started: they survive
/// reloads and are shared by entries with the same address, as the metrics count them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Upstream {
    /// `IP:port` or `name:port`; for DNS over HTTPS its URL, followed by `@IP:port` when
    /// `address` is configured.
    pub address: String,
    /// `tls` (DNS over TLS), `https` (DNS over HTTPS) or `udp` (plain DNS, retried over TCP
    /// when truncated).
    pub protocol: String,
    /// The name its certificate must be valid for (`tls` and `https`).
    pub tls_name: Option<String>,
    pub state: State,
    /// Since when it is in `state` (RFC 3339, UTC): the last change, or when this
    /// configuration was put in force.
    pub since: String,
    /// The last query to it that got no usable answer since this configuration was put in
    /// force, if any, even once it is up again.
    pub last_error: Option<LastError>,
    /// Smoothed round-trip time in milliseconds, failures included; none before the first try.
    pub srtt_ms: Option<f64>,
    /// Connections open to it now (DNS over TLS).
    pub connections: i64,
    /// Queries sent to it, failed ones included.
    pub queries: u64,
    /// Queries to it that got no usable answer.
    pub failures: u64,
}

/// Why a query to an upstream failed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LastError {
    /// As in the journal's `ERROR_KIND=` and the metrics: `refused`, `timeout`,
    /// `certificate_name`, …
    pub kind: String,
    pub message: String,
    /// RFC 3339, UTC.
    pub at: String,
}

/// A `[[forward_zone]]` and its upstreams.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ForwardZone {
    pub zones: Vec<String>,
    pub upstreams: Vec<Upstream>,
}

/// Per-link DNS: the setting and the bus name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LinkDns {
    /// `link_dns`: `domains`, `all` or `off`.
    pub mode: String,
    /// Whether this daemon owns `org.freedesktop.resolve1` now, or why not.
    pub bus: String,
}

/// A network link with DNS settings, as NetworkManager or `resolvectl` set them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Link {
    pub ifindex: u32,
    /// The interface's name when its settings last changed.
    pub name: String,
    /// Its DNS servers as given (`10.0.0.1`, `[fe80::1]:5353`); those not used carry the
    /// reason (`127.0.0.53 (ignored: loopback)`).
    pub servers: Vec<String>,
    /// Search domains (`corp.example`) and routing-only ones (`~vpn.example`, `~.`).
    pub domains: Vec<String>,
    /// Whether the link asks for names outside every zone (DefaultRoute).
    pub default_route: bool,
    /// When its settings last changed (RFC 3339, UTC).
    pub changed: String,
}

/// The answer cache. Lookups are counted since the daemon started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cache {
    pub enabled: bool,
    pub entries: u64,
    /// Bytes held, bookkeeping included, as weighed against `max_bytes` (`cache_size`).
    pub bytes: u64,
    pub max_bytes: u64,
    pub hits: u64,
    pub misses: u64,
    /// Expired entries served because every upstream failed.
    pub stale: u64,
}

/// The answers and drops of one client transport.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Transport {
    /// By response code: `NOERROR`, `FORMERR`, `SERVFAIL`, `NXDOMAIN`, `NOTIMP`, `REFUSED`,
    /// `BADVERS`, `other`.
    pub answers: BTreeMap<String, u64>,
    /// Packets or connections given no answer.
    pub dropped: u64,
}

/// `time` as RFC 3339 in UTC, to the second.
pub(crate) fn timestamp(time: SystemTime) -> String {
    let time = OffsetDateTime::from(time);
    let time = time.replace_nanosecond(0).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_default()
}

/// The status for people, laid out like `resolvectl status`; `now` dates the "ago"s.
pub fn render(status: &Status, now: SystemTime) -> String {
    let mut out = String::new();
    let mut section = Section::new(&mut out);
    let _ = writeln!(
        section.out,
        "dns-proxy {} (pid {})",
        status.version, status.pid
    );
    section.line(
        "State",
        match &status.degraded {
            Some(problem) => format!("degraded, local zones only: {problem}"),
            None => "running".to_string(),
        },
    );
    section.line("Started", when(&status.started, now));
    section.list("Configuration", status.config_files.iter().cloned());
    let listeners = status
        .listeners
        .iter()
        .map(|l| format!("{} {}", l.kind, l.address));
    section.list("Listening", listeners);

    let _ = writeln!(section.out, "\nUpstreams:");
    if status.upstreams.is_empty() {
        let _ = writeln!(section.out, "  (none in force)");
    }
    for upstream in &status.upstreams {
        render_upstream(&mut section, upstream, now);
    }
    for zone in &status.forward_zones {
        let _ = writeln!(section.out, "\nForward zone {}:", zone.zones.join(", "));
        for upstream in &zone.upstreams {
            render_upstream(&mut section, upstream, now);
        }
    }
    render_links(&mut section, status, now);

    let cache = &status.cache;
    let _ = writeln!(section.out, "\nCache:");
    if cache.enabled {
        let size = format!(
            "{} ({} of {})",
            cache.entries,
            bytes(cache.bytes),
            bytes(cache.max_bytes)
        );
        section.line("Entries", size);
    } else {
        section.line("Entries", "none, the cache is off".to_string());
    }
    section.line("Hits", cache.hits.to_string());
    section.line("Misses", cache.misses.to_string());
    section.line("Stale answers", cache.stale.to_string());

    let dnssec = &status.dnssec;
    let _ = writeln!(section.out, "\nDNSSEC:");
    section.line(
        "Validation",
        match dnssec.mode.as_str() {
            "validate" => format!("on, {} zones cached", dnssec.zones_cached),
            _ => "off, answers passed as the upstreams send them".to_string(),
        },
    );
    section.line(
        "Verdicts",
        format!(
            "{} secure, {} insecure, {} bogus, {} indeterminate",
            dnssec.secure, dnssec.insecure, dnssec.bogus, dnssec.indeterminate
        ),
    );

    let _ = writeln!(section.out, "\nQueries:");
    for (transport, counts) in &status.queries {
        let answered: u64 = counts.answers.values().sum();
        let codes: Vec<String> = counts
            .answers
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| format!("{code} {n}"))
            .collect();
        let codes = match codes.is_empty() {
            true => String::new(),
            false => format!(" ({})", codes.join(", ")),
        };
        section.line(
            transport,
            format!("{answered} answered{codes}, {} dropped", counts.dropped),
        );
    }
    section.line("Rate-limited", status.rate_limited.to_string());
    section.line("Local answers", status.local_answers.to_string());
    section.line("Hedged", status.hedged.to_string());
    section.line("In flight", status.in_flight.to_string());
    out
}

/// The links' DNS settings and the zones learned from them.
fn render_links(section: &mut Section<'_>, status: &Status, now: SystemTime) {
    if status.link_dns.mode.is_empty() {
        return;
    }
    let _ = writeln!(
        section.out,
        "\nLinks (link_dns = \"{}\"):",
        status.link_dns.mode
    );
    section.line("Bus", status.link_dns.bus.clone());
    for link in &status.links {
        let _ = writeln!(section.out, "  Link {} ({})", link.ifindex, link.name);
        section.list("Servers", link.servers.iter().cloned());
        section.list("Domains", link.domains.iter().cloned());
        let default = match (link.default_route, status.link_dns.mode.as_str()) {
            (true, "all") => "yes",
            (true, _) => "yes, not followed (link_dns = \"domains\")",
            (false, _) => "no",
        };
        section.line("Default route", default.to_string());
        section.line("Changed", when(&link.changed, now));
    }
    for zone in &status.link_zones {
        let _ = writeln!(section.out, "\nLink zone {}:", zone.zones.join(", "));
        for upstream in &zone.upstreams {
            render_upstream(section, upstream, now);
        }
    }
}

fn render_upstream(section: &mut Section<'_>, upstream: &Upstream, now: SystemTime) {
    let kind = match (upstream.protocol.as_str(), &upstream.tls_name) {
        ("tls", Some(name)) => format!("DNS over TLS, {name}"),
        ("tls", None) => "DNS over TLS".to_string(),
        ("https", Some(name)) => format!("DNS over HTTPS, {name}"),
        ("udp", _) => "plain DNS".to_string(),
        (other, _) => other.to_string(),
    };
    let _ = writeln!(section.out, "  {} ({kind})", upstream.address);
    section.line(
        "State",
        format!(
            "{} since {}",
            upstream.state.as_str(),
            when(&upstream.since, now)
        ),
    );
    if let Some(error) = &upstream.last_error {
        let at = ago(&error.at, now).map_or_else(String::new, |ago| format!(" ({ago} ago)"));
        section.line(
            "Last error",
            format!("{}: {}{at}", error.kind, error.message),
        );
    }
    if let Some(srtt) = upstream.srtt_ms {
        section.line("Smoothed RTT", format!("{srtt:.1} ms"));
    }
    if upstream.protocol == "tls" || upstream.protocol == "https" {
        section.line("Connections", upstream.connections.to_string());
    }
    section.line(
        "Queries",
        format!("{}, {} failed", upstream.queries, upstream.failures),
    );
}

/// Lines of `label: value` with the labels right-aligned, as resolvectl prints them.
struct Section<'a> {
    out: &'a mut String,
}

/// Width of the label column.
const LABEL_WIDTH: usize = 15;

impl<'a> Section<'a> {
    fn new(out: &'a mut String) -> Section<'a> {
        Section { out }
    }

    fn line(&mut self, label: &str, value: String) {
        let _ = writeln!(self.out, "{label:>LABEL_WIDTH$}: {value}");
    }

    /// One value per line, the label on the first.
    fn list(&mut self, label: &str, values: impl Iterator<Item = String>) {
        let mut values = values.peekable();
        if values.peek().is_none() {
            self.line(label, "none".to_string());
        }
        for (i, value) in values.enumerate() {
            match i {
                0 => self.line(label, value),
                _ => {
                    let _ = writeln!(self.out, "{:>LABEL_WIDTH$}  {value}", "");
                }
            }
        }
    }
}

/// `2026-11-27 10:58:16 UTC; 12s ago`, from an RFC 3339 timestamp.
fn when(timestamp: &str, now: SystemTime) -> String {
    let Ok(time) = OffsetDateTime::parse(timestamp, &Rfc3339) else {
        return timestamp.to_string();
    };
    let date = format!(
        "{}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        time.year(),
        u8::from(time.month()),
        time.day(),
        time.hour(),
        time.minute(),
        time.second()
    );
    match ago(timestamp, now) {
        Some(ago) => format!("{date}; {ago} ago"),
        None => date,
    }
}

/// How long before `now` an RFC 3339 timestamp was, as systemd writes it: `1h 2min`.
fn ago(timestamp: &str, now: SystemTime) -> Option<String> {
    let time = OffsetDateTime::parse(timestamp, &Rfc3339).ok()?;
    let elapsed = (OffsetDateTime::from(now) - time).whole_seconds().max(0);
    Some(span(Duration::from_secs(elapsed.unsigned_abs())))
}

/// A duration in its two largest units, as systemd writes them.
fn span(duration: Duration) -> String {
    let mut left = duration.as_secs();
    let units = [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")];
    let mut parts = Vec::new();
    for (size, name) in units {
        if left >= size || (size == 1 && parts.is_empty()) {
            parts.push(format!("{}{name}", left / size));
            left %= size;
        }
        if parts.len() == 2 {
            break;
        }
    }
    parts.join(" ")
}

/// Bytes in binary units: `64.2 KiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_systemds() {
        assert_eq!(span(Duration::ZERO), "0s");
        assert_eq!(span(Duration::from_secs(12)), "12s");
        assert_eq!(span(Duration::from_secs(62)), "1min 2s");
        assert_eq!(span(Duration::from_secs(3_600)), "1h");
        assert_eq!(span(Duration::from_secs(3_720 + 5)), "1h 2min");
        assert_eq!(span(Duration::from_secs(2 * 86_400 + 7_200)), "2d 2h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(65_741), "64.2 KiB");
        assert_eq!(bytes(32 << 20), "32.0 MiB");
    }

    #[test]
    fn timestamps_are_rfc3339_utc_and_read_back() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_500);
        let text = timestamp(time);
        assert_eq!(text, "2026-11-18T11:06:40Z");
        let later = time + Duration::from_secs(75);
        assert_eq!(when(&text, later), "2026-11-18 11:06:40 UTC; 1min 15s ago");
        assert_eq!(when("not a time", later), "not a time");
    }

    #[test]
    fn rendering_shows_each_upstream_and_zone() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_100);
        let at = timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        let status = Status {
            version: "1.2.3".to_string(),
            pid: 42,
            started: at.clone(),
            upstreams: vec![Upstream {
                address: "127.0.0.1:853".to_string(),
                protocol: "tls".to_string(),
                tls_name: Some("dns.test".to_string()),
                state: State::Down,
                since: at.clone(),
                last_error: Some(LastError {
                    kind: "refused".to_string(),
                    message: "TCP connect failed".to_string(),
                    at: at.clone(),
                }),
                srtt_ms: Some(1.25),
                queries: 9,
                failures: 2,
                ..Upstream::default()
            }],
            forward_zones: vec![ForwardZone {
                zones: vec!["corp.example".to_string()],
                upstreams: vec![Upstream {
                    address: "10.0.0.2:53".to_string(),
                    protocol: "udp".to_string(),
                    since: at.clone(),
                    ..Upstream::default()
                }],
            }],
            link_dns: LinkDns {
                mode: "domains".to_string(),
                bus: "owns org.freedesktop.resolve1".to_string(),
            },
            links: vec![Link {
                ifindex: 5,
                name: "eth0".to_string(),
                servers: vec!["10.99.0.1".to_string()],
                domains: vec!["lab.example".to_string(), "~vpn.example".to_string()],
                default_route: true,
                changed: at.clone(),
            }],
            link_zones: vec![ForwardZone {
                zones: vec!["lab.example".to_string(), "vpn.example".to_string()],
                upstreams: vec![Upstream {
                    address: "10.99.0.1:53".to_string(),
                    protocol: "udp".to_string(),
                    since: at,
                    ..Upstream::default()
                }],
            }],
            ..Status::default()
        };
        let text = render(&status, now);
        for expected in [
            "dns-proxy 1.2.3 (pid 42)",
            "          State: running",
            "  127.0.0.1:853 (DNS over TLS, dns.test)",
            "          State: down since 2026-11-18 11:06:40 UTC; 1min 40s ago",
            "     Last error: refused: TCP connect failed (1min 40s ago)",
            "   Smoothed RTT: 1.2 ms",
            "        Queries: 9, 2 failed",
            "Forward zone corp.example:",
            "  10.0.0.2:53 (plain DNS)",
            "          State: up since",
            "Links (link_dns = \"domains\"):",
            "            Bus: owns org.freedesktop.resolve1",
            "  Link 5 (eth0)",
            "        Servers: 10.99.0.1",
            "        Domains: lab.example",
            "                 ~vpn.example",
            "  Default route: yes, not followed (link_dns = \"domains\")",
            "Link zone lab.example, vpn.example:",
            "  10.99.0.1:53 (plain DNS)",
            "        Entries: none, the cache is off",
        ] {
            assert!(text.contains(expected), "no {expected:?} in:\n{text}");
        }
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains(r#""state":"down""#), "{json}");
        assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), status);
        // An older or newer peer: missing fields take their defaults, unknown ones are ignored.
        let partial: Status = serde_json::from_str(r#"{"version":"9","future":1}"#).unwrap();
        assert_eq!(partial.version, "9");
    }
}
