//! The chain of trust: for a name, the keys of the zone that holds it, proven from a trust
//! anchor down, or the proof that it lies below an unsigned delegation.
//!
//! From the deepest zone already known, each label towards the name is asked for its DS
//! (RFC 4035 §5.2; a forwarder sees no referrals, so cuts are found this way, as unbound does
//! behind a forwarder): a signed DS leads to the child's DNSKEY set, checked against it; a
//! signed proof of no DS either shows an unsigned delegation (everything below is insecure)
//! or a name inside the same zone. Every result is kept per name in a cache of its own,
//! secure keys and insecure cuts for their TTL, failures for at most a minute, so a cold
//! name in a known zone costs no query and no signature check beyond its own.
//!
//! Keys and delegations are asked through [`Fetch`], which the forwarder implements with the
//! same upstreams as the answer, DO and CD set.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::dnssec::anchors::{Anchor, TYPE_DNSKEY, TYPE_DS};
use crate::dnssec::denial::{Denial, NoDs, Proofs};
use crate::dnssec::message::{
    Message, RRset, Section, TYPE_CNAME, TYPE_NSEC, TYPE_NSEC3, TYPE_SOA,
};
use crate::dnssec::name;
use crate::dnssec::verdict::{Ede, EdeCode};
use crate::dnssec::verify::{
    self, Failure, Key, MAX_KEY_TAG_COLLISIONS, MAX_KEYS, Work, ZoneKeys, ds_matches, parse_dnskey,
    supported_algorithm, supported_digest,
};
use crate::wire::dns::Response;
use crate::wire::name::suffixes;

/// A chain that failed is remembered this long at most.
pub(crate) const BOGUS_TTL: Duration = Duration::from_secs(60);
/// Bounds on how long a zone's keys or cut are remembered, whatever their TTL says.
const MIN_TTL: Duration = Duration::from_secs(5);
const MAX_TTL: Duration = Duration::from_secs(86_400);
/// Zones remembered.
const ZONE_CACHE_ITEMS: usize = 16_384;
/// DS records of one zone considered: more is no real zone.
const MAX_DS: usize = 16;
const RCODE_NOERROR: u16 = 0;
const RCODE_NXDOMAIN: u16 = 3;

/// Why a key or delegation query got no response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("no answer in time")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

/// Asks the upstreams a question for validation (DO and CD set).
pub trait Fetch: Sync {
    /// The response to `name` (lower-case wire form) and `qtype`.
    fn fetch(
        &self,
        name: &[u8],
        qtype: u16,
    ) -> impl Future<Output = Result<Arc<Response>, FetchError>> + Send;
}

/// What is known of a name.
#[derive(Debug)]
enum State {
    /// The apex of a signed zone, with its proven keys.
    Secure(Arc<ZoneKeys>),
    /// An unsigned delegation (or one whose DS uses only algorithms or digests this resolver
    /// lacks, with the EDE saying so): everything below is insecure.
    Insecure(Option<Ede>),
    /// Inside the zone named, not a cut.
    NotCut(Box<[u8]>),
    /// The chain failed here.
    Bogus(Ede),
}

struct Entry {
    state: State,
    expires: Instant,
}

/// Where the chain of trust leaves a name.
#[derive(Debug, Clone)]
pub(crate) enum Found {
    /// Inside a signed zone: these are the keys of the closest one enclosing the name.
    Secure(Arc<ZoneKeys>),
    Insecure(Option<Ede>),
    Bogus(Ede),
    Indeterminate(Ede),
}

/// What one DS query showed about a name below a signed zone.
enum Step {
    Secure(Arc<ZoneKeys>),
    NotCut,
    /// The name does not exist: nothing below it does either.
    Absent,
    Stop(Found),
}

