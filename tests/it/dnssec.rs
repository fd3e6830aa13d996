//! DNSSEC validation against a real signed world (tests/dnssec/world.sh: knotd serving a private
//! root, `test.` and a zone per case), resolved by unbound as the DoT upstream, once validating
//! and once as a plain iterator that hands bogus data on (and that one over DoH too). dns-proxy must reach the same verdict
//! behind both: AD exactly on the proven answers (NXDOMAIN and NODATA included), SERVFAIL with
//! the Extended DNS Error that names the fault on bogus ones, the data unvalidated for CD=1,
//! insecure answers unchanged. `delv` (BIND's validator) and the validating unbound vouch for the
//! world itself, so a failure here is dns-proxy's.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{Name, RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::client::next_id;
use crate::support::dnssec_world::{Resolution, WorldServers, delv, world_tools_present};
use crate::support::proxy::{Proxy, ProxyConfig};
use crate::support::require_tool;

/// What knotd serves for a case, i.e. what a client sees when nothing is validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Served {
    /// NOERROR with exactly this A record at the end of the answer (after any CNAME).
    A(&'static str),
    /// NOERROR, no record of the asked type.
    NoData,
    NxDomain,
}

/// The verdict a validator must reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Proven: AD when the client asks for it.
    Secure,
    /// Provably unsigned: passed on without AD, never SERVFAIL; with this Extended DNS Error
    /// attached as information when one is given.
    Insecure(Option<u16>),
    /// SERVFAIL with this Extended DNS Error, whose text names this zone.
    Bogus(u16, &'static str),
}

struct Case {
    name: &'static str,
    rtype: RecordType,
    data: Served,
    verdict: Verdict,
}

const fn case(name: &'static str, rtype: RecordType, data: Served, verdict: Verdict) -> Case {
    Case {
        name,
        rtype,
        data,
        verdict,
    }
}

use RecordType::{A, AAAA, TXT};
use Served::{A as Addr, NoData, NxDomain};
use Verdict::{Bogus, Insecure, Secure};

