//! Trust anchors: the keys validation starts from. Built in are the root zone's KSK-2017
//! (key tag 20326) and KSK-2024 (38696) as DS records, the same as IANA publishes and
//! Debian's dns-root-data ships; `trust_anchors` replaces them with DS or DNSKEY records read
//! from a file in zone-file syntax, for any zones (a private root, an internal signed zone).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::dnssec::name;

/// Record type DS.
pub const TYPE_DS: u16 = 43;
/// Record type DNSKEY.
pub const TYPE_DNSKEY: u16 = 48;

/// The root zone's key-signing keys as DS records (SHA-256 digests).
const ROOT_DS: [(u16, &str); 2] = [
    (
        20326,
        "E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D",
    ),
    (
        38696,
        "683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16",
    ),
];

/// One trust anchor: a DS or DNSKEY record of a zone, as wire RDATA.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Anchor {
    /// The zone, in lower-case wire form.
    pub(crate) zone: Box<[u8]>,
    /// [`TYPE_DS`] or [`TYPE_DNSKEY`].
    pub(crate) rtype: u16,
    pub(crate) rdata: Box<[u8]>,
}

impl Anchor {
    /// An anchor of `zone` (wire form, any case) with the data of a DS or DNSKEY record
    /// (`rtype`); `None` for another type or a malformed name.
    pub fn new(zone: &[u8], rtype: u16, rdata: &[u8]) -> Option<Anchor> {
        if rtype != TYPE_DS && rtype != TYPE_DNSKEY {
            return None;
        }
        let mut lower = Vec::new();
        let end = name::read_name(zone, 0, &mut lower)?;
        (end == zone.len()).then(|| Anchor {
            zone: lower.into(),
            rtype,
            rdata: rdata.into(),
        })
    }
}

/// Why a trust anchor file was refused: the line and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct AnchorError {
    pub line: usize,
    pub reason: String,
}

/// The built-in anchors: the root zone's two KSKs.
pub fn builtin() -> Vec<Anchor> {
    ROOT_DS
        .iter()
        .map(|(key_tag, digest)| {
            let mut rdata = key_tag.to_be_bytes().to_vec();
            // Algorithm 8 (RSA/SHA-256), digest type 2 (SHA-256).
            rdata.extend_from_slice(&[8, 2]);
            rdata.extend(hex(digest).unwrap_or_default());
            Anchor {
                zone: name::ROOT.into(),
                rtype: TYPE_DS,
                rdata: rdata.into(),
            }
        })
        .collect()
}

/// Reads DS and DNSKEY records in zone-file syntax (RFC 1035 §5): one per line or spread
/// over lines in parentheses, `;` comments, `$ORIGIN` and `$TTL`, an owner name left out
/// meaning the previous one's, `@` the origin, optional TTL and class. What `dig`, `keymgr`,
/// `dnssec-dsfromkey`, `ldns-key2ds` and unbound's `root.key` write is accepted. At least one
/// record is required; any other type is refused.
pub fn parse(text: &str) -> Result<Vec<Anchor>, AnchorError> {
    let mut anchors = Vec::new();
    let mut origin: Option<Vec<u8>> = None;
    let mut owner: Option<Vec<u8>> = None;
    for Entry {
        line,
        tokens,
        blank,
    } in entries(text)?
    {
        let error = |reason: String| AnchorError { line, reason };
        let mut tokens = tokens.iter().map(String::as_str).peekable();
        let Some(&first) = tokens.peek() else {
            continue;
        };
        if first.eq_ignore_ascii_case("$ORIGIN") {
            tokens.next();
            let text = tokens
                .next()
                .ok_or_else(|| error("$ORIGIN without a name".into()))?;
            origin = Some(
                absolute(text, None)
                    .ok_or_else(|| error(format!("{text:?} is not a domain name")))?,
            );
            continue;
        }
        if first.starts_with('$') {
            // $TTL and $INCLUDE do not matter to anchors; an include is not followed.
            if first.eq_ignore_ascii_case("$INCLUDE") {
                return Err(error(
                    "$INCLUDE is not supported: put the records in this file".into(),
                ));
            }
            continue;
        }
        if !blank {
            tokens.next();
            owner = Some(
                absolute(first, origin.as_deref())
                    .ok_or_else(|| error(format!("{first:?} is not a domain name")))?,
            );
        }
        let zone = owner
            .clone()
            .ok_or_else(|| error("a record without an owner name".into()))?;
        // TTL and class, in either order, both optional.
        while let Some(&token) = tokens.peek() {
            let is_ttl = token.bytes().all(|b| b.is_ascii_digit());
            let is_class = ["IN", "CH", "HS"]
                .iter()
                .any(|c| token.eq_ignore_ascii_case(c));
            if !is_ttl && !is_class {
                break;
            }
            tokens.next();
        }
        let rtype = tokens
            .next()
            .ok_or_else(|| error("no record type".into()))?;
        let fields: Vec<&str> = tokens.collect();
        let (rtype, rdata) = if rtype.eq_ignore_ascii_case("DS") {
            (TYPE_DS, ds_rdata(&fields).map_err(error)?)
        } else if rtype.eq_ignore_ascii_case("DNSKEY") {
            (TYPE_DNSKEY, dnskey_rdata(&fields).map_err(error)?)
        } else {
            return Err(error(format!(
                "{rtype} record: a trust anchor is a DS or DNSKEY record"
            )));
        };
        anchors.push(Anchor {
            zone: zone.into(),
            rtype,
            rdata: rdata.into(),
        });
    }
    if anchors.is_empty() {
        return Err(AnchorError {
            line: 0,
            reason: "no DS or DNSKEY record".to_string(),
        });
    }
    Ok(anchors)
}

