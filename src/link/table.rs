//! The links' DNS settings as learned, and what follows from them: the zones whose names go to
//! each link's servers, the names no zone matches (under `link_dns = "all"`), and the search
//! list. Pure functions over the table; the registry applies the result.
//!
//! A zone claimed by several links goes to all their servers, in link order (systemd-resolved
//! asks them all). Servers that would loop back or leave nothing to ask are never used:
//! loopback addresses (127.0.0.53 among them), the unspecified address that NetworkManager 1.42
//! sends, and the daemon's own listen addresses.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use crate::config::LinkDns;
use crate::link::input::{Domain, Server, Setting};
use crate::resolve::zones::LearnedZones;
use crate::wire::name::ZoneName;

/// One link's DNS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    /// The interface's name when its settings last changed.
    pub(crate) name: String,
    pub(crate) servers: Vec<Server>,
    pub(crate) domains: Vec<Domain>,
    /// `None` until set: then it follows from the domains, as in systemd-resolved.
    pub(crate) default_route: Option<bool>,
    /// LLMNR, MulticastDNS, DNSOverTLS and DNSSEC as set (`""` for the default): recorded and
    /// shown; link servers are asked in plain DNS and nothing else is done on the link.
    pub(crate) settings: [String; 4],
    pub(crate) trust_anchors: Vec<String>,
    pub(crate) changed: SystemTime,
}

/// A change to one link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    Servers(Vec<Server>),
    Domains(Vec<Domain>),
    DefaultRoute(bool),
    Setting(Setting, String),
    TrustAnchors(Vec<String>),
    /// Back to nothing set.
    Revert,
}

impl Link {
    pub(crate) fn new(name: String) -> Link {
        Link {
            name,
            servers: Vec::new(),
            domains: Vec::new(),
            default_route: None,
            settings: Default::default(),
            trust_anchors: Vec::new(),
            changed: SystemTime::now(),
        }
    }

    /// Applies `change`; false when it changed nothing.
    pub(crate) fn apply(&mut self, change: Change) -> bool {
        let before = self.clone();
        match change {
            Change::Servers(servers) => self.servers = servers,
            Change::Domains(domains) => self.domains = domains,
            Change::DefaultRoute(on) => self.default_route = Some(on),
            Change::Setting(setting, value) => self.settings[setting as usize] = value,
            Change::TrustAnchors(anchors) => self.trust_anchors = anchors,
            Change::Revert => *self = Link::new(self.name.clone()),
        }
        let changed = *self
            != Link {
                changed: self.changed,
                ..before
            };
        if changed {
            self.changed = SystemTime::now();
        }
        changed
    }

    /// Nothing is set: the link can be forgotten.
    pub(crate) fn is_unset(&self) -> bool {
        *self
            == Link {
                name: self.name.clone(),
                changed: self.changed,
                ..Link::new(String::new())
            }
    }

    /// Whether the link takes the names no zone matches: as set, or else when it has no
    /// routing-only domain but `~.` (systemd-resolved's rule).
    pub(crate) fn default_route(&self) -> bool {
        self.default_route.unwrap_or_else(|| {
            !self
                .domains
                .iter()
                .any(|domain| domain.route_only && domain.zone.is_some())
        })
    }

    /// Whether the link has `~.`: it takes the names no zone matches from every other link.
    fn routes_everything(&self) -> bool {
        self.domains.iter().any(|d| d.zone.is_none())
    }
}

/// Why a link's server is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ignored {
    /// 127.0.0.0/8 or ::1 (systemd-resolved's stub 127.0.0.53 is one).
    Loopback,
    /// 0.0.0.0, ::, or a multicast address: nobody to ask.
    Unspecified,
    /// One of the daemon's own listen addresses: the query would come back here.
    Own,
}

impl Ignored {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Ignored::Loopback => "loopback",
            Ignored::Unspecified => "no server",
            Ignored::Own => "this resolver",
        }
    }
}

/// The daemon's own addresses, which a link's server must not be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Own {
    /// The sockets it serves DNS on.
    pub(crate) listen: Vec<SocketAddr>,
    /// The host's addresses, when one of `listen` is a wildcard (0.0.0.0, ::): any of them
    /// reaches the daemon on that port.
    pub(crate) host: Vec<IpAddr>,
}