/// Every case of the world (tests/dnssec/world.sh describes the zones).
const CASES: &[Case] = &[
    // Secure, with NSEC, NSEC3 and each algorithm; positive, NXDOMAIN and NODATA.
    case("www.secure.test.", A, Addr("192.0.2.1"), Secure),
    case("nx.secure.test.", A, NxDomain, Secure),
    case("www.secure.test.", TXT, NoData, Secure),
    case("www.nsec3.test.", A, Addr("192.0.2.2"), Secure),
    case("nx.nsec3.test.", A, NxDomain, Secure),
    case("www.nsec3.test.", TXT, NoData, Secure),
    case("www.alg8.test.", A, Addr("192.0.2.8"), Secure),
    case("nx.alg8.test.", A, NxDomain, Secure),
    case("www.alg15.test.", A, Addr("192.0.2.15"), Secure),
    case("nx.alg15.test.", A, NxDomain, Secure),
    case("ns.nic.test.", A, Addr("127.0.53.53"), Secure),
    case("nx.test.", A, NxDomain, Secure),
    // Wildcards: one and two labels expanded, wildcard NODATA, no wildcard below a name.
    case("x.wild.test.", A, Addr("192.0.2.20"), Secure),
    case("a.b.wild.test.", A, Addr("192.0.2.20"), Secure),
    case("x.wild.test.", AAAA, NoData, Secure),
    case("host.wild.test.", A, Addr("192.0.2.21"), Secure),
    case("host.wild.test.", AAAA, NoData, Secure),
    case("x.host.wild.test.", A, NxDomain, Secure),
    case("x.wild.nsec3.test.", A, Addr("192.0.2.22"), Secure),
    case("x.wild.nsec3.test.", TXT, NoData, Secure),
    // A secure CNAME into another secure zone.
    case("to-nsec3.secure.test.", A, Addr("192.0.2.2"), Secure),
    // Signed names of zones whose denials are broken or over the limits are still secure.
    case("www.optout.test.", A, Addr("192.0.2.40"), Secure),
    case("www.iter200.test.", A, Addr("192.0.2.45"), Secure),
    case("www.nonsec.test.", A, Addr("192.0.2.90"), Secure),
    // Insecure: no DS, opt-out, NSEC3 iterations over the limit, unknown DS algorithm/digest.
    case("www.insecure.test.", A, Addr("192.0.2.30"), Insecure(None)),
    case("nx.insecure.test.", A, NxDomain, Insecure(None)),
    case(
        "www.unsigned.optout.test.",
        A,
        Addr("192.0.2.41"),
        Insecure(None),
    ),
    // In an opt-out span the name could be an unsigned delegation: not provably absent
    // (unbound agrees; BIND's delv calls it secure).
    case("nx.optout.test.", A, NxDomain, Insecure(None)),
    case("nx.iter200.test.", A, NxDomain, Insecure(None)),
    case("www.iter200.test.", TXT, NoData, Insecure(None)),
    case(
        "to-insecure.secure.test.",
        A,
        Addr("192.0.2.30"),
        Insecure(None),
    ),
    case(
        "www.unknownalg.test.",
        A,
        Addr("192.0.2.100"),
        Insecure(Some(1)),
    ),
    case(
        "www.unknowndigest.test.",
        A,
        Addr("192.0.2.101"),
        Insecure(Some(2)),
    ),
    // Bogus, each with its Extended DNS Error.
    case(
        "www.bogus.test.",
        A,
        Addr("192.0.2.51"),
        Bogus(6, "bogus.test"),
    ),
    case(
        "to-bogus.secure.test.",
        A,
        Addr("192.0.2.51"),
        Bogus(6, "bogus.test"),
    ),
    case(
        "www.expired.test.",
        A,
        Addr("192.0.2.60"),
        Bogus(7, "expired.test"),
    ),
    case("nx.expired.test.", A, NxDomain, Bogus(7, "expired.test")),
    case(
        "www.nokey.test.",
        A,
        Addr("192.0.2.70"),
        Bogus(9, "nokey.test"),
    ),
    case(
        "www.nosig.test.",
        A,
        Addr("192.0.2.80"),
        Bogus(10, "nosig.test"),
    ),
    case("nx.nonsec.test.", A, NxDomain, Bogus(12, "nonsec.test")),
    case("www.nonsec.test.", TXT, NoData, Bogus(12, "nonsec.test")),
];

/// The flags of a client's query.
#[derive(Clone, Copy, Debug)]
struct Ask {
    edns: bool,
    do_bit: bool,
    cd: bool,
    ad: bool,
}

/// EDNS with DO: a DNSSEC-aware client (dig +dnssec).
const DO: Ask = Ask {
    edns: true,
    do_bit: true,
    cd: false,
    ad: false,
};
/// DO and CD: a client that validates itself (dig +dnssec +cd).
const DO_CD: Ask = Ask {
    edns: true,
    do_bit: true,
    cd: true,
    ad: false,
};
/// EDNS without DO and without AD: a stub that cares for none of it (getaddrinfo).
const EDNS: Ask = Ask {
    edns: true,
    do_bit: false,
    cd: false,
    ad: false,
};
/// AD=1 without DO (RFC 6840 §5.7): wants the AD bit, not the records (dig's default).
const AD_ONLY: Ask = Ask {
    edns: true,
    do_bit: false,
    cd: false,
    ad: true,
};
/// No EDNS at all.
const NO_EDNS: Ask = Ask {
    edns: false,
    do_bit: false,
    cd: false,
    ad: false,
};

/// Longest wait for one answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(8);

