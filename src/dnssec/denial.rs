//! Proofs of denial of existence: that a name does not exist (NXDOMAIN), that it has no
//! records of a type (NODATA), that a wildcard answer had no closer match, and whether a name
//! is a delegation without DS (an insecure zone cut). From NSEC records (RFC 4035 §5.4, RFC
//! 6840 §4) or NSEC3 records (RFC 5155 §8), already verified by the caller to be signed by
//! the zone they deny in. NSEC3 hashing is hickory-proto's; more than [`MAX_ITERATIONS`]
//! iterations make the answer insecure (RFC 9276), and the hashes computed per query are
//! bounded.

use std::cmp::Ordering;

use hickory_proto::dnssec::DigestType;
use hickory_proto::dnssec::crypto::Digest;

use crate::dnssec::message::{
    Message, RRset, TYPE_CNAME, TYPE_DNAME, TYPE_DS, TYPE_NSEC, TYPE_SOA,
};
use crate::dnssec::name::{self, canonical_cmp};
use crate::dnssec::verify::Work;

/// NSEC3 iterations above this make an answer insecure, not bogus (RFC 9276 §3.2).
pub(crate) const MAX_ITERATIONS: u16 = 100;
const TYPE_NS: u16 = 2;
/// NSEC3 hash algorithm SHA-1, the only one defined.
const SHA1: u8 = 1;
const SHA1_LEN: usize = 20;
const FLAG_OPT_OUT: u8 = 0x01;

/// What a proof established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denial {
    Proven,
    /// Covered by an NSEC3 with the Opt-Out flag: an unsigned delegation may be there, so the
    /// answer is insecure (RFC 5155 §6).
    OptOut,
    /// NSEC3 with more iterations than the limit, or only unknown hash algorithms or flags:
    /// insecure.
    Unsupported,
    NotProven,
}

/// Whether a name is a zone cut, as the proof of its missing DS says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoDs {
    /// A delegation without DS: the child zone is insecure.
    Delegation,
    /// Not a delegation (or does not exist): the name is inside the parent zone.
    NotCut,
    OptOut,
    Unsupported,
    NotProven,
}

struct Nsec<'m> {
    owner: &'m [u8],
    next: Vec<u8>,
    types: &'m [u8],
}

struct Nsec3<'m> {
    hash: [u8; SHA1_LEN],
    next: &'m [u8],
    opt_out: bool,
    iterations: u16,
    salt: &'m [u8],
    types: &'m [u8],
}

/// The verified NSEC or NSEC3 records of one zone in a response.
pub(crate) struct Proofs<'a> {
    zone: &'a [u8],
    nsec: Vec<Nsec<'a>>,
    nsec3: Vec<Nsec3<'a>>,
    /// NSEC3 records were there but none usable (unknown algorithm, flags or too many
    /// iterations).
    unsupported_nsec3: bool,
    /// Names hashed so far, with their hash.
    hashed: Vec<(Vec<u8>, [u8; SHA1_LEN])>,
}

