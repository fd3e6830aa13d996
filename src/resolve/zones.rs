//! Where a question goes, by its name: to the upstreams of a forward zone (split DNS), to the
//! default upstreams, or nowhere, answered here because the name is private by definition.
//!
//! The longest matching zone wins. Built-in local zones keep names that only mean something
//! on the host or its own network from leaking to a public resolver: `localhost` (RFC 6761)
//! answers with loopback addresses; the reverse zones of private, loopback, link-local,
//! shared and documentation addresses (RFC 1918, 6598, 6761, 5737, 4193, 4291, 3849) and the
//! special-use names `invalid`, `home.arpa` and `onion` answer NXDOMAIN. `resolver.arpa`
//! answers NODATA for every name: a forwarder must not pass `_dns.resolver.arpa` on (RFC 9462
//! §6.1), or the upstream's designation would tell DDR clients to bypass dns-proxy, which
//! designates no encrypted resolver of its own. A forward zone that
//! is one of them, or contains one, takes it over: `[[forward_zone]] zones =
//! ["10.in-addr.arpa"]` sends reverse lookups of 10/8 to the corporate resolver.
//!
//! Zones learned at run time (each link's domains, from `org.freedesktop.resolve1`) join the
//! same table, so a lookup costs the same with them as without: a learned zone loses a tie to
//! a configured one, takes over the built-in NXDOMAIN zones it equals or contains (a LAN's
//! `home.arpa`) but never `localhost` or the loopback reverse zones, nor a name inside them.
//!
//! Pure functions over wire-form names; nothing here does I/O.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::wire::dns::{LocalRecord, Query, RCODE_NOERROR, RCODE_NXDOMAIN, TYPE_SOA};
use crate::wire::name::{ZoneName, suffixes};

const TYPE_A: u16 = 1;
const TYPE_PTR: u16 = 12;
const TYPE_AAAA: u16 = 28;
/// TTL of local answers, and the negative TTL in their SOA.
const LOCAL_TTL: u32 = 3600;

/// What a built-in local zone answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// `localhost` and names under it: 127.0.0.1 and ::1.
    Loopback,
    /// The reverse zone of a loopback address: `localhost.` for the address itself.
    LoopbackReverse,
    /// NXDOMAIN for every name.
    Empty,
    /// NODATA for every name and type.
    NoData,
}

/// Where a question goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The forward zone with this index in the configuration.
    Forward(usize),
    /// The learned zones with this index in [`LearnedZones::zones`].
    Learned(usize),
    /// The default upstreams.
    Default,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Forward(usize),
    Learned(usize),
    Local(Local),
}

/// Zones learned at run time and the plain-DNS servers that answer them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LearnedZones {
    /// Zones, each list with the servers (in order of preference) that answer it; a zone
    /// appears in one list only.
    pub(crate) zones: Vec<(Vec<ZoneName>, Vec<SocketAddr>)>,
    /// Servers for the names no zone matches, instead of the default upstreams; empty for
    /// none (always, unless `link_dns = "all"`).
    pub(crate) default: Vec<SocketAddr>,
}

impl LearnedZones {
    /// How many zones there are.
    pub(crate) fn len(&self) -> usize {
        self.zones.iter().map(|(zones, _)| zones.len()).sum()
    }

    /// The zones whose servers differ between `self` and `new` (added, removed or changed),
    /// or `None` when the default route changed too, so everything may now go elsewhere.
    pub(crate) fn changed(&self, new: &LearnedZones) -> Option<Vec<ZoneName>> {
        if self.default != new.default {
            return None;
        }
        let servers = |learned: &LearnedZones| -> HashMap<ZoneName, Vec<SocketAddr>> {
            let mut map = HashMap::new();
            for (zones, servers) in &learned.zones {
                for zone in zones {
                    map.insert(zone.clone(), servers.clone());
                }
            }
            map
        };
        let (old, new) = (servers(self), servers(new));
        let mut changed: Vec<ZoneName> = old
            .iter()
            .filter(|(zone, servers)| new.get(*zone) != Some(servers))
            .map(|(zone, _)| zone.clone())
            .chain(new.keys().filter(|zone| !old.contains_key(*zone)).cloned())
            .collect();
        changed.sort_by(|a, b| a.wire().cmp(b.wire()));
        Some(changed)
    }
}

/// The zone table, built once per configuration.
#[derive(Debug)]
pub(crate) struct Router {
    /// Zone wire name → target; a question's name is looked up suffix by suffix.
    zones: HashMap<Box<[u8]>, Target>,
}

