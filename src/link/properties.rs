//! The properties `resolvectl status` (and `busctl`) read on `/org/freedesktop/resolve1` and
//! on each link's object, with systemd-resolved's names and types, describing what dns-proxy
//! does: the global servers are the DoT upstreams, a link's servers are asked in plain DNS for
//! its domains only (and for the rest too under `link_dns = "all"` when it takes the default
//! route); LLMNR, mDNS and DNSSEC validation are not done here.
//!
//! Also the object paths (`/org/freedesktop/resolve1/link/_35` is link 5) and the
//! introspection data.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use zbus::zvariant::Value;

use crate::config::{Config, LinkDns};
use crate::link::input::{AF_INET, AF_INET6};
use crate::link::table::{self, Link, Own};

pub(crate) const MANAGER_PATH: &str = "/org/freedesktop/resolve1";
pub(crate) const LINK_PREFIX: &str = "/org/freedesktop/resolve1/link/";
pub(crate) const MANAGER: &str = "org.freedesktop.resolve1.Manager";
pub(crate) const LINK: &str = "org.freedesktop.resolve1.Link";

/// A property list, in systemd-resolved's order.
pub(crate) type Properties = Vec<(&'static str, Value<'static>)>;

/// Counts the manager reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) in_flight: u64,
    pub(crate) queries: u64,
    pub(crate) cache_entries: u64,
    pub(crate) cache_hits: u64,
    pub(crate) cache_misses: u64,
}

/// The object path of link `ifindex`, as sd-bus escapes it (a leading digit as `_3N`).
pub(crate) fn link_path(ifindex: u32) -> String {
    let digits = ifindex.to_string();
    let (first, rest) = digits.split_at(1);
    format!("{LINK_PREFIX}_{:02x}{rest}", first.as_bytes()[0])
}

/// The interface index a link object path names, or `None`.
pub(crate) fn link_index(path: &str) -> Option<u32> {
    let label = path.strip_prefix(LINK_PREFIX)?;
    let mut text = Vec::new();
    let mut bytes = label.bytes();
    while let Some(b) = bytes.next() {
        if b == b'_' {
            let high = char::from(bytes.next()?).to_digit(16)?;
            let low = char::from(bytes.next()?).to_digit(16)?;
            text.push((high * 16 + low) as u8);
        } else {
            text.push(b);
        }
    }
    let text = String::from_utf8(text).ok()?;
    text.parse::<u32>()
        .ok()
        .filter(|&i| i > 0 && !text.starts_with('0'))
}

/// The upstreams as `(ip, port as resolved shows it, TLS name)`: port 853 is the default.
fn upstreams(config: &Config) -> Vec<(IpAddr, u16, String)> {
    config
        .upstreams
        .iter()
        // An upstream given by host name has no address to show until it is looked up.
        .filter_map(|u| {
            let address = u.address.ip()?;
            let port = match address.port() {
                853 => 0,
                port => port,
            };
            Some((address.ip(), port, u.tls_name.to_str().into_owned()))
        })
        .collect()
}

fn family_bytes(ip: IpAddr) -> (i32, Vec<u8>) {
    match ip {
        IpAddr::V4(v4) => (AF_INET, v4.octets().to_vec()),
        IpAddr::V6(v6) => (AF_INET6, v6.octets().to_vec()),
    }
}

/// How /etc/resolv.conf relates to ours, in systemd-resolved's words: `stub` when it is (or
/// links to) `ours`, `missing`, or `foreign`.
pub(crate) fn resolv_conf_mode(etc: &Path, ours: Option<&Path>) -> &'static str {
    let Ok(target) = std::fs::canonicalize(etc) else {
        return "missing";
    };
    let ours = ours.and_then(|path| std::fs::canonicalize(path).ok());
    match ours {
        Some(ours) if ours == target => "stub",
        _ => "foreign",
    }
}