impl<'a> Proofs<'a> {
    /// The proofs in the verified RRsets `rrsets` of `message`, for `zone`.
    pub(crate) fn new(
        message: &'a Message<'_>,
        zone: &'a [u8],
        rrsets: impl Iterator<Item = &'a RRset>,
    ) -> Proofs<'a> {
        let mut proofs = Proofs {
            zone,
            nsec: Vec::new(),
            nsec3: Vec::new(),
            unsupported_nsec3: false,
            hashed: Vec::new(),
        };
        for rrset in rrsets {
            for &index in &rrset.records {
                let record = message.record(index);
                let owner = message.owner(record);
                if !name::is_at_or_below(owner, zone) {
                    continue;
                }
                if record.rtype == TYPE_NSEC {
                    let mut next = Vec::new();
                    let Some(end) = name::read_name(message.bytes, record.rdata_at, &mut next)
                    else {
                        continue;
                    };
                    let types = &message.bytes[end..record.rdata_at + record.rdata_len];
                    proofs.nsec.push(Nsec { owner, next, types });
                } else {
                    match parse_nsec3(owner, zone, message.rdata(record)) {
                        Ok(nsec3) => proofs.nsec3.push(nsec3),
                        Err(Unusable::Unsupported) => proofs.unsupported_nsec3 = true,
                        Err(Unusable::Malformed) => {}
                    }
                }
            }
        }
        proofs
    }

    /// What is left when no usable record proves anything: unsupported NSEC3 make the
    /// answer insecure, else it is unproven.
    fn nothing(&self) -> Denial {
        if self.unsupported_nsec3 {
            Denial::Unsupported
        } else {
            Denial::NotProven
        }
    }

    /// `qname` does not exist, nor a wildcard that would have matched it.
    pub(crate) fn nxdomain(&mut self, qname: &[u8], work: &mut Work) -> Denial {
        if !self.nsec.is_empty() {
            let Some(covering) = self.nsec_covering(qname) else {
                return Denial::NotProven;
            };
            let encloser = self.nsec_encloser(qname, covering);
            let mut wildcard = Vec::new();
            if name::wildcard_of(encloser, &mut wildcard).is_none() {
                return Denial::NotProven;
            }
            return match self.nsec_covering(&wildcard) {
                Some(_) => Denial::Proven,
                None => Denial::NotProven,
            };
        }
        if self.nsec3.is_empty() {
            return self.nothing();
        }
        if let Some(early) = self.iterations_check() {
            return early;
        }
        let Some((encloser, opt_out)) = self.closest_encloser(qname, work) else {
            return Denial::NotProven;
        };
        let mut wildcard = Vec::new();
        if name::wildcard_of(&encloser, &mut wildcard).is_none() {
            return Denial::NotProven;
        }
        match self
            .hash(&wildcard, work)
            .and_then(|h| self.nsec3_covering(&h))
        {
            Some(_) if opt_out => Denial::OptOut,
            Some(_) => Denial::Proven,
            None => Denial::NotProven,
        }
    }

    /// `qname` exists (or is an empty non-terminal) without records of `qtype`, or a
    /// wildcard that matches it has none.
    pub(crate) fn nodata(&mut self, qname: &[u8], qtype: u16, work: &mut Work) -> Denial {
        if !self.nsec.is_empty() {
            if let Some(nsec) = self.nsec.iter().find(|n| n.owner == qname) {
                return match no_type(nsec.types, qname, qtype) {
                    true => Denial::Proven,
                    false => Denial::NotProven,
                };
            }
            let Some(covering) = self.nsec_covering(qname) else {
                return Denial::NotProven;
            };
            // An empty non-terminal: the next name is below it.
            if name::is_at_or_below(&self.nsec[covering].next, qname) {
                return Denial::Proven;
            }
            let encloser = self.nsec_encloser(qname, covering).to_vec();
            let mut wildcard = Vec::new();
            if name::wildcard_of(&encloser, &mut wildcard).is_none() {
                return Denial::NotProven;
            }
            return match self.nsec.iter().find(|n| n.owner == wildcard) {
                Some(n) if no_type(n.types, &wildcard, qtype) => Denial::Proven,
                _ => Denial::NotProven,
            };
        }
        if self.nsec3.is_empty() {
            return self.nothing();
        }
        if let Some(early) = self.iterations_check() {
            return early;
        }
        let Some(hash) = self.hash(qname, work) else {
            return Denial::NotProven;
        };
        if let Some(matching) = self.nsec3_matching(&hash) {
            return match no_type(self.nsec3[matching].types, qname, qtype) {
                true => Denial::Proven,
                false => Denial::NotProven,
            };
        }
        let Some((encloser, opt_out)) = self.closest_encloser(qname, work) else {
            return Denial::NotProven;
        };
        if qtype == TYPE_DS {
            // RFC 5155 §8.6: no NSEC3 for the name, its next closer covered by an opt-out one.
            return match opt_out {
                true => Denial::OptOut,
                false => Denial::NotProven,
            };
        }
        let mut wildcard = Vec::new();
        if name::wildcard_of(&encloser, &mut wildcard).is_none() {
            return Denial::NotProven;
        }
        match self
            .hash(&wildcard, work)
            .and_then(|h| self.nsec3_matching(&h))
        {
            Some(m) if no_type(self.nsec3[m].types, &wildcard, qtype) => Denial::Proven,
            _ => Denial::NotProven,
        }
    }

    /// Whether `name` is a zone cut, proven by the absence of its DS.
    pub(crate) fn no_ds(&mut self, name: &[u8], work: &mut Work) -> NoDs {
        if !self.nsec.is_empty() {
            if let Some(nsec) = self.nsec.iter().find(|n| n.owner == name) {
                return delegation(nsec.types);
            }
            return match self.nsec_covering(name) {
                // An empty non-terminal, or no such name: inside the zone either way.
                Some(_) => NoDs::NotCut,
                None => NoDs::NotProven,
            };
        }
        if self.nsec3.is_empty() {
            return match self.nothing() {
                Denial::Unsupported => NoDs::Unsupported,
                _ => NoDs::NotProven,
            };
        }
        if let Some(early) = self.iterations_check() {
            return match early {
                Denial::Unsupported => NoDs::Unsupported,
                _ => NoDs::NotProven,
            };
        }
        let Some(hash) = self.hash(name, work) else {
            return NoDs::NotProven;
        };
        if let Some(matching) = self.nsec3_matching(&hash) {
            return delegation(self.nsec3[matching].types);
        }
        match self.closest_encloser(name, work) {
            Some((_, true)) => NoDs::OptOut,
            // The name does not exist.
            Some((_, false)) => NoDs::NotCut,
            None => NoDs::NotProven,
        }
    }

    /// A wildcard expansion of `qname` whose closest encloser has `labels` labels: no name
    /// closer to `qname` exists (RFC 4035 §5.3.4, RFC 5155 §8.8).
    pub(crate) fn wildcard(&mut self, qname: &[u8], labels: usize, work: &mut Work) -> Denial {
        let encloser = name::trim_to(qname, labels);
        if !self.nsec.is_empty() {
            return match self.nsec_covering(qname) {
                Some(c) if self.nsec_encloser(qname, c) == encloser => Denial::Proven,
                _ => Denial::NotProven,
            };
        }
        if self.nsec3.is_empty() {
            return self.nothing();
        }
        if let Some(early) = self.iterations_check() {
            return early;
        }
        let next_closer = name::trim_to(qname, labels + 1);
        match self
            .hash(next_closer, work)
            .and_then(|h| self.nsec3_covering(&h))
        {
            Some(c) if self.nsec3[c].opt_out => Denial::OptOut,
            Some(_) => Denial::Proven,
            None => Denial::NotProven,
        }
    }

    /// The NSEC whose span holds `name` strictly inside it, unless it is a delegation or
    /// DNAME above `name`, which proves nothing below itself.
    fn nsec_covering(&self, name: &[u8]) -> Option<usize> {
        self.nsec.iter().position(|n| {
            let after_owner = canonical_cmp(n.owner, name) == Ordering::Less;
            let before_next = canonical_cmp(name, &n.next) == Ordering::Less;
            // The last NSEC of a zone points back to the apex.
            let last = canonical_cmp(&n.next, n.owner) != Ordering::Greater;
            let covers = after_owner && (before_next || last);
            let ancestor_cut = name::is_at_or_below(name, n.owner)
                && ((has_type(n.types, TYPE_NS) && !has_type(n.types, TYPE_SOA))
                    || has_type(n.types, TYPE_DNAME));
            covers && !ancestor_cut && name::is_at_or_below(name, self.zone)
        })
    }

    /// The closest encloser of `name` that the NSEC at `covering` shows: the longer of the
    /// names it shares with the NSEC's owner and next name, never above the zone.
    fn nsec_encloser<'n>(&self, name: &'n [u8], covering: usize) -> &'n [u8] {
        let nsec = &self.nsec[covering];
        let common = |other: &[u8]| {
            crate::wire::name::suffixes(name)
                .find(|s| name::is_at_or_below(other, s))
                .unwrap_or(name::ROOT)
        };
        let (a, b) = (common(nsec.owner), common(&nsec.next));
        let longest = if a.len() >= b.len() { a } else { b };
        if name::is_at_or_below(longest, self.zone) {
            // `longest` is a suffix of `name`; return it as a slice of `name`'s zone-long tail.
            &name[name.len() - longest.len()..]
        } else {
            &name[name.len() - self.zone.len()..]
        }
    }

    /// Stops early when any NSEC3 has more iterations than allowed: insecure.
    fn iterations_check(&self) -> Option<Denial> {
        self.nsec3
            .iter()
            .any(|n| n.iterations > MAX_ITERATIONS)
            .then_some(Denial::Unsupported)
    }

    /// The NSEC3 hash of `name` with the zone's parameters (those of its first NSEC3), or
    /// `None` once the query's budget of hashes is spent.
    fn hash(&mut self, name: &[u8], work: &mut Work) -> Option<[u8; SHA1_LEN]> {
        if let Some((_, hash)) = self.hashed.iter().find(|(n, _)| n == name) {
            return Some(*hash);
        }
        let first = self.nsec3.first()?;
        if work.hashes == 0 {
            return None;
        }
        work.hashes -= 1;
        let digest = Digest::iterated(first.salt, name, DigestType::SHA1, first.iterations).ok()?;
        let hash: [u8; SHA1_LEN] = digest.as_ref().try_into().ok()?;
        self.hashed.push((name.to_vec(), hash));
        Some(hash)
    }

    fn nsec3_matching(&self, hash: &[u8]) -> Option<usize> {
        self.nsec3.iter().position(|n| n.hash == hash)
    }

    fn nsec3_covering(&self, hash: &[u8]) -> Option<usize> {
        self.nsec3.iter().position(|n| {
            let after_owner = &n.hash[..] < hash;
            let before_next = hash < n.next;
            // The last NSEC3 of the chain points back to the first.
            match n.next <= &n.hash[..] {
                false => after_owner && before_next,
                true => after_owner || before_next,
            }
        })
    }

    /// The closest encloser proof (RFC 5155 §8.3) for `name`: its closest existing ancestor,
    /// matched by an NSEC3, and an NSEC3 covering the next closer name. Returns the encloser
    /// and whether that covering NSEC3 has Opt-Out. `None` when `name` itself exists or the
    /// proof is incomplete.
    fn closest_encloser(&mut self, name: &[u8], work: &mut Work) -> Option<(Vec<u8>, bool)> {
        let mut candidate = name::parent(name)?;
        loop {
            if !name::is_at_or_below(candidate, self.zone) {
                return None;
            }
            let hash = self.hash(candidate, work)?;
            if let Some(m) = self.nsec3_matching(&hash) {
                let types = self.nsec3[m].types;
                let cut = has_type(types, TYPE_NS) && !has_type(types, TYPE_SOA);
                if cut || has_type(types, TYPE_DNAME) {
                    return None;
                }
                let next_closer = name::child_towards(name, candidate)?;
                let hash = self.hash(next_closer, work)?;
                let cover = self.nsec3_covering(&hash)?;
                return Some((candidate.to_vec(), self.nsec3[cover].opt_out));
            }
            candidate = name::parent(candidate)?;
        }
    }
}