/// Why `server` is not used, or `None` when it is.
pub(crate) fn ignored(server: SocketAddr, own: &Own) -> Option<Ignored> {
    let ip = match server.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    };
    if ip.is_loopback() {
        return Some(Ignored::Loopback);
    }
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return Some(Ignored::Unspecified);
    }
    let listens_on = |address: &SocketAddr| {
        address.port() == server.port()
            && (address.ip() == ip || (address.ip().is_unspecified() && own.host.contains(&ip)))
    };
    own.listen.iter().any(listens_on).then_some(Ignored::Own)
}

/// The zones the links' servers answer under `mode`, and the servers of the names no zone
/// matches (`"all"` only).
pub(crate) fn learned(links: &BTreeMap<u32, Link>, mode: LinkDns, own: &Own) -> LearnedZones {
    if mode == LinkDns::Off {
        return LearnedZones::default();
    }
    let usable = |link: &Link| -> Vec<SocketAddr> {
        link.servers
            .iter()
            .map(|server| server.address)
            .filter(|address| ignored(*address, own).is_none())
            .collect()
    };
    // Each zone with the servers of every link that claims it, in link order.
    let mut zones: Vec<(ZoneName, Vec<SocketAddr>)> = Vec::new();
    let mut index: HashMap<ZoneName, usize> = HashMap::new();
    for link in links.values() {
        let servers = usable(link);
        if servers.is_empty() {
            continue;
        }
        for zone in link.domains.iter().filter_map(|d| d.zone.as_ref()) {
            let at = *index.entry(zone.clone()).or_insert_with(|| {
                zones.push((zone.clone(), Vec::new()));
                zones.len() - 1
            });
            let list = &mut zones[at].1;
            list.extend(
                servers
                    .iter()
                    .filter(|s| !list.contains(s))
                    .collect::<Vec<_>>(),
            );
        }
    }
    // Zones with the same servers share a group.
    let mut grouped: Vec<(Vec<ZoneName>, Vec<SocketAddr>)> = Vec::new();
    for (zone, servers) in zones {
        match grouped.iter_mut().find(|(_, s)| *s == servers) {
            Some((names, _)) => names.push(zone),
            None => grouped.push((vec![zone], servers)),
        }
    }
    let default = match mode {
        LinkDns::All => {
            let wildcard: Vec<&Link> = links.values().filter(|l| l.routes_everything()).collect();
            let takers: Vec<&Link> = match wildcard.is_empty() {
                true => links.values().filter(|l| l.default_route()).collect(),
                false => wildcard,
            };
            let mut servers: Vec<SocketAddr> = Vec::new();
            for server in takers.into_iter().flat_map(usable) {
                if !servers.contains(&server) {
                    servers.push(server);
                }
            }
            servers
        }
        LinkDns::Domains | LinkDns::Off => Vec::new(),
    };
    LearnedZones {
        zones: grouped,
        default,
    }
}

