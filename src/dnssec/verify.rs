//! Checking the RRSIGs of an RRset against a zone's keys (RFC 4035 §5.3), within limits that
//! keep crafted answers cheap (KeyTrap, CVE-2023-50387): at most [`MAX_SIGNATURES`] RRSIGs tried
//! per RRset, at most [`MAX_KEY_TAG_COLLISIONS`] keys tried per RRSIG, and a budget of
//! signature checks per query. Signature validity is checked with a clock-skew allowance.
//! The cryptography is hickory-proto's (`dnssec-ring`): key tags, DS digests and the
//! signature checks themselves.
//!
//! A signature that verified is remembered ([`Verifications`]) with the exact key and data it
//! verified over: the same SOA, NSEC or NSEC3 record set in the next answer of its zone costs
//! a comparison of bytes instead of a public-key operation, as unbound's cache of validated
//! record sets saves it.

use std::sync::Arc;

use hickory_proto::dnssec::crypto::Digest;
use hickory_proto::dnssec::rdata::DNSKEY;
use hickory_proto::dnssec::{Algorithm, DigestType, PublicKey, PublicKeyBuf};
use quick_cache::Weighter;

use crate::dnssec::canonical;
use crate::dnssec::message::{Message, RRset};
use crate::dnssec::name;
use crate::dnssec::verdict::{Ede, EdeCode};

/// RRSIGs tried per RRset (unbound and hickory use the same bound).
pub(crate) const MAX_SIGNATURES: usize = 8;
/// Keys with the same tag and algorithm tried per RRSIG.
pub(crate) const MAX_KEY_TAG_COLLISIONS: usize = 2;
/// Signature checks per query: a cold chain of several zones and an answer with its proofs
/// need a dozen or two.
pub(crate) const MAX_VERIFICATIONS: u32 = 64;
/// NSEC3 hashes computed per query: a closest-encloser proof needs one per label.
pub(crate) const MAX_HASHES: u32 = 48;
/// Key and delegation queries per client query.
pub(crate) const MAX_FETCHES: u32 = 24;
/// Keys kept per zone: more is no real zone's key set.
pub(crate) const MAX_KEYS: usize = 32;
/// The DNSKEY flag of a zone key (RFC 4034 §2.1.1).
const FLAG_ZONE: u16 = 0x0100;
/// The DNSKEY flag of a revoked key (RFC 5011 §3).
const FLAG_REVOKE: u16 = 0x0080;
/// The clock-skew allowance is a tenth of a signature's validity period, within these bounds
/// (unbound's `val-sig-skew-min` and `val-sig-skew-max`).
const MIN_SKEW: u32 = 3600;
const MAX_SKEW: u32 = 86_400;

/// Bytes of verified signatures remembered.
const VERIFICATIONS_SIZE: u64 = 4 << 20;

/// Signatures that verified: the signature's bytes → the key's bytes and the data signed.
pub(crate) struct Verifications {
    entries: quick_cache::sync::Cache<Box<[u8]>, Arc<Proven>, ProvenBytes>,
}

/// What a signature verified over.
struct Proven {
    key: Box<[u8]>,
    data: Box<[u8]>,
}

#[derive(Clone)]
struct ProvenBytes;

impl Weighter<Box<[u8]>, Arc<Proven>> for ProvenBytes {
    fn weight(&self, signature: &Box<[u8]>, proven: &Arc<Proven>) -> u64 {
        (signature.len() + proven.key.len() + proven.data.len() + 64) as u64
    }
}

impl Verifications {
    pub(crate) fn new() -> Verifications {
        Verifications {
            entries: quick_cache::sync::Cache::with_weighter(
                (VERIFICATIONS_SIZE / 512) as usize,
                VERIFICATIONS_SIZE,
                ProvenBytes,
            ),
        }
    }

    /// Whether `signature` was seen to verify with exactly `key` over exactly `data`.
    fn seen(&self, signature: &[u8], key: &[u8], data: &[u8]) -> bool {
        self.entries
            .get(signature)
            .is_some_and(|p| *p.key == *key && *p.data == *data)
    }