/// What the type bitmap of the NSEC or NSEC3 of a name says about its DS.
fn delegation(types: &[u8]) -> NoDs {
    if has_type(types, TYPE_DS) || has_type(types, TYPE_SOA) {
        // A DS there, or the child's apex record answering for the parent: no proof.
        NoDs::NotProven
    } else if has_type(types, TYPE_NS) {
        NoDs::Delegation
    } else {
        NoDs::NotCut
    }
}

/// Whether the bitmap of the NSEC or NSEC3 at `owner` proves it has no `qtype` records: the
/// type and CNAME are absent, and the record is from the right side of a zone cut (RFC 6840
/// §4.1): the parent's for DS, the child's for anything else.
fn no_type(types: &[u8], owner: &[u8], qtype: u16) -> bool {
    if has_type(types, qtype) || has_type(types, TYPE_CNAME) {
        return false;
    }
    let parent_side = has_type(types, TYPE_NS) && !has_type(types, TYPE_SOA);
    match qtype {
        TYPE_DS => !has_type(types, TYPE_SOA) || owner == name::ROOT,
        _ => !parent_side,
    }
}

/// Whether a type bitmap (RFC 4034 §4.1.2) holds `rtype`. A malformed bitmap holds nothing.
pub(crate) fn has_type(mut bitmap: &[u8], rtype: u16) -> bool {
    let (window, bit) = ((rtype >> 8) as u8, (rtype & 0xff) as usize);
    while bitmap.len() >= 2 {
        let (number, len) = (bitmap[0], usize::from(bitmap[1]));
        let Some(bits) = bitmap.get(2..2 + len) else {
            return false;
        };
        if number == window {
            return bits
                .get(bit / 8)
                .is_some_and(|b| b & (0x80 >> (bit % 8)) != 0);
        }
        bitmap = &bitmap[2 + len..];
    }
    false
}