/// The anchors, what is known of each zone, and where validation does not apply.
pub(crate) struct Chain {
    /// The anchors, by zone.
    anchors: Vec<(Box<[u8]>, Vec<Anchor>)>,
    /// Names at and below which validation does not apply (`false`: negative trust anchors,
    /// forward zones without validation, local zones) or applies again (`true`: forward zones
    /// that ask for it, which may lie inside an exempt zone). The closest to a name decides.
    exempt: HashMap<Box<[u8]>, bool>,
    zones: quick_cache::sync::Cache<Box<[u8]>, Arc<Entry>>,
}

impl Chain {
    pub(crate) fn new(
        anchors: Vec<Anchor>,
        exempt: Vec<Box<[u8]>>,
        validated: Vec<Box<[u8]>>,
    ) -> Chain {
        let mut by_zone: Vec<(Box<[u8]>, Vec<Anchor>)> = Vec::new();
        for anchor in anchors {
            match by_zone.iter_mut().find(|(zone, _)| *zone == anchor.zone) {
                Some((_, list)) => list.push(anchor),
                None => by_zone.push((anchor.zone.clone(), vec![anchor])),
            }
        }
        let mut rules = HashMap::new();
        rules.extend(exempt.into_iter().map(|zone| (zone, false)));
        rules.extend(validated.into_iter().map(|zone| (zone, true)));
        Chain {
            anchors: by_zone,
            exempt: rules,
            zones: quick_cache::sync::Cache::new(ZONE_CACHE_ITEMS),
        }
    }

    /// Zones (and names) whose state is remembered.
    pub(crate) fn len(&self) -> usize {
        self.zones.len()
    }

    /// Forgets what is known of `zones` and the names below them; of everything when empty.
    pub(crate) fn flush(&self, zones: &[&[u8]]) {
        self.zones.retain(|name, _| {
            !zones.is_empty() && !zones.iter().any(|zone| name::is_at_or_below(name, zone))
        });
    }

    /// Whether `name` is not validated: at or below an exempt zone, and not closer to a
    /// zone that asks for validation.
    pub(crate) fn is_exempt(&self, name: &[u8]) -> bool {
        if self.exempt.is_empty() {
            return false;
        }
        suffixes(name)
            .find_map(|suffix| self.exempt.get(suffix))
            .is_some_and(|validated| !validated)
    }

    /// Where the chain of trust leaves `target`: the keys of its zone, or why there are none.
    pub(crate) async fn zone_of<F: Fetch>(
        &self,
        target: &[u8],
        fetch: &F,
        work: &mut Work,
    ) -> Found {
        if self.is_exempt(target) {
            return Found::Insecure(None);
        }
        // The closest anchor above the name; none: nothing vouches for it.
        let Some((anchor_zone, anchors)) = self
            .anchors
            .iter()
            .filter(|(zone, _)| name::is_at_or_below(target, zone))
            .max_by_key(|(zone, _)| zone.len())
        else {
            return Found::Insecure(None);
        };
        let now = Instant::now();
        let mut start = None;
        for suffix in suffixes(target) {
            if suffix.len() < anchor_zone.len() {
                break;
            }
            let Some(entry) = self.fresh(suffix, now) else {
                continue;
            };
            match &entry.state {
                State::Insecure(info) => return Found::Insecure(info.clone()),
                State::Bogus(ede) => return Found::Bogus(ede.clone()),
                State::Secure(keys) => {
                    start = Some((keys.clone(), suffix));
                    break;
                }
                State::NotCut(zone) => {
                    let enclosing = self.fresh(zone, now);
                    if let Some(State::Secure(keys)) = enclosing.as_deref().map(|e| &e.state) {
                        start = Some((keys.clone(), suffix));
                        break;
                    }
                }
            }
        }
        let (mut keys, mut pos) = match start {
            Some(start) => start,
            None => {
                let apex = &target[target.len() - anchor_zone.len()..];
                match self.prime(apex, anchors, fetch, work).await {
                    Ok(keys) => (keys, apex),
                    Err(found) => return found,
                }
            }
        };
        while pos != target {
            let Some(next) = name::child_towards(target, pos) else {
                break;
            };
            match self.step(&keys, next, fetch, work).await {
                Step::Secure(child) => {
                    keys = child;
                    pos = next;
                }
                Step::NotCut => pos = next,
                Step::Absent => break,
                Step::Stop(found) => return found,
            }
        }
        Found::Secure(keys)
    }