/// Asks `server` over UDP (over TCP when the answer is truncated); an error on silence.
async fn ask(
    server: SocketAddr,
    name: &str,
    rtype: RecordType,
    how: Ask,
) -> Result<Message, String> {
    let mut query = Message::new(next_id(), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.metadata.checking_disabled = how.cd;
    query.metadata.authentic_data = how.ad;
    let qname = Name::from_ascii(name).map_err(|e| format!("bad name {name}: {e}"))?;
    query.add_query(Query::query(qname, rtype));
    if how.edns {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        edns.set_dnssec_ok(how.do_bit);
        query.set_edns(edns);
    }
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let exchange = async {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|e| e.to_string())?;
        socket.connect(server).await.map_err(|e| e.to_string())?;
        socket.send(&bytes).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 65_535];
        let answer = loop {
            let len = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            let answer = Message::from_vec(&buf[..len]).map_err(|e| format!("undecodable: {e}"))?;
            if answer.metadata.id == query.metadata.id {
                break answer;
            }
        };
        if !answer.metadata.truncation {
            return Ok(answer);
        }
        let mut stream = TcpStream::connect(server)
            .await
            .map_err(|e| e.to_string())?;
        let mut frame = u16::try_from(bytes.len())
            .map_err(|e| e.to_string())?
            .to_be_bytes()
            .to_vec();
        frame.extend_from_slice(&bytes);
        stream.write_all(&frame).await.map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| e.to_string())?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut body)
            .await
            .map_err(|e| e.to_string())?;
        Message::from_vec(&body).map_err(|e| format!("undecodable over TCP: {e}"))
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {ANSWER_TIMEOUT:?}")),
    }
}

/// The Extended DNS Errors of an answer: (info code, extra text).
fn edes(msg: &Message) -> Vec<(u16, String)> {
    let Some(edns) = &msg.edns else {
        return Vec::new();
    };
    edns.options()
        .options
        .iter()
        .filter_map(|(_, option)| match option {
            EdnsOption::Unknown(15, data) if data.len() >= 2 => Some((
                u16::from_be_bytes([data[0], data[1]]),
                String::from_utf8_lossy(&data[2..]).into_owned(),
            )),
            _ => None,
        })
        .collect()
}

