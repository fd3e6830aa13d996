//! The data an RRSIG signs (RFC 4034 §3.1.8.1, §6), built from the records as they are in the
//! message: the RRSIG's fields, then each record in canonical form (owner in lower case and
//! uncompressed, or the wildcard it was expanded from; the original TTL; names inside the data
//! decompressed and, for the types RFC 4034 §6.2 lists, in lower case, except NSEC and RRSIG
//! per RFC 6840 §5.1), sorted by their data, duplicates removed. Working from the wire bytes
//! means no record is decoded and re-encoded, so a type the parser does not know, or one it
//! would re-encode differently, still verifies.

use crate::dnssec::message::{Message, RRset};
use crate::dnssec::name::{self, read_name};
use crate::wire::rdata::{Field, layout};

/// Appends the canonical form of a record's data (at `at`, `len` bytes long, of `rtype`) to
/// `out`; `None` if the data does not match its type's layout.
pub(crate) fn canonical_rdata(
    message: &[u8],
    rtype: u16,
    at: usize,
    len: usize,
    out: &mut Vec<u8>,
) -> Option<()> {
    let end = at + len;
    let data = message.get(at..end)?;
    let Some(fields) = layout(rtype) else {
        out.extend_from_slice(data);
        return Some(());
    };
    let mut pos = at;
    for field in fields {
        match field {
            Field::Name => {
                pos = read_name(message, pos, out)?;
            }
            Field::Fixed(n) => {
                out.extend_from_slice(message.get(pos..pos + n)?);
                pos += n;
            }
            Field::Text => {
                let n = 1 + usize::from(*message.get(pos)?);
                out.extend_from_slice(message.get(pos..pos + n)?);
                pos += n;
            }
        }
        if pos > end {
            return None;
        }
    }
    (pos == end).then_some(())
}

/// Writes into `out` the data the RRSIG `sig` (its data, at `sig_rdata`) signs over `rrset`:
/// `signer` is the RRSIG's signer name in lower case, `labels` its Labels field.
/// `scratch` is reused between calls. `None` if a record's data is malformed or the RRSIG's
/// labels exceed the owner's.
pub(crate) fn signed_data(
    message: &Message,
    rrset: &RRset,
    sig_rdata: &[u8],
    signer: &[u8],
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Option<()> {
    out.clear();
    // Type covered through signature inception, then the signer's name.
    out.extend_from_slice(sig_rdata.get(..18)?);
    out.extend_from_slice(signer);
    let labels = usize::from(*sig_rdata.get(3)?);
    let original_ttl = sig_rdata.get(4..8)?;
    let owner = message.rrset_owner(rrset);
    let owner_labels = name::label_count(owner);
    let mut expanded = Vec::new();
    let owner = match labels {
        l if l == owner_labels => owner,
        l if l < owner_labels => {
            name::wildcard_of(name::trim_to(owner, l), &mut expanded)?;
            &expanded
        }
        _ => return None,
    };
    // Each record's canonical data in `scratch`, then sorted and deduplicated.
    scratch.clear();
    let mut ranges = Vec::with_capacity(rrset.records.len());
    for &index in &rrset.records {
        let record = message.record(index);
        let start = scratch.len();
        canonical_rdata(
            message.bytes,
            record.rtype,
            record.rdata_at,
            record.rdata_len,
            scratch,
        )?;
        if scratch.len() - start > usize::from(u16::MAX) {
            return None;
        }
        ranges.push(start..scratch.len());
    }
    ranges.sort_by(|a, b| scratch[a.clone()].cmp(&scratch[b.clone()]));
    ranges.dedup_by(|a, b| scratch[a.clone()] == scratch[b.clone()]);
    for range in ranges {
        out.extend_from_slice(owner);
        out.extend_from_slice(&rrset.rtype.to_be_bytes());
        out.extend_from_slice(&rrset.class.to_be_bytes());
        out.extend_from_slice(original_ttl);
        out.extend_from_slice(&(range.len() as u16).to_be_bytes());
        out.extend_from_slice(&scratch[range]);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_data_are_decompressed_and_lowercased_where_rfc_4034_says() {
        // "Example" at 0; an MX whose exchange is "MAIL" + pointer to 0.
        let message = b"\x07Example\x00\x00\x0a\x04MAIL\xc0\x00";
        let mut out = Vec::new();
        canonical_rdata(message, 15, 9, 9, &mut out).unwrap();
        assert_eq!(out, b"\x00\x0a\x04mail\x07example\x00");
        // A TXT record's data is not touched; NSEC's next name keeps its case.
        out.clear();
        canonical_rdata(b"\x03ABC", 16, 0, 4, &mut out).unwrap();
        assert_eq!(out, b"\x03ABC");
        out.clear();
        canonical_rdata(b"\x01A\x00\x00\x01\x40", 47, 0, 6, &mut out).unwrap();
        assert_eq!(out, b"\x01A\x00\x00\x01\x40");
        // Data longer or shorter than its layout is malformed.
        assert!(canonical_rdata(b"\x01a\x00\x00", 5, 0, 4, &mut Vec::new()).is_none());
        assert!(canonical_rdata(b"\x00\x0a\x01", 15, 0, 3, &mut Vec::new()).is_none());
        // SRV: three numbers, then the target.
        out.clear();
        canonical_rdata(b"\x00\x01\x00\x02\x00\x03\x01X\x00", 33, 0, 9, &mut out).unwrap();
        assert_eq!(out, b"\x00\x01\x00\x02\x00\x03\x01x\x00");
    }
}
