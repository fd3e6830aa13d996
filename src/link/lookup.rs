//! `ResolveHostname`, `ResolveAddress` and `ResolveRecord`: a name or address from D-Bus
//! becomes DNS queries answered by the forwarder in force (cache, split DNS, the links' zones,
//! DoT), and the answers become the values systemd-resolved replies with. What
//! `resolvectl query` and NetworkManager's hostname and connectivity checks ask.
//!
//! Building the queries and reading the answers are pure functions; [`ask`] is the only I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder, NameEncoding};

use crate::common::transport::Transport;
use crate::context::Context;
use crate::link::input::{AF_INET, AF_INET6};
use crate::resolve::forwarder::Privacy;
use crate::wire::dns;
use crate::wire::name::ZoneName;

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_PTR: u16 = 12;
pub(crate) const TYPE_AAAA: u16 = 28;
pub(crate) const CLASS_IN: u16 = 1;

/// Flags of requests and replies (`resolved-def.h`).
pub(crate) const FLAG_DNS: u64 = 1;
const FLAG_NO_SEARCH: u64 = 1 << 8;
const FLAG_AUTHENTICATED: u64 = 1 << 9;
const FLAG_NO_NETWORK: u64 = 1 << 15;
const FLAG_CONFIDENTIAL: u64 = 1 << 18;
const FLAG_SYNTHETIC: u64 = 1 << 19;
const FLAG_FROM_CACHE: u64 = 1 << 20;
const FLAG_FROM_NETWORK: u64 = 1 << 23;
/// Every protocol bit: DNS, LLMNR and mDNS over IPv4 and IPv6.
const PROTOCOLS: u64 = 0x1f;
/// The flags a request may carry: protocols and the `NO_*`, `REQUIRE_PRIMARY`, `CLAMP_TTL`,
/// `NO_STALE`, `RELAX_SINGLE_LABEL` and `QUERY_CONTINUOUS` bits. The rest only describe
/// replies.
const REQUEST_FLAGS: u64 = PROTOCOLS | 0x1e0 | 0x3_fc00 | 0x700_0000;

/// Why a lookup has no answer, as a D-Bus error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) name: String,
    pub(crate) text: String,
}

impl Failure {
    fn new(name: &str, text: String) -> Failure {
        Failure {
            name: name.to_string(),
            text,
        }
    }

    fn invalid(text: impl Into<String>) -> Failure {
        Failure::new("org.freedesktop.DBus.Error.InvalidArgs", text.into())
    }
}

/// A query's answer and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The DNS message.
    pub(crate) message: Vec<u8>,
    pub(crate) privacy: Privacy,
    pub(crate) cached: bool,
}

/// Checks a request's interface index and flags; the flags to reply with if it asks DNS.
pub(crate) fn check_request(ifindex: i32, flags: u64) -> Result<(), Failure> {
    if ifindex < 0 {
        return Err(Failure::invalid("Invalid interface index"));
    }
    if flags & !REQUEST_FLAGS != 0 {
        return Err(Failure::invalid("Invalid flags parameter"));
    }
    if flags & PROTOCOLS != 0 && flags & FLAG_DNS == 0 {
        return Err(Failure::new(
            "org.freedesktop.resolve1.NoSource",
            "All suitable resolution sources turned off".to_string(),
        ));
    }
    Ok(())
}

/// Whether the request forbids asking the network (cache and local answers only).
pub(crate) fn cache_only(flags: u64) -> bool {
    flags & FLAG_NO_NETWORK != 0
}

/// The query types of an address family: 0 asks both.
pub(crate) fn address_types(family: i32) -> Result<&'static [u16], Failure> {
    match family {
        0 => Ok(&[TYPE_A, TYPE_AAAA]),
        AF_INET => Ok(&[TYPE_A]),
        AF_INET6 => Ok(&[TYPE_AAAA]),
        other => Err(Failure::invalid(format!("Unknown address family {other}"))),
    }
}

/// A lookup name, checked: `None` if it is not a valid domain name.
pub(crate) fn name(text: &str) -> Result<ZoneName, Failure> {
    ZoneName::parse(text)
        .ok()
        .filter(|_| !text.trim().is_empty() && text.trim() == text)
        .ok_or_else(|| Failure::invalid(format!("Invalid hostname '{text}'")))
}

/// The names to try for `name`, in order: a single label with a search list and without
/// `NO_SEARCH` (nor a final dot) is tried in each search domain; `localhost` is never
/// qualified (RFC 6761: it is this host).
pub(crate) fn candidates(
    text: &str,
    name: &ZoneName,
    search: &[String],
    flags: u64,
) -> Vec<ZoneName> {
    let single = dns::labels(name.wire()).count() == 1;
    let localhost = name.wire() == b"\x09localhost\x00";
    if !single
        || localhost
        || text.ends_with('.')
        || flags & FLAG_NO_SEARCH != 0
        || search.is_empty()
    {
        return vec![name.clone()];
    }
    search
        .iter()
        .filter_map(|domain| ZoneName::parse(&format!("{name}.{domain}")).ok())
        .collect()
}