/// The A addresses in the answer section.
fn addresses(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// The records a client without DO must not get (RFC 4035 §3.2.1).
const DNSSEC_TYPES: [RecordType; 3] = [RecordType::RRSIG, RecordType::NSEC, RecordType::NSEC3];

/// Whether the answer or authority section carries a signature or a denial record.
fn has_dnssec_records(msg: &Message) -> bool {
    msg.answers
        .iter()
        .chain(&msg.authorities)
        .any(|r| DNSSEC_TYPES.contains(&r.record_type()))
}

/// A one-line summary of an answer, for failure messages.
fn summary(msg: &Message) -> String {
    let m = &msg.metadata;
    let records: Vec<String> = msg
        .answers
        .iter()
        .chain(&msg.authorities)
        .map(|r| format!("{} {}", r.name, r.record_type()))
        .collect();
    format!(
        "{:?} ad={} cd={} ede={:?} opt={} [{}]",
        m.response_code,
        m.authentic_data,
        m.checking_disabled,
        edes(msg),
        msg.edns.is_some(),
        records.join(", ")
    )
}

/// Whether the answer carries `data` (what knotd serves); None when it does, else why not.
fn data_mismatch(msg: &Message, rtype: RecordType, data: Served) -> Option<String> {
    let rcode = msg.metadata.response_code;
    match data {
        Addr(addr) => {
            let got = addresses(msg);
            (rcode != ResponseCode::NoError || got != [addr.to_string()])
                .then(|| format!("want NOERROR with A {addr}"))
        }
        NoData => (rcode != ResponseCode::NoError
            || msg.answers.iter().any(|r| r.record_type() == rtype))
        .then(|| "want NOERROR without data (NODATA)".to_string()),
        NxDomain => (rcode != ResponseCode::NXDomain).then(|| "want NXDOMAIN".to_string()),
    }
}

/// Checks what a validating dns-proxy at `server` answers for `case` to every kind of client;
/// appends each deviation to `failures`. `first_cd` asks CD=1 first, so that a cached
/// unvalidated answer must not leak to the later CD=0 clients (and the other way round).
async fn check_case(server: SocketAddr, case: &Case, first_cd: bool, failures: &mut Vec<String>) {
    let label = format!("{} {}", case.name, case.rtype);
    let mut fail = |how: &str, what: String, msg: Option<&Message>| {
        failures.push(format!(
            "{label} [{how}]: {what}; got {}",
            msg.map(summary).unwrap_or_else(|| "nothing".to_string())
        ));
    };
    let order: [(&str, Ask); 6] = if first_cd {
        [
            ("DO CD", DO_CD),
            ("DO", DO),
            ("EDNS", EDNS),
            ("AD", AD_ONLY),
            ("no EDNS", NO_EDNS),
            ("DO again", DO),
        ]
    } else {
        [
            ("DO", DO),
            ("DO CD", DO_CD),
            ("EDNS", EDNS),
            ("AD", AD_ONLY),
            ("no EDNS", NO_EDNS),
            ("DO again", DO),
        ]
    };
    for (how, ask_how) in order {
        let msg = match ask(server, case.name, case.rtype, ask_how).await {
            Ok(msg) => msg,
            Err(e) => {
                fail(how, e, None);
                continue;
            }
        };
        let m = &msg.metadata;
        // Whether the client asked for the AD bit (RFC 6840 §5.7) and for the records.
        let wants_ad = ask_how.do_bit || ask_how.ad;
        let dnssec_ede = edes(&msg)
            .into_iter()
            .find(|(code, _)| (6..=12).contains(code));
        if ask_how.cd {
            // The data itself, unvalidated; never SERVFAIL for bogus data.
            if let Some(why) = data_mismatch(&msg, case.rtype, case.data) {
                fail(
                    how,
                    format!("CD=1 gets the data unvalidated: {why}"),
                    Some(&msg),
                );
            }
            if case.verdict != Secure && m.authentic_data {
                fail(how, "AD on an answer that is not secure".into(), Some(&msg));
            }
            continue;
        }
        match case.verdict {
            Secure => {
                if let Some(why) = data_mismatch(&msg, case.rtype, case.data) {
                    fail(how, why, Some(&msg));
                }
                if m.authentic_data != wants_ad {
                    fail(
                        how,
                        format!("AD must be {wants_ad} on a secure answer for this client"),
                        Some(&msg),
                    );
                }
            }
            Insecure(info) => {
                if let Some(why) = data_mismatch(&msg, case.rtype, case.data) {
                    fail(how, format!("insecure answers pass: {why}"), Some(&msg));
                }
                if m.authentic_data {
                    fail(how, "AD on an insecure answer".into(), Some(&msg));
                }
                if let Some((code, _)) = &dnssec_ede {
                    fail(how, format!("EDE {code} on an insecure answer"), Some(&msg));
                }
                if let Some(code) = info
                    && ask_how.edns
                    && !edes(&msg).iter().any(|(c, _)| *c == code)
                {
                    fail(how, format!("want EDE {code} as information"), Some(&msg));
                }
            }
            Bogus(code, zone) => {
                if m.response_code != ResponseCode::ServFail || !msg.answers.is_empty() {
                    fail(how, "want SERVFAIL without data".into(), Some(&msg));
                }
                if m.authentic_data {
                    fail(how, "AD on a bogus answer".into(), Some(&msg));
                }
                if ask_how.edns {
                    let all = edes(&msg);
                    match all.iter().find(|(c, _)| *c == code) {
                        Some((_, text)) if text.to_ascii_lowercase().contains(zone) => {}
                        Some((_, text)) => fail(
                            how,
                            format!("EDE {code} text {text:?} does not name {zone}"),
                            Some(&msg),
                        ),
                        None => fail(how, format!("want EDE {code}"), Some(&msg)),
                    }
                } else if msg.edns.is_some() {
                    fail(
                        how,
                        "OPT in the answer to a query without EDNS".into(),
                        Some(&msg),
                    );
                }
            }
        }
        if !ask_how.do_bit && has_dnssec_records(&msg) {
            fail(
                how,
                "DNSSEC records for a client without DO".into(),
                Some(&msg),
            );
        }
        if ask_how.do_bit && case.verdict == Secure {
            let signed = match case.data {
                Addr(_) => msg
                    .answers
                    .iter()
                    .any(|r| r.record_type() == RecordType::RRSIG),
                NoData | NxDomain => msg
                    .authorities
                    .iter()
                    .any(|r| matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3)),
            };
            if !signed {
                fail(
                    how,
                    "DO=1: the signatures and proofs go along".into(),
                    Some(&msg),
                );
            }
        }
    }
}

