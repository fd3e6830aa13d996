//! The links' DNS settings, shared by the D-Bus server and the daemon, and every change put in
//! force at once: the forwarder in force routes the new zones (queries already routed finish
//! where they went), the cache is told which names moved, resolv.conf is rewritten when the
//! search list changed, and the metrics follow.
//!
//! One lock orders it all: a change and a reload (which builds a new forwarder and must hand it
//! the zones in force) never interleave.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{info, warn};

use crate::common::lock;
use crate::common::snapshot;
use crate::config::{Config, LinkDns};
use crate::context::Context;
use crate::link::resolv_conf;
use crate::link::table::{self, Change, Link, Own};
use crate::resolve::zones::LearnedZones;
use crate::wire::name::ZoneName;

/// What the cache must forget after a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flush {
    /// These zones and every name below them: their answers now come from elsewhere.
    Zones(Vec<ZoneName>),
    /// Everything: the names outside every zone changed route.
    All,
}

/// The links' settings and what is in force from them.
pub(crate) struct Registry {
    state: Mutex<State>,
    context: Arc<Context>,
}

struct State {
    links: BTreeMap<u32, Link>,
    mode: LinkDns,
    own: Own,
    /// In force in the forwarder.
    learned: LearnedZones,
    resolv_conf: Option<PathBuf>,
    /// The search list last written, `None` before the first write.
    written: Option<Vec<String>>,
    /// Whether the last write failed (logged once until one succeeds).
    write_failed: bool,
    /// Whether the daemon owns the bus name, or why not: for `dns-proxy status`.
    bus: String,
}

