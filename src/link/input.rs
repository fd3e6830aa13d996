//! What a caller of `org.freedesktop.resolve1` may set on a link, checked before anything
//! changes: the interface exists and is not loopback, addresses have the family's length,
//! domains are host names, modes are the words systemd-resolved accepts, and no list is longer
//! than a network would ever need. Pure functions: the interface lookup is passed in.
//!
//! A refusal carries the D-Bus error name systemd-resolved would answer with, so clients
//! (NetworkManager, resolvectl) react to it as they already do.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::wire::name::ZoneName;

/// Most servers on one link: far more than any DHCP lease or VPN hands out.
pub(crate) const MAX_SERVERS: usize = 64;
/// Most domains on one link, search and routing-only together.
pub(crate) const MAX_DOMAINS: usize = 256;
/// Most negative trust anchors on one link.
pub(crate) const MAX_NTAS: usize = 256;
/// The kernel's loopback interface index; systemd-resolved refuses it the same way.
const LOOPBACK_IFINDEX: u32 = 1;
/// Address families as `AF_INET` and `AF_INET6` number them on Linux.
pub(crate) const AF_INET: i32 = 2;
pub(crate) const AF_INET6: i32 = 10;
/// Plain DNS port, for servers given without one (or with 53 or 853, which mean "default").
const DNS_PORT: u16 = 53;

/// Why a request was refused, in systemd-resolved's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InputError {
    #[error("Invalid interface index")]
    Ifindex,
    #[error("Link {0} not known")]
    NoSuchLink(i32),
    #[error("Link {0} is loopback device.")]
    Loopback(String),
    #[error("Unknown address family {0}")]
    Family(i32),
    #[error("Invalid address size")]
    AddressSize,
    #[error("Invalid server name {0:?}")]
    ServerName(String),
    #[error("Invalid search domain {0}")]
    Domain(String),
    #[error("Root domain is not suitable as search domain")]
    RootSearchDomain,
    #[error("Invalid negative trust anchor domain: {0}")]
    TrustAnchor(String),
    #[error("Invalid {setting} setting: {value}")]
    Mode {
        setting: &'static str,
        value: String,
    },
    #[error("{count} {what} on one link; at most {max} are accepted")]
    TooMany {
        what: &'static str,
        count: usize,
        max: usize,
    },
}

impl InputError {
    /// The D-Bus error name of the reply.
    pub(crate) fn dbus_name(&self) -> &'static str {
        match self {
            InputError::NoSuchLink(_) => "org.freedesktop.resolve1.NoSuchLink",
            InputError::Loopback(_) => "org.freedesktop.resolve1.LinkBusy",
            InputError::TooMany { .. } => "org.freedesktop.DBus.Error.LimitsExceeded",
            _ => "org.freedesktop.DBus.Error.InvalidArgs",
        }
    }
}

/// A link's interface index, checked, and the name of its interface now. `name_of` looks an
/// index up (`if_indextoname`).
pub(crate) fn link(
    ifindex: i32,
    name_of: impl Fn(u32) -> Option<String>,
) -> Result<(u32, String), InputError> {
    let index = u32::try_from(ifindex)
        .ok()
        .filter(|&i| i > 0)
        .ok_or(InputError::Ifindex)?;
    let name = name_of(index).ok_or(InputError::NoSuchLink(ifindex))?;
    if index == LOOPBACK_IFINDEX {
        return Err(InputError::Loopback(name));
    }
    Ok((index, name))
}

/// A DNS server of a link, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Server {
    /// Where queries go: port 53 unless another was given; an IPv6 link-local address is
    /// scoped to its link.
    pub(crate) address: SocketAddr,
    /// The port as given (0 for the default), for reading it back.
    pub(crate) port: u16,
    /// The TLS server name as given (`resolvectl dns IF ADDR#NAME`); kept, not used: link
    /// servers are asked in plain DNS.
    pub(crate) name: String,
}