fn report(what: &str, failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{what}: {} deviation(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// dns-proxy in front of `resolution`'s upstream, validating with the world's root as
/// its only trust anchor (`dnssec` left at its default), plus `extra` top-level lines.
async fn validating_proxy(
    servers: &WorldServers,
    resolution: Resolution,
    extra: &[String],
) -> Proxy {
    let mut config = ProxyConfig::new(servers.resolver(resolution).spec()).extra(&format!(
        "trust_anchors = \"{}\"",
        servers.world.anchor_ds().display()
    ));
    for line in extra {
        config = config.extra(line);
    }
    start(&config).await
}

/// Starts dns-proxy with `config`; panics when it does not take the config whole (a daemon
/// that starts degraded answers SERVFAIL to everything, which would bury the real verdicts).
async fn start(config: &ProxyConfig) -> Proxy {
    start_toml(&config.to_toml()).await
}

/// [`start`] with a config file given verbatim.
async fn start_toml(toml: &str) -> Proxy {
    let proxy = Proxy::builder_toml(toml).start().await;
    if let Some(status) = proxy
        .notifications()
        .iter()
        .find(|n| n.contains("degraded"))
    {
        panic!("dns-proxy did not take the config:\n{toml}\n{status}");
    }
    proxy
}

async fn whole_world_through(resolution: Resolution) {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    let proxy = validating_proxy(&servers, resolution, &[]).await;
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        check_case(proxy.udp4(), case, i % 2 == 1, &mut failures).await;
    }
    proxy.assert_running();
    report(
        &format!("dns-proxy behind the {resolution:?} upstream"),
        failures,
    );
}

/// Behind a validating upstream (asked with CD=1, so it hands over what it judges bogus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_behind_a_validating_upstream() {
    whole_world_through(Resolution::Validating).await;
}

/// Behind an upstream that validates nothing: the forged data reaches dns-proxy as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_behind_a_non_validating_upstream() {
    whole_world_through(Resolution::IteratorOnly).await;
}

/// The same verdicts with the non-validating upstream's DNS-over-HTTPS service as the only
/// upstream: the DNSKEY sets and denial proofs of a signed world are the largest answers an
/// upstream gives, and over DoH each arrives as HTTP/2 frames, not as one DoT frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_over_a_doh_upstream() {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    let resolver = servers.resolver(Resolution::IteratorOnly);
    let proxy = start_toml(&format!(
        "timeout = \"3s\"\ntrust_anchors = \"{}\"\n{}",
        servers.world.anchor_ds().display(),
        resolver.doh_upstream_toml()
    ))
    .await;
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        check_case(proxy.udp4(), case, i % 2 == 1, &mut failures).await;
    }
    proxy.assert_running();
    report("dns-proxy over the IteratorOnly upstream's DoH", failures);
}