enum Unusable {
    Unsupported,
    Malformed,
}

/// An NSEC3 record: its owner must be a hash label directly below the zone.
fn parse_nsec3<'m>(owner: &'m [u8], zone: &[u8], rdata: &'m [u8]) -> Result<Nsec3<'m>, Unusable> {
    if name::parent(owner) != Some(zone) {
        return Err(Unusable::Malformed);
    }
    let label = owner
        .get(1..1 + usize::from(owner[0]))
        .ok_or(Unusable::Malformed)?;
    let hash: [u8; SHA1_LEN] = base32hex(label)
        .and_then(|h| h.try_into().ok())
        .ok_or(Unusable::Malformed)?;
    let (&algorithm, rest) = rdata.split_first().ok_or(Unusable::Malformed)?;
    let (&flags, rest) = rest.split_first().ok_or(Unusable::Malformed)?;
    let iterations = rest.get(..2).ok_or(Unusable::Malformed)?;
    let iterations = u16::from_be_bytes([iterations[0], iterations[1]]);
    let salt_len = usize::from(*rest.get(2).ok_or(Unusable::Malformed)?);
    let salt = rest.get(3..3 + salt_len).ok_or(Unusable::Malformed)?;
    let rest = &rest[3 + salt_len..];
    let hash_len = usize::from(*rest.first().ok_or(Unusable::Malformed)?);
    let next = rest.get(1..1 + hash_len).ok_or(Unusable::Malformed)?;
    let types = &rest[1 + hash_len..];
    // RFC 5155 §8.1, §8.2: unknown hash algorithms and flags other than Opt-Out are ignored.
    if algorithm != SHA1 || flags & !FLAG_OPT_OUT != 0 {
        return Err(Unusable::Unsupported);
    }
    if hash_len != SHA1_LEN {
        return Err(Unusable::Malformed);
    }
    Ok(Nsec3 {
        hash,
        next,
        opt_out: flags & FLAG_OPT_OUT != 0,
        iterations,
        salt,
        types,
    })
}