/// The search list: every link's search domains (not the routing-only ones), in link order,
/// each once.
pub(crate) fn search(links: &BTreeMap<u32, Link>) -> Vec<String> {
    let mut list: Vec<String> = Vec::new();
    for domain in links.values().flat_map(|link| &link.domains) {
        if !domain.route_only && !list.contains(&domain.name) {
            list.push(domain.name.clone());
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::input;

    fn link(servers: &[[u8; 4]], domains: &[(&str, bool)]) -> Link {
        let mut link = Link::new("eth".to_string());
        link.servers = servers
            .iter()
            .map(|ip| input::server(2, input::AF_INET, ip, 0, "").unwrap())
            .collect();
        let list: Vec<(String, bool)> = domains.iter().map(|(d, r)| (d.to_string(), *r)).collect();
        link.domains = input::domains(&list).unwrap();
        link
    }

    fn at(ip: [u8; 4]) -> SocketAddr {
        SocketAddr::from((ip, 53))
    }

    fn zones(learned: &LearnedZones) -> Vec<(Vec<String>, Vec<SocketAddr>)> {
        learned
            .zones
            .iter()
            .map(|(z, s)| (z.iter().map(ToString::to_string).collect(), s.clone()))
            .collect()
    }

    #[test]
    fn each_links_domains_go_to_its_servers_and_never_its_default_route() {
        let mut links = BTreeMap::new();
        links.insert(
            2,
            link(
                &[[10, 99, 0, 1], [127, 0, 0, 53], [0, 0, 0, 0]],
                &[("corp.example", false), ("vpn.example", true), (".", true)],
            ),
        );
        links.insert(3, link(&[[172, 31, 0, 2]], &[("compute.internal", false)]));
        links.insert(4, link(&[], &[("nowhere.example", false)]));
        let learned = learned(&links, LinkDns::Domains, &Own::default());
        assert_eq!(
            zones(&learned),
            vec![
                (
                    vec!["corp.example".to_string(), "vpn.example".to_string()],
                    vec![at([10, 99, 0, 1])]
                ),
                (
                    vec!["compute.internal".to_string()],
                    vec![at([172, 31, 0, 2])]
                ),
            ]
        );
        assert!(
            learned.default.is_empty(),
            "~. and DefaultRoute are ignored"
        );
        assert_eq!(
            search(&links),
            ["corp.example", "compute.internal", "nowhere.example"]
        );
    }

    #[test]
    fn a_zone_on_two_links_goes_to_both_and_all_follows_the_default_route() {
        let mut links = BTreeMap::new();
        links.insert(2, link(&[[10, 0, 0, 1]], &[("corp.example", false)]));
        links.insert(7, link(&[[10, 8, 0, 1]], &[("corp.example", true)]));
        let learned_domains = learned(&links, LinkDns::Domains, &Own::default());
        assert_eq!(
            zones(&learned_domains),
            vec![(
                vec!["corp.example".to_string()],
                vec![at([10, 0, 0, 1]), at([10, 8, 0, 1])]
            )]
        );
        // Link 2 has no routing-only domain, so it takes the default route; link 7 not.
        let all = learned(&links, LinkDns::All, &Own::default());
        assert_eq!(all.default, vec![at([10, 0, 0, 1])]);
        // `~.` takes it from every other link.
        links.insert(9, link(&[[10, 9, 0, 1]], &[(".", true)]));
        let all = learned(&links, LinkDns::All, &Own::default());
        assert_eq!(all.default, vec![at([10, 9, 0, 1])]);
        assert_eq!(
            learned(&links, LinkDns::Off, &Own::default()),
            LearnedZones::default()
        );
    }

    #[test]
    fn servers_that_loop_back_are_ignored() {
        let own = Own {
            listen: vec!["0.0.0.0:53".parse().unwrap(), "[::1]:53".parse().unwrap()],
            host: vec!["192.168.1.5".parse().unwrap()],
        };
        let ignored = |text: &str| ignored(text.parse().unwrap(), &own);
        assert_eq!(ignored("127.0.0.53:53"), Some(Ignored::Loopback));
        assert_eq!(ignored("[::1]:53"), Some(Ignored::Loopback));
        assert_eq!(ignored("[::ffff:127.0.0.1]:53"), Some(Ignored::Loopback));
        assert_eq!(ignored("0.0.0.0:53"), Some(Ignored::Unspecified));
        assert_eq!(ignored("192.168.1.5:53"), Some(Ignored::Own));
        assert_eq!(ignored("192.168.1.5:5353"), None, "another port");
        assert_eq!(ignored("192.168.1.1:53"), None);
    }

    #[test]
    fn changes_report_whether_anything_changed_and_revert_empties() {
        let mut link = link(&[[10, 0, 0, 1]], &[("corp.example", false)]);
        assert!(!link.apply(Change::Servers(link.servers.clone())));
        assert!(link.apply(Change::DefaultRoute(false)));
        assert!(!link.default_route());
        assert!(link.apply(Change::Setting(Setting::DnsOverTls, "yes".to_string())));
        assert!(!link.is_unset());
        assert!(link.apply(Change::Revert));
        assert!(link.is_unset());
        assert!(!link.apply(Change::Revert));
        assert!(link.default_route(), "unset, with no routing-only domain");
    }
}