/// The verdict `delv` reaches, from its output: one line per RRset of the chain (a CNAME's
/// target included), so the weakest wins; a proven negative answer also reports its
/// "resolution failed: ncache ...".
fn delv_verdict(output: &str) -> &'static str {
    let failed = output
        .lines()
        .any(|l| l.contains("resolution failed") && !l.contains("resolution failed: ncache"));
    if failed {
        "bogus"
    } else if output.contains("unsigned answer") {
        "insecure"
    } else if output.contains("fully validated") {
        "secure"
    } else {
        "bogus"
    }
}

/// The world itself, before any dns-proxy: BIND's delv and the validating unbound reach each
/// case's verdict (delv calls an NXDOMAIN in an opt-out span secure, see CASES), and the
/// non-validating unbound hands over knotd's data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_world_is_what_the_cases_say() {
    if !world_tools_present() || !require_tool("delv") {
        return;
    }
    let servers = WorldServers::start().await;
    let anchor = servers.world.delv_anchor();
    let mut failures = Vec::new();
    for case in CASES {
        let label = format!("{} {}", case.name, case.rtype);
        // delv validates on its own over the non-validating unbound.
        let output = delv(&anchor, servers.iterator.plain, case.name, case.rtype).await;
        let want = match case.verdict {
            Secure => "secure",
            Insecure(_) if case.name == "nx.optout.test." => "secure",
            Insecure(_) => "insecure",
            Bogus(..) => "bogus",
        };
        if delv_verdict(&output) != want {
            failures.push(format!(
                "{label}: delv says {}, want {want}:\n{output}",
                delv_verdict(&output)
            ));
        }
        match ask(servers.iterator.plain, case.name, case.rtype, DO_CD).await {
            Ok(msg) => {
                if let Some(why) = data_mismatch(&msg, case.rtype, case.data) {
                    failures.push(format!(
                        "{label}: knotd's data: {why}; got {}",
                        summary(&msg)
                    ));
                }
            }
            Err(e) => failures.push(format!("{label}: iterator: {e}")),
        }
        match ask(servers.validating.plain, case.name, case.rtype, DO).await {
            Ok(msg) => {
                let m = &msg.metadata;
                let ok = match case.verdict {
                    Secure => {
                        m.authentic_data && data_mismatch(&msg, case.rtype, case.data).is_none()
                    }
                    Insecure(_) => {
                        !m.authentic_data && data_mismatch(&msg, case.rtype, case.data).is_none()
                    }
                    Bogus(code, _) => {
                        m.response_code == ResponseCode::ServFail
                            && edes(&msg).iter().any(|(c, _)| *c == code)
                    }
                };
                if !ok {
                    failures.push(format!(
                        "{label}: unbound validating disagrees with {:?}: {}",
                        case.verdict,
                        summary(&msg)
                    ));
                }
            }
            Err(e) => failures.push(format!("{label}: validating unbound: {e}")),
        }
    }
    report("the signed world", failures);
}

/// The trust anchor given as the root's DNSKEY instead of its DS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dnskey_trust_anchor_works_like_a_ds() {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    let config = ProxyConfig::new(servers.iterator.spec()).extra(&format!(
        "trust_anchors = \"{}\"",
        servers.world.anchor_dnskey().display()
    ));
    let proxy = start(&config).await;
    let mut failures = Vec::new();
    for case in CASES.iter().filter(|c| {
        [
            "www.secure.test.",
            "nx.nsec3.test.",
            "www.insecure.test.",
            "www.bogus.test.",
        ]
        .contains(&c.name)
            && c.rtype == A
    }) {
        check_case(proxy.udp4(), case, false, &mut failures).await;
    }
    report("DNSKEY-form trust anchor", failures);
}