/// The built-in local zones.
fn builtin_zones() -> Vec<(String, Local)> {
    let mut zones = vec![
        ("localhost".to_string(), Local::Loopback),
        ("127.in-addr.arpa".to_string(), Local::LoopbackReverse),
        (
            format!("1{}.ip6.arpa", ".0".repeat(31)),
            Local::LoopbackReverse,
        ),
    ];
    let empty = [
        // RFC 1918 private networks.
        "10.in-addr.arpa",
        "168.192.in-addr.arpa",
        // RFC 6761/6890: "this network", link-local, limited broadcast, documentation.
        "0.in-addr.arpa",
        "254.169.in-addr.arpa",
        "255.255.255.255.in-addr.arpa",
        "2.0.192.in-addr.arpa",
        "100.51.198.in-addr.arpa",
        "113.0.203.in-addr.arpa",
        // IPv6: ULA fc00::/7, link-local fe80::/10, documentation 2001:db8::/32.
        "c.f.ip6.arpa",
        "d.f.ip6.arpa",
        "8.e.f.ip6.arpa",
        "9.e.f.ip6.arpa",
        "a.e.f.ip6.arpa",
        "b.e.f.ip6.arpa",
        "8.b.d.0.1.0.0.2.ip6.arpa",
        // Special-use names never resolved by public DNS (RFC 6761, 8375, 7686).
        "invalid",
        "home.arpa",
        "onion",
    ];
    zones.extend(empty.iter().map(|zone| (zone.to_string(), Local::Empty)));
    // RFC 9462 §6.4: DDR's special-use zone, served locally.
    zones.push(("resolver.arpa".to_string(), Local::NoData));
    // 172.16/12 and the RFC 6598 shared space 100.64/10.
    zones.extend((16..32).map(|octet| (format!("{octet}.172.in-addr.arpa"), Local::Empty)));
    zones.extend((64..128).map(|octet| (format!("{octet}.100.in-addr.arpa"), Local::Empty)));
    // The unspecified address ::.
    zones.push((format!("0{}.ip6.arpa", ".0".repeat(31)), Local::Empty));
    zones
}

impl Router {
    /// The table for forward zones `forward[i]` and learned zones `learned[i]` (each a list of
    /// zone names): built-in local zones that a forward zone equals or contains are left out,
    /// and so are the NXDOMAIN ones a learned zone equals or contains.
    pub(crate) fn new(forward: &[Vec<ZoneName>], learned: &[Vec<ZoneName>]) -> Router {
        let builtin: Vec<(ZoneName, Local)> = builtin_zones()
            .into_iter()
            // The built-in names are valid; a parse failure would only drop that one zone.
            .filter_map(|(text, local)| Some((ZoneName::parse(&text).ok()?, local)))
            .collect();
        let mut zones = HashMap::new();
        for (zone, local) in &builtin {
            let claimed = forward.iter().flatten().any(|f| f.contains(zone))
                || (*local == Local::Empty && learned.iter().flatten().any(|l| l.contains(zone)));
            if !claimed {
                zones.insert(zone.wire().into(), Target::Local(*local));
            }
        }
        let loopback = |zone: &ZoneName| {
            builtin
                .iter()
                .any(|(local, kind)| *kind != Local::Empty && local.contains(zone))
        };
        for (index, names) in learned.iter().enumerate() {
            for zone in names.iter().filter(|zone| !loopback(zone)) {
                zones.insert(zone.wire().into(), Target::Learned(index));
            }
        }
        // Last: a configured zone wins a tie with a learned one.
        for (index, names) in forward.iter().enumerate() {
            for zone in names {
                zones.insert(zone.wire().into(), Target::Forward(index));
            }
        }
        Router { zones }
    }

    /// Where a name of dns-proxy's own queries goes (lower-case wire form); `None` for a name
    /// in a local zone, which no upstream is asked about.
    pub(crate) fn route_name(&self, name: &[u8]) -> Option<Route> {
        for suffix in suffixes(name) {
            match self.zones.get(suffix) {
                Some(Target::Forward(index)) => return Some(Route::Forward(*index)),
                Some(Target::Learned(index)) => return Some(Route::Learned(*index)),
                Some(Target::Local(_)) => return None,
                None => {}
            }
        }
        Some(Route::Default)
    }