    fn fresh(&self, name: &[u8], now: Instant) -> Option<Arc<Entry>> {
        self.zones.get(name).filter(|entry| entry.expires > now)
    }

    fn remember(&self, name: &[u8], state: State, ttl: Duration) {
        let ttl = match state {
            State::Bogus(_) => ttl.min(BOGUS_TTL),
            _ => ttl,
        }
        .clamp(MIN_TTL, MAX_TTL);
        let entry = Entry {
            state,
            expires: Instant::now() + ttl,
        };
        self.zones.insert(name.into(), Arc::new(entry));
    }

    /// A failure at `name`, remembered and returned.
    fn bogus(&self, name: &[u8], ede: Ede) -> Found {
        self.remember(name, State::Bogus(ede.clone()), BOGUS_TTL);
        Found::Bogus(ede)
    }

    /// Fetches with the query's budget; a failure is indeterminate (not remembered: the next
    /// query tries again).
    async fn fetch<F: Fetch>(
        &self,
        fetch: &F,
        name: &[u8],
        qtype: u16,
        work: &mut Work,
    ) -> Result<Arc<Response>, Found> {
        let what = if qtype == TYPE_DS { "DS" } else { "DNSKEY" };
        let text = name::to_text(name);
        if work.fetches == 0 {
            let ede = Ede::new(
                EdeCode::BOGUS,
                format!("{text}: validation work limit reached asking {what}"),
            );
            return Err(Found::Bogus(ede));
        }
        work.fetches -= 1;
        // Boxed: a fetch is a whole upstream query, kilobytes of state that would otherwise
        // sit inline in every validation and every client query's future, copied on each
        // spawn, while most validations fetch nothing.
        Box::pin(fetch.fetch(name, qtype)).await.map_err(|error| {
            let code = match error {
                FetchError::Timeout => EdeCode::NO_REACHABLE_AUTHORITY,
                FetchError::Failed(_) => EdeCode::NETWORK_ERROR,
            };
            Found::Indeterminate(Ede::new(
                code,
                format!("{text}: {what} query failed: {error}"),
            ))
        })
    }

    /// The proven keys of an anchor's zone: its DNSKEY set, signed by a key the anchors name.
    async fn prime<F: Fetch>(
        &self,
        apex: &[u8],
        anchors: &[Anchor],
        fetch: &F,
        work: &mut Work,
    ) -> Result<Arc<ZoneKeys>, Found> {
        let ds: Vec<&[u8]> = anchors
            .iter()
            .filter(|a| a.rtype == TYPE_DS)
            .map(|a| &*a.rdata)
            .collect();
        let dnskeys: Vec<&[u8]> = anchors
            .iter()
            .filter(|a| a.rtype == TYPE_DNSKEY)
            .map(|a| &*a.rdata)
            .collect();
        let usable_ds = ds
            .iter()
            .any(|d| d.len() > 4 && supported_algorithm(d[2]) && supported_digest(d[3]));
        let usable_key = dnskeys
            .iter()
            .any(|k| k.len() > 4 && supported_algorithm(k[3]));
        if !usable_ds && !usable_key {
            let ede = Ede::new(
                EdeCode::UNSUPPORTED_DNSKEY_ALGORITHM,
                format!(
                    "{}: trust anchors use only unsupported algorithms or digests",
                    name::to_text(apex)
                ),
            );
            self.remember(apex, State::Insecure(Some(ede.clone())), MAX_TTL);
            return Err(Found::Insecure(Some(ede)));
        }
        self.keys_of(apex, &ds, &dnskeys, u32::MAX, fetch, work)
            .await
    }

