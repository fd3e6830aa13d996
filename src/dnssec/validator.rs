//! Validating one answer (RFC 4035 §5): each RRset of the answer and authority sections is
//! signed by the zone it belongs to, with keys the chain of trust proves, or lies below an
//! unsigned delegation; a negative answer or wildcard expansion comes with its NSEC or NSEC3
//! proof; the CNAME and DNAME chain is followed to the name the answer is about. The verdict
//! is the worst of its parts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use crate::dnssec::anchors::Anchor;
use crate::dnssec::chain::{Chain, Fetch, Found, iterations_ede, no_proof, verified_proofs};
use crate::dnssec::denial::Denial;
use crate::dnssec::message::{
    Message, RRset, Section, TYPE_CNAME, TYPE_DNAME, TYPE_DS, TYPE_NSEC, TYPE_NSEC3, TYPE_RRSIG,
    TYPE_SOA,
};
use crate::dnssec::name::{self, read_name};
use crate::dnssec::verdict::{Ede, EdeCode, Verdict};
use crate::dnssec::verify::{self, Rrsig, Verifications, Verified, Work};
use crate::wire::dns::Response;
use crate::wire::name::ZoneName;

/// A clock before this (2026-01-01T00:00:00Z) is plainly wrong: a device without a real-time
/// clock before NTP set it. Signature times are then not checked, so that the names NTP needs
/// still resolve.
pub(crate) const CLOCK_FLOOR: u64 = 1_767_225_600;
/// CNAME and DNAME links followed in one answer.
const MAX_CHAIN: usize = 16;
const TYPE_ANY: u16 = 255;
const RCODE_NXDOMAIN: u16 = 3;

/// The validator: trust anchors, what is known of each zone, and the names not validated.
pub struct Validator {
    chain: Chain,
    /// Signatures that verified, and what over.
    seen: Arc<Verifications>,
    /// Set once the wrong clock has been logged.
    clock_warned: AtomicBool,
}

impl Validator {
    /// A validator starting from `anchors`, validating nothing at or below the `exempt` zones
    /// (negative trust anchors, forward zones without validation, local zones) unless a
    /// `validated` zone (a forward zone that asks for validation) is closer to the name.
    pub fn new(anchors: Vec<Anchor>, exempt: &[ZoneName], validated: &[ZoneName]) -> Validator {
        let wire = |zones: &[ZoneName]| zones.iter().map(|z| z.wire().into()).collect();
        Validator {
            chain: Chain::new(anchors, wire(exempt), wire(validated)),
            seen: Arc::new(Verifications::new()),
            clock_warned: AtomicBool::new(false),
        }
    }

    /// Names whose chain-of-trust state is cached.
    pub fn zones_cached(&self) -> usize {
        self.chain.len()
    }

    /// Forgets the keys and cuts of `zones` and below; all of them when empty.
    pub fn flush(&self, zones: &[ZoneName]) {
        let zones: Vec<&[u8]> = zones.iter().map(ZoneName::wire).collect();
        self.chain.flush(&zones);
    }

    /// The verdict on `response`, the upstream's answer to `question` (wire form: name, type,
    /// class). Keys and delegations it needs are asked through `fetch`. Only answers with
    /// NOERROR or NXDOMAIN can be validated; the caller passes no other.
    pub async fn validate<F: Fetch>(
        &self,
        question: &[u8],
        response: &Response,
        fetch: &F,
    ) -> Verdict {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.validate_at(now, question, response, fetch).await
    }

