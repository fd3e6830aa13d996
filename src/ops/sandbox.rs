//! The IP allow list of the packaged service (`IPAddressAllow=`): the addresses the
//! configuration needs the daemon to exchange packets with, computed from a [`Config`] alone,
//! and putting it in force on the systemd unit.
//!
//! `dns-proxy apply-ip-allow UNIT` runs as the unit's privileged `ExecStartPre=+` and
//! `ExecReload=+` step: it validates the configuration, then replaces the unit's list with
//! `systemctl set-property --runtime` (which lasts until the next boot). The unit's own
//! `IPAddressDeny=any` stays, so anything not on the list is dropped by the kernel.
//! `check-config` prints the same list. Nothing here opens a socket.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, ExitStatus};

use crate::config::{Config, LinkDns, UpstreamConfig, ZoneUpstream};
use crate::policy::access::Network;

/// Where the DNS servers that networks hand out live, allowed while `link_dns` is on: the
/// daemon learns them at run time (NetworkManager, resolvectl), after this list was set, and
/// only root could widen it then. A fixed list of ranges keeps what the allow list is for, the
/// Internet at large out of reach of a compromised daemon, without a privileged process
/// running beside it; the price is that the daemon may reach these networks whether or not a
/// link named a server there, and that a link server elsewhere is blocked (dns-proxy(8)).
const LINK_SERVER_NETWORKS: [Network; 8] = [
    // Private networks (RFC 1918): LANs, VPNs, a cloud VPC's resolver at its base + 2.
    Network::v4(Ipv4Addr::new(10, 0, 0, 0), 8),
    Network::v4(Ipv4Addr::new(172, 16, 0, 0), 12),
    Network::v4(Ipv4Addr::new(192, 168, 0, 0), 16),
    // Shared address space (RFC 6598): carrier-grade NAT, overlay VPNs.
    Network::v4(Ipv4Addr::new(100, 64, 0, 0), 10),
    // Link-local: AWS's resolver 169.254.169.253, Google Cloud's 169.254.169.254.
    Network::v4(Ipv4Addr::new(169, 254, 0, 0), 16),
    // Azure's resolver, the one public address every Azure VM is given as its DNS server.
    Network::v4(Ipv4Addr::new(168, 63, 129, 16), 32),
    // Unique local (RFC 4193): AWS's fd00:ec2::253, IPv6 LANs and VPNs.
    Network::v6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    // IPv6 link-local: a router advertising itself as the resolver.
    Network::v6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
];

/// The addresses the daemon may exchange packets with under `config`, in this order:
///
/// - loopback, when the daemon binds a listener there itself (`listen`, `listen_tls`,
///   `listen_https`, `[metrics] listen`):
///   127.0.0.0/8 for an IPv4 one, ::1 for an IPv6 one, both for a wildcard;
/// - the networks of `allow`, when one of those listeners is beyond loopback: its clients;
/// - the networks where the links' DNS servers live ([`LINK_SERVER_NETWORKS`]), unless
///   `link_dns` is off;
/// - every upstream address, default and forward zones.
///
/// An upstream known only by host name has no address to list: [`needs_addresses`] refuses
/// such a configuration under the sandbox.
///
/// An entry inside another one is left out. The sockets systemd passes (port 53 of
/// `dns-proxy.socket`) belong to the socket unit and are not filtered by the service's list.
pub fn ip_allow(config: &Config) -> Vec<Network> {
    let listeners = own_listeners(config);
    let mut wanted = Vec::new();
    // `[::]` also takes IPv4 on a dual-stack socket.
    if listeners
        .iter()
        .any(|ip| (ip.is_ipv4() && ip.is_loopback()) || ip.is_unspecified())
    {
        wanted.push(Network::LOOPBACK_V4);
    }
    if listeners
        .iter()
        .any(|ip| ip.is_ipv6() && (ip.is_loopback() || ip.is_unspecified()))
    {
        wanted.push(Network::LOOPBACK_V6);
    }
    if listeners.iter().any(|ip| !ip.is_loopback()) {
        wanted.extend(config.allow.iter().copied());
    }
    if config.link_dns != LinkDns::Off {
        wanted.extend(LINK_SERVER_NETWORKS);
    }
    let zones = config.forward_zones.iter().flat_map(|zone| &zone.upstreams);
    let upstreams = config
        .upstreams
        .iter()
        .filter_map(|upstream| upstream.address.ip())
        .chain(zones.filter_map(|upstream| match upstream {
            ZoneUpstream::Tls(upstream) => upstream.address.ip(),
            ZoneUpstream::Plain(address) => Some(*address),
        }));
    wanted.extend(upstreams.map(|address| Network::host(address.ip())));

    let mut list: Vec<Network> = Vec::new();
    for network in wanted {
        if !list.iter().any(|kept| kept.covers(&network)) {
            list.retain(|kept| !network.covers(kept));
            list.push(network);
        }
    }
    list
}