    /// The keys of zone `apex`: its DNSKEY set, fetched, signed by a key that one of `ds`
    /// (DS data, already proven) matches or that is one of `trusted` (DNSKEY data, anchors).
    /// Remembers the outcome.
    async fn keys_of<F: Fetch>(
        &self,
        apex: &[u8],
        ds: &[&[u8]],
        trusted: &[&[u8]],
        ds_ttl: u32,
        fetch: &F,
        work: &mut Work,
    ) -> Result<Arc<ZoneKeys>, Found> {
        let text = name::to_text(apex);
        // RFC 4509 §3: with a SHA-256 (or stronger) DS, SHA-1 ones are ignored.
        let strong = ds
            .iter()
            .any(|d| d.len() > 4 && supported_algorithm(d[2]) && matches!(d[3], 2 | 4));
        let ds: Vec<&[u8]> = ds
            .iter()
            .copied()
            .filter(|d| d.len() > 4 && supported_algorithm(d[2]) && supported_digest(d[3]))
            .filter(|d| !strong || d[3] != 1)
            .take(MAX_DS)
            .collect();
        let response = self.fetch(fetch, apex, TYPE_DNSKEY, work).await?;
        let Ok(message) = Message::parse(response.bytes()) else {
            let ede = Ede::new(
                EdeCode::NETWORK_ERROR,
                format!("{text}: malformed DNSKEY answer"),
            );
            return Err(Found::Indeterminate(ede));
        };
        let Some(rrset) = message.find(Section::Answer, apex, TYPE_DNSKEY) else {
            let ede = Ede::new(
                EdeCode::DNSKEY_MISSING,
                format!("{text}: no DNSKEY records"),
            );
            return Err(self.bogus(apex, ede));
        };
        // The keys the DS or anchors vouch for: those may sign the DNSKEY set.
        let mut vouched = Vec::new();
        let mut without_zone_bit = false;
        for &index in &rrset.records {
            let rdata = message.rdata(message.record(index));
            let named = trusted.contains(&rdata)
                || ds.iter().any(|d| {
                    let tag = u16::from_be_bytes([d[0], d[1]]);
                    verify::key_tag(rdata) == tag && ds_matches(apex, rdata, d)
                });
            if !named {
                continue;
            }
            match Key::from_rdata(rdata) {
                Some(key) => {
                    let same_tag = vouched.iter().filter(|k: &&Key| k.tag == key.tag).count();
                    if same_tag < MAX_KEY_TAG_COLLISIONS {
                        vouched.push(key);
                    }
                }
                None => {
                    without_zone_bit |=
                        parse_dnskey(rdata).is_some_and(|(flags, _, _)| flags & 0x0100 == 0);
                }
            }
        }
        if vouched.is_empty() {
            let ede = match without_zone_bit {
                true => Ede::new(
                    EdeCode::NO_ZONE_KEY_BIT,
                    format!("{text}: the key the DS names is not a zone key"),
                ),
                false => Ede::new(
                    EdeCode::DNSKEY_MISSING,
                    format!("{text}: no DNSKEY matches the DS"),
                ),
            };
            return Err(self.bogus(apex, ede));
        }
        let signers = ZoneKeys {
            zone: apex.into(),
            keys: vouched,
        };
        let verified = match verify::verify_rrset(&message, rrset, &signers, work) {
            Ok(verified) => verified,
            Err(failure) => return Err(self.bogus(apex, failure.ede("its DNSKEY set", apex))),
        };
        let keys: Vec<Key> = rrset
            .records
            .iter()
            .filter_map(|&i| Key::from_rdata(message.rdata(message.record(i))))
            .take(MAX_KEYS)
            .collect();
        let keys = Arc::new(ZoneKeys {
            zone: apex.into(),
            keys,
        });
        let ttl = verified.valid_for.min(ds_ttl);
        self.remember(apex, State::Secure(keys.clone()), seconds(ttl));
        Ok(keys)
    }

