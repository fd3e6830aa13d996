//! The validator's verdicts on answers from a world of zones signed here, with hickory-proto's
//! signing (its own canonical form, so a mistake in ours shows): a root and `test.` with
//! children that are secure (NSEC, NSEC3, Ed25519), insecure, opt-out, over the NSEC3
//! iteration limit, expired, without the key their DS names, with unknown DS algorithms; and
//! answers altered after signing (a changed record, signatures or proofs removed).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::dnssec::crypto::{EcdsaSigningKey, Ed25519SigningKey};
use hickory_proto::dnssec::rdata::sig::SigInput;
use hickory_proto::dnssec::rdata::{DNSKEY, DNSSECRData, DS, NSEC, NSEC3, RRSIG};
use hickory_proto::dnssec::{
    Algorithm, DigestType, Nsec3HashAlgorithm, SigningKey, TBS, Verifier as _,
};
use hickory_proto::op::{Message, MessageType, OpCode, Query as Question, ResponseCode};
use hickory_proto::rr::rdata::{A, CNAME, NS, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, SerialNumber};
use hickory_proto::serialize::binary::BinEncodable;

use crate::dnssec::anchors::{Anchor, TYPE_DS};
use crate::dnssec::chain::{Fetch, FetchError};
use crate::dnssec::validator::Validator;
use crate::dnssec::verdict::{EdeCode, Verdict};
use crate::wire::dns::Response;
use crate::wire::name::ZoneName;

const TTL: u32 = 3600;
const DAY: u32 = 86_400;

fn name(text: &str) -> Name {
    Name::from_ascii(text).unwrap()
}

fn now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32
}

/// How a signed zone denies existence.
#[derive(Clone, Copy)]
enum Denial {
    Nsec,
    Nsec3 { iterations: u16, opt_out: bool },
}

struct Signer {
    key: Box<dyn SigningKey>,
    dnskey: DNSKEY,
    inception: u32,
    expiration: u32,
}

impl Signer {
    fn new(algorithm: Algorithm) -> Signer {
        let key: Box<dyn SigningKey> = match algorithm {
            Algorithm::ED25519 => {
                let pkcs8 = Ed25519SigningKey::generate_pkcs8().unwrap();
                Box::new(Ed25519SigningKey::from_pkcs8(&pkcs8).unwrap())
            }
            _ => {
                let pkcs8 = EcdsaSigningKey::generate_pkcs8(algorithm).unwrap();
                Box::new(EcdsaSigningKey::from_pkcs8(&pkcs8, algorithm).unwrap())
            }
        };
        let dnskey = DNSKEY::new(true, true, false, key.to_public_key().unwrap());
        Signer {
            key,
            dnskey,
            inception: now() - DAY,
            expiration: now() + 7 * DAY,
        }
    }

    fn ds(&self, zone: &Name) -> DS {
        let tag = self.dnskey.calculate_key_tag().unwrap();
        let digest = self.dnskey.to_digest(zone, DigestType::SHA256).unwrap();
        DS::new(
            tag,
            self.dnskey.algorithm(),
            DigestType::SHA256,
            digest.as_ref().to_vec(),
        )
    }

    /// The RRSIG over `rrset` (one owner, one type), by zone `apex`.
    fn sign(&self, apex: &Name, rrset: &[Record]) -> Record {
        let first = &rrset[0];
        let input = SigInput {
            type_covered: first.record_type(),
            algorithm: self.dnskey.algorithm(),
            num_labels: first.name.num_labels(),
            original_ttl: first.ttl,
            sig_expiration: SerialNumber::new(self.expiration),
            sig_inception: SerialNumber::new(self.inception),
            key_tag: self.dnskey.calculate_key_tag().unwrap(),
            signer_name: apex.clone(),
        };
        let tbs = TBS::from_input(&first.name, DNSClass::IN, &input, rrset.iter()).unwrap();
        let sig = self.key.sign(&tbs).unwrap();
        let rrsig = RRSIG::from_sig(input, sig);
        Record::from_rdata(
            first.name.clone(),
            first.ttl,
            RData::DNSSEC(DNSSECRData::RRSIG(rrsig)),
        )
    }
}

struct Zone {
    apex: Name,
    /// `None`: an unsigned zone.
    signer: Option<Signer>,
    denial: Denial,
    /// The zone's data, delegations (NS, and DS where signed) included; no DNSSEC records.
    records: Vec<Record>,
}

/// Records of an answer: the rcode, answer and authority sections.
type Sections = (ResponseCode, Vec<Record>, Vec<Record>);

impl Zone {
    fn new(apex: &str, signer: Option<Signer>, denial: Denial) -> Zone {
        let apex = name(apex);
        let soa = SOA::new(
            name("ns.test."),
            name("admin.test."),
            1,
            7200,
            900,
            1_209_600,
            300,
        );
        let records = vec![
            Record::from_rdata(apex.clone(), TTL, RData::SOA(soa)),
            Record::from_rdata(apex.clone(), TTL, RData::NS(NS(name("ns.test.")))),
        ];
        Zone {
            apex,
            signer,
            denial,
            records,
        }
    }

    fn add(&mut self, owner: &str, data: RData) {
        self.records
            .push(Record::from_rdata(name(owner), TTL, data));
    }