/// Why `config` cannot run under the packaged sandbox: an upstream known only by host name.
///
/// The allow list is set before the daemon starts, from the configuration alone, and must
/// hold every address the daemon will connect to. A host name's addresses are known only by
/// asking DNS, at boot perhaps before any network is up, over plain DNS that anyone on the
/// path could answer, and they change later when the daemon asks again. So under the
/// sandbox each upstream says where it is: `address = "IP"` for DNS over HTTPS (the URL's
/// host still names the certificate and the requests), an IP address with `tls_name` for DNS
/// over TLS.
pub fn needs_addresses(config: &Config) -> Result<(), String> {
    match config.first_named_upstream() {
        None => Ok(()),
        Some((key, upstream)) => Err(named_reason(&key, upstream)),
    }
}

fn named_reason(key: &str, upstream: &UpstreamConfig) -> String {
    let fix = match &upstream.url {
        Some(_) => "add address = \"IP\" (the URL's host still names the certificate)",
        None => "give its IP address and the name as tls_name",
    };
    format!(
        "key \"{key}.address\": {} is a host name; the service's IP allow list is set before \
         it starts and can hold only addresses: {fix} (see \"Upstreams by host name\" in \
         dns-proxy(8))",
        upstream.address
    )
}

/// The addresses of every socket the daemon binds itself, canonical (IPv4-mapped as IPv4):
/// any listener it gains belongs here. `listen` counts even though socket activation ignores
/// it: the list is computed before the daemon starts, when nobody knows yet whether systemd
/// will pass sockets.
fn own_listeners(config: &Config) -> Vec<IpAddr> {
    config
        .listen
        .iter()
        .chain(&config.listen_tls)
        .chain(&config.listen_https)
        .chain(config.metrics.iter().map(|metrics| &metrics.listen))
        .map(|address: &SocketAddr| address.ip().to_canonical())
        .collect()
}

/// The list as systemd's `IPAddressAllow=` takes it: networks separated by spaces.
pub fn directive_value(list: &[Network]) -> String {
    let items: Vec<String> = list.iter().map(Network::to_string).collect();
    items.join(" ")
}

