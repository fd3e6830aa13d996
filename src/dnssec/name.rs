//! Domain names as validation needs them: read out of a message (decompressed, lower case)
//! and compared in the canonical order of RFC 4034 §6.1. A name here is its uncompressed wire
//! form, lower case, ending with the root label; the functions assume that form.

use std::cmp::Ordering;

use crate::wire::field;
use crate::wire::name::suffixes;

pub(crate) use crate::wire::field::MAX_NAME;

/// The root name.
pub(crate) const ROOT: &[u8] = &[0];

/// Reads the possibly compressed name at `pos` of `message`, appending it to `out` in lower
/// case without compression; the offset just past it, or `None` if it is malformed
/// ([`field::read_name`]).
pub(crate) fn read_name(message: &[u8], pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    let start = out.len();
    let end = field::read_name(message, pos, out)?;
    // Length bytes are at most 63, below every upper-case letter: only label bytes change.
    out[start..].make_ascii_lowercase();
    Some(end)
}

/// The labels of `name`, not counting the root label.
pub(crate) fn label_count(name: &[u8]) -> usize {
    suffixes(name).count().saturating_sub(1)
}

/// `name` without its first label; `None` for the root.
pub(crate) fn parent(name: &[u8]) -> Option<&[u8]> {
    let len = usize::from(*name.first()?);
    if len == 0 {
        return None;
    }
    name.get(1 + len..)
}

/// Whether `name` is `zone` or below it (label by label).
pub(crate) fn is_at_or_below(name: &[u8], zone: &[u8]) -> bool {
    name.len() >= zone.len() && suffixes(name).any(|suffix| suffix == zone)
}

/// The rightmost `labels` labels of `name` (the whole name if it has fewer).
pub(crate) fn trim_to(name: &[u8], labels: usize) -> &[u8] {
    let count = label_count(name);
    suffixes(name)
        .nth(count.saturating_sub(labels))
        .unwrap_or(name)
}

/// The name one label longer than `ancestor` on the way down to `name` (`name` below
/// `ancestor`); `None` when `name` is not below it.
pub(crate) fn child_towards<'a>(name: &'a [u8], ancestor: &[u8]) -> Option<&'a [u8]> {
    let mut previous = None;
    for suffix in suffixes(name) {
        if suffix == ancestor {
            return previous;
        }
        previous = Some(suffix);
    }
    None
}

/// Whether the first label of `name` is `*`.
pub(crate) fn is_wildcard(name: &[u8]) -> bool {
    name.starts_with(&[1, b'*'])
}

/// `*.` followed by `name`, in `out` (cleared first); `None` if too long.
pub(crate) fn wildcard_of(name: &[u8], out: &mut Vec<u8>) -> Option<()> {
    out.clear();
    out.extend_from_slice(&[1, b'*']);
    out.extend_from_slice(name);
    (out.len() <= MAX_NAME).then_some(())
}

/// The canonical order of names (RFC 4034 §6.1): label by label from the root, each label
/// compared as lower-case bytes, a missing label sorting first.
pub(crate) fn canonical_cmp(a: &[u8], b: &[u8]) -> Ordering {
    let mut a_labels = [0u8; 128];
    let mut b_labels = [0u8; 128];
    let a_count = label_offsets(a, &mut a_labels);
    let b_count = label_offsets(b, &mut b_labels);
    for i in 1..=a_count.min(b_count) {
        let la = label_at(a, a_labels[a_count - i]);
        let lb = label_at(b, b_labels[b_count - i]);
        let ordering = la
            .iter()
            .map(u8::to_ascii_lowercase)
            .cmp(lb.iter().map(u8::to_ascii_lowercase));
        if ordering != Ordering::Equal {
            return ordering;
        }
    }
    a_count.cmp(&b_count)
}

/// Offsets of the labels of `name` (each a length byte) in `out`; returns how many.
fn label_offsets(name: &[u8], out: &mut [u8; 128]) -> usize {
    let mut count = 0;
    let mut pos = 0usize;
    while let Some(&len) = name.get(pos) {
        if len == 0 || count == out.len() || pos > usize::from(u8::MAX) {
            break;
        }
        out[count] = pos as u8;
        count += 1;
        pos += 1 + usize::from(len);
    }
    count
}