/// `negative_trust_anchors` (RFC 7646): the named zone answers as if unsigned, others keep
/// being validated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_negative_trust_anchor_turns_a_bogus_zone_into_plain_answers() {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    for resolution in [Resolution::IteratorOnly, Resolution::Validating] {
        let proxy = validating_proxy(
            &servers,
            resolution,
            &["negative_trust_anchors = [\"bogus.test\"]".to_string()],
        )
        .await;
        let mut failures = Vec::new();
        let exempt = [
            case("www.bogus.test.", A, Addr("192.0.2.51"), Insecure(None)),
            case(
                "to-bogus.secure.test.",
                A,
                Addr("192.0.2.51"),
                Insecure(None),
            ),
        ];
        for case in &exempt {
            check_case(proxy.udp4(), case, false, &mut failures).await;
        }
        for case in CASES.iter().filter(|c| {
            ["www.secure.test.", "www.expired.test.", "www.nokey.test."].contains(&c.name)
        }) {
            check_case(proxy.udp4(), case, false, &mut failures).await;
        }
        report(
            &format!("negative trust anchor, {resolution:?} upstream"),
            failures,
        );
    }
}

/// A record as compared between two answers: name, type and data, not the TTL.
fn records(section: &[hickory_proto::rr::Record]) -> BTreeSet<String> {
    section
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
        .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
        .collect()
}

/// The Extended DNS Errors of an answer, for comparing two answers to the same question:
/// unbound answers a repeated question about a bogus name with EDE 6 where the first answer
/// had the specific code (its caches keep the verdict, not the reason), so the DNSSEC codes
/// 6 to 12 count as one.
fn ede_classes(msg: &Message) -> Vec<u16> {
    let mut codes: Vec<u16> = edes(msg)
        .into_iter()
        .map(|(code, _)| if (6..=12).contains(&code) { 6 } else { code })
        .collect();
    codes.sort_unstable();
    codes
}

/// `dnssec = "off"`: every answer is the upstream's, bits, records and EDE untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_off_passes_everything_through_untouched() {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    for resolution in [Resolution::IteratorOnly, Resolution::Validating] {
        let upstream = servers.resolver(resolution);
        let config = ProxyConfig::new(upstream.spec()).extra("dnssec = \"off\"");
        let proxy = start(&config).await;
        let mut failures = Vec::new();
        for case in CASES {
            for (how, ask_how) in [
                ("DO", DO),
                ("DO CD", DO_CD),
                ("EDNS", EDNS),
                ("AD", AD_ONLY),
            ] {
                let label = format!("{} {} [{how}]", case.name, case.rtype);
                let theirs = ask(upstream.plain, case.name, case.rtype, ask_how).await;
                let ours = ask(proxy.udp4(), case.name, case.rtype, ask_how).await;
                let (Ok(ours), Ok(theirs)) = (ours, theirs) else {
                    failures.push(format!("{label}: no answer"));
                    continue;
                };
                let same = ours.metadata.response_code == theirs.metadata.response_code
                    && ours.metadata.authentic_data == theirs.metadata.authentic_data
                    && records(&ours.answers) == records(&theirs.answers)
                    && records(&ours.authorities) == records(&theirs.authorities)
                    && ede_classes(&ours) == ede_classes(&theirs);
                if !same {
                    failures.push(format!(
                        "{label}: dns-proxy {} / upstream {}",
                        summary(&ours),
                        summary(&theirs)
                    ));
                }
            }
        }
        proxy.assert_running();
        report(
            &format!("dnssec = \"off\", {resolution:?} upstream"),
            failures,
        );
    }
}

