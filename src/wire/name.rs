//! Zone names in wire form, and the suffix walk that split DNS, the cache flush and the
//! configuration share.

use std::fmt;

use crate::wire::dns;

/// A zone name in wire form, lower case, without compression: `corp.example` is
/// `\x04corp\x07example\x00`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ZoneName {
    wire: Box<[u8]>,
}

/// Why a zone name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneNameError {
    #[error("is empty or the root zone; the default upstreams ([[upstream]]) serve the root")]
    Root,
    #[error("has an empty label")]
    EmptyLabel,
    #[error("has a label longer than 63 bytes")]
    LongLabel,
    #[error("is longer than 255 bytes")]
    LongName,
    #[error("contains a space or control character")]
    BadCharacter,
}

impl ZoneName {
    /// Parses `corp.example` or `corp.example.` (case does not matter).
    pub fn parse(text: &str) -> Result<ZoneName, ZoneNameError> {
        let text = text.trim();
        let text = text.strip_suffix('.').unwrap_or(text);
        if text.is_empty() {
            return Err(ZoneNameError::Root);
        }
        let mut wire = Vec::with_capacity(text.len() + 2);
        for label in text.split('.') {
            if label.is_empty() {
                return Err(ZoneNameError::EmptyLabel);
            }
            if label.len() > 63 {
                return Err(ZoneNameError::LongLabel);
            }
            if label.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(ZoneNameError::BadCharacter);
            }
            wire.push(label.len() as u8);
            wire.extend(label.bytes().map(|b| b.to_ascii_lowercase()));
        }
        wire.push(0);
        if wire.len() > 255 {
            return Err(ZoneNameError::LongName);
        }
        Ok(ZoneName { wire: wire.into() })
    }

    /// The zone of a name in wire form, lower case, uncompressed; `None` for the root or a
    /// malformed name.
    pub(crate) fn from_wire(wire: &[u8]) -> Option<ZoneName> {
        let mut pos = 0;
        loop {
            let len = usize::from(*wire.get(pos)?);
            if len == 0 {
                break;
            }
            if len > 63 {
                return None;
            }
            pos += 1 + len;
        }
        let wire = wire.get(..=pos)?;
        let valid = pos > 0 && wire.len() <= 255 && !wire.iter().any(u8::is_ascii_uppercase);
        valid.then(|| ZoneName { wire: wire.into() })
    }

    /// The name in wire form, lower case.
    pub(crate) fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Whether `other` is this zone or inside it.
    pub(crate) fn contains(&self, other: &ZoneName) -> bool {
        suffixes(&other.wire).any(|suffix| suffix == &*self.wire)
    }
}

/// The zone as configured, lower-cased and without the root's dot: text that
/// [`ZoneName::parse`] reads back to the same zone (so not escaped as a logged name is).
impl fmt::Display for ZoneName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, label) in dns::labels(&self.wire).enumerate() {
            if index > 0 {
                f.write_str(".")?;
            }
            f.write_str(&String::from_utf8_lossy(label))?;
        }
        Ok(())
    }
}

/// Every suffix of a wire name that starts at a label, longest first, ending with the root.
pub(crate) fn suffixes(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut pos = Some(0usize);
    std::iter::from_fn(move || {
        let at = pos?;
        let len = usize::from(*wire.get(at)?);
        pos = (len != 0).then_some(at + 1 + len);
        wire.get(at..)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_names_parse_and_print() {
        let zone = ZoneName::parse("Corp.Example.").unwrap();
        assert_eq!(zone.wire(), b"\x04corp\x07example\x00");
        assert_eq!(zone.to_string(), "corp.example");
        assert_eq!(ZoneName::parse("."), Err(ZoneNameError::Root));
        assert_eq!(ZoneName::parse("a..b"), Err(ZoneNameError::EmptyLabel));
        assert_eq!(
            ZoneName::parse(&"x".repeat(64)),
            Err(ZoneNameError::LongLabel)
        );
        assert_eq!(ZoneName::parse("a b"), Err(ZoneNameError::BadCharacter));
        let long = vec!["abcdefghi"; 26].join(".");
        assert_eq!(ZoneName::parse(&long), Err(ZoneNameError::LongName));
    }
}