    /// [`Validator::validate`] with the clock reading `now` (seconds since 1970).
    pub(crate) async fn validate_at<F: Fetch>(
        &self,
        now: u64,
        question: &[u8],
        response: &Response,
        fetch: &F,
    ) -> Verdict {
        let mut work = self.work(now);
        let mut qname = Vec::new();
        if read_name(question, 0, &mut qname).is_none() || question.len() < qname.len() + 4 {
            return Verdict::Bogus(Ede::new(EdeCode::BOGUS, "malformed question"));
        }
        let qtype = u16::from_be_bytes([question[qname.len()], question[qname.len() + 1]]);
        if self.chain.is_exempt(&qname) {
            return Verdict::Insecure(None);
        }
        let Ok(message) = Message::parse(response.bytes()) else {
            return Verdict::Bogus(Ede::new(
                EdeCode::BOGUS,
                format!("{}: malformed answer", name::to_text(&qname)),
            ));
        };
        if qtype == TYPE_RRSIG {
            // RRSIGs asked for themselves cover nothing in the answer to check them against.
            return Verdict::Insecure(None);
        }
        Answer {
            validator: self,
            message: &message,
            fetch,
        }
        .verdict(&qname, qtype, &mut work)
        .await
    }

    /// A fresh budget, with the clock reading `now`.
    fn work(&self, now: u64) -> Work {
        let sane = now >= CLOCK_FLOOR;
        if !sane && !self.clock_warned.swap(true, Ordering::Relaxed) {
            warn!(
                "the system clock reads before 2026: DNSSEC signature validity periods are not \
                 checked, and answers get no AD, until the clock is set"
            );
        }
        Work::new(now as u32, sane, self.seen.clone())
    }
}

/// One answer being validated.
struct Answer<'a, F> {
    validator: &'a Validator,
    message: &'a Message<'a>,
    fetch: &'a F,
}