    fn a(&mut self, owner: &str, last: u8) {
        self.add(owner, RData::A(A::new(192, 0, 2, last)));
    }

    /// Delegates `child` to the zone `signer` signs (a DS for it), or unsigned when `None`.
    fn delegate(&mut self, child: &str, ds: Option<DS>) {
        self.add(child, RData::NS(NS(name("ns.test."))));
        if let Some(ds) = ds {
            self.add(child, RData::DNSSEC(DNSSECRData::DS(ds)));
        }
    }

    fn rrset(&self, owner: &Name, rtype: RecordType) -> Vec<Record> {
        let mut rrset: Vec<Record> = self
            .records
            .iter()
            .filter(|r| r.name == *owner && r.record_type() == rtype)
            .cloned()
            .collect();
        if rtype == RecordType::DNSKEY
            && *owner == self.apex
            && let Some(signer) = &self.signer
        {
            let key = RData::DNSSEC(DNSSECRData::DNSKEY(signer.dnskey.clone()));
            rrset.push(Record::from_rdata(owner.clone(), TTL, key));
        }
        rrset
    }

    /// `rrset` and its RRSIG, when the zone is signed.
    fn signed(&self, rrset: Vec<Record>) -> Vec<Record> {
        let mut out = rrset.clone();
        if let (Some(signer), false) = (&self.signer, rrset.is_empty()) {
            out.push(signer.sign(&self.apex, &rrset));
        }
        out
    }

    fn types_at(&self, owner: &Name) -> BTreeSet<RecordType> {
        let mut types: BTreeSet<RecordType> = self
            .records
            .iter()
            .filter(|r| r.name == *owner)
            .map(Record::record_type)
            .collect();
        if *owner == self.apex && self.signer.is_some() {
            types.insert(RecordType::DNSKEY);
        }
        types
    }

    /// The delegation at or above `owner`, below the apex.
    fn cut_above(&self, owner: &Name) -> Option<Name> {
        let mut candidate = owner.clone();
        while candidate != self.apex && candidate.num_labels() > self.apex.num_labels() {
            if candidate != self.apex && self.types_at(&candidate).contains(&RecordType::NS) {
                return Some(candidate);
            }
            candidate = candidate.base_name();
        }
        None
    }

    /// Names with data, and the empty non-terminals above them, that the zone is
    /// authoritative for (delegation points included, nothing below them).
    fn names(&self, with_empty: bool) -> BTreeSet<Name> {
        let mut names = BTreeSet::new();
        for record in &self.records {
            let owner = record.name.clone();
            if self.cut_above(&owner).is_some_and(|cut| cut != owner) {
                continue;
            }
            let mut ancestor = owner.base_name();
            names.insert(owner);
            while with_empty && ancestor.num_labels() > self.apex.num_labels() {
                names.insert(ancestor.clone());
                ancestor = ancestor.base_name();
            }
        }
        names
    }

    fn exists(&self, owner: &Name) -> bool {
        self.names(true).contains(owner)
    }

    /// Types an NSEC or NSEC3 at `owner` lists.
    fn denial_types(&self, owner: &Name) -> Vec<RecordType> {
        let mut types = self.types_at(owner);
        let insecure_cut = *owner != self.apex && !types.contains(&RecordType::DS);
        // Signed data is there, unless it is only an unsigned delegation's NS.
        let unsigned_cut = insecure_cut && types.contains(&RecordType::NS);
        if !types.is_empty() && !unsigned_cut {
            types.insert(RecordType::RRSIG);
        }
        if matches!(self.denial, Denial::Nsec) {
            types.insert(RecordType::NSEC);
        }
        types.into_iter().collect()
    }

    /// The NSEC records: every name (no empty non-terminal) to the next, the last to the apex.
    fn nsec(&self, owner: &Name) -> Vec<Record> {
        let names: Vec<Name> = self.names(false).into_iter().collect();
        let i = names.iter().position(|n| n == owner).unwrap();
        let next = names.get(i + 1).unwrap_or(&names[0]).clone();
        let nsec = NSEC::new(next, self.denial_types(owner));
        self.signed(vec![Record::from_rdata(
            owner.clone(),
            TTL,
            RData::DNSSEC(DNSSECRData::NSEC(nsec)),
        )])
    }

    /// The NSEC whose span holds `target` (which does not exist).
    fn nsec_covering(&self, target: &Name) -> Vec<Record> {
        let names: Vec<Name> = self.names(false).into_iter().collect();
        let owner = names
            .iter()
            .rfind(|n| *n < target)
            .unwrap_or(&names[names.len() - 1]);
        self.nsec(owner)
    }

    fn nsec3_params(&self) -> (u16, bool) {
        match self.denial {
            Denial::Nsec3 {
                iterations,
                opt_out,
            } => (iterations, opt_out),
            Denial::Nsec => unreachable!("an NSEC zone"),
        }
    }

    fn hash(&self, owner: &Name) -> Vec<u8> {
        let (iterations, _) = self.nsec3_params();
        Nsec3HashAlgorithm::SHA1
            .hash(&[], owner, iterations)
            .unwrap()
            .as_ref()
            .to_vec()
    }