impl Server {
    /// `AF_INET` or `AF_INET6`.
    pub(crate) fn family(&self) -> i32 {
        match self.address {
            SocketAddr::V4(_) => AF_INET,
            SocketAddr::V6(_) => AF_INET6,
        }
    }

    /// The address bytes, in network order.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        match self.address.ip() {
            IpAddr::V4(ip) => ip.octets().to_vec(),
            IpAddr::V6(ip) => ip.octets().to_vec(),
        }
    }

    /// As resolvectl writes it: `10.0.0.1`, `[fe80::1]:5353#dns.example`.
    pub(crate) fn describe(&self) -> String {
        let ip = self.address.ip();
        let mut text = match (self.port, ip) {
            (0, ip) => ip.to_string(),
            (port, IpAddr::V4(ip)) => format!("{ip}:{port}"),
            (port, IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
        };
        if !self.name.is_empty() {
            text.push('#');
            text.push_str(&self.name);
        }
        text
    }
}

/// One server of link `ifindex` from its D-Bus form: family, address bytes, port (0 for
/// the default) and TLS server name ("" for none).
pub(crate) fn server(
    ifindex: u32,
    family: i32,
    bytes: &[u8],
    port: u16,
    name: &str,
) -> Result<Server, InputError> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| InputError::AddressSize)?,
        )),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| InputError::AddressSize)?,
        )),
        other => return Err(InputError::Family(other)),
    };
    if !name.is_empty() && host_name(name).is_none() {
        return Err(InputError::ServerName(name.to_string()));
    }
    let port = if matches!(port, DNS_PORT | 853) {
        0
    } else {
        port
    };
    let target = if port == 0 { DNS_PORT } else { port };
    let address = match ip {
        IpAddr::V6(v6) if is_link_local(&v6) => SocketAddrV6::new(v6, target, 0, ifindex).into(),
        ip => SocketAddr::new(ip, target),
    };
    Ok(Server {
        address,
        port,
        name: name.to_string(),
    })
}

/// Checks a whole list of servers, in order.
pub(crate) fn servers<'a>(
    ifindex: u32,
    list: impl ExactSizeIterator<Item = (i32, &'a [u8], u16, &'a str)>,
) -> Result<Vec<Server>, InputError> {
    if list.len() > MAX_SERVERS {
        return Err(InputError::TooMany {
            what: "DNS servers",
            count: list.len(),
            max: MAX_SERVERS,
        });
    }
    list.map(|(family, bytes, port, name)| server(ifindex, family, bytes, port, name))
        .collect()
}

/// `fe80::/10`.
fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// A search or routing-only domain of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Domain {
    /// Lower case, without the final dot; `.` for the root.
    pub(crate) name: String,
    /// `None` for the root (`~.`), which routes every name rather than a zone.
    pub(crate) zone: Option<ZoneName>,
    /// Routes names to the link without being a search domain (`~corp.example`).
    pub(crate) route_only: bool,
}

impl Domain {
    /// As resolvectl writes it: `corp.example`, `~vpn.example`, `~.`.
    pub(crate) fn describe(&self) -> String {
        match self.route_only {
            true => format!("~{}", self.name),
            false => self.name.clone(),
        }
    }
}

/// Checks a link's domains; a name given twice is kept once, in its first place, with the
/// kind given last (as systemd-resolved does).
pub(crate) fn domains(list: &[(String, bool)]) -> Result<Vec<Domain>, InputError> {
    if list.len() > MAX_DOMAINS {
        return Err(InputError::TooMany {
            what: "domains",
            count: list.len(),
            max: MAX_DOMAINS,
        });
    }
    let mut domains: Vec<Domain> = Vec::with_capacity(list.len());
    for (text, route_only) in list {
        let domain = match host_name(text) {
            Some(name) if name == "." && !route_only => return Err(InputError::RootSearchDomain),
            Some(name) if name == "." => Domain {
                name,
                zone: None,
                route_only: true,
            },
            Some(name) => Domain {
                zone: Some(ZoneName::parse(&name).map_err(|_| InputError::Domain(text.clone()))?),
                name,
                route_only: *route_only,
            },
            None => return Err(InputError::Domain(text.clone())),
        };
        match domains.iter_mut().find(|d| d.name == domain.name) {
            Some(first) => first.route_only = domain.route_only,
            None => domains.push(domain),
        }
    }
    Ok(domains)
}