    fn remember(&self, signature: &[u8], key: &[u8], data: &[u8]) {
        let proven = Proven {
            key: key.into(),
            data: data.into(),
        };
        self.entries.insert(signature.into(), Arc::new(proven));
    }
}

/// What one query's validation may still spend, and its reusable buffers.
pub(crate) struct Work {
    /// Now, in seconds since 1970 modulo 2^32 (RRSIG times are compared in serial number
    /// arithmetic, RFC 4034 §3.1.5).
    pub(crate) now: u32,
    /// False while the clock is plainly wrong: signature validity periods are then not checked.
    pub(crate) check_time: bool,
    pub(crate) verifications: u32,
    pub(crate) hashes: u32,
    pub(crate) fetches: u32,
    signed: Vec<u8>,
    scratch: Vec<u8>,
    /// The validator's memory of signatures that verified.
    seen: Arc<Verifications>,
}

impl Work {
    pub(crate) fn new(now: u32, check_time: bool, seen: Arc<Verifications>) -> Work {
        Work {
            now,
            check_time,
            verifications: MAX_VERIFICATIONS,
            hashes: MAX_HASHES,
            fetches: MAX_FETCHES,
            signed: Vec::new(),
            scratch: Vec::new(),
            seen,
        }
    }
}

/// A DNSKEY usable for verification.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub(crate) tag: u16,
    pub(crate) algorithm: u8,
    public: PublicKeyBuf,
}

impl Key {
    /// The public key's bytes.
    fn bytes(&self) -> &[u8] {
        self.public.public_bytes()
    }
}

impl Key {
    /// The key of a DNSKEY's data, if it is a zone key, not revoked, of protocol 3 and of an
    /// algorithm this resolver verifies.
    pub(crate) fn from_rdata(rdata: &[u8]) -> Option<Key> {
        let (flags, protocol, algorithm) = parse_dnskey(rdata)?;
        if protocol != 3 || flags & FLAG_ZONE == 0 || flags & FLAG_REVOKE != 0 {
            return None;
        }
        if !supported_algorithm(algorithm) {
            return None;
        }
        Some(Key {
            tag: key_tag(rdata),
            algorithm,
            public: PublicKeyBuf::new(rdata[4..].to_vec(), Algorithm::from_u8(algorithm)),
        })
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> bool {
        self.public.verify(data, signature).is_ok()
    }
}

/// Flags, protocol and algorithm of a DNSKEY's data, if it has a key after them.
pub(crate) fn parse_dnskey(rdata: &[u8]) -> Option<(u16, u8, u8)> {
    if rdata.len() < 5 {
        return None;
    }
    Some((u16::from_be_bytes([rdata[0], rdata[1]]), rdata[2], rdata[3]))
}

/// The key tag of a DNSKEY's data (RFC 4034 Appendix B).
pub(crate) fn key_tag(rdata: &[u8]) -> u16 {
    DNSKEY::calculate_key_tag_internal(rdata)
}

/// Whether signatures of this algorithm can be verified here (5, 7, 8, 10, 13, 14, 15).
pub(crate) fn supported_algorithm(algorithm: u8) -> bool {
    Algorithm::from_u8(algorithm).is_supported()
}

/// Whether DS digests of this type can be computed here (1, 2, 4).
pub(crate) fn supported_digest(digest_type: u8) -> bool {
    DigestType::from(digest_type).is_supported()
}

/// Whether the DS data `ds` names the DNSKEY data `dnskey` of `zone` (tag, algorithm and
/// digest).
pub(crate) fn ds_matches(zone: &[u8], dnskey: &[u8], ds: &[u8]) -> bool {
    let Some((_, _, algorithm)) = parse_dnskey(dnskey) else {
        return false;
    };
    if ds.len() < 5 || u16::from_be_bytes([ds[0], ds[1]]) != key_tag(dnskey) || ds[2] != algorithm {
        return false;
    }
    let digest_type = DigestType::from(ds[3]);
    if !digest_type.is_supported() {
        return false;
    }
    Digest::from_iter([zone, dnskey], digest_type).is_ok_and(|digest| digest.as_ref() == &ds[4..])
}

/// A zone's keys, proven by the chain of trust.
#[derive(Debug)]
pub(crate) struct ZoneKeys {
    pub(crate) zone: Box<[u8]>,
    pub(crate) keys: Vec<Key>,
}

/// Why an RRset did not verify, most telling first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Failure {
    ExpiredBeforeValid,
    Expired,
    NotYetValid,
    BadSignature,
    /// No key of the zone has the tag and algorithm of any RRSIG.
    NoKey,
    /// No RRSIG at all.
    Unsigned,
    /// The query's budget of signature checks is spent.
    Budget,
}