impl Registry {
    /// No link yet, for a daemon serving on `listen` with `config`.
    pub(crate) fn new(context: Arc<Context>, config: &Config, listen: Vec<SocketAddr>) -> Registry {
        let own = own(listen);
        Registry {
            state: Mutex::new(State {
                links: BTreeMap::new(),
                mode: config.link_dns,
                own,
                learned: LearnedZones::default(),
                resolv_conf: config.resolv_conf.clone(),
                written: None,
                write_failed: false,
                bus: "not connected yet".to_string(),
            }),
            context,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock::lock(&self.state)
    }

    /// Writes resolv.conf with the search list in force (none yet at start), if one is set.
    pub(crate) fn write_resolv_conf(&self) {
        let mut state = self.state();
        write(&mut state);
    }

    /// Applies `change` to link `ifindex` (named `name`), asked by `uid`. Returns whether it
    /// changed anything, and what the cache must then forget.
    pub(crate) fn update(
        &self,
        ifindex: u32,
        name: String,
        change: Change,
        uid: u32,
    ) -> (bool, Option<Flush>) {
        let mut state = self.state();
        let link = state
            .links
            .entry(ifindex)
            .or_insert_with(|| Link::new(name.clone()));
        link.name = name;
        if !link.apply(change) {
            if link.is_unset() {
                state.links.remove(&ifindex);
            }
            return (false, None);
        }
        info!(
            "link {ifindex} ({}): {} (set by uid {uid})",
            link.name,
            describe(link)
        );
        if link.is_unset() {
            state.links.remove(&ifindex);
        }
        (true, self.recompute(&mut state))
    }

    /// Forgets the links whose interface is gone (`exists` says which are left).
    pub(crate) fn prune(&self, exists: impl Fn(u32, &str) -> bool) -> Option<Flush> {
        let mut state = self.state();
        let gone: Vec<u32> = state
            .links
            .iter()
            .filter(|(index, link)| !exists(**index, &link.name))
            .map(|(index, _)| *index)
            .collect();
        if gone.is_empty() {
            return None;
        }
        for index in gone {
            if let Some(link) = state.links.remove(&index) {
                info!(
                    "link {index} ({}) is gone: its DNS settings are forgotten",
                    link.name
                );
            }
        }
        self.recompute(&mut state)
    }

    /// Puts the zones that follow from the table in force; what the cache must forget.
    fn recompute(&self, state: &mut State) -> Option<Flush> {
        if state.own.listen.iter().any(|a| a.ip().is_unspecified()) {
            state.own.host = host_addresses();
        }
        let learned = table::learned(&state.links, state.mode, &state.own);
        let metrics = &self.context.metrics;
        metrics.links.links.set(state.links.len() as i64);
        metrics.links.zones.set(learned.len() as i64);
        let flush = match state.learned.changed(&learned) {
            Some(zones) if zones.is_empty() => None,
            Some(zones) => Some(Flush::Zones(zones)),
            None => Some(Flush::All),
        };
        self.context.forwarder().set_learned(&learned, metrics);
        state.learned = learned;
        write(state);
        flush
    }

    /// Runs `put` with the zones in force under the new `mode`, holding the lock so that no
    /// change comes between: a reload hands them to its new forwarder, then puts it in force.
    pub(crate) fn reload(&self, mode: LinkDns, put: impl FnOnce(&LearnedZones)) {
        let mut state = self.state();
        if state.mode != mode {
            state.mode = mode;
            state.learned = table::learned(&state.links, state.mode, &state.own);
            self.context
                .metrics
                .links
                .zones
                .set(state.learned.len() as i64);
        }
        put(&state.learned);
    }

    /// The links now.
    pub(crate) fn links(&self) -> BTreeMap<u32, Link> {
        self.state().links.clone()
    }

    /// The search list now.
    pub(crate) fn search(&self) -> Vec<String> {
        table::search(&self.state().links)
    }

    /// The setting in force.
    pub(crate) fn mode(&self) -> LinkDns {
        self.state().mode
    }

    /// The daemon's own addresses.
    pub(crate) fn own(&self) -> Own {
        self.state().own.clone()
    }

    /// The resolv.conf written, if any.
    pub(crate) fn resolv_conf(&self) -> Option<PathBuf> {
        self.state().resolv_conf.clone()
    }

    /// Records whether the daemon owns the bus name, or why not.
    pub(crate) fn set_bus(&self, text: String) {
        self.state().bus = text;
    }

    /// The links for `dns-proxy status`.
    pub(crate) fn snapshot(&self) -> (snapshot::LinkDns, Vec<snapshot::Link>) {
        let state = self.state();
        let links = state
            .links
            .iter()
            .map(|(index, link)| snapshot::Link {
                ifindex: *index,
                name: link.name.clone(),
                servers: link
                    .servers
                    .iter()
                    .map(|server| match table::ignored(server.address, &state.own) {
                        Some(why) => format!("{} (ignored: {})", server.describe(), why.as_str()),
                        None => server.describe(),
                    })
                    .collect(),
                domains: link.domains.iter().map(|d| d.describe()).collect(),
                default_route: link.default_route(),
                changed: snapshot::timestamp(link.changed),
            })
            .collect();
        let mode = snapshot::LinkDns {
            mode: state.mode.as_str().to_string(),
            bus: state.bus.clone(),
        };
        (mode, links)
    }
}

/// One line of a link's settings, for the log.
fn describe(link: &Link) -> String {
    let list = |items: Vec<String>| match items.is_empty() {
        true => "none".to_string(),
        false => items.join(" "),
    };
    format!(
        "servers {}; domains {}; default route {}",
        list(link.servers.iter().map(|s| s.describe()).collect()),
        list(link.domains.iter().map(|d| d.describe()).collect()),
        match link.default_route {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unset",
        }
    )
}

/// Rewrites resolv.conf when its search list changed (or was never written).
fn write(state: &mut State) {
    let Some(path) = state.resolv_conf.clone() else {
        return;
    };
    let search = table::search(&state.links);
    if state.written.as_ref() == Some(&search) {
        return;
    }
    let contents = resolv_conf::render(&state.own.listen, &search);
    match resolv_conf::write(&path, &contents) {
        Ok(()) => {
            if state.write_failed {
                info!("resolv_conf: {} written again", path.display());
            }
            state.write_failed = false;
            state.written = Some(search);
        }
        Err(error) => {
            if !state.write_failed {
                warn!("resolv_conf: cannot write {}: {error}", path.display());
            }
            state.write_failed = true;
        }
    }
}

/// The daemon's own addresses: its listen sockets (the host's addresses are looked up when one
/// is a wildcard).
fn own(listen: Vec<SocketAddr>) -> Own {
    let host = match listen.iter().any(|a| a.ip().is_unspecified()) {
        true => host_addresses(),
        false => Vec::new(),
    };
    Own { listen, host }
}

/// Every address of the host's interfaces.
fn host_addresses() -> Vec<IpAddr> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter_map(|interface| {
            let address = interface.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::metrics::Metrics;
    use crate::link::input;
    use crate::resolve::forwarder::Forwarder;

    fn registry(dir: &std::path::Path) -> (Registry, Arc<Context>) {
        let config = Config {
            resolv_conf: Some(dir.join("resolv.conf")),
            ..Config::default()
        };
        let metrics = Arc::new(Metrics::new());
        let forwarder = Forwarder::local_only(&config, &metrics);
        let context = Arc::new(Context::new(config.clone(), forwarder, None, metrics));
        let listen = vec!["127.0.0.1:53".parse().unwrap()];
        (Registry::new(context.clone(), &config, listen), context)
    }

    fn domains(list: &[(&str, bool)]) -> Change {
        let list: Vec<(String, bool)> = list.iter().map(|(d, r)| (d.to_string(), *r)).collect();
        Change::Domains(input::domains(&list).unwrap())
    }

    fn servers(ips: &[[u8; 4]]) -> Change {
        Change::Servers(
            ips.iter()
                .map(|ip| input::server(2, input::AF_INET, ip, 0, "").unwrap())
                .collect(),
        )
    }

    #[test]
    fn changes_reach_the_forwarder_the_cache_and_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, context) = registry(dir.path());
        registry.write_resolv_conf();
        let read = || std::fs::read_to_string(dir.path().join("resolv.conf")).unwrap();
        assert!(read().starts_with("#") && read().contains("nameserver 127.0.0.1\n"));
        let update = |change| registry.update(2, "eth0".to_string(), change, 0);

        assert_eq!(
            update(domains(&[("corp.example", false)])),
            (true, None),
            "no server yet"
        );
        assert!(read().contains("\nsearch corp.example\n"));
        let (changed, flush) = update(servers(&[[10, 0, 0, 1]]));
        assert!(changed);
        let zone = ZoneName::parse("corp.example").unwrap();
        assert_eq!(flush, Some(Flush::Zones(vec![zone.clone()])));
        let zones = context.forwarder().learned_snapshot();
        assert_eq!(zones.len(), 1);
        assert_eq!(zones[0].zones, ["corp.example"]);
        assert_eq!(zones[0].upstreams[0].address, "10.0.0.1:53");
        assert_eq!(context.metrics.links.zones.get(), 1);
        assert_eq!(
            update(servers(&[[10, 0, 0, 1]])),
            (false, None),
            "unchanged"
        );

        // The wildcard and the default route do nothing under "domains"; under "all" they
        // take every other name, and a reload that switches hands that to its forwarder.
        assert_eq!(update(Change::DefaultRoute(true)), (true, None));
        let mut handed = None;
        registry.reload(LinkDns::All, |learned| handed = Some(learned.clone()));
        assert_eq!(
            handed.unwrap().default,
            vec!["10.0.0.1:53".parse().unwrap()]
        );

        let (_, snapshot) = registry.snapshot();
        assert_eq!(snapshot[0].name, "eth0");
        assert_eq!(snapshot[0].servers, ["10.0.0.1"]);
        assert!(snapshot[0].default_route);

        // Reverted, the link is forgotten and its zone goes.
        assert_eq!(update(Change::Revert), (true, Some(Flush::All)));
        assert!(registry.links().is_empty());
        assert!(context.forwarder().learned_snapshot().is_empty());
        assert!(!read().contains("\nsearch "));
        assert_eq!(context.metrics.links.links.get(), 0);
    }

    #[test]
    fn links_whose_interface_is_gone_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let (registry, _) = registry(dir.path());
        registry.update(7, "tun0".to_string(), domains(&[("vpn.example", true)]), 0);
        registry.update(7, "tun0".to_string(), servers(&[[10, 8, 0, 1]]), 0);
        assert_eq!(registry.prune(|_, _| true), None);
        let flush = registry.prune(|index, _| index != 7);
        assert_eq!(
            flush,
            Some(Flush::Zones(vec![ZoneName::parse("vpn.example").unwrap()]))
        );
        assert!(registry.links().is_empty());
    }
}