/// A query for the wire-form `name`, `qtype` and `class` with RD and AD set (AD asks whether
/// the upstream validated the answer).
pub(crate) fn query(name: &[u8], qtype: u16, class: u16) -> Vec<u8> {
    let mut message = vec![0, 0, 0x01, 0x20, 0, 1, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(name);
    message.extend_from_slice(&qtype.to_be_bytes());
    message.extend_from_slice(&class.to_be_bytes());
    message
}

/// The reverse name of an address (`4.3.2.1.in-addr.arpa`).
pub(crate) fn reverse_name(family: i32, bytes: &[u8]) -> Result<(IpAddr, ZoneName), Failure> {
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::from(
            <[u8; 4]>::try_from(bytes).map_err(|_| Failure::invalid("Invalid address size"))?,
        )),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(
            <[u8; 16]>::try_from(bytes).map_err(|_| Failure::invalid("Invalid address size"))?,
        )),
        other => return Err(Failure::invalid(format!("Unknown address family {other}"))),
    };
    let text = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let nibbles: Vec<String> = v6
                .octets()
                .iter()
                .rev()
                .flat_map(|b| [b & 0x0f, b >> 4])
                .map(|n| format!("{n:x}"))
                .collect();
            format!("{}.ip6.arpa", nibbles.join("."))
        }
    };
    let name = ZoneName::parse(&text).map_err(|_| Failure::invalid("Invalid address"))?;
    Ok((ip, name))
}

/// `name` when it is an IP address literal (`10.0.0.1`, `fe80::1%2`), with its family.
pub(crate) fn literal(text: &str) -> Option<(i32, Vec<u8>, String)> {
    let (address, _scope) = text.split_once('%').unwrap_or((text, ""));
    match address.parse::<IpAddr>().ok()? {
        IpAddr::V4(v4) => Some((AF_INET, v4.octets().to_vec(), v4.to_string())),
        IpAddr::V6(v6) => Some((AF_INET6, v6.octets().to_vec(), v6.to_string())),
    }
}

/// The flags of a reply built from `answer` for protocol DNS.
pub(crate) fn reply_flags(answer: &Answer, message: &Message) -> u64 {
    let mut flags = FLAG_DNS;
    if message.metadata.authentic_data {
        flags |= FLAG_AUTHENTICATED;
    }
    let source = match (answer.privacy, answer.cached) {
        (Privacy::Local, _) => FLAG_CONFIDENTIAL | FLAG_SYNTHETIC,
        (Privacy::Encrypted, cached) => FLAG_CONFIDENTIAL | from(cached),
        (Privacy::Plaintext, cached) => from(cached),
    };
    flags | source
}

fn from(cached: bool) -> u64 {
    match cached {
        true => FLAG_FROM_CACHE,
        false => FLAG_FROM_NETWORK,
    }
}

/// The flags of a reply that needed no lookup (an address literal).
pub(crate) const SYNTHETIC_FLAGS: u64 =
    FLAG_DNS | FLAG_AUTHENTICATED | FLAG_CONFIDENTIAL | FLAG_SYNTHETIC;

/// The answer's message when it is a success, else the error systemd-resolved replies with.
pub(crate) fn success(answer: &Answer, asked: &str) -> Result<Message, Failure> {
    let message = Message::from_vec(&answer.message).map_err(|_| {
        Failure::new(
            "org.freedesktop.resolve1.InvalidReply",
            "Received invalid reply".to_string(),
        )
    })?;
    let rcode = message.metadata.response_code;
    match rcode {
        ResponseCode::NoError => Ok(message),
        ResponseCode::NXDomain => Err(Failure::new(
            "org.freedesktop.resolve1.DnsError.NXDOMAIN",
            format!("'{asked}' not found"),
        )),
        other => {
            let code = u16::from(other);
            let name = match code {
                1 => "FORMERR".to_string(),
                2 => "SERVFAIL".to_string(),
                4 => "NOTIMP".to_string(),
                5 => "REFUSED".to_string(),
                6 => "YXDOMAIN".to_string(),
                7 => "YXRRSET".to_string(),
                8 => "NXRRSET".to_string(),
                9 => "NOTAUTH".to_string(),
                10 => "NOTZONE".to_string(),
                16 => "BADVERS".to_string(),
                code => code.to_string(),
            };
            Err(Failure::new(
                &format!("org.freedesktop.resolve1.DnsError.{name}"),
                format!("Could not resolve '{asked}', server or network returned error {name}"),
            ))
        }
    }
}