/// Validated DNSKEY and DS sets are kept per zone: once a zone is known, a cold name in it
/// costs the one upstream query for the name itself, signed zone or unsigned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_name_in_a_known_zone_costs_one_upstream_query() {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    let proxy = validating_proxy(&servers, Resolution::IteratorOnly, &[]).await;
    let token = crate::support::Rng::from_entropy().next_u64();
    let signed = |i: u32| format!("c{i}-{token:x}.wild.test.");
    let unsigned = |i: u32| format!("c{i}-{token:x}.any.insecure.test.");
    let mut failures = Vec::new();
    let mut check = |name: &str, msg: Result<Message, String>, secure: bool| match msg {
        Ok(msg)
            if msg.metadata.response_code == ResponseCode::NoError
                && msg.metadata.authentic_data == secure => {}
        Ok(msg) => failures.push(format!(
            "{name}: want NOERROR, AD={secure}; got {}",
            summary(&msg)
        )),
        Err(e) => failures.push(format!("{name}: {e}")),
    };
    // Learns both zones' keys (and test.'s proof that insecure.test has no DS).
    check(&signed(0), ask(proxy.udp4(), &signed(0), A, DO).await, true);
    check(
        &unsigned(0),
        ask(proxy.udp4(), &unsigned(0), A, DO).await,
        false,
    );
    const COLD: u32 = 10;
    let mut costs = Vec::new();
    for (kind, name, secure) in [
        ("signed", &signed as &dyn Fn(u32) -> String, true),
        ("unsigned", &unsigned as &dyn Fn(u32) -> String, false),
    ] {
        let before = servers.iterator.queries_answered().await;
        let mark = servers.iterator.log_lines().len();
        for i in 1..=COLD {
            check(&name(i), ask(proxy.udp4(), &name(i), A, DO).await, secure);
        }
        let asked = servers.iterator.queries_answered().await - before;
        if asked != u64::from(COLD) {
            let queries: Vec<String> = servers.iterator.log_lines()[mark..]
                .iter()
                .filter(|l| l.contains("info: 127."))
                .cloned()
                .collect();
            costs.push(format!(
                "{COLD} cold names of the known {kind} zone cost {asked} upstream queries:\n{}",
                queries.join("\n")
            ));
        }
    }
    report("cold names in known zones", failures);
    report("upstream queries", costs);
}

/// A `[[forward_zone]]` table for `zones` answered by knotd over plain DNS, with `dnssec`.
fn forward_zone(zones: &str, server: SocketAddr, dnssec: Option<&str>) -> String {
    let mut table = format!("[[forward_zone]]\nzones = [{zones}]\n");
    if let Some(mode) = dnssec {
        table.push_str(&format!("dnssec = \"{mode}\"\n"));
    }
    table.push_str(&format!(
        "[[forward_zone.upstream]]\naddress = \"{server}\"\nprotocol = \"udp\"\n"
    ));
    table
}

/// Forward zones are insecure unless opted in: an internal zone that the signed parent says
/// does not exist keeps working, and so does a signed zone with broken signatures; with
/// `dnssec = "validate"` a forward zone is validated like any other name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_zones_are_insecure_unless_opted_in() {
    if !world_tools_present() {
        return;
    }
    let servers = WorldServers::start().await;
    let knot = servers.knot.addr;
    let extra = [
        forward_zone("\"corp.test\", \"nsec3.test\", \"bogus.test\"", knot, None),
        forward_zone("\"secure.test\", \"expired.test\"", knot, Some("validate")),
    ];
    let proxy = validating_proxy(&servers, Resolution::IteratorOnly, &extra).await;
    let mut failures = Vec::new();
    let cases = [
        // corp.test does not exist in the signed test. zone: the internal copy wins.
        case("www.corp.test.", A, Addr("192.0.2.110"), Insecure(None)),
        case("nx.corp.test.", A, NxDomain, Insecure(None)),
        // Signed zones behind a forward zone are insecure by default, bogus or not.
        case("www.nsec3.test.", A, Addr("192.0.2.2"), Insecure(None)),
        case("www.bogus.test.", A, Addr("192.0.2.51"), Insecure(None)),
        // Opted in.
        case("www.secure.test.", A, Addr("192.0.2.1"), Secure),
        case("nx.secure.test.", A, NxDomain, Secure),
        case(
            "www.expired.test.",
            A,
            Addr("192.0.2.60"),
            Bogus(7, "expired.test"),
        ),
    ];
    for (i, case) in cases.iter().enumerate() {
        check_case(proxy.udp4(), case, i % 2 == 1, &mut failures).await;
    }
    proxy.assert_running();
    report("forward zones", failures);
}