/// Checks negative trust anchors (domain names, the root included); kept, not used.
pub(crate) fn trust_anchors(list: &[String]) -> Result<Vec<String>, InputError> {
    if list.len() > MAX_NTAS {
        return Err(InputError::TooMany {
            what: "negative trust anchors",
            count: list.len(),
            max: MAX_NTAS,
        });
    }
    list.iter()
        .map(|text| host_name(text).ok_or_else(|| InputError::TrustAnchor(text.clone())))
        .collect()
}

/// A per-link protocol setting, with the words systemd-resolved accepts for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setting {
    Llmnr,
    MulticastDns,
    DnsOverTls,
    Dnssec,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::Llmnr => "LLMNR",
            Setting::MulticastDns => "MulticastDNS",
            Setting::DnsOverTls => "DNSOverTLS",
            Setting::Dnssec => "DNSSEC",
        }
    }

    fn words(self) -> &'static [&'static str] {
        match self {
            Setting::Llmnr | Setting::MulticastDns => &["yes", "no", "resolve"],
            Setting::DnsOverTls => &["yes", "no", "opportunistic"],
            Setting::Dnssec => &["yes", "no", "allow-downgrade"],
        }
    }
}

/// A setting's value: one of its words, or `""` for the default. Booleans are accepted in
/// systemd's spellings (`true`, `on`, `1`, …) and kept as `yes` or `no`.
pub(crate) fn setting(setting: Setting, value: &str) -> Result<String, InputError> {
    let word = match value {
        "" => "",
        "1" | "true" | "on" | "y" | "t" => "yes",
        "0" | "false" | "off" | "n" | "f" => "no",
        word if setting.words().contains(&word) => word,
        _ => {
            return Err(InputError::Mode {
                setting: setting.name(),
                value: value.to_string(),
            });
        }
    };
    Ok(word.to_string())
}