/// No record of the type asked.
pub(crate) fn no_such_record(asked: &str) -> Failure {
    Failure::new(
        "org.freedesktop.resolve1.NoSuchRR",
        format!("'{asked}' does not have any RR of the requested type"),
    )
}

/// A name as systemd-resolved returns it: the server's spelling, without the final dot.
fn text_of(name: &hickory_proto::rr::Name) -> String {
    let text = name.to_ascii();
    match text.strip_suffix('.') {
        Some(stripped) if !stripped.is_empty() => stripped.to_string(),
        _ => text,
    }
}

/// The addresses in an answer, as `(family, bytes)`, and the name that owns the first.
pub(crate) fn addresses(message: &Message) -> (Vec<(i32, Vec<u8>)>, Option<String>) {
    let mut found = Vec::new();
    let mut canonical = None;
    for record in &message.answers {
        let address = match &record.data {
            RData::A(a) => (AF_INET, a.0.octets().to_vec()),
            RData::AAAA(aaaa) => (AF_INET6, aaaa.0.octets().to_vec()),
            _ => continue,
        };
        canonical.get_or_insert_with(|| text_of(&record.name));
        found.push(address);
    }
    (found, canonical)
}

/// The names in an answer's PTR records.
pub(crate) fn pointers(message: &Message) -> Vec<String> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::PTR(ptr) => Some(text_of(&ptr.0)),
            _ => None,
        })
        .collect()
}

/// The records of type `qtype` and class `class` in an answer, each as `(class, type, whole
/// record in wire form without compression)`, as `ResolveRecord` returns them.
pub(crate) fn records(message: &Message, qtype: u16, class: u16) -> Vec<(u16, u16, Vec<u8>)> {
    message
        .answers
        .iter()
        .filter(|r| u16::from(r.record_type()) == qtype && u16::from(r.dns_class) == class)
        .filter_map(|record| Some((class, qtype, uncompressed(record)?)))
        .collect()
}

fn uncompressed(record: &Record) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(64);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_name_encoding(NameEncoding::Uncompressed);
    record.emit(&mut encoder).ok()?;
    Some(bytes)
}

/// The answer to one query through the forwarder in force: from the cache if it can, and with
/// `cache_only` from nowhere else (the answer is then `None`).
pub(crate) async fn ask(context: &Context, message: &[u8], cache_only: bool) -> Option<Answer> {
    let query = dns::parse_query(message).ok()?;
    let forwarder = context.forwarder();
    let metrics = context.metrics.transport(Transport::Bus);
    let client = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let privacy = forwarder.privacy(&query);
    let (answer, cached) = match forwarder.answer_cached(&query, client, Transport::Bus) {
        Some(answer) => (answer, true),
        None if cache_only => return None,
        None => (
            forwarder.answer(&query, client, Transport::Bus).await,
            false,
        ),
    };
    metrics.answered(dns::header_rcode(&answer));
    Some(Answer {
        message: answer,
        privacy,
        cached,
    })
}

