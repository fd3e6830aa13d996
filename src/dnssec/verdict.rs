//! What validation concluded about an answer (RFC 4035 §4.3: secure, insecure, bogus,
//! indeterminate) and why, as the Extended DNS Error (RFC 8914) a client is shown.

use std::fmt;

/// An Extended DNS Error code (RFC 8914 §4, the IANA registry), with the ones validation uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdeCode(pub u16);

impl EdeCode {
    /// A DNSKEY or DS uses only algorithms this resolver cannot verify: the zone is insecure.
    pub const UNSUPPORTED_DNSKEY_ALGORITHM: EdeCode = EdeCode(1);
    /// Every DS of the zone uses a digest this resolver cannot compute: the zone is insecure.
    pub const UNSUPPORTED_DS_DIGEST: EdeCode = EdeCode(2);
    /// The chain of trust could not be decided (a key or delegation could not be fetched).
    pub const INDETERMINATE: EdeCode = EdeCode(5);
    /// Validation failed for a reason without a code of its own (a signature that does not
    /// verify, a key set not signed by the key the DS names).
    pub const BOGUS: EdeCode = EdeCode(6);
    pub const SIGNATURE_EXPIRED: EdeCode = EdeCode(7);
    pub const SIGNATURE_NOT_YET_VALID: EdeCode = EdeCode(8);
    /// A DS exists but no DNSKEY matches it, or no key matches a signature's key tag.
    pub const DNSKEY_MISSING: EdeCode = EdeCode(9);
    /// Records of a signed zone came without signatures.
    pub const RRSIGS_MISSING: EdeCode = EdeCode(10);
    /// The only matching key lacks the Zone Key flag.
    pub const NO_ZONE_KEY_BIT: EdeCode = EdeCode(11);
    /// A negative answer or a wildcard expansion from a signed zone came without its proof.
    pub const NSEC_MISSING: EdeCode = EdeCode(12);
    /// The upstream could not be asked for the keys or delegations (no answer in time).
    pub const NO_REACHABLE_AUTHORITY: EdeCode = EdeCode(22);
    /// The upstream failed to answer a key or delegation query (an error, a malformed answer).
    pub const NETWORK_ERROR: EdeCode = EdeCode(23);
    /// Every signature's validity period ends before it starts.
    pub const SIGNATURE_EXPIRED_BEFORE_VALID: EdeCode = EdeCode(25);
    /// NSEC3 with more iterations than the limit: the zone is treated as insecure.
    pub const UNSUPPORTED_NSEC3_ITERATIONS: EdeCode = EdeCode(27);
}

/// An Extended DNS Error: the code and a short text naming the zone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ede {
    pub code: EdeCode,
    pub text: Box<str>,
}

impl Ede {
    pub fn new(code: EdeCode, text: impl Into<Box<str>>) -> Ede {
        Ede {
            code,
            text: text.into(),
        }
    }
}

impl fmt::Display for Ede {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EDE {}: {}", self.code.0, self.text)
    }
}

/// The result of validating an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every record was proven by the chain of trust from an anchor.
    Secure,
    /// Proven to come from an unsigned zone (or one configured as such). `Some` carries the
    /// informational reason when the zone is insecure because of an algorithm, digest or
    /// iteration count this resolver does not support.
    Insecure(Option<Ede>),
    /// Signed data that failed validation.
    Bogus(Ede),
    /// Whether the answer should be signed could not be decided.
    Indeterminate(Ede),
}

/// A verdict's kind, without its reason: what the cache keeps and the counters count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    Secure,
    Insecure,
    Bogus,
    Indeterminate,
    /// Not validated: validation is off, the client set CD, or the answer is not one that can
    /// be validated (an upstream error).
    Unchecked,
}

impl Security {
    /// The four outcomes counted, in this order, by metrics and status.
    pub const COUNTED: [Security; 4] = [
        Security::Secure,
        Security::Insecure,
        Security::Bogus,
        Security::Indeterminate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Security::Secure => "secure",
            Security::Insecure => "insecure",
            Security::Bogus => "bogus",
            Security::Indeterminate => "indeterminate",
            Security::Unchecked => "unchecked",
        }
    }
}

impl Verdict {
    pub fn security(&self) -> Security {
        match self {
            Verdict::Secure => Security::Secure,
            Verdict::Insecure(_) => Security::Insecure,
            Verdict::Bogus(_) => Security::Bogus,
            Verdict::Indeterminate(_) => Security::Indeterminate,
        }
    }

    /// The Extended DNS Error that goes with this verdict, if any.
    pub fn ede(&self) -> Option<&Ede> {
        match self {
            Verdict::Secure => None,
            Verdict::Insecure(info) => info.as_ref(),
            Verdict::Bogus(ede) | Verdict::Indeterminate(ede) => Some(ede),
        }
    }

    /// The verdict of an answer made of parts with verdicts `self` and `other`: the worst of
    /// the two. Between two reasons of the same rank the more specific code is kept (a code
    /// other than the generic 6), so one answer carries the most useful error.
    pub fn and(self, other: Verdict) -> Verdict {
        let rank = |v: &Verdict| match v {
            Verdict::Secure => 0,
            Verdict::Insecure(_) => 1,
            Verdict::Indeterminate(_) => 2,
            Verdict::Bogus(_) => 3,
        };
        match rank(&self).cmp(&rank(&other)) {
            std::cmp::Ordering::Greater => self,
            std::cmp::Ordering::Less => other,
            std::cmp::Ordering::Equal => match (&self, &other) {
                (Verdict::Bogus(a), Verdict::Bogus(b)) if a.code == EdeCode::BOGUS => {
                    if b.code != EdeCode::BOGUS {
                        other
                    } else {
                        self
                    }
                }
                (Verdict::Insecure(None), Verdict::Insecure(Some(_))) => other,
                _ => self,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bogus(code: EdeCode) -> Verdict {
        Verdict::Bogus(Ede::new(code, "x"))
    }

    #[test]
    fn the_worst_part_decides_and_specific_reasons_win() {
        assert_eq!(Verdict::Secure.and(Verdict::Secure), Verdict::Secure);
        assert_eq!(
            Verdict::Secure.and(Verdict::Insecure(None)),
            Verdict::Insecure(None)
        );
        let expired = bogus(EdeCode::SIGNATURE_EXPIRED);
        assert_eq!(
            Verdict::Insecure(None).and(expired.clone()),
            expired.clone()
        );
        assert_eq!(bogus(EdeCode::BOGUS).and(expired.clone()), expired.clone());
        assert_eq!(expired.clone().and(bogus(EdeCode::BOGUS)), expired);
        let indeterminate = Verdict::Indeterminate(Ede::new(EdeCode::INDETERMINATE, "x"));
        assert_eq!(
            indeterminate.clone().and(Verdict::Secure),
            indeterminate.clone()
        );
        assert_eq!(
            indeterminate.and(bogus(EdeCode::BOGUS)).security(),
            Security::Bogus
        );
    }
}