fn label_at(name: &[u8], at: u8) -> &[u8] {
    let at = usize::from(at);
    let len = usize::from(name.get(at).copied().unwrap_or(0));
    name.get(at + 1..at + 1 + len).unwrap_or_default()
}

/// `name` as text for logs and error texts (`www.example.` ; `.` for the root).
pub(crate) fn to_text(name: &[u8]) -> String {
    crate::wire::dns::name_to_text(name)
}

/// Wire form of a presentation name such as `example.com.` or `example.com` (relative names
/// are taken as absolute), lower case. `None` if it is not a valid name.
pub(crate) fn from_text(text: &str) -> Option<Vec<u8>> {
    let text = text.trim();
    if text == "." {
        return Some(ROOT.to_vec());
    }
    let text = text.strip_suffix('.').unwrap_or(text);
    let mut wire = Vec::with_capacity(text.len() + 2);
    for label in text.split('.') {
        if label.is_empty() || label.len() > 63 || label.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return None;
        }
        wire.push(label.len() as u8);
        wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
    }
    wire.push(0);
    (wire.len() <= MAX_NAME).then_some(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(text: &str) -> Vec<u8> {
        from_text(text).unwrap()
    }

    #[test]
    fn names_are_read_decompressed_and_lowercased() {
        // "Example.COM" at 0, then "WWW" + pointer to 0 at 13.
        let mut message = b"\x07Example\x03COM\x00\x03WWW\xc0\x00".to_vec();
        let mut out = Vec::new();
        assert_eq!(read_name(&message, 13, &mut out), Some(19));
        assert_eq!(out, n("www.example.com"));
        // A pointer to itself, forwards, or a reserved label type: malformed.
        message.extend_from_slice(b"\xc0\x13");
        assert_eq!(read_name(&message, 19, &mut Vec::new()), None);
        assert_eq!(read_name(b"\xc0\x05\x00", 0, &mut Vec::new()), None);
        assert_eq!(read_name(b"\x80", 0, &mut Vec::new()), None);
        assert_eq!(read_name(b"\x05ab", 0, &mut Vec::new()), None);
    }

    #[test]
    fn name_relations() {
        let name = n("a.b.example.com");
        assert_eq!(label_count(&name), 4);
        assert_eq!(label_count(ROOT), 0);
        assert_eq!(parent(&name), Some(&n("b.example.com")[..]));
        assert_eq!(parent(ROOT), None);
        assert!(is_at_or_below(&name, &n("example.com")));
        assert!(is_at_or_below(&name, ROOT));
        assert!(!is_at_or_below(&n("badexample.com"), &n("example.com")));
        assert_eq!(trim_to(&name, 2), &n("example.com")[..]);
        assert_eq!(trim_to(&name, 0), ROOT);
        assert_eq!(trim_to(&name, 9), &name[..]);
        assert_eq!(
            child_towards(&name, &n("example.com")),
            Some(&n("b.example.com")[..])
        );
        assert_eq!(child_towards(&name, &name), None);
        assert_eq!(child_towards(&n("example.org"), &n("example.com")), None);
        assert!(is_wildcard(&n("*.example")));
    }

    #[test]
    fn canonical_order_is_that_of_rfc_4034() {
        // The example list of RFC 4034 §6.1, in order.
        let ordered = [
            "example",
            "a.example",
            "yljkjljk.a.example",
            "Z.a.example",
            "zABC.a.EXAMPLE",
            "z.example",
            "\u{1}.z.example",
            "*.z.example",
        ];
        let mut names: Vec<Vec<u8>> = ordered
            .iter()
            .map(|t| {
                let mut wire = Vec::new();
                for label in t.split('.') {
                    wire.push(label.len() as u8);
                    wire.extend_from_slice(label.as_bytes());
                }
                wire.push(0);
                wire
            })
            .collect();
        // \200.z.example sorts last.
        names.push(b"\x01\xc8\x01z\x07example\x00".to_vec());
        for pair in names.windows(2) {
            assert_eq!(canonical_cmp(&pair[0], &pair[1]), Ordering::Less);
            assert_eq!(canonical_cmp(&pair[1], &pair[0]), Ordering::Greater);
        }
        assert_eq!(
            canonical_cmp(&n("A.example"), &n("a.EXAMPLE")),
            Ordering::Equal
        );
        assert_eq!(canonical_cmp(ROOT, &n("a")), Ordering::Less);
    }
}