    /// The local zones answered here, which no upstream is asked about.
    pub(crate) fn local_zones(&self) -> Vec<ZoneName> {
        self.zones
            .iter()
            .filter(|(_, target)| matches!(target, Target::Local(_)))
            .filter_map(|(wire, _)| ZoneName::from_wire(wire))
            .collect()
    }

    /// Where `query` goes, or its answer when a local zone answers it.
    pub(crate) fn route(&self, query: &Query) -> Result<Route, Vec<u8>> {
        let question = query.question();
        let name = &question[..question.len() - 4];
        let mut lower = [0u8; 256];
        let len = name.len().min(lower.len());
        lower[..len].copy_from_slice(&name[..len]);
        lower[..len].make_ascii_lowercase();
        let name = &lower[..len];
        for suffix in suffixes(name) {
            match self.zones.get(suffix) {
                Some(Target::Forward(index)) => return Ok(Route::Forward(*index)),
                Some(Target::Learned(index)) => return Ok(Route::Learned(*index)),
                Some(Target::Local(local)) => {
                    return Err(local_answer(query, name, suffix, *local));
                }
                None => {}
            }
        }
        Ok(Route::Default)
    }
}

/// The answer of a local zone to `query`; `name` is its lower-cased name, `zone` the zone.
fn local_answer(query: &Query, name: &[u8], zone: &[u8], local: Local) -> Vec<u8> {
    let qtype = query.qtype();
    let apex = name == zone;
    let localhost: &[u8] = b"\x09localhost\x00";
    let (rcode, rtype, rdata): (u16, u16, &[u8]) = match local {
        Local::Loopback if qtype == TYPE_A => (RCODE_NOERROR, TYPE_A, &[127, 0, 0, 1]),
        Local::Loopback if qtype == TYPE_AAAA => (
            RCODE_NOERROR,
            TYPE_AAAA,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        ),
        Local::Loopback => (RCODE_NOERROR, 0, &[]),
        // 127.0.0.1 and ::1 have a name; the rest of 127/8 is unassigned.
        Local::LoopbackReverse if is_loopback_reverse(name) && qtype == TYPE_PTR => {
            (RCODE_NOERROR, TYPE_PTR, localhost)
        }
        Local::LoopbackReverse if is_loopback_reverse(name) || apex => (RCODE_NOERROR, 0, &[]),
        Local::LoopbackReverse => (RCODE_NXDOMAIN, 0, &[]),
        Local::Empty if apex => (RCODE_NOERROR, 0, &[]),
        Local::Empty => (RCODE_NXDOMAIN, 0, &[]),
        Local::NoData => (RCODE_NOERROR, 0, &[]),
    };
    let mut soa = Vec::with_capacity(64);
    soa.extend_from_slice(localhost);
    soa.extend_from_slice(b"\x06nobody\x07invalid\x00");
    for value in [1, LOCAL_TTL, 1200, 604_800, LOCAL_TTL] {
        soa.extend_from_slice(&value.to_be_bytes());
    }
    let answer = LocalRecord {
        owner: None,
        rtype,
        ttl: LOCAL_TTL,
        rdata,
    };
    let authority = LocalRecord {
        owner: Some(zone),
        rtype: TYPE_SOA,
        ttl: LOCAL_TTL,
        rdata: &soa,
    };
    if rtype != 0 {
        query.local_answer(rcode, &[answer], &[])
    } else {
        // Negative answers carry the zone's SOA, so clients can cache them (RFC 2308).
        query.local_answer(rcode, &[], &[authority])
    }
}