/// The manager's properties. `current` is the upstream in use (the first that is up).
pub(crate) fn manager(
    config: &Config,
    links: &BTreeMap<u32, Link>,
    current: Option<usize>,
    counts: Counts,
    resolv_conf_mode: &'static str,
) -> Properties {
    let global = upstreams(config);
    let mut dns: Vec<(i32, i32, Vec<u8>)> = Vec::new();
    let mut dns_ex: Vec<(i32, i32, Vec<u8>, u16, String)> = Vec::new();
    for (ip, port, name) in &global {
        let (family, bytes) = family_bytes(*ip);
        dns.push((0, family, bytes.clone()));
        dns_ex.push((0, family, bytes, *port, name.clone()));
    }
    let mut domains: Vec<(i32, String, bool)> = Vec::new();
    for (index, link) in links {
        let ifindex = *index as i32;
        for server in &link.servers {
            dns.push((ifindex, server.family(), server.bytes()));
            dns_ex.push((
                ifindex,
                server.family(),
                server.bytes(),
                server.port,
                server.name.clone(),
            ));
        }
        for domain in &link.domains {
            domains.push((ifindex, domain.name.clone(), domain.route_only));
        }
    }
    let (current, current_ex) = match current.and_then(|i| global.get(i)) {
        Some((ip, port, name)) => {
            let (family, bytes) = family_bytes(*ip);
            (
                (0, family, bytes.clone()),
                (0, family, bytes, *port, name.clone()),
            )
        }
        None => ((0, 0, Vec::new()), (0, 0, Vec::new(), 0, String::new())),
    };
    vec![
        ("LLMNRHostname", Value::from(String::new())),
        ("LLMNR", Value::from("no".to_string())),
        ("MulticastDNS", Value::from("no".to_string())),
        ("DNSOverTLS", Value::from("yes".to_string())),
        ("DNS", Value::from(dns)),
        ("DNSEx", Value::from(dns_ex)),
        (
            "FallbackDNS",
            Value::from(Vec::<(i32, i32, Vec<u8>)>::new()),
        ),
        (
            "FallbackDNSEx",
            Value::from(Vec::<(i32, i32, Vec<u8>, u16, String)>::new()),
        ),
        ("CurrentDNSServer", Value::from(current)),
        ("CurrentDNSServerEx", Value::from(current_ex)),
        ("Domains", Value::from(domains)),
        (
            "TransactionStatistics",
            Value::from((counts.in_flight, counts.queries)),
        ),
        (
            "CacheStatistics",
            Value::from((counts.cache_entries, counts.cache_hits, counts.cache_misses)),
        ),
        ("DNSSEC", Value::from("no".to_string())),
        ("DNSSECStatistics", Value::from((0u64, 0u64, 0u64, 0u64))),
        ("DNSSECSupported", Value::from(false)),
        (
            "DNSSECNegativeTrustAnchors",
            Value::from(Vec::<String>::new()),
        ),
        ("ResolvConfMode", Value::from(resolv_conf_mode.to_string())),
    ]
}