impl<F: Fetch> Answer<'_, F> {
    async fn verdict(&self, qname: &[u8], qtype: u16, work: &mut Work) -> Verdict {
        let message = self.message;
        let mut verdict = Verdict::Secure;
        // Follow the answer from the question's name through CNAMEs and DNAMEs.
        let mut current = qname.to_vec();
        let mut positive = false;
        for _ in 0..MAX_CHAIN {
            let at_current =
                |r: &&RRset| r.section == Section::Answer && message.rrset_owner(r) == current;
            if message
                .rrsets
                .iter()
                .filter(at_current)
                .any(|r| r.rtype == qtype || qtype == TYPE_ANY)
            {
                positive = true;
                break;
            }
            let Some(cname) = message
                .rrsets
                .iter()
                .filter(at_current)
                .find(|r| r.rtype == TYPE_CNAME)
            else {
                break;
            };
            let mut target = Vec::new();
            let record = message.record(cname.records[0]);
            if read_name(message.bytes, record.rdata_at, &mut target).is_none() {
                break;
            }
            current = target;
        }
        let mut wildcards = Vec::new();
        for rrset in message
            .rrsets
            .iter()
            .filter(|r| r.section == Section::Answer)
        {
            if self.synthesized(rrset) {
                continue;
            }
            let (part, verified) = self.rrset(rrset, work).await;
            if let Some(labels) = verified.and_then(|v| v.wildcard) {
                wildcards.push((rrset, labels));
            }
            verdict = verdict.and(part);
        }
        if matches!(verdict, Verdict::Bogus(_)) {
            return verdict;
        }
        for (rrset, labels) in wildcards {
            let owner = message.rrset_owner(rrset).to_vec();
            verdict = verdict.and(self.wildcard(&owner, labels, work).await);
        }
        if !positive {
            verdict = verdict.and(self.negative(&current, qtype, work).await);
        }
        // Other authority records (NS of the zone, say) must be proven for AD to be set,
        // but a failure there does not fail the answer.
        for rrset in message
            .rrsets
            .iter()
            .filter(|r| r.section == Section::Authority)
        {
            if positive || !matches!(rrset.rtype, TYPE_SOA | TYPE_NSEC | TYPE_NSEC3) {
                if matches!(rrset.rtype, TYPE_NSEC | TYPE_NSEC3) && positive {
                    // Proofs of a wildcard expansion, checked above.
                    continue;
                }
                let (part, _) = self.rrset(rrset, work).await;
                verdict = verdict.and(match part {
                    Verdict::Secure => Verdict::Secure,
                    Verdict::Insecure(info) => Verdict::Insecure(info),
                    _ => Verdict::Insecure(None),
                });
            }
        }
        if !work.check_time && verdict == Verdict::Secure {
            // Not proven fresh: no AD while the clock is wrong.
            return Verdict::Insecure(None);
        }
        verdict
    }

    /// The verdict on one RRset: signed by its zone with proven keys, or below an unsigned
    /// delegation.
    async fn rrset(&self, rrset: &RRset, work: &mut Work) -> (Verdict, Option<Verified>) {
        let message = self.message;
        let owner = message.rrset_owner(rrset);
        // Only a failure needs the RRset's name as text.
        let what = || format!("{} {}", name::to_text(owner), type_name(rrset.rtype));
        // The zone the signatures claim: the signer of the first usable RRSIG. A DS belongs to
        // the parent side of its cut, so its signer is strictly above it.
        let signer = rrset.sigs.iter().find_map(|&i| {
            let sig = Rrsig::parse(message.rdata(message.record(i)))?;
            let above = name::is_at_or_below(owner, &sig.signer)
                && (rrset.rtype != TYPE_DS || owner != &*sig.signer);
            above.then_some(sig.signer)
        });
        let lookup = match &signer {
            Some(signer) => signer.clone(),
            None if rrset.rtype == TYPE_DS => name::parent(owner).unwrap_or(name::ROOT).to_vec(),
            None => owner.to_vec(),
        };
        let found = self
            .validator
            .chain
            .zone_of(&lookup, self.fetch, work)
            .await;
        let keys = match found {
            Found::Secure(keys) => keys,
            Found::Insecure(info) => return (Verdict::Insecure(info), None),
            Found::Bogus(ede) => return (Verdict::Bogus(ede), None),
            Found::Indeterminate(ede) => return (Verdict::Indeterminate(ede), None),
        };
        if signer.is_none() {
            // Inside a signed zone, yet unsigned.
            let ede = verify::Failure::Unsigned.ede(&what(), &keys.zone);
            return (Verdict::Bogus(ede), None);
        }
        if signer.as_deref() != Some(&*keys.zone) {
            let ede = Ede::new(
                EdeCode::BOGUS,
                format!(
                    "{}: {} is signed by {}, which is no zone",
                    name::to_text(&keys.zone),
                    what(),
                    name::to_text(&lookup)
                ),
            );
            return (Verdict::Bogus(ede), None);
        }
        match verify::verify_rrset(message, rrset, &keys, work) {
            Ok(verified) => (Verdict::Secure, Some(verified)),
            Err(failure) => (Verdict::Bogus(failure.ede(&what(), &keys.zone)), None),
        }
    }

    /// Whether `rrset` is an unsigned CNAME synthesized from a DNAME of the answer (RFC 6672
    /// §5.3.1): it is as good as the DNAME, which is checked on its own.
    fn synthesized(&self, rrset: &RRset) -> bool {
        let message = self.message;
        if rrset.rtype != TYPE_CNAME || !rrset.sigs.is_empty() {
            return false;
        }
        let owner = message.rrset_owner(rrset);
        let mut target = Vec::new();
        let record = message.record(rrset.records[0]);
        if read_name(message.bytes, record.rdata_at, &mut target).is_none() {
            return false;
        }
        message.rrsets.iter().any(|dname| {
            if dname.section != Section::Answer || dname.rtype != TYPE_DNAME {
                return false;
            }
            let from = message.rrset_owner(dname);
            if owner == from || !name::is_at_or_below(owner, from) {
                return false;
            }
            let mut to = Vec::new();
            let record = message.record(dname.records[0]);
            if read_name(message.bytes, record.rdata_at, &mut to).is_none() {
                return false;
            }
            // owner = prefix + from; the target must be prefix + to.
            let prefix = &owner[..owner.len() - from.len()];
            target.len() == prefix.len() + to.len()
                && target.starts_with(prefix)
                && target.ends_with(&to)
        })
    }

    /// A wildcard expansion at `owner` from a closest encloser of `labels` labels: the zone
    /// must prove no closer name exists.
    async fn wildcard(&self, owner: &[u8], labels: usize, work: &mut Work) -> Verdict {
        // The wildcard's zone holds the closest encloser: no delegation between it and the
        // expanded name is to be looked for (a cold name under a known wildcard costs nothing).
        let encloser = name::trim_to(owner, labels);
        let keys = match self
            .validator
            .chain
            .zone_of(encloser, self.fetch, work)
            .await
        {
            Found::Secure(keys) => keys,
            Found::Insecure(info) => return Verdict::Insecure(info),
            Found::Bogus(ede) => return Verdict::Bogus(ede),
            Found::Indeterminate(ede) => return Verdict::Indeterminate(ede),
        };
        let (mut proofs, failure) = verified_proofs(self.message, &keys, work);
        let what = || {
            format!(
                "no closer name than the wildcard matches {}",
                name::to_text(owner)
            )
        };
        denial_verdict(
            proofs.wildcard(owner, labels, work),
            &keys.zone,
            failure,
            what,
        )
    }

    /// A negative answer about `current`: the SOA of its zone and the NSEC or NSEC3 proof.
    async fn negative(&self, current: &[u8], qtype: u16, work: &mut Work) -> Verdict {
        let message = self.message;
        let nxdomain = message.rcode == RCODE_NXDOMAIN;
        let soa = message
            .rrsets
            .iter()
            .find(|r| r.section == Section::Authority && r.rtype == TYPE_SOA);
        let mut verdict = Verdict::Secure;
        let keys = match soa {
            Some(soa) if name::is_at_or_below(current, message.rrset_owner(soa)) => {
                let (part, _) = self.rrset(soa, work).await;
                let signed = matches!(part, Verdict::Secure);
                verdict = part;
                if !signed {
                    return verdict;
                }
                let apex = message.rrset_owner(soa);
                match self.validator.chain.zone_of(apex, self.fetch, work).await {
                    Found::Secure(keys) => keys,
                    _ => return verdict,
                }
            }
            _ => {
                let lookup = match qtype {
                    TYPE_DS => name::parent(current).unwrap_or(name::ROOT),
                    _ => current,
                };
                match self.validator.chain.zone_of(lookup, self.fetch, work).await {
                    Found::Secure(keys) => keys,
                    Found::Insecure(info) => return Verdict::Insecure(info),
                    Found::Bogus(ede) => return Verdict::Bogus(ede),
                    Found::Indeterminate(ede) => return Verdict::Indeterminate(ede),
                }
            }
        };
        let (mut proofs, failure) = verified_proofs(message, &keys, work);
        let denial = match nxdomain {
            true => proofs.nxdomain(current, work),
            false => proofs.nodata(current, qtype, work),
        };
        let what = || match nxdomain {
            true => format!("{} does not exist", name::to_text(current)),
            false => format!("{} has no {}", name::to_text(current), type_name(qtype)),
        };
        verdict.and(denial_verdict(denial, &keys.zone, failure, what))
    }
}

/// The verdict a denial proof gives; `what` names what it had to prove, for the error.
fn denial_verdict(
    denial: Denial,
    zone: &[u8],
    failure: Option<verify::Failure>,
    what: impl FnOnce() -> String,
) -> Verdict {
    match denial {
        Denial::Proven => Verdict::Secure,
        Denial::OptOut => Verdict::Insecure(None),
        Denial::Unsupported => Verdict::Insecure(Some(iterations_ede(zone))),
        Denial::NotProven => Verdict::Bogus(no_proof(zone, failure, &what())),
    }
}

/// A type's name for error texts.
fn type_name(rtype: u16) -> String {
    crate::wire::dns::type_name(rtype)
}