/// `1.0.0.127.in-addr.arpa` or the reverse name of ::1.
fn is_loopback_reverse(name: &[u8]) -> bool {
    let v4: &[u8] = b"\x011\x010\x010\x03127\x07in-addr\x04arpa\x00";
    let v6_prefix: &[u8] = b"\x011";
    let v6_rest = format!("{}\x03ip6\x04arpa\x00", "\x010".repeat(31));
    name == v4 || (name.starts_with(v6_prefix) && &name[2..] == v6_rest.as_bytes())
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Message, MessageType, OpCode, Query as Question};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;
    use crate::wire::dns;

    /// A client's query, encoded by hickory-proto rather than by the code under test.
    fn query(name: &str, qtype: u16) -> Query {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Question::query(
            Name::from_ascii(name).unwrap(),
            RecordType::from(qtype),
        ));
        dns::parse_query(&message.to_vec().unwrap()).unwrap()
    }

    fn zones(names: &[&str]) -> Vec<ZoneName> {
        names.iter().map(|n| ZoneName::parse(n).unwrap()).collect()
    }

    use crate::wire::dns::header_rcode as rcode;

    #[test]
    fn longest_zone_wins() {
        let router = Router::new(&[zones(&["example"]), zones(&["corp.example"])], &[]);
        let route = |name: &str| router.route(&query(name, TYPE_A));
        assert_eq!(route("host.CORP.example"), Ok(Route::Forward(1)));
        assert_eq!(route("corp.example"), Ok(Route::Forward(1)));
        assert_eq!(route("other.example"), Ok(Route::Forward(0)));
        assert_eq!(
            route("xcorp.example"),
            Ok(Route::Forward(0)),
            "label boundaries"
        );
        assert_eq!(route("example.com"), Ok(Route::Default));
    }

    #[test]
    fn private_reverse_names_are_answered_locally() {
        let router = Router::new(&[], &[]);
        for name in [
            "1.0.168.192.in-addr.arpa",
            "4.3.2.10.in-addr.arpa",
            "9.9.20.172.in-addr.arpa",
            "1.1.64.100.in-addr.arpa",
            "1.0.254.169.in-addr.arpa",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
            "printer.home.arpa",
            "nothing.invalid",
        ] {
            let answer = router.route(&query(name, TYPE_PTR)).expect_err(name);
            assert_eq!(rcode(&answer), RCODE_NXDOMAIN, "{name}");
            let soa = dns::Response::prepare(&answer).unwrap();
            assert!(
                soa.records().any(|r| r.rtype == TYPE_SOA),
                "{name}: SOA for caching"
            );
        }
        for public in [
            "1.1.1.1.in-addr.arpa",
            "9.9.15.172.in-addr.arpa",
            "1.1.63.100.in-addr.arpa",
        ] {
            assert_eq!(
                router.route(&query(public, TYPE_PTR)),
                Ok(Route::Default),
                "{public}"
            );
        }
    }

    #[test]
    fn localhost_is_loopback() {
        let router = Router::new(&[], &[]);
        let a = router.route(&query("localhost", TYPE_A)).unwrap_err();
        assert_eq!(rcode(&a), RCODE_NOERROR);
        assert_eq!(&a[a.len() - 4..], &[127, 0, 0, 1]);
        let aaaa = router
            .route(&query("app.localhost", TYPE_AAAA))
            .unwrap_err();
        assert_eq!(aaaa[aaaa.len() - 1], 1);
        let mx = router.route(&query("localhost", 15)).unwrap_err();
        assert_eq!(
            (rcode(&mx), mx[7]),
            (RCODE_NOERROR, 0),
            "NODATA for other types"
        );
        let ptr = router
            .route(&query("1.0.0.127.in-addr.arpa", TYPE_PTR))
            .unwrap_err();
        assert!(ptr.ends_with(b"\x09localhost\x00"));
        let v6 = format!("1{}.ip6.arpa", ".0".repeat(31));
        let ptr = router.route(&query(&v6, TYPE_PTR)).unwrap_err();
        assert!(ptr.ends_with(b"\x09localhost\x00"));
        let other = router
            .route(&query("2.0.0.127.in-addr.arpa", TYPE_PTR))
            .unwrap_err();
        assert_eq!(rcode(&other), RCODE_NXDOMAIN);
    }

    #[test]
    fn resolver_arpa_is_nodata_with_its_soa() {
        let router = Router::new(&[], &[]);
        const SVCB: u16 = 64;
        for (name, qtype) in [
            ("_dns.resolver.arpa", SVCB),
            ("_DNS.Resolver.Arpa", SVCB),
            ("_dns.resolver.arpa", TYPE_A),
            ("x._dns.resolver.arpa", SVCB),
            ("resolver.arpa", TYPE_SOA),
        ] {
            let answer = router.route(&query(name, qtype)).expect_err(name);
            assert_eq!(rcode(&answer), RCODE_NOERROR, "{name}");
            let message = Message::from_vec(&answer).unwrap();
            assert!(message.answers.is_empty(), "{name}: no records");
            let soa = &message.authorities;
            assert_eq!(soa.len(), 1, "{name}");
            assert_eq!(soa[0].name.to_ascii(), "resolver.arpa.");
            assert_eq!(u16::from(soa[0].record_type()), TYPE_SOA);
        }
        assert_eq!(
            router.route(&query("resolver.arpa.example", TYPE_A)),
            Ok(Route::Default)
        );
    }

    #[test]
    fn a_forward_zone_takes_over_the_local_zones_it_covers() {
        let router = Router::new(
            &[zones(&["10.in-addr.arpa"]), zones(&["in-addr.arpa"])],
            &[],
        );
        let route = |name: &str| router.route(&query(name, TYPE_PTR));
        assert_eq!(route("4.3.2.10.in-addr.arpa"), Ok(Route::Forward(0)));
        assert_eq!(route("1.0.168.192.in-addr.arpa"), Ok(Route::Forward(1)));
        // A forward zone inside a local zone takes only its own names.
        let router = Router::new(&[zones(&["0.10.in-addr.arpa"])], &[]);
        assert_eq!(
            router.route(&query("1.0.10.in-addr.arpa", TYPE_PTR)),
            Ok(Route::Forward(0))
        );
        assert!(
            router
                .route(&query("1.1.10.in-addr.arpa", TYPE_PTR))
                .is_err()
        );
    }

    #[test]
    fn learned_zones_route_with_the_longest_match_and_lose_ties_to_configured_ones() {
        let router = Router::new(
            &[zones(&["corp.example"])],
            &[
                zones(&["corp.example", "lab.corp.example", "example"]),
                zones(&["compute.internal"]),
            ],
        );
        let route = |name: &str| router.route(&query(name, TYPE_A));
        assert_eq!(route("host.corp.example"), Ok(Route::Forward(0)), "a tie");
        assert_eq!(route("a.lab.corp.example"), Ok(Route::Learned(0)), "longer");
        assert_eq!(route("other.example"), Ok(Route::Learned(0)));
        assert_eq!(route("ip-10-0-0-1.compute.internal"), Ok(Route::Learned(1)));
        assert_eq!(route("example.com"), Ok(Route::Default));
    }

    #[test]
    fn learned_zones_take_over_nxdomain_zones_but_never_localhost() {
        let router = Router::new(
            &[],
            &[zones(&[
                "home.arpa",
                "168.192.in-addr.arpa",
                "localhost",
                "evil.localhost",
                "0.0.127.in-addr.arpa",
            ])],
        );
        let route = |name: &str, qtype| router.route(&query(name, qtype));
        assert_eq!(route("printer.home.arpa", TYPE_A), Ok(Route::Learned(0)));
        assert_eq!(
            route("1.0.168.192.in-addr.arpa", TYPE_PTR),
            Ok(Route::Learned(0))
        );
        let localhost = route("localhost", TYPE_A).unwrap_err();
        assert_eq!(&localhost[localhost.len() - 4..], &[127, 0, 0, 1]);
        assert!(route("evil.localhost", TYPE_A).is_err(), "answered locally");
        assert!(route("1.0.0.127.in-addr.arpa", TYPE_PTR).is_err());
        // A learned zone that contains the loopback reverse zone leaves it alone.
        let router = Router::new(&[], &[zones(&["in-addr.arpa"])]);
        assert!(
            router
                .route(&query("1.0.0.127.in-addr.arpa", TYPE_PTR))
                .is_err()
        );
        assert_eq!(
            router.route(&query("1.0.0.10.in-addr.arpa", TYPE_PTR)),
            Ok(Route::Learned(0))
        );
    }

    #[test]
    fn changed_zones_are_those_added_removed_or_moved() {
        let server = |last: u8| SocketAddr::from(([10, 0, 0, last], 53));
        let old = LearnedZones {
            zones: vec![
                (zones(&["a.example", "b.example"]), vec![server(1)]),
                (zones(&["c.example"]), vec![server(2)]),
            ],
            default: Vec::new(),
        };
        let new = LearnedZones {
            zones: vec![
                (zones(&["a.example"]), vec![server(1)]),
                (zones(&["c.example", "d.example"]), vec![server(3)]),
            ],
            default: Vec::new(),
        };
        let names =
            |list: Vec<ZoneName>| -> Vec<String> { list.iter().map(ToString::to_string).collect() };
        let mut changed = names(old.changed(&new).unwrap());
        changed.sort();
        assert_eq!(changed, ["b.example", "c.example", "d.example"]);
        assert_eq!(old.changed(&old), Some(Vec::new()));
        let mut all = new.clone();
        all.default = vec![server(9)];
        assert_eq!(new.changed(&all), None, "the default route moved");
        assert_eq!(new.len(), 3);
    }
}