impl Failure {
    /// The Extended DNS Error for an RRset failing this way; `what` names it ("A of
    /// www.example." ), `zone` the zone.
    pub(crate) fn ede(self, what: &str, zone: &[u8]) -> Ede {
        let zone = name::to_text(zone);
        let (code, text) = match self {
            Failure::ExpiredBeforeValid => (
                EdeCode::SIGNATURE_EXPIRED_BEFORE_VALID,
                format!("{zone}: signature on {what} expires before its inception"),
            ),
            Failure::Expired => (
                EdeCode::SIGNATURE_EXPIRED,
                format!("{zone}: signature on {what} expired"),
            ),
            Failure::NotYetValid => (
                EdeCode::SIGNATURE_NOT_YET_VALID,
                format!("{zone}: signature on {what} not yet valid"),
            ),
            Failure::BadSignature => (
                EdeCode::BOGUS,
                format!("{zone}: signature on {what} does not verify"),
            ),
            Failure::NoKey => (
                EdeCode::DNSKEY_MISSING,
                format!("{zone}: no DNSKEY matches the signature on {what}"),
            ),
            Failure::Unsigned => (
                EdeCode::RRSIGS_MISSING,
                format!("{zone}: {what} is not signed"),
            ),
            Failure::Budget => (
                EdeCode::BOGUS,
                format!("{zone}: validation work limit reached at {what}"),
            ),
        };
        Ede::new(code, text)
    }
}

/// An RRset that verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verified {
    /// The RRSIG's Labels field when the RRset was expanded from a wildcard: the closest
    /// encloser has that many labels.
    pub(crate) wildcard: Option<usize>,
    /// Seconds the proof holds: the smaller of the original TTL and the time to expiry.
    pub(crate) valid_for: u32,
}

/// The fields of an RRSIG's data.
pub(crate) struct Rrsig<'a> {
    pub(crate) algorithm: u8,
    pub(crate) labels: usize,
    pub(crate) original_ttl: u32,
    pub(crate) expiration: u32,
    pub(crate) inception: u32,
    pub(crate) key_tag: u16,
    /// In lower case.
    pub(crate) signer: Vec<u8>,
    pub(crate) signature: &'a [u8],
}