    /// The NSEC3 chain: every name with its hash, sorted by hash; opt-out leaves out unsigned
    /// delegations.
    fn nsec3_chain(&self) -> Vec<(Vec<u8>, Name)> {
        let (_, opt_out) = self.nsec3_params();
        let mut chain: Vec<(Vec<u8>, Name)> = self
            .names(true)
            .into_iter()
            .filter(|n| {
                let types = self.types_at(n);
                let unsigned_cut = *n != self.apex
                    && types.contains(&RecordType::NS)
                    && !types.contains(&RecordType::DS);
                !(opt_out && unsigned_cut)
            })
            .map(|n| (self.hash(&n), n))
            .collect();
        chain.sort();
        chain
    }

    fn nsec3_record(&self, index: usize) -> Vec<Record> {
        let (iterations, opt_out) = self.nsec3_params();
        let chain = self.nsec3_chain();
        let (hash, owner) = &chain[index];
        let next = chain.get(index + 1).unwrap_or(&chain[0]).0.clone();
        let nsec3 = NSEC3::new(
            Nsec3HashAlgorithm::SHA1,
            opt_out,
            iterations,
            Vec::new(),
            next,
            self.denial_types(owner),
        );
        let label = base32hex(hash);
        let owner = self.apex.prepend_label(label.as_str()).unwrap();
        self.signed(vec![Record::from_rdata(
            owner,
            TTL,
            RData::DNSSEC(DNSSECRData::NSEC3(nsec3)),
        )])
    }

    fn nsec3_matching(&self, target: &Name) -> Vec<Record> {
        let hash = self.hash(target);
        let index = self
            .nsec3_chain()
            .iter()
            .position(|(h, _)| *h == hash)
            .unwrap();
        self.nsec3_record(index)
    }

    fn nsec3_covering(&self, target: &Name) -> Vec<Record> {
        let hash = self.hash(target);
        let chain = self.nsec3_chain();
        let index = chain.iter().filter(|(h, _)| *h < hash).count();
        self.nsec3_record((index + chain.len() - 1) % chain.len())
    }

    /// The closest encloser of `target` (which does not exist).
    fn encloser(&self, target: &Name) -> Name {
        let mut candidate = target.base_name();
        while !self.exists(&candidate) {
            candidate = candidate.base_name();
        }
        candidate
    }

    fn soa(&self) -> Vec<Record> {
        self.signed(self.rrset(&self.apex.clone(), RecordType::SOA))
    }

    /// The answer this zone's server gives for `qname` and `qtype`.
    fn answer(&self, qname: &Name, qtype: RecordType) -> Sections {
        if let Some(cut) = self.cut_above(qname) {
            assert!(
                cut == *qname && qtype == RecordType::DS,
                "{qname} is below a cut"
            );
            let ds = self.rrset(qname, RecordType::DS);
            if !ds.is_empty() {
                return (ResponseCode::NoError, self.signed(ds), Vec::new());
            }
            return (ResponseCode::NoError, Vec::new(), self.nodata_proof(qname));
        }
        let data = self.rrset(qname, qtype);
        if !data.is_empty() {
            return (ResponseCode::NoError, self.signed(data), Vec::new());
        }
        let cname = self.rrset(qname, RecordType::CNAME);
        if !cname.is_empty() {
            return (ResponseCode::NoError, self.signed(cname), Vec::new());
        }
        if self.exists(qname) {
            return (ResponseCode::NoError, Vec::new(), self.nodata_proof(qname));
        }
        let encloser = self.encloser(qname);
        let wildcard = encloser.prepend_label("*").unwrap();
        if self.exists(&wildcard) {
            let expanded: Vec<Record> = self
                .rrset(&wildcard, qtype)
                .into_iter()
                .map(|mut r| {
                    r.name = qname.clone();
                    r
                })
                .collect();
            let mut authority = match self.denial {
                Denial::Nsec => self.nsec_covering(qname),
                Denial::Nsec3 { .. } => {
                    let next_closer = qname.trim_to(encloser.num_labels() as usize + 1);
                    self.nsec3_covering(&next_closer)
                }
            };
            if expanded.is_empty() {
                authority.extend(self.soa());
                authority.extend(match self.denial {
                    Denial::Nsec => self.nsec(&wildcard),
                    Denial::Nsec3 { .. } => {
                        let mut proof = self.nsec3_matching(&encloser);
                        proof.extend(self.nsec3_matching(&wildcard));
                        proof
                    }
                });
                return (ResponseCode::NoError, Vec::new(), dedup(authority));
            }
            // Signed as the wildcard: the RRSIG's labels are the wildcard's.
            let mut answer = expanded.clone();
            if let Some(signer) = &self.signer {
                let mut at_wildcard = expanded.clone();
                for r in &mut at_wildcard {
                    r.name = wildcard.clone();
                }
                let mut sig = signer.sign(&self.apex, &at_wildcard);
                sig.name = qname.clone();
                answer.push(sig);
            }
            return (ResponseCode::NoError, answer, authority);
        }
        let mut authority = self.soa();
        match self.denial {
            Denial::Nsec => {
                authority.extend(self.nsec_covering(qname));
                authority.extend(self.nsec_covering(&wildcard));
            }
            Denial::Nsec3 { .. } => {
                let next_closer = qname.trim_to(encloser.num_labels() as usize + 1);
                authority.extend(self.nsec3_matching(&encloser));
                authority.extend(self.nsec3_covering(&next_closer));
                authority.extend(self.nsec3_covering(&wildcard));
            }
        }
        (ResponseCode::NXDomain, Vec::new(), dedup(authority))
    }

