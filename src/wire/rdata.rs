//! Where domain names sit in the data of the record types that hold them. Names there may be
//! compressed on the wire (RFC 1035 §4.1.4, RFC 3597 §4), so rewriting a message, or putting
//! data in canonical form (RFC 4034 §6.2), needs to know where they are.

/// A part of a type's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Fixed(usize),
    /// A length-prefixed character string.
    Text,
}

/// The layout of the data of the types that hold names (RFC 1035, 1183, 2163, 2230, 2782,
/// 3403, 6672); `None` for every other type, whose data holds no name to find.
pub(crate) fn layout(rtype: u16) -> Option<&'static [Field]> {
    use Field::*;
    Some(match rtype {
        // NS, MD, MF, CNAME, MB, MG, MR, PTR, DNAME.
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => &[Name],
        // SOA: two names, then serial, refresh, retry, expire, minimum.
        6 => &[Name, Name, Fixed(20)],
        // MINFO, RP.
        14 | 17 => &[Name, Name],
        // MX, AFSDB, RT, KX.
        15 | 18 | 21 | 36 => &[Fixed(2), Name],
        // PX.
        26 => &[Fixed(2), Name, Name],
        // SRV.
        33 => &[Fixed(6), Name],
        // NAPTR: order, preference, flags, services, regexp, replacement.
        35 => &[Fixed(4), Text, Text, Text, Name],
        _ => return None,
    })
}