    /// What the DS query for `next`, one label below the zone of `keys`, shows.
    async fn step<F: Fetch>(
        &self,
        keys: &Arc<ZoneKeys>,
        next: &[u8],
        fetch: &F,
        work: &mut Work,
    ) -> Step {
        let zone = &keys.zone;
        let text = name::to_text(next);
        let response = match self.fetch(fetch, next, TYPE_DS, work).await {
            Ok(response) => response,
            Err(found) => return Step::Stop(found),
        };
        let Ok(message) = Message::parse(response.bytes()) else {
            let ede = Ede::new(
                EdeCode::NETWORK_ERROR,
                format!("{text}: malformed DS answer"),
            );
            return Step::Stop(Found::Indeterminate(ede));
        };
        match message.rcode {
            RCODE_NOERROR => {}
            RCODE_NXDOMAIN => {
                let (mut proofs, failure) = verified_proofs(&message, keys, work);
                return match proofs.nxdomain(next, work) {
                    Denial::Proven => {
                        self.remember(
                            next,
                            State::NotCut(zone.clone()),
                            seconds(proofs_ttl(&message)),
                        );
                        Step::Absent
                    }
                    Denial::OptOut => self.insecure_cut(next, None, &message),
                    Denial::Unsupported => {
                        self.insecure_cut(next, Some(iterations_ede(zone)), &message)
                    }
                    Denial::NotProven => Step::Stop(self.bogus(
                        next,
                        no_proof(zone, failure, &format!("{text} does not exist")),
                    )),
                };
            }
            rcode => {
                let ede = Ede::new(
                    EdeCode::NETWORK_ERROR,
                    format!("{text}: DS query answered with RCODE {rcode}"),
                );
                return Step::Stop(Found::Indeterminate(ede));
            }
        }
        if let Some(rrset) = message.find(Section::Answer, next, TYPE_DS) {
            let verified = match verify::verify_rrset(&message, rrset, keys, work) {
                Ok(verified) => verified,
                Err(failure) => {
                    return Step::Stop(
                        self.bogus(next, failure.ede(&format!("DS of {text}"), zone)),
                    );
                }
            };
            let all: Vec<&[u8]> = rrset
                .records
                .iter()
                .map(|&i| message.rdata(message.record(i)))
                .collect();
            let usable = all
                .iter()
                .any(|d| d.len() > 4 && supported_algorithm(d[2]) && supported_digest(d[3]));
            if !usable {
                // RFC 4035 §5.2, RFC 6840 §5.2: only algorithms or digests unknown here.
                let code = match all.iter().any(|d| d.len() > 4 && supported_algorithm(d[2])) {
                    true => EdeCode::UNSUPPORTED_DS_DIGEST,
                    false => EdeCode::UNSUPPORTED_DNSKEY_ALGORITHM,
                };
                let reason = match code {
                    EdeCode::UNSUPPORTED_DS_DIGEST => "DS digest type",
                    _ => "DNSKEY algorithm",
                };
                let ede = Ede::new(
                    code,
                    format!("{text}: unsupported {reason}, zone treated as insecure"),
                );
                self.remember(
                    next,
                    State::Insecure(Some(ede.clone())),
                    seconds(verified.valid_for),
                );
                return Step::Stop(Found::Insecure(Some(ede)));
            }
            return match self
                .keys_of(next, &all, &[], verified.valid_for, fetch, work)
                .await
            {
                Ok(child) => Step::Secure(child),
                Err(found) => Step::Stop(found),
            };
        }
        if let Some(rrset) = message.find(Section::Answer, next, TYPE_CNAME) {
            // An alias is no zone cut; its signature shows it is the zone's.
            return match verify::verify_rrset(&message, rrset, keys, work) {
                Ok(verified) => {
                    self.remember(
                        next,
                        State::NotCut(zone.clone()),
                        seconds(verified.valid_for),
                    );
                    Step::NotCut
                }
                Err(failure) => {
                    Step::Stop(self.bogus(next, failure.ede(&format!("CNAME of {text}"), zone)))
                }
            };
        }
        let (mut proofs, failure) = verified_proofs(&message, keys, work);
        match proofs.no_ds(next, work) {
            NoDs::Delegation | NoDs::OptOut => self.insecure_cut(next, None, &message),
            NoDs::Unsupported => self.insecure_cut(next, Some(iterations_ede(zone)), &message),
            NoDs::NotCut => {
                self.remember(
                    next,
                    State::NotCut(zone.clone()),
                    seconds(proofs_ttl(&message)),
                );
                Step::NotCut
            }
            NoDs::NotProven => {
                Step::Stop(self.bogus(next, no_proof(zone, failure, &format!("{text} has no DS"))))
            }
        }
    }