    fn nodata_proof(&self, qname: &Name) -> Vec<Record> {
        let mut authority = self.soa();
        match self.denial {
            Denial::Nsec => {
                if self.names(false).contains(qname) {
                    authority.extend(self.nsec(qname));
                } else {
                    // An empty non-terminal: the NSEC before it.
                    authority.extend(self.nsec_covering(qname));
                }
            }
            Denial::Nsec3 { opt_out, .. } => {
                if self.nsec3_chain().iter().any(|(_, n)| n == qname) {
                    authority.extend(self.nsec3_matching(qname));
                } else {
                    assert!(opt_out, "only opt-out leaves names out");
                    let encloser = self.encloser_of_existing(qname);
                    let next_closer = qname.trim_to(encloser.num_labels() as usize + 1);
                    authority.extend(self.nsec3_matching(&encloser));
                    authority.extend(self.nsec3_covering(&next_closer));
                }
            }
        }
        dedup(authority)
    }

    /// The closest ancestor of `owner` in the NSEC3 chain.
    fn encloser_of_existing(&self, owner: &Name) -> Name {
        let chain = self.nsec3_chain();
        let mut candidate = owner.base_name();
        while !chain.iter().any(|(_, n)| *n == candidate) {
            candidate = candidate.base_name();
        }
        candidate
    }
}

/// Base32 with the extended hex alphabet, lower case, no padding (RFC 4648 §7).
fn base32hex(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

fn dedup(records: Vec<Record>) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::new();
    for record in records {
        if !out.contains(&record) {
            out.push(record);
        }
    }
    out
}

/// A change made to an answer after signing.
type Tamper = fn(&mut Message);

/// The zones, answering as the upstream would, and counting the validator's queries.
struct World {
    zones: Vec<Zone>,
    anchor: Anchor,
    fetches: AtomicUsize,
    /// The answers served to the validator, in order (for the fuzzer's seeds).
    served: Mutex<Vec<Vec<u8>>>,
    /// Changes made to every answer after signing: (name, type) → how.
    tamper: Mutex<HashMap<(Name, RecordType), Tamper>>,
}

impl World {
    /// The zone that answers `qname`: the deepest holding it (for DS, holding its parent).
    fn zone_for(&self, qname: &Name, qtype: RecordType) -> &Zone {
        let lookup = match qtype {
            RecordType::DS if !qname.is_root() => qname.base_name(),
            _ => qname.clone(),
        };
        self.zones
            .iter()
            .filter(|z| z.apex.zone_of(&lookup))
            .max_by_key(|z| z.apex.num_labels())
            .unwrap()
    }

    /// The upstream's answer: the zone's, with CNAMEs followed across zones, as a resolver
    /// answers.
    fn message(&self, qname: &Name, qtype: RecordType) -> Message {
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.metadata.recursion_available = true;
        message.metadata.checking_disabled = true;
        message.add_query(Question::query(qname.clone(), qtype));
        let mut current = qname.clone();
        for _ in 0..8 {
            let (rcode, answer, authority) = self.zone_for(&current, qtype).answer(&current, qtype);
            message.metadata.response_code = rcode;
            let next = answer.iter().find_map(|r| match &r.data {
                RData::CNAME(CNAME(target)) if qtype != RecordType::CNAME => Some(target.clone()),
                _ => None,
            });
            message.add_answers(answer);
            message.add_authorities(authority);
            match next {
                Some(target) => current = target,
                None => break,
            }
        }
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_dnssec_ok(true);
        message.set_edns(edns);
        if let Some(change) = self.tamper.lock().unwrap().get(&(qname.clone(), qtype)) {
            change(&mut message);
        }
        message
    }

    fn response(&self, qname: &Name, qtype: RecordType) -> Response {
        Response::prepare(&self.message(qname, qtype).to_vec().unwrap()).unwrap()
    }

    fn tamper(&self, qname: &str, qtype: RecordType, change: fn(&mut Message)) {
        self.tamper
            .lock()
            .unwrap()
            .insert((name(qname), qtype), change);
    }
}

impl Fetch for World {
    async fn fetch(&self, wire: &[u8], qtype: u16) -> Result<Arc<Response>, FetchError> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let text = crate::dnssec::name::to_text(wire);
        let response = self.response(&name(&text), RecordType::from(qtype));
        self.served.lock().unwrap().push(response.bytes().to_vec());
        Ok(Arc::new(response))
    }
}