impl<'a> Rrsig<'a> {
    /// Reads an RRSIG's data; its signer name must not be compressed (RFC 4034 §3.1.7).
    pub(crate) fn parse(rdata: &'a [u8]) -> Option<Rrsig<'a>> {
        let u32_at = |at: usize| {
            rdata
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let mut signer = Vec::new();
        let end = name::read_name(rdata.get(..)?, 18, &mut signer)?;
        // A pointer would have been followed: the name must be there in full.
        if end - 18 != signer.len() {
            return None;
        }
        Some(Rrsig {
            algorithm: *rdata.get(2)?,
            labels: usize::from(*rdata.get(3)?),
            original_ttl: u32_at(4)?,
            expiration: u32_at(8)?,
            inception: u32_at(12)?,
            key_tag: u16::from_be_bytes([*rdata.get(16)?, *rdata.get(17)?]),
            signer,
            signature: rdata.get(end..).filter(|s| !s.is_empty())?,
        })
    }

    /// Whether the signature is within its validity period at `now`, give or take the skew.
    fn check_time(&self, now: u32) -> Result<(), Failure> {
        let period = self.expiration.wrapping_sub(self.inception) as i32;
        if period < 0 {
            return Err(Failure::ExpiredBeforeValid);
        }
        let skew = (period as u32 / 10).clamp(MIN_SKEW, MAX_SKEW) as i64;
        if i64::from(now.wrapping_sub(self.inception) as i32) < -skew {
            return Err(Failure::NotYetValid);
        }
        if i64::from(self.expiration.wrapping_sub(now) as i32) < -skew {
            return Err(Failure::Expired);
        }
        Ok(())
    }
}

/// Verifies `rrset` of `message` with the keys of its zone. Succeeds when one RRSIG by the
/// zone, within its validity period, verifies with one of the zone's keys.
pub(crate) fn verify_rrset(
    message: &Message,
    rrset: &RRset,
    keys: &ZoneKeys,
    work: &mut Work,
) -> Result<Verified, Failure> {
    let owner = message.rrset_owner(rrset);
    let owner_labels = name::label_count(owner) - usize::from(name::is_wildcard(owner));
    let mut failure = Failure::Unsigned;
    let mut note = |f: Failure| failure = failure.min(f);
    let mut tried = 0;
    for &index in &rrset.sigs {
        let rdata = message.rdata(message.record(index));
        let Some(sig) = Rrsig::parse(rdata) else {
            note(Failure::BadSignature);
            continue;
        };
        if *sig.signer != *keys.zone || !name::is_at_or_below(owner, &sig.signer) {
            note(Failure::NoKey);
            continue;
        }
        if sig.labels > owner_labels {
            note(Failure::BadSignature);
            continue;
        }
        if work.check_time
            && let Err(f) = sig.check_time(work.now)
        {
            note(f);
            continue;
        }
        if tried == MAX_SIGNATURES {
            break;
        }
        tried += 1;
        let mut candidates = keys
            .keys
            .iter()
            .filter(|k| k.tag == sig.key_tag && k.algorithm == sig.algorithm)
            .take(MAX_KEY_TAG_COLLISIONS)
            .peekable();
        if candidates.peek().is_none() {
            note(Failure::NoKey);
            continue;
        }
        if canonical::signed_data(
            message,
            rrset,
            rdata,
            &sig.signer,
            &mut work.signed,
            &mut work.scratch,
        )
        .is_none()
        {
            note(Failure::BadSignature);
            continue;
        }
        for key in candidates {
            let seen = work.seen.seen(sig.signature, key.bytes(), &work.signed);
            if !seen && work.verifications == 0 {
                return Err(Failure::Budget);
            }
            let verified = seen || {
                work.verifications -= 1;
                let good = key.verify(&work.signed, sig.signature);
                if good {
                    work.seen.remember(sig.signature, key.bytes(), &work.signed);
                }
                good
            };
            if verified {
                let to_expiry = if work.check_time {
                    sig.expiration.wrapping_sub(work.now).min(i32::MAX as u32)
                } else {
                    u32::MAX
                };
                return Ok(Verified {
                    wildcard: (sig.labels < owner_labels).then_some(sig.labels),
                    valid_for: sig.original_ttl.min(message.ttl(rrset)).min(to_expiry),
                });
            }
        }
        note(Failure::BadSignature);
    }
    Err(failure)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig_at(inception: u32, expiration: u32) -> Rrsig<'static> {
        Rrsig {
            algorithm: 13,
            labels: 1,
            original_ttl: 60,
            expiration,
            inception,
            key_tag: 1,
            signer: vec![0],
            signature: &[1],
        }
    }

    #[test]
    fn validity_periods_allow_for_clock_skew() {
        let day = 86_400;
        let now = 1_800_000_000u32;
        // Valid, and valid within the skew on either side (a tenth of 10 days, at most a day).
        assert_eq!(sig_at(now - day, now + day).check_time(now), Ok(()));
        let long = sig_at(now + day / 2, now + 10 * day);
        assert_eq!(long.check_time(now), Ok(()));
        assert_eq!(
            sig_at(now - 10 * day, now - day / 2).check_time(now),
            Ok(())
        );
        // Beyond the skew.
        assert_eq!(
            sig_at(now - 10 * day, now - 2 * day).check_time(now),
            Err(Failure::Expired)
        );
        assert_eq!(
            sig_at(now + 2 * day, now + 20 * day).check_time(now),
            Err(Failure::NotYetValid)
        );
        // A short period still gets an hour.
        assert_eq!(sig_at(now - 1800, now - 600).check_time(now), Ok(()));
        assert_eq!(
            sig_at(now - 7200, now - 3601).check_time(now),
            Err(Failure::Expired)
        );
        assert_eq!(
            sig_at(now, now - 1).check_time(now),
            Err(Failure::ExpiredBeforeValid)
        );
        // Serial arithmetic: a period across the 2106 wrap of 32-bit time.
        let wrap = u32::MAX - day;
        assert_eq!(
            sig_at(wrap, wrap.wrapping_add(3 * day)).check_time(wrap.wrapping_add(2 * day)),
            Ok(())
        );
    }

    #[test]
    fn rrsig_data_is_read_and_a_compressed_signer_refused() {
        let mut rdata = vec![0, 1, 13, 2, 0, 0, 0, 60, 0, 0, 0, 2, 0, 0, 0, 1, 0x30, 0x39];
        rdata.extend_from_slice(b"\x07Example\x00");
        rdata.extend_from_slice(&[9; 64]);
        let sig = Rrsig::parse(&rdata).unwrap();
        assert_eq!((sig.algorithm, sig.labels, sig.key_tag), (13, 2, 12345));
        assert_eq!(
            (sig.expiration, sig.inception, sig.original_ttl),
            (2, 1, 60)
        );
        assert_eq!(sig.signer, b"\x07example\x00");
        assert_eq!(sig.signature.len(), 64);
        let mut compressed = rdata[..18].to_vec();
        compressed.extend_from_slice(&[0xc0, 0, 9, 9]);
        assert!(Rrsig::parse(&compressed).is_none());
        assert!(Rrsig::parse(&rdata[..27]).is_none(), "no signature");
    }

    #[test]
    fn key_tags_and_ds_digests_follow_rfc_4034() {
        // RFC 4034 §5.4's example: the DNSKEY of dskey.example.com and its DS.
        let key = "AQOeiiR0GOMYkDshWoSKz9XzfwJr1AYtsmx3TGkJaNXVbfi/2pHm822aJ5iI9BMzNXxeYCmZDRD99WYwYqUSdjMmmAphXdvxegXd/M5+X7OrzKBaMbCVdFLUUh6DhweJBjEVv5f2wwjM9XzcnOf+EPbtG9DMBmADjFDc2w/rljwvFw==";
        let mut dnskey = vec![1, 0, 3, 5];
        dnskey.extend(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key).unwrap(),
        );
        assert_eq!(key_tag(&dnskey), 60485);
        let zone = b"\x05dskey\x07example\x03com\x00";
        let mut ds = vec![0xec, 0x45, 5, 1];
        ds.extend([
            0x2B, 0xB1, 0x83, 0xAF, 0x5F, 0x22, 0x58, 0x81, 0x79, 0xA5, 0x3B, 0x0A, 0x98, 0x63,
            0x1F, 0xAD, 0x1A, 0x29, 0x21, 0x18,
        ]);
        assert!(ds_matches(zone, &dnskey, &ds));
        ds[5] ^= 1;
        assert!(!ds_matches(zone, &dnskey, &ds));
        assert!(supported_algorithm(8) && supported_algorithm(15) && !supported_algorithm(16));
        assert!(supported_digest(2) && supported_digest(4) && !supported_digest(3));
    }
}