/// A link's properties (an interface with nothing set has empty ones).
pub(crate) fn link(link: Option<&Link>, mode: LinkDns, own: &Own) -> Properties {
    let empty = Link::new(String::new());
    let link = link.unwrap_or(&empty);
    let dns: Vec<(i32, Vec<u8>)> = link
        .servers
        .iter()
        .map(|s| (s.family(), s.bytes()))
        .collect();
    let dns_ex: Vec<(i32, Vec<u8>, u16, String)> = link
        .servers
        .iter()
        .map(|s| (s.family(), s.bytes(), s.port, s.name.clone()))
        .collect();
    let current = link
        .servers
        .iter()
        .find(|s| table::ignored(s.address, own).is_none());
    let (current, current_ex) = match current {
        Some(s) => (
            (s.family(), s.bytes()),
            (s.family(), s.bytes(), s.port, s.name.clone()),
        ),
        None => ((0, Vec::new()), (0, Vec::new(), 0, String::new())),
    };
    let scopes: u64 = match current.0 {
        0 => 0,
        _ => 1,
    };
    let domains: Vec<(String, bool)> = link
        .domains
        .iter()
        .map(|d| (d.name.clone(), d.route_only))
        .collect();
    let default_route = mode == LinkDns::All && link.default_route();
    vec![
        ("ScopesMask", Value::from(scopes)),
        ("DNS", Value::from(dns)),
        ("DNSEx", Value::from(dns_ex)),
        ("CurrentDNSServer", Value::from(current)),
        ("CurrentDNSServerEx", Value::from(current_ex)),
        ("Domains", Value::from(domains)),
        ("DefaultRoute", Value::from(default_route)),
        ("LLMNR", Value::from("no".to_string())),
        ("MulticastDNS", Value::from("no".to_string())),
        ("DNSOverTLS", Value::from("no".to_string())),
        ("DNSSEC", Value::from("no".to_string())),
        (
            "DNSSECNegativeTrustAnchors",
            Value::from(link.trust_anchors.clone()),
        ),
        ("DNSSECSupported", Value::from(false)),
    ]
}

/// The introspection data of `path`: the manager, a link, or a node on the way to them.
pub(crate) fn introspect(path: &str, links: impl Iterator<Item = u32>) -> Option<String> {
    const HEADER: &str = "<!DOCTYPE node PUBLIC \"-//freedesktop//DTD D-BUS Object Introspection 1.0//EN\"\n \"http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd\">\n<node>\n";
    let mut xml = String::from(HEADER);
    let children = |names: Vec<String>| -> String {
        names
            .iter()
            .map(|n| format!(" <node name=\"{n}\"/>\n"))
            .collect()
    };
    match path {
        "/" => xml.push_str(&children(vec!["org".to_string()])),
        "/org" => xml.push_str(&children(vec!["freedesktop".to_string()])),
        "/org/freedesktop" => xml.push_str(&children(vec!["resolve1".to_string()])),
        MANAGER_PATH => {
            xml.push_str(STANDARD_INTERFACES);
            xml.push_str(MANAGER_XML);
            xml.push_str(&children(vec!["link".to_string()]));
        }
        "/org/freedesktop/resolve1/link" => {
            let names = links
                .map(|i| link_path(i).trim_start_matches(LINK_PREFIX).to_string())
                .collect();
            xml.push_str(&children(names));
        }
        other => {
            link_index(other)?;
            xml.push_str(STANDARD_INTERFACES);
            xml.push_str(LINK_XML);
        }
    }
    xml.push_str("</node>\n");
    Some(xml)
}

const STANDARD_INTERFACES: &str = r#" <interface name="org.freedesktop.DBus.Peer">
  <method name="Ping"/>
  <method name="GetMachineId"><arg type="s" name="machine_uuid" direction="out"/></method>
 </interface>
 <interface name="org.freedesktop.DBus.Introspectable">
  <method name="Introspect"><arg name="xml_data" type="s" direction="out"/></method>
 </interface>
 <interface name="org.freedesktop.DBus.Properties">
  <method name="Get"><arg name="interface_name" direction="in" type="s"/><arg name="property_name" direction="in" type="s"/><arg name="value" direction="out" type="v"/></method>
  <method name="GetAll"><arg name="interface_name" direction="in" type="s"/><arg name="props" direction="out" type="a{sv}"/></method>
  <method name="Set"><arg name="interface_name" direction="in" type="s"/><arg name="property_name" direction="in" type="s"/><arg name="value" direction="in" type="v"/></method>
 </interface>
"#;