/// The world: `.` and `test.` (ECDSA P-256, NSEC) and below `test.`:
/// - secure (NSEC): www, a wildcard *.wild, an empty non-terminal above a.b, CNAMEs to
///   insecure and bogus names, an unsigned delegation `sub`;
/// - nsec3 (NSEC3, no iterations): www, *.wild;
/// - ed (Ed25519, NSEC): www;
/// - insecure (unsigned, no DS): www;
/// - optout (NSEC3 opt-out) with the unsigned delegation `unsigned.optout.test.`;
/// - iter (NSEC3, 150 iterations);
/// - expired (signatures ended two days ago);
/// - nokey (its DS names another key);
/// - unknownalg (its only DS has algorithm 100).
fn world() -> World {
    let root_signer = Signer::new(Algorithm::ECDSAP256SHA256);
    let test_signer = Signer::new(Algorithm::ECDSAP256SHA256);
    let mut root = Zone::new(".", None, Denial::Nsec);
    let mut test = Zone::new("test.", None, Denial::Nsec);
    let mut zones = Vec::new();
    let mut child = |apex: &str,
                     signer: Option<Signer>,
                     denial: Denial,
                     ds: Option<DS>,
                     build: &dyn Fn(&mut Zone)| {
        let ds = ds.or_else(|| signer.as_ref().map(|s| s.ds(&name(apex))));
        test.delegate(apex, ds);
        let mut zone = Zone::new(apex, signer, denial);
        build(&mut zone);
        zones.push(zone);
    };
    child(
        "secure.test.",
        Some(Signer::new(Algorithm::ECDSAP256SHA256)),
        Denial::Nsec,
        None,
        &|z| {
            z.a("www.secure.test.", 1);
            z.a("*.wild.secure.test.", 2);
            z.a("deep.a.b.secure.test.", 3);
            z.add(
                "to-insecure.secure.test.",
                RData::CNAME(CNAME(name("www.insecure.test."))),
            );
            z.add(
                "to-expired.secure.test.",
                RData::CNAME(CNAME(name("www.expired.test."))),
            );
            z.delegate("sub.secure.test.", None);
        },
    );
    child(
        "nsec3.test.",
        Some(Signer::new(Algorithm::ECDSAP256SHA256)),
        Denial::Nsec3 {
            iterations: 0,
            opt_out: false,
        },
        None,
        &|z| {
            z.a("www.nsec3.test.", 4);
            z.a("*.wild.nsec3.test.", 5);
        },
    );
    child(
        "ed.test.",
        Some(Signer::new(Algorithm::ED25519)),
        Denial::Nsec,
        None,
        &|z| z.a("www.ed.test.", 6),
    );
    child("insecure.test.", None, Denial::Nsec, None, &|z| {
        z.a("www.insecure.test.", 7)
    });
    child(
        "optout.test.",
        Some(Signer::new(Algorithm::ECDSAP256SHA256)),
        Denial::Nsec3 {
            iterations: 0,
            opt_out: true,
        },
        None,
        &|z| {
            z.a("www.optout.test.", 8);
            z.delegate("unsigned.optout.test.", None);
        },
    );
    child(
        "iter.test.",
        Some(Signer::new(Algorithm::ECDSAP256SHA256)),
        Denial::Nsec3 {
            iterations: 150,
            opt_out: false,
        },
        None,
        &|z| z.a("www.iter.test.", 9),
    );
    let mut expired = Signer::new(Algorithm::ECDSAP256SHA256);
    expired.inception = now() - 10 * DAY;
    expired.expiration = now() - 2 * DAY;
    child("expired.test.", Some(expired), Denial::Nsec, None, &|z| {
        z.a("www.expired.test.", 10)
    });
    let other = Signer::new(Algorithm::ECDSAP256SHA256).ds(&name("nokey.test."));
    child(
        "nokey.test.",
        Some(Signer::new(Algorithm::ECDSAP256SHA256)),
        Denial::Nsec,
        Some(other),
        &|z| z.a("www.nokey.test.", 11),
    );
    let unknown = DS::new(1, Algorithm::Unknown(100), DigestType::SHA256, vec![0; 32]);
    child(
        "unknownalg.test.",
        Some(Signer::new(Algorithm::ECDSAP256SHA256)),
        Denial::Nsec,
        Some(unknown),
        &|z| z.a("www.unknownalg.test.", 12),
    );
    for apex in ["sub.secure.test.", "unsigned.optout.test."] {
        let mut zone = Zone::new(apex, None, Denial::Nsec);
        zone.a(&format!("www.{apex}"), 13);
        zone.a(&format!("host.{apex}"), 14);
        zones.push(zone);
    }
    root.delegate("test.", Some(test_signer.ds(&name("test."))));
    root.signer = Some(root_signer);
    test.signer = Some(test_signer);
    let root_ds = root.signer.as_ref().unwrap().ds(&Name::root());
    zones.push(root);
    zones.push(test);
    World {
        zones,
        anchor: Anchor {
            zone: vec![0].into(),
            rtype: TYPE_DS,
            rdata: root_ds.to_bytes().unwrap().into(),
        },
        fetches: AtomicUsize::new(0),
        served: Mutex::new(Vec::new()),
        tamper: Mutex::new(HashMap::new()),
    }
}