/// Decodes base32 with the extended hex alphabet (RFC 4648 §7), either case, no padding.
fn base32hex(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &c in text {
        let value = match c.to_ascii_uppercase() {
            c @ b'0'..=b'9' => c - b'0',
            c @ b'A'..=b'V' => c - b'A' + 10,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be zero padding.
    (buffer == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_bitmaps_are_read() {
        // Window 0: A (1), NS (2), SOA (6), RRSIG (46); window 1: CAA (257).
        let bitmap = [0, 6, 0x62, 0, 0, 0, 0, 0x02, 1, 1, 0x40];
        for (rtype, present) in [(1, true), (2, true), (6, true), (46, true), (257, true)] {
            assert_eq!(has_type(&bitmap, rtype), present, "{rtype}");
        }
        for rtype in [3, 5, 28, 43, 47, 256, 65535] {
            assert!(!has_type(&bitmap, rtype), "{rtype}");
        }
        assert!(!has_type(&[0, 9, 0xff], 1), "malformed");
    }

    #[test]
    fn base32hex_decodes_nsec3_labels() {
        // RFC 5155 Appendix A: H(example) = 0p9mhaveqvm6t7vbl5lop2u3t2rp3tom.
        let hash = base32hex(b"0p9mhaveqvm6t7vbl5lop2u3t2rp3tom").unwrap();
        assert_eq!(hash.len(), 20);
        let digest = Digest::iterated(
            &[0xaa, 0xbb, 0xcc, 0xdd],
            b"\x07example\x00",
            DigestType::SHA1,
            12,
        )
        .unwrap();
        assert_eq!(digest.as_ref(), &hash[..]);
        assert_eq!(base32hex(b"0P9MHAVEQVM6T7VBL5LOP2U3T2RP3TOM"), Some(hash));
        assert_eq!(base32hex(b"0p9w"), None);
    }
}