const MANAGER_XML: &str = r#" <interface name="org.freedesktop.resolve1.Manager">
  <property name="LLMNRHostname" type="s" access="read"/>
  <property name="LLMNR" type="s" access="read"/>
  <property name="MulticastDNS" type="s" access="read"/>
  <property name="DNSOverTLS" type="s" access="read"/>
  <property name="DNS" type="a(iiay)" access="read"/>
  <property name="DNSEx" type="a(iiayqs)" access="read"/>
  <property name="FallbackDNS" type="a(iiay)" access="read"/>
  <property name="FallbackDNSEx" type="a(iiayqs)" access="read"/>
  <property name="CurrentDNSServer" type="(iiay)" access="read"/>
  <property name="CurrentDNSServerEx" type="(iiayqs)" access="read"/>
  <property name="Domains" type="a(isb)" access="read"/>
  <property name="TransactionStatistics" type="(tt)" access="read"/>
  <property name="CacheStatistics" type="(ttt)" access="read"/>
  <property name="DNSSEC" type="s" access="read"/>
  <property name="DNSSECStatistics" type="(tttt)" access="read"/>
  <property name="DNSSECSupported" type="b" access="read"/>
  <property name="DNSSECNegativeTrustAnchors" type="as" access="read"/>
  <property name="ResolvConfMode" type="s" access="read"/>
  <method name="ResolveHostname"><arg type="i" name="ifindex" direction="in"/><arg type="s" name="name" direction="in"/><arg type="i" name="family" direction="in"/><arg type="t" name="flags" direction="in"/><arg type="a(iiay)" name="addresses" direction="out"/><arg type="s" name="canonical" direction="out"/><arg type="t" name="flags" direction="out"/></method>
  <method name="ResolveAddress"><arg type="i" name="ifindex" direction="in"/><arg type="i" name="family" direction="in"/><arg type="ay" name="address" direction="in"/><arg type="t" name="flags" direction="in"/><arg type="a(is)" name="names" direction="out"/><arg type="t" name="flags" direction="out"/></method>
  <method name="ResolveRecord"><arg type="i" name="ifindex" direction="in"/><arg type="s" name="name" direction="in"/><arg type="q" name="class" direction="in"/><arg type="q" name="type" direction="in"/><arg type="t" name="flags" direction="in"/><arg type="a(iqqay)" name="records" direction="out"/><arg type="t" name="flags" direction="out"/></method>
  <method name="GetLink"><arg type="i" name="ifindex" direction="in"/><arg type="o" name="path" direction="out"/></method>
  <method name="SetLinkDNS"><arg type="i" name="ifindex" direction="in"/><arg type="a(iay)" name="addresses" direction="in"/></method>
  <method name="SetLinkDNSEx"><arg type="i" name="ifindex" direction="in"/><arg type="a(iayqs)" name="addresses" direction="in"/></method>
  <method name="SetLinkDomains"><arg type="i" name="ifindex" direction="in"/><arg type="a(sb)" name="domains" direction="in"/></method>
  <method name="SetLinkDefaultRoute"><arg type="i" name="ifindex" direction="in"/><arg type="b" name="enable" direction="in"/></method>
  <method name="SetLinkLLMNR"><arg type="i" name="ifindex" direction="in"/><arg type="s" name="mode" direction="in"/></method>
  <method name="SetLinkMulticastDNS"><arg type="i" name="ifindex" direction="in"/><arg type="s" name="mode" direction="in"/></method>
  <method name="SetLinkDNSOverTLS"><arg type="i" name="ifindex" direction="in"/><arg type="s" name="mode" direction="in"/></method>
  <method name="SetLinkDNSSEC"><arg type="i" name="ifindex" direction="in"/><arg type="s" name="mode" direction="in"/></method>
  <method name="SetLinkDNSSECNegativeTrustAnchors"><arg type="i" name="ifindex" direction="in"/><arg type="as" name="names" direction="in"/></method>
  <method name="RevertLink"><arg type="i" name="ifindex" direction="in"/></method>
  <method name="FlushCaches"/>
  <method name="ResetServerFeatures"/>
 </interface>
"#;