/// A host name as a domain (letters, digits, `-` and `_` in labels of 1 to 63 bytes, 253 in
/// all), lower-cased and without the final dot; `.` for the root. `None` if it is not one.
pub(crate) fn host_name(text: &str) -> Option<String> {
    if text == "." {
        return Some(".".to_string());
    }
    let name = text.strip_suffix('.').unwrap_or(text);
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then(|| name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(index: u32) -> Option<String> {
        match index {
            1 => Some("lo".to_string()),
            2 => Some("eth0".to_string()),
            _ => None,
        }
    }

    #[test]
    fn a_link_must_exist_and_not_be_loopback() {
        assert_eq!(link(2, names), Ok((2, "eth0".to_string())));
        assert_eq!(link(9, names), Err(InputError::NoSuchLink(9)));
        assert_eq!(link(0, names), Err(InputError::Ifindex));
        assert_eq!(link(-3, names), Err(InputError::Ifindex));
        let loopback = link(1, names).unwrap_err();
        assert_eq!(loopback.dbus_name(), "org.freedesktop.resolve1.LinkBusy");
        assert_eq!(
            InputError::NoSuchLink(9).dbus_name(),
            "org.freedesktop.resolve1.NoSuchLink"
        );
    }

    #[test]
    fn servers_need_a_known_family_and_its_length() {
        let v4 = server(2, AF_INET, &[10, 99, 0, 1], 0, "").unwrap();
        assert_eq!(v4.address, "10.99.0.1:53".parse().unwrap());
        assert_eq!(v4.describe(), "10.99.0.1");
        assert_eq!(v4.bytes(), vec![10, 99, 0, 1]);
        let ported = server(2, AF_INET, &[10, 99, 0, 1], 5353, "dns.example").unwrap();
        assert_eq!(ported.address.port(), 5353);
        assert_eq!(ported.describe(), "10.99.0.1:5353#dns.example");
        assert_eq!(
            server(2, AF_INET, &[10, 0, 0, 1], 853, "").unwrap().port,
            0,
            "853 means the default, as for resolved"
        );
        let link_local = server(
            7,
            AF_INET6,
            &Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1).octets(),
            0,
            "",
        )
        .unwrap();
        let SocketAddr::V6(scoped) = link_local.address else {
            panic!("an IPv6 server");
        };
        assert_eq!(scoped.scope_id(), 7, "scoped to its link");
        assert_eq!(link_local.family(), AF_INET6);
        assert_eq!(
            server(2, 7, &[1, 2, 3, 4], 0, ""),
            Err(InputError::Family(7))
        );
        assert_eq!(
            server(2, AF_INET, &[1, 2, 3], 0, ""),
            Err(InputError::AddressSize)
        );
        assert_eq!(
            server(2, AF_INET6, &[1, 2, 3, 4], 0, ""),
            Err(InputError::AddressSize)
        );
        assert!(matches!(
            server(2, AF_INET, &[1, 2, 3, 4], 0, "bad name"),
            Err(InputError::ServerName(_))
        ));
        let many: Vec<(i32, &[u8], u16, &str)> =
            vec![(AF_INET, &[10, 0, 0, 1][..], 0, ""); MAX_SERVERS + 1];
        assert!(matches!(
            servers(2, many.into_iter()),
            Err(InputError::TooMany { .. })
        ));
    }

    #[test]
    fn domains_are_host_names_with_a_cap() {
        let list = |items: &[(&str, bool)]| -> Vec<(String, bool)> {
            items.iter().map(|(d, r)| (d.to_string(), *r)).collect()
        };
        let parsed = domains(&list(&[
            ("Corp.Example.", false),
            ("vpn.example", true),
            (".", true),
            ("corp.example", true),
        ]))
        .unwrap();
        let shown: Vec<String> = parsed.iter().map(Domain::describe).collect();
        assert_eq!(shown, ["~corp.example", "~vpn.example", "~."]);
        assert_eq!(parsed[2].zone, None);
        assert_eq!(
            domains(&list(&[(".", false)])),
            Err(InputError::RootSearchDomain)
        );
        for bad in ["a..b", "", "has space", "x/y", "ä.example", &"a".repeat(64)] {
            assert!(
                matches!(domains(&list(&[(bad, false)])), Err(InputError::Domain(_))),
                "{bad:?}"
            );
        }
        let many: Vec<(String, bool)> = (0..10_000)
            .map(|i| (format!("d{i}.example"), false))
            .collect();
        let refused = domains(&many).unwrap_err();
        assert_eq!(
            refused.dbus_name(),
            "org.freedesktop.DBus.Error.LimitsExceeded"
        );
        assert!(domains(&many[..MAX_DOMAINS]).is_ok());
    }

    #[test]
    fn settings_take_resolveds_words() {
        assert_eq!(setting(Setting::Llmnr, ""), Ok(String::new()));
        assert_eq!(
            setting(Setting::Llmnr, "resolve"),
            Ok("resolve".to_string())
        );
        assert_eq!(
            setting(Setting::DnsOverTls, "opportunistic").unwrap(),
            "opportunistic"
        );
        assert_eq!(setting(Setting::Dnssec, "true").unwrap(), "yes");
        assert_eq!(setting(Setting::Dnssec, "off").unwrap(), "no");
        assert!(setting(Setting::DnsOverTls, "resolve").is_err());
        assert!(setting(Setting::MulticastDns, "maybe").is_err());
        assert_eq!(
            trust_anchors(&["Example.".to_string()]),
            Ok(vec!["example".to_string()])
        );
        assert!(trust_anchors(&["a b".to_string()]).is_err());
    }
}