fn question(qname: &str, qtype: RecordType) -> Vec<u8> {
    let mut out = name(qname).to_bytes().unwrap();
    out.extend_from_slice(&u16::from(qtype).to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    out
}

fn validator(world: &World) -> Validator {
    Validator::new(vec![world.anchor.clone()], &[], &[])
}

async fn verdict(world: &World, validator: &Validator, qname: &str, qtype: RecordType) -> Verdict {
    let response = world.response(&name(qname), qtype);
    validator
        .validate(&question(qname, qtype), &response, world)
        .await
}

fn code(verdict: &Verdict) -> Option<u16> {
    verdict.ede().map(|e| e.code.0)
}

#[tokio::test]
async fn secure_answers_nxdomain_and_nodata_are_proven() {
    let world = world();
    let v = validator(&world);
    for (qname, qtype) in [
        ("www.secure.test.", RecordType::A),
        ("www.nsec3.test.", RecordType::A),
        ("www.ed.test.", RecordType::A),
        ("test.", RecordType::SOA),
        ("secure.test.", RecordType::DNSKEY),
        ("secure.test.", RecordType::DS),
        // NXDOMAIN and NODATA, with NSEC and NSEC3.
        ("nx.secure.test.", RecordType::A),
        ("www.secure.test.", RecordType::TXT),
        ("nx.nsec3.test.", RecordType::A),
        ("www.nsec3.test.", RecordType::TXT),
        ("a.b.nsec3.test.", RecordType::A),
        // An empty non-terminal.
        ("b.secure.test.", RecordType::A),
        // Wildcard answers and a wildcard NODATA.
        ("x.wild.secure.test.", RecordType::A),
        ("y.z.wild.secure.test.", RecordType::A),
        ("x.wild.nsec3.test.", RecordType::A),
        ("x.wild.secure.test.", RecordType::TXT),
        ("x.wild.nsec3.test.", RecordType::TXT),
        // A delegation without DS, proven from the parent: a secure NODATA.
        ("insecure.test.", RecordType::DS),
    ] {
        assert_eq!(
            verdict(&world, &v, qname, qtype).await,
            Verdict::Secure,
            "{qname} {qtype}"
        );
    }
}

#[tokio::test]
async fn unsigned_delegations_are_insecure_and_cached() {
    let world = world();
    let v = validator(&world);
    for (qname, qtype) in [
        ("www.insecure.test.", RecordType::A),
        ("nx.insecure.test.", RecordType::A),
        ("host.sub.secure.test.", RecordType::A),
        // Opt-out: the delegation has no NSEC3 of its own.
        ("www.unsigned.optout.test.", RecordType::A),
        // A CNAME from a secure zone into an insecure one.
        ("to-insecure.secure.test.", RecordType::A),
    ] {
        let result = verdict(&world, &v, qname, qtype).await;
        assert_eq!(result, Verdict::Insecure(None), "{qname} {qtype}");
    }
    // A cold name in a zone already known costs no query at all.
    let before = world.fetches.load(Ordering::Relaxed);
    assert_eq!(
        verdict(&world, &v, "new.insecure.test.", RecordType::A).await,
        Verdict::Insecure(None)
    );
    assert_eq!(
        verdict(&world, &v, "other.secure.test.", RecordType::A).await,
        Verdict::Secure
    );
    assert_eq!(world.fetches.load(Ordering::Relaxed), before);
}

#[tokio::test]
async fn bogus_answers_carry_the_specific_error() {
    let world = world();
    let v = validator(&world);
    // A record changed after signing.
    world.tamper("www.secure.test.", RecordType::A, |m| {
        m.answers[0].data = RData::A(A::new(192, 0, 2, 99));
    });
    // The RRSIG of an answer removed, then the NSEC proofs of an NXDOMAIN.
    world.tamper("www.nsec3.test.", RecordType::A, |m| {
        m.answers.retain(|r| r.record_type() != RecordType::RRSIG)
    });
    world.tamper("nx.secure.test.", RecordType::A, |m| m.authorities.retain(|r| r.record_type() == RecordType::SOA || r.record_type() == RecordType::RRSIG && matches!(&r.data, RData::DNSSEC(DNSSECRData::RRSIG(s)) if s.input().type_covered == RecordType::SOA)));
    world.tamper("nx.nsec3.test.", RecordType::A, |m| {
        m.authorities
            .retain(|r| r.record_type() != RecordType::NSEC3)
    });
    // A wildcard answer without the proof that no closer name exists.
    world.tamper("x.wild.secure.test.", RecordType::A, |m| {
        m.authorities.clear()
    });
    for (qname, expected) in [
        ("www.secure.test.", EdeCode::BOGUS),
        ("www.expired.test.", EdeCode::SIGNATURE_EXPIRED),
        ("www.nokey.test.", EdeCode::DNSKEY_MISSING),
        ("www.nsec3.test.", EdeCode::RRSIGS_MISSING),
        ("nx.secure.test.", EdeCode::NSEC_MISSING),
        ("nx.nsec3.test.", EdeCode::NSEC_MISSING),
        ("x.wild.secure.test.", EdeCode::NSEC_MISSING),
        // A CNAME from a secure zone into a bogus one.
        ("to-expired.secure.test.", EdeCode::SIGNATURE_EXPIRED),
    ] {
        let result = verdict(&world, &v, qname, RecordType::A).await;
        assert!(matches!(result, Verdict::Bogus(_)), "{qname}: {result:?}");
        assert_eq!(code(&result), Some(expected.0), "{qname}: {result:?}");
        let text = &result.ede().unwrap().text;
        assert!(text.contains(".test."), "names the zone: {text}");
    }
}

#[tokio::test]
async fn unsupported_algorithms_and_iterations_are_insecure_with_the_reason() {
    let world = world();
    let v = validator(&world);
    let result = verdict(&world, &v, "www.unknownalg.test.", RecordType::A).await;
    assert_eq!(
        code(&result),
        Some(EdeCode::UNSUPPORTED_DNSKEY_ALGORITHM.0),
        "{result:?}"
    );
    assert!(matches!(result, Verdict::Insecure(Some(_))));
    // NSEC3 over 100 iterations: the denial is insecure; the signed data itself is secure.
    let result = verdict(&world, &v, "nx.iter.test.", RecordType::A).await;
    assert_eq!(
        code(&result),
        Some(EdeCode::UNSUPPORTED_NSEC3_ITERATIONS.0),
        "{result:?}"
    );
    assert!(matches!(result, Verdict::Insecure(Some(_))));
    assert_eq!(
        verdict(&world, &v, "www.iter.test.", RecordType::A).await,
        Verdict::Secure
    );
}

#[tokio::test]
async fn a_clock_before_2026_refuses_nothing_for_time_and_proves_nothing() {
    let world = world();
    let v = validator(&world);
    // 2025-06-01: every signature is "not yet valid", the expired ones are "valid".
    let clock = 1_748_736_000;
    for qname in ["www.secure.test.", "www.expired.test."] {
        let response = world.response(&name(qname), RecordType::A);
        let result = v
            .validate_at(clock, &question(qname, RecordType::A), &response, &world)
            .await;
        assert_eq!(result, Verdict::Insecure(None), "{qname}");
    }
    // Everything else is still checked.
    world.tamper("www.ed.test.", RecordType::A, |m| {
        m.answers[0].data = RData::A(A::new(192, 0, 2, 99));
    });
    let response = world.response(&name("www.ed.test."), RecordType::A);
    let result = v
        .validate_at(
            clock,
            &question("www.ed.test.", RecordType::A),
            &response,
            &world,
        )
        .await;
    assert_eq!(code(&result), Some(EdeCode::BOGUS.0), "{result:?}");
}

#[tokio::test]
async fn exempt_zones_are_not_validated() {
    let world = world();
    let exempt = [ZoneName::parse("test").unwrap()];
    let validated = [ZoneName::parse("secure.test").unwrap()];
    let v = Validator::new(vec![world.anchor.clone()], &exempt, &validated);
    world.tamper("www.nsec3.test.", RecordType::A, |m| {
        m.answers.retain(|r| r.record_type() != RecordType::RRSIG)
    });
    assert_eq!(
        verdict(&world, &v, "www.nsec3.test.", RecordType::A).await,
        Verdict::Insecure(None)
    );
    assert_eq!(
        world.fetches.load(Ordering::Relaxed),
        0,
        "nothing asked for an exempt name"
    );
    // A zone that asks for validation inside an exempt one is validated.
    assert_eq!(
        verdict(&world, &v, "www.secure.test.", RecordType::A).await,
        Verdict::Secure
    );
    // No anchor above a name: insecure.
    let elsewhere = Validator::new(Vec::new(), &[], &[]);
    assert_eq!(
        verdict(&world, &elsewhere, "www.secure.test.", RecordType::A).await,
        Verdict::Insecure(None)
    );
}

#[tokio::test]
async fn a_dnskey_anchor_works_like_a_ds_and_a_wrong_one_fails() {
    let world = world();
    let root = world.zones.iter().find(|z| z.apex.is_root()).unwrap();
    let dnskey = root.signer.as_ref().unwrap().dnskey.to_bytes().unwrap();
    let anchor = Anchor {
        zone: vec![0].into(),
        rtype: crate::dnssec::anchors::TYPE_DNSKEY,
        rdata: dnskey.into(),
    };
    let v = Validator::new(vec![anchor], &[], &[]);
    assert_eq!(
        verdict(&world, &v, "www.secure.test.", RecordType::A).await,
        Verdict::Secure
    );
    let other = Signer::new(Algorithm::ECDSAP256SHA256).ds(&Name::root());
    let wrong = Anchor {
        zone: vec![0].into(),
        rtype: TYPE_DS,
        rdata: other.to_bytes().unwrap().into(),
    };
    let v = Validator::new(vec![wrong], &[], &[]);
    let result = verdict(&world, &v, "www.secure.test.", RecordType::A).await;
    assert_eq!(code(&result), Some(EdeCode::DNSKEY_MISSING.0), "{result:?}");
}

#[tokio::test]
async fn crafted_answers_stay_within_the_work_budget() {
    let world = world();
    let v = validator(&world);
    // Twenty RRSIGs that do not verify over one RRset: at most eight are tried.
    world.tamper("www.secure.test.", RecordType::A, |m| {
        let sig = m
            .answers
            .iter()
            .find(|r| r.record_type() == RecordType::RRSIG)
            .unwrap()
            .clone();
        let RData::DNSSEC(DNSSECRData::RRSIG(rrsig)) = &sig.data else {
            unreachable!()
        };
        let mut broken = rrsig.sig().to_vec();
        broken[0] ^= 1;
        let forged = RRSIG::from_sig(rrsig.input().clone(), broken);
        m.answers.retain(|r| r.record_type() != RecordType::RRSIG);
        for _ in 0..20 {
            m.answers.push(Record::from_rdata(
                sig.name.clone(),
                sig.ttl,
                RData::DNSSEC(DNSSECRData::RRSIG(forged.clone())),
            ));
        }
    });
    let result = verdict(&world, &v, "www.secure.test.", RecordType::A).await;
    assert_eq!(code(&result), Some(EdeCode::BOGUS.0), "{result:?}");
    // A deep unsigned name in a signed zone: the walk down stops at the query budget.
    let deep = format!("{}secure.test.", "a.".repeat(60));
    world.tamper(&deep, RecordType::A, |m| {
        m.answers.retain(|r| r.record_type() != RecordType::RRSIG)
    });
    let _ = verdict(&world, &v, &deep, RecordType::A).await;
    assert!(
        world.fetches.load(Ordering::Relaxed) < 40,
        "{}",
        world.fetches.load(Ordering::Relaxed)
    );
}

/// Writes the seeds of the `dnssec_validate` fuzz target: for each question, the answer and
/// then what the validator was served, each with its 2-byte length, signed to be valid from
/// 2026 to 2090 so that the seeds keep verifying. Run by hand after a change to the format:
/// `cargo test --lib dnssec::tests::fuzz_seeds -- --ignored`.
#[tokio::test]
#[ignore = "writes fuzz/corpus/dnssec_validate"]
async fn fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/dnssec_validate");
    std::fs::create_dir_all(&dir).unwrap();
    let questions = [
        ("www.secure.test.", RecordType::A),
        ("nx.secure.test.", RecordType::A),
        ("x.wild.secure.test.", RecordType::A),
        ("b.secure.test.", RecordType::A),
        ("www.nsec3.test.", RecordType::TXT),
        ("nx.nsec3.test.", RecordType::A),
        ("x.wild.nsec3.test.", RecordType::A),
        ("www.ed.test.", RecordType::A),
        ("www.insecure.test.", RecordType::A),
        ("www.unsigned.optout.test.", RecordType::A),
        ("to-insecure.secure.test.", RecordType::A),
        ("nx.iter.test.", RecordType::A),
        ("www.unknownalg.test.", RecordType::A),
        ("www.nokey.test.", RecordType::A),
    ];
    for (index, (qname, qtype)) in questions.iter().enumerate() {
        let mut world = world();
        for zone in &mut world.zones {
            if let Some(signer) = &mut zone.signer {
                signer.inception = 1_767_225_600;
                signer.expiration = 3_800_000_000;
            }
        }
        let v = validator(&world);
        let answer = world.response(&name(qname), *qtype);
        v.validate(&question(qname, *qtype), &answer, &world).await;
        let mut seed = Vec::new();
        for message in
            std::iter::once(answer.bytes().to_vec()).chain(world.served.lock().unwrap().drain(..))
        {
            seed.extend_from_slice(&(message.len() as u16).to_be_bytes());
            seed.extend_from_slice(&message);
        }
        std::fs::write(dir.join(format!("signed-{index:02}")), seed).unwrap();
    }
}