/// The zones the anchors are for, as text, for messages.
pub fn zones(anchors: &[Anchor]) -> String {
    let mut zones: Vec<String> = anchors.iter().map(|a| name::to_text(&a.zone)).collect();
    zones.dedup();
    zones.join(", ")
}

impl fmt::Display for Anchor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.rtype == TYPE_DS {
            "DS"
        } else {
            "DNSKEY"
        };
        write!(f, "{} {kind}", name::to_text(&self.zone))
    }
}

/// One record of a zone file, its comments and parentheses removed.
struct Entry {
    /// The line it starts on.
    line: usize,
    tokens: Vec<String>,
    /// It starts with a blank: no owner name, the previous one's.
    blank: bool,
}

/// The records of a zone file.
fn entries(text: &str) -> Result<Vec<Entry>, AnchorError> {
    let mut entries = Vec::new();
    // A record whose opening parenthesis is not closed yet.
    let mut open: Option<Entry> = None;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let content = line.split(';').next().unwrap_or("");
        let mut inside = open.is_some();
        let mut entry = open.take().unwrap_or_else(|| Entry {
            line: number,
            tokens: Vec::new(),
            blank: line.starts_with([' ', '\t']),
        });
        for c in content.chars() {
            match c {
                '(' if !inside => inside = true,
                ')' if inside => inside = false,
                '(' | ')' => {
                    return Err(AnchorError {
                        line: number,
                        reason: "unbalanced or nested parentheses".to_string(),
                    });
                }
                _ => {}
            }
        }
        let tokens = content.replace(['(', ')'], " ");
        entry
            .tokens
            .extend(tokens.split_whitespace().map(String::from));
        if inside {
            open = Some(entry);
        } else if !entry.tokens.is_empty() {
            entries.push(entry);
        }
    }
    if let Some(entry) = open {
        return Err(AnchorError {
            line: entry.line,
            reason: "parenthesis not closed".to_string(),
        });
    }
    Ok(entries)
}

/// An owner name as written, made absolute with `origin` (`@` is the origin itself).
fn absolute(text: &str, origin: Option<&[u8]>) -> Option<Vec<u8>> {
    if text == "@" {
        return origin.map(<[u8]>::to_vec);
    }
    let mut wire = name::from_text(text)?;
    if !text.ends_with('.')
        && let Some(origin) = origin
    {
        wire.pop();
        wire.extend_from_slice(origin);
        if wire.len() > name::MAX_NAME {
            return None;
        }
    }
    Some(wire)
}

/// `key_tag algorithm digest_type digest…` (the digest may be split by blanks).
fn ds_rdata(fields: &[&str]) -> Result<Vec<u8>, String> {
    let [key_tag, algorithm, digest_type, digest @ ..] = fields else {
        return Err("DS wants: key tag, algorithm, digest type, digest".to_string());
    };
    let key_tag: u16 = key_tag
        .parse()
        .map_err(|_| format!("key tag {key_tag:?} is not a number from 0 to 65535"))?;
    let algorithm = algorithm_number(algorithm)?;
    let digest_type: u8 = digest_type
        .parse()
        .map_err(|_| format!("digest type {digest_type:?} is not a number from 0 to 255"))?;
    let digest = hex(&digest.concat()).ok_or("the digest is not hexadecimal")?;
    if digest.is_empty() {
        return Err("the digest is empty".to_string());
    }
    let mut rdata = key_tag.to_be_bytes().to_vec();
    rdata.extend_from_slice(&[algorithm, digest_type]);
    rdata.extend(digest);
    Ok(rdata)
}