/// Checks that `qtype` may be asked: not a meta type, nor a zone transfer, nor obsolete.
pub(crate) fn check_type(qtype: u16) -> Result<(), Failure> {
    match qtype {
        0 | 41 | 249 | 250 => Err(Failure::invalid(format!(
            "Specified resource record type {qtype} may not be used in a query."
        ))),
        251 | 252 => Err(Failure::new(
            "org.freedesktop.DBus.Error.NotSupported",
            "Zone transfers not permitted via this programming interface.".to_string(),
        )),
        3 | 4 | 253 | 254 => Err(Failure::new(
            "org.freedesktop.DBus.Error.NotSupported",
            format!("Specified DNS resource record type {qtype} is obsolete."),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{MessageType, OpCode, Query as Question};
    use hickory_proto::rr::rdata::{A, CNAME, MX, PTR};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn zone(text: &str) -> ZoneName {
        ZoneName::parse(text).unwrap()
    }

    #[test]
    fn requests_are_checked_like_resolveds() {
        assert!(check_request(0, 0).is_ok());
        assert!(check_request(3, FLAG_DNS | FLAG_NO_SEARCH).is_ok());
        assert_eq!(
            check_request(-1, 0).unwrap_err().name,
            "org.freedesktop.DBus.Error.InvalidArgs"
        );
        assert!(
            check_request(0, FLAG_AUTHENTICATED).is_err(),
            "a reply flag"
        );
        assert!(check_request(0, 1 << 40).is_err());
        assert_eq!(
            check_request(0, 0x06).unwrap_err().name,
            "org.freedesktop.resolve1.NoSource",
            "LLMNR only"
        );
        assert_eq!(address_types(0).unwrap(), &[TYPE_A, TYPE_AAAA]);
        assert!(address_types(3).is_err());
        assert!(name("bad name").is_err());
        assert!(name("").is_err());
        assert!(name("host.example.").is_ok());
    }

    #[test]
    fn single_labels_are_tried_in_each_search_domain() {
        let search = vec!["corp.example".to_string(), "lab.example".to_string()];
        let names = |text: &str, flags| -> Vec<String> {
            candidates(text, &zone(text), &search, flags)
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(
            names("printer", 0),
            ["printer.corp.example", "printer.lab.example"]
        );
        assert_eq!(names("printer.", 0), ["printer"]);
        assert_eq!(names("printer", FLAG_NO_SEARCH), ["printer"]);
        assert_eq!(names("www.example", 0), ["www.example"]);
        assert_eq!(names("localhost", 0), ["localhost"]);
    }

    #[test]
    fn queries_and_reverse_names_are_well_formed() {
        let bytes = query(zone("host.example").wire(), TYPE_AAAA, CLASS_IN);
        assert!(check_type(TYPE_AAAA).is_ok());
        assert!(check_type(252).is_err() && check_type(41).is_err() && check_type(3).is_err());
        let parsed = dns::parse_query(&bytes).unwrap();
        assert_eq!(parsed.qtype(), TYPE_AAAA);
        let (ip, name) = reverse_name(AF_INET, &[10, 0, 0, 1]).unwrap();
        assert_eq!(
            (ip.to_string(), name.to_string()),
            ("10.0.0.1".into(), "1.0.0.10.in-addr.arpa".into())
        );
        let (_, name) = reverse_name(AF_INET6, &Ipv6Addr::LOCALHOST.octets()).unwrap();
        assert!(
            name.to_string().starts_with("1.0.0.0.") && name.to_string().ends_with(".ip6.arpa")
        );
        assert!(reverse_name(AF_INET, &[1, 2, 3]).is_err());
        assert!(reverse_name(7, &[1, 2, 3, 4]).is_err());
        assert_eq!(literal("10.0.0.1").unwrap().0, AF_INET);
        assert_eq!(literal("fe80::1%2").unwrap().2, "fe80::1");
        assert!(literal("host").is_none());
    }

    fn response(rcode: ResponseCode, records: Vec<Record>) -> Answer {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.metadata.response_code = rcode;
        message.add_query(Question::query(
            Name::from_ascii("www.example.").unwrap(),
            RecordType::A,
        ));
        for record in records {
            message.add_answer(record);
        }
        Answer {
            message: message.to_vec().unwrap(),
            privacy: Privacy::Encrypted,
            cached: false,
        }
    }

    #[test]
    fn answers_become_resolveds_values_and_errors() {
        let www = Name::from_ascii("WWW.example.").unwrap();
        let target = Name::from_ascii("web.example.").unwrap();
        let answer = response(
            ResponseCode::NoError,
            vec![
                Record::from_rdata(www.clone(), 60, RData::CNAME(CNAME(target.clone()))),
                Record::from_rdata(target.clone(), 60, RData::A(A::new(192, 0, 2, 1))),
            ],
        );
        let message = success(&answer, "www.example").unwrap();
        let (found, canonical) = addresses(&message);
        assert_eq!(found, vec![(AF_INET, vec![192, 0, 2, 1])]);
        assert_eq!(canonical.as_deref(), Some("web.example"));
        assert_eq!(
            reply_flags(&answer, &message),
            FLAG_DNS | FLAG_CONFIDENTIAL | FLAG_FROM_NETWORK
        );
        // ResolveRecord: whole records, names uncompressed (so the CNAME's target is spelled out).
        let cnames = records(&message, 5, CLASS_IN);
        assert_eq!(cnames.len(), 1);
        let wire = &cnames[0].2;
        assert!(wire.starts_with(b"\x03WWW\x07example\x00\x00\x05\x00\x01"));
        assert!(wire.ends_with(b"\x03web\x07example\x00"));
        let nx = success(&response(ResponseCode::NXDomain, vec![]), "www.example").unwrap_err();
        assert_eq!(nx.name, "org.freedesktop.resolve1.DnsError.NXDOMAIN");
        let servfail = success(&response(ResponseCode::ServFail, vec![]), "x").unwrap_err();
        assert_eq!(servfail.name, "org.freedesktop.resolve1.DnsError.SERVFAIL");
        let ptr = response(
            ResponseCode::NoError,
            vec![Record::from_rdata(www, 60, RData::PTR(PTR(target)))],
        );
        assert_eq!(pointers(&success(&ptr, "x").unwrap()), ["web.example"]);
        let mx = response(
            ResponseCode::NoError,
            vec![Record::from_rdata(
                Name::from_ascii("example.").unwrap(),
                60,
                RData::MX(MX::new(10, Name::from_ascii("mail.example.").unwrap())),
            )],
        );
        assert_eq!(records(&success(&mx, "x").unwrap(), 15, CLASS_IN).len(), 1);
    }
}