/// Served answers, in order, then timeouts: what the fuzz target does, for the sweep below.
struct Replay {
    responses: Vec<Arc<Response>>,
    next: AtomicUsize,
}

impl Fetch for Replay {
    async fn fetch(&self, _name: &[u8], _qtype: u16) -> Result<Arc<Response>, FetchError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        self.responses
            .get(index)
            .cloned()
            .ok_or(FetchError::Timeout)
    }
}

#[tokio::test]
async fn no_mutated_answer_makes_validation_panic_or_run_away() {
    // A cheap deterministic sweep; the fuzz target goes much further.
    let world = world();
    let mut recorded = Vec::new();
    for (qname, qtype) in [
        ("www.secure.test.", RecordType::A),
        ("nx.nsec3.test.", RecordType::A),
        ("x.wild.secure.test.", RecordType::A),
        ("www.insecure.test.", RecordType::A),
    ] {
        world.served.lock().unwrap().clear();
        let answer = world.response(&name(qname), qtype);
        validator(&world)
            .validate(answer.question(), &answer, &world)
            .await;
        let served = world.served.lock().unwrap().clone();
        recorded.push((answer.bytes().to_vec(), served));
    }
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..400 {
        let (answer, served) = &recorded[next() as usize % recorded.len()];
        let mut messages: Vec<Vec<u8>> = std::iter::once(answer.clone())
            .chain(served.iter().cloned())
            .collect();
        let target = next() as usize % messages.len();
        let message = &mut messages[target];
        for _ in 0..1 + next() % 3 {
            let at = 12 + next() as usize % (message.len() - 12);
            message[at] = (next() >> 32) as u8;
        }
        let Ok(answer) = Response::prepare(&messages[0]) else {
            continue;
        };
        let replay = Replay {
            responses: messages[1..]
                .iter()
                .filter_map(|m| Response::prepare(m).ok())
                .map(Arc::new)
                .collect(),
            next: AtomicUsize::new(0),
        };
        validator(&world)
            .validate(answer.question(), &answer, &replay)
            .await;
        assert!(replay.next.load(Ordering::Relaxed) <= 24);
    }
}