    fn insecure_cut(&self, name: &[u8], info: Option<Ede>, message: &Message) -> Step {
        self.remember(
            name,
            State::Insecure(info.clone()),
            seconds(proofs_ttl(message)),
        );
        Step::Stop(Found::Insecure(info))
    }
}

/// The NSEC and NSEC3 RRsets of the authority section that verify with the zone's keys, and
/// the most telling failure of those that did not.
pub(crate) fn verified_proofs<'a>(
    message: &'a Message<'_>,
    keys: &'a ZoneKeys,
    work: &mut Work,
) -> (Proofs<'a>, Option<Failure>) {
    let mut failure = None;
    let mut good: Vec<&RRset> = Vec::new();
    for rrset in &message.rrsets {
        if rrset.section != Section::Authority || !matches!(rrset.rtype, TYPE_NSEC | TYPE_NSEC3) {
            continue;
        }
        if !name::is_at_or_below(message.rrset_owner(rrset), &keys.zone) {
            continue;
        }
        match verify::verify_rrset(message, rrset, keys, work) {
            Ok(_) => good.push(rrset),
            Err(f) => failure = Some(failure.map_or(f, |old: Failure| old.min(f))),
        }
    }
    (Proofs::new(message, &keys.zone, good.into_iter()), failure)
}

/// The EDE for a denial that could not be proven in `zone`: why its NSEC records failed, or
/// that there were none.
pub(crate) fn no_proof(zone: &[u8], failure: Option<Failure>, what: &str) -> Ede {
    match failure {
        Some(failure) => failure.ede(&format!("the NSEC proof that {what}"), zone),
        None => Ede::new(
            EdeCode::NSEC_MISSING,
            format!(
                "{}: no NSEC or NSEC3 proof that {what}",
                name::to_text(zone)
            ),
        ),
    }
}

/// The EDE for NSEC3 with too many iterations in `zone`.
pub(crate) fn iterations_ede(zone: &[u8]) -> Ede {
    Ede::new(
        EdeCode::UNSUPPORTED_NSEC3_ITERATIONS,
        format!(
            "{}: NSEC3 iterations above {}, zone treated as insecure",
            name::to_text(zone),
            crate::dnssec::denial::MAX_ITERATIONS
        ),
    )
}

/// How long a negative proof holds: the smallest TTL of the authority section's SOA and NSEC
/// records (RFC 2308, RFC 9077).
fn proofs_ttl(message: &Message) -> u32 {
    message
        .records
        .iter()
        .filter(|r| {
            r.section == Section::Authority && matches!(r.rtype, TYPE_SOA | TYPE_NSEC | TYPE_NSEC3)
        })
        .map(|r| r.ttl)
        .min()
        .unwrap_or(0)
}

fn seconds(ttl: u32) -> Duration {
    Duration::from_secs(u64::from(ttl))
}