/// Why the list could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// `systemctl` could not be run (not installed, not in `PATH`).
    #[error("cannot run systemctl: {0}")]
    Spawn(#[source] io::Error),
    /// systemd refused the property: too old, unknown unit, no D-Bus, not root.
    #[error(
        "`systemctl set-property --runtime {unit} IPAddressAllow=…` failed ({status}): {stderr}"
    )]
    Refused {
        unit: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Replaces `unit`'s `IPAddressAllow=` with `list` until the next boot. The empty assignment
/// first drops the unit file's list; systemd applies both in one call, so the service never
/// sees a list in between.
pub fn apply(unit: &str, list: &[Network]) -> Result<(), ApplyError> {
    let output = Command::new("systemctl")
        .args(["set-property", "--runtime", unit, "IPAddressAllow="])
        .arg(format!("IPAddressAllow={}", directive_value(list)))
        .output()
        .map_err(ApplyError::Spawn)?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ApplyError::Refused {
            unit: unit.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr)
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join("; "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(toml: &str) -> String {
        let config = Config::from_toml_str(toml).unwrap();
        directive_value(&ip_allow(&config))
    }

    /// The list with `link_dns` off: the configuration's own addresses alone.
    fn list_without_links(toml: &str) -> String {
        list(&format!("link_dns = \"off\"\n{toml}"))
    }

    const LINK_RANGES: &str = "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 100.64.0.0/10 \
        169.254.0.0/16 168.63.129.16/32 fc00::/7 fe80::/10";

    #[test]
    fn default_configuration_is_loopback_the_link_ranges_and_cloudflare() {
        // The same as the unit file's own list, which applies where the step cannot run.
        assert_eq!(
            list(""),
            format!("127.0.0.0/8 ::1/128 {LINK_RANGES} 1.1.1.1/32 1.0.0.1/32")
        );
        assert_eq!(
            list_without_links(""),
            "127.0.0.0/8 ::1/128 1.1.1.1/32 1.0.0.1/32"
        );
    }

    #[test]
    fn link_ranges_while_link_dns_is_on_and_cover_private_resolvers() {
        let toml = r#"
            link_dns = "all"
            [[upstream]]
            address = "9.9.9.9"
            [[forward_zone]]
            zones = ["corp.example"]
            [[forward_zone.upstream]]
            address = "10.0.0.2"
            protocol = "udp"
            [[forward_zone]]
            zones = ["compute.internal"]
            [[forward_zone.upstream]]
            address = "169.254.169.253"
            protocol = "udp"
        "#;
        // The private resolvers lie inside the ranges.
        assert_eq!(
            list(toml),
            format!("127.0.0.0/8 ::1/128 {LINK_RANGES} 9.9.9.9/32")
        );
    }

    #[test]
    fn upstreams_replace_the_defaults() {
        let toml = r#"
            [[upstream]]
            address = "9.9.9.9"
            tls_name = "dns.quad9.net"
            [[upstream]]
            address = "[2620:fe::fe]:853"
            tls_name = "dns.quad9.net"
        "#;
        assert_eq!(
            list_without_links(toml),
            "127.0.0.0/8 ::1/128 9.9.9.9/32 2620:fe::fe/128"
        );
    }

    #[test]
    fn forward_zone_resolvers_are_added_plain_and_tls() {
        let toml = r#"
            [[upstream]]
            address = "9.9.9.9"
            [[forward_zone]]
            zones = ["corp.example"]
            [[forward_zone.upstream]]
            address = "10.0.0.2"
            protocol = "udp"
            [[forward_zone.upstream]]
            address = "10.0.0.3:8853"
            tls_name = "resolver.corp.example"
            [[forward_zone]]
            zones = ["cluster.local"]
            [[forward_zone.upstream]]
            address = "10.96.0.10"
            protocol = "udp"
        "#;
        assert_eq!(
            list_without_links(toml),
            "127.0.0.0/8 ::1/128 9.9.9.9/32 10.0.0.2/32 10.0.0.3/32 10.96.0.10/32"
        );
    }

    #[test]
    fn loopback_upstream_and_duplicates_are_listed_once() {
        let toml = r#"
            [[upstream]]
            address = "127.0.0.2:853"
            [[upstream]]
            address = "9.9.9.9"
            [[forward_zone]]
            zones = ["corp.example"]
            [[forward_zone.upstream]]
            address = "9.9.9.9:53"
            protocol = "udp"
        "#;
        assert_eq!(list_without_links(toml), "127.0.0.0/8 ::1/128 9.9.9.9/32");
    }

    #[test]
    fn allow_networks_only_when_listening_beyond_loopback() {
        let on_loopback = r#"
            allow = ["127.0.0.0/8", "192.168.1.0/24"]
            [[upstream]]
            address = "9.9.9.9"
        "#;
        assert_eq!(
            list_without_links(on_loopback),
            "127.0.0.0/8 ::1/128 9.9.9.9/32"
        );

        let on_lan = r#"
            listen = ["192.168.1.5:53"]
            allow = ["192.168.1.0/24", "fd00::/8"]
            [[upstream]]
            address = "192.168.1.1"
        "#;
        // The upstream lies inside an allowed network; no loopback listener, no loopback.
        assert_eq!(list_without_links(on_lan), "192.168.1.0/24 fd00::/8");

        let wildcard = r#"
            listen = ["0.0.0.0:53"]
            allow = ["10.0.0.0/8"]
            [[upstream]]
            address = "9.9.9.9"
        "#;
        assert_eq!(
            list_without_links(wildcard),
            "127.0.0.0/8 10.0.0.0/8 9.9.9.9/32"
        );

        let dual_stack = r#"
            listen = ["[::]:53"]
            allow = ["0.0.0.0/0", "::/0"]
            [[upstream]]
            address = "9.9.9.9"
        "#;
        assert_eq!(list_without_links(dual_stack), "0.0.0.0/0 ::/0");
    }

    #[test]
    fn metrics_endpoint_counts_as_a_listener() {
        let metrics_on_lan = r#"
            listen = ["127.0.0.1:5300"]
            allow = ["127.0.0.0/8", "10.1.0.0/16"]
            [[upstream]]
            address = "9.9.9.9"
            [metrics]
            listen = "10.1.2.3:9153"
        "#;
        assert_eq!(
            list_without_links(metrics_on_lan),
            "127.0.0.0/8 10.1.0.0/16 9.9.9.9/32"
        );
    }

    #[test]
    fn dns_over_tls_and_https_listeners_count_as_listeners() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["dns.test".to_string()]).unwrap();
        let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_file, params.self_signed(&key).unwrap().pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let files = format!(
            "tls_certificate = {:?}\ntls_key = {:?}\n",
            cert_file.display().to_string(),
            key_file.display().to_string()
        );
        let tls_on_lan = format!(
            r#"
            listen = ["127.0.0.1:5300"]
            listen_tls = ["10.1.2.3"]
            allow = ["127.0.0.0/8", "10.1.0.0/16"]
            {files}
            [[upstream]]
            address = "9.9.9.9"
        "#
        );
        assert_eq!(
            list_without_links(&tls_on_lan),
            "127.0.0.0/8 10.1.0.0/16 9.9.9.9/32"
        );
        let https_on_v6_loopback = format!(
            r#"
            listen = ["127.0.0.1:5300"]
            listen_https = ["[::1]:8443"]
            {files}
            [[upstream]]
            address = "9.9.9.9"
        "#
        );
        assert_eq!(
            list_without_links(&https_on_v6_loopback),
            "127.0.0.0/8 ::1/128 9.9.9.9/32"
        );
    }

    #[test]
    fn doh_upstreams_are_listed_and_host_names_refused() {
        let toml = r#"
            bootstrap = ["9.9.9.9"]
            [[upstream]]
            url = "https://dns.quad9.net/dns-query"
            address = "149.112.112.112"
            [[upstream]]
            url = "https://[2620:fe::fe]:8443/dns-query"
        "#;
        assert_eq!(
            list_without_links(toml),
            "127.0.0.0/8 ::1/128 149.112.112.112/32 2620:fe::fe/128"
        );
        let config = Config::from_toml_str(toml).unwrap();
        assert_eq!(needs_addresses(&config), Ok(()));

        let named = Config::from_toml_str(
            r#"
            link_dns = "off"
            bootstrap = ["9.9.9.9"]
            [[upstream]]
            address = "9.9.9.9"
            [[upstream]]
            url = "https://dns.quad9.net/dns-query"
        "#,
        )
        .unwrap();
        assert_eq!(list_of(&named), "127.0.0.0/8 ::1/128 9.9.9.9/32");
        let refused = needs_addresses(&named).unwrap_err();
        assert!(
            refused.starts_with("key \"upstream[1].address\": dns.quad9.net:443 is a host name"),
            "{refused}"
        );
    }

    fn list_of(config: &Config) -> String {
        directive_value(&ip_allow(config))
    }

    #[test]
    fn ipv4_mapped_listener_is_ipv4() {
        let toml = r#"
            listen = ["[::ffff:127.0.0.1]:5300"]
            [[upstream]]
            address = "9.9.9.9"
        "#;
        assert_eq!(list_without_links(toml), "127.0.0.0/8 9.9.9.9/32");
    }
}