/// `flags protocol algorithm key…` (the base64 key may be split by blanks).
fn dnskey_rdata(fields: &[&str]) -> Result<Vec<u8>, String> {
    let [flags, protocol, algorithm, key @ ..] = fields else {
        return Err("DNSKEY wants: flags, protocol, algorithm, public key".to_string());
    };
    let flags: u16 = flags
        .parse()
        .map_err(|_| format!("flags {flags:?} are not a number from 0 to 65535"))?;
    if flags & 0x0100 == 0 {
        return Err(format!(
            "flags {flags} lack the Zone Key bit (256): not a zone key"
        ));
    }
    if *protocol != "3" {
        return Err(format!("protocol {protocol:?} is not 3"));
    }
    let algorithm = algorithm_number(algorithm)?;
    let key = STANDARD
        .decode(key.concat())
        .map_err(|e| format!("the public key is not base64: {e}"))?;
    if key.is_empty() {
        return Err("the public key is empty".to_string());
    }
    let mut rdata = flags.to_be_bytes().to_vec();
    rdata.extend_from_slice(&[3, algorithm]);
    rdata.extend(key);
    Ok(rdata)
}

/// An algorithm as a number or its mnemonic (RFC 8624's table).
fn algorithm_number(text: &str) -> Result<u8, String> {
    const MNEMONICS: [(&str, u8); 9] = [
        ("RSASHA1", 5),
        ("RSASHA1-NSEC3-SHA1", 7),
        ("RSASHA256", 8),
        ("RSASHA512", 10),
        ("ECC-GOST", 12),
        ("ECDSAP256SHA256", 13),
        ("ECDSAP384SHA384", 14),
        ("ED25519", 15),
        ("ED448", 16),
    ];
    text.parse().or_else(|_| {
        MNEMONICS
            .iter()
            .find(|(mnemonic, _)| mnemonic.eq_ignore_ascii_case(text))
            .map(|(_, number)| *number)
            .ok_or_else(|| format!("algorithm {text:?} is not a number or a known mnemonic"))
    })
}

fn hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_anchors_are_the_root_ksks() {
        let anchors = builtin();
        assert_eq!(anchors.len(), 2);
        // The same records as Debian's /usr/share/dns/root.ds.
        let file = "\
. IN DS 20326 8 2 E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D
. IN DS 38696 8 2 683D2D0ACB8C9B712A1948B27F741219298D0A450D612C483AF444A4C0FB2B16
";
        assert_eq!(parse(file).unwrap(), anchors);
        assert_eq!(&anchors[0].rdata[..4], &[0x4f, 0x66, 8, 2]);
        assert_eq!(anchors[0].rdata.len(), 4 + 32);
    }

    #[test]
    fn zone_file_syntax_is_read() {
        let file = "\
; unbound's root.key style
$TTL 3600
$ORIGIN test.
@ 172800 IN DNSKEY 257 3 13 ( mdsswUyr3DPW132mOi8V9xESWE8jTo0d
        xCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ== ) ;{id = 1 (ksk)}
corp 3600 DS 12345 ECDSAP256SHA256 2 ( 0123456789abcdef
        0123456789ABCDEF0123456789abcdef0123456789abcdef )
     IN DS 12346 13 4 00ff
other.example. DS 1 15 2 00
";
        let anchors = parse(file).unwrap();
        assert_eq!(anchors.len(), 4);
        assert_eq!(&*anchors[0].zone, b"\x04test\x00");
        assert_eq!(anchors[0].rtype, TYPE_DNSKEY);
        assert_eq!(&anchors[0].rdata[..4], &[1, 1, 3, 13]);
        assert_eq!(anchors[0].rdata.len(), 4 + 64);
        assert_eq!(&*anchors[1].zone, b"\x04corp\x04test\x00");
        assert_eq!(&anchors[1].rdata[..4], &[0x30, 0x39, 13, 2]);
        assert_eq!(anchors[1].rdata.len(), 4 + 32);
        assert_eq!(
            anchors[2].zone, anchors[1].zone,
            "a blank owner repeats the last"
        );
        assert_eq!(&*anchors[3].zone, b"\x05other\x07example\x00");
        assert_eq!(zones(&anchors), "test., corp.test., other.example.");
    }

    #[test]
    fn bad_files_name_the_line() {
        for (file, line, reason) in [
            ("", 0, "no DS or DNSKEY"),
            ("; nothing\n", 0, "no DS or DNSKEY"),
            (". IN A 192.0.2.1", 1, "a DS or DNSKEY record"),
            ("\n. DS 1 8 2 zz", 2, "not hexadecimal"),
            (". DS 70000 8 2 00", 1, "key tag"),
            (". DNSKEY 257 3 8 !!!", 1, "not base64"),
            (". DNSKEY 1 3 8 AAAA", 1, "Zone Key bit"),
            (". DNSKEY 257 2 8 AAAA", 1, "protocol"),
            (". DS 1 FOO 2 00", 1, "algorithm"),
            (". DS 1 8 2 ( 00", 1, "not closed"),
            ("bad..name DS 1 8 2 00", 1, "not a domain name"),
        ] {
            let error = parse(file).unwrap_err();
            assert_eq!(error.line, line, "{file:?}: {error}");
            assert!(error.reason.contains(reason), "{file:?}: {error}");
        }
    }
}