const LINK_XML: &str = r#" <interface name="org.freedesktop.resolve1.Link">
  <property name="ScopesMask" type="t" access="read"/>
  <property name="DNS" type="a(iay)" access="read"/>
  <property name="DNSEx" type="a(iayqs)" access="read"/>
  <property name="CurrentDNSServer" type="(iay)" access="read"/>
  <property name="CurrentDNSServerEx" type="(iayqs)" access="read"/>
  <property name="Domains" type="a(sb)" access="read"/>
  <property name="DefaultRoute" type="b" access="read"/>
  <property name="LLMNR" type="s" access="read"/>
  <property name="MulticastDNS" type="s" access="read"/>
  <property name="DNSOverTLS" type="s" access="read"/>
  <property name="DNSSEC" type="s" access="read"/>
  <property name="DNSSECNegativeTrustAnchors" type="as" access="read"/>
  <property name="DNSSECSupported" type="b" access="read"/>
  <method name="SetDNS"><arg type="a(iay)" name="addresses" direction="in"/></method>
  <method name="SetDNSEx"><arg type="a(iayqs)" name="addresses" direction="in"/></method>
  <method name="SetDomains"><arg type="a(sb)" name="domains" direction="in"/></method>
  <method name="SetDefaultRoute"><arg type="b" name="enable" direction="in"/></method>
  <method name="SetLLMNR"><arg type="s" name="mode" direction="in"/></method>
  <method name="SetMulticastDNS"><arg type="s" name="mode" direction="in"/></method>
  <method name="SetDNSOverTLS"><arg type="s" name="mode" direction="in"/></method>
  <method name="SetDNSSEC"><arg type="s" name="mode" direction="in"/></method>
  <method name="SetDNSSECNegativeTrustAnchors"><arg type="as" name="names" direction="in"/></method>
  <method name="Revert"/>
 </interface>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_paths_escape_the_leading_digit_as_sd_bus_does() {
        assert_eq!(link_path(5), "/org/freedesktop/resolve1/link/_35");
        assert_eq!(link_path(12), "/org/freedesktop/resolve1/link/_312");
        assert_eq!(link_index("/org/freedesktop/resolve1/link/_35"), Some(5));
        assert_eq!(link_index("/org/freedesktop/resolve1/link/_312"), Some(12));
        assert_eq!(link_index("/org/freedesktop/resolve1/link/_30"), None);
        assert_eq!(link_index("/org/freedesktop/resolve1/link/_3"), None);
        assert_eq!(link_index("/org/freedesktop/resolve1/link/abc"), None);
        assert_eq!(link_index("/org/freedesktop/resolve1"), None);
    }

    /// Each of `expected`'s properties has its signature among `props`.
    fn assert_signatures(props: &Properties, expected: &[(&str, &str)]) {
        for (name, signature) in expected {
            let found = props
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.value_signature().to_string());
            assert_eq!(found.as_deref(), Some(*signature), "{name}");
        }
    }

    #[test]
    fn properties_have_resolveds_types() {
        let props = link(None, LinkDns::Domains, &Own::default());
        assert_signatures(
            &props,
            &[
                ("DNS", "a(iay)"),
                ("DNSEx", "a(iayqs)"),
                ("CurrentDNSServerEx", "(iayqs)"),
                ("Domains", "a(sb)"),
                ("ScopesMask", "t"),
            ],
        );
        let config = Config::default();
        let props = manager(
            &config,
            &BTreeMap::new(),
            Some(0),
            Counts::default(),
            "stub",
        );
        assert_signatures(
            &props,
            &[
                ("DNS", "a(iiay)"),
                ("DNSEx", "a(iiayqs)"),
                ("CurrentDNSServer", "(iiay)"),
                ("Domains", "a(isb)"),
                ("CacheStatistics", "(ttt)"),
            ],
        );
        assert!(
            introspect(MANAGER_PATH, std::iter::empty())
                .unwrap()
                .contains("SetLinkDNSEx")
        );
        assert!(
            introspect("/org/freedesktop/resolve1/link", [5].into_iter())
                .unwrap()
                .contains("<node name=\"_35\"/>")
        );
        assert!(introspect("/elsewhere", std::iter::empty()).is_none());
    }
}
