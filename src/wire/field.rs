//! Reading fields of a DNS message: numbers at an offset, and stepping over or reading out a
//! name. The lowest layer of `wire`, which every other part of it reads messages with.

/// Longest name in wire form (RFC 1035 §3.1).
pub(crate) const MAX_NAME: usize = 255;

/// Offset just past the name at `pos`; a compression pointer ends a name.
pub(crate) fn skip_name(message: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let len = *message.get(pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(pos + 1),
            0x00 => pos += 1 + usize::from(len),
            0xc0 => return (pos + 2 <= message.len()).then_some(pos + 2),
            _ => return None,
        }
    }
}

/// Reads the possibly compressed name at `pos` of `message`, appending it to `out` without
/// compression. Returns the offset just past the name where it sits in the message (after its
/// first pointer, if any), or `None` if it is malformed: a label type other than a plain
/// length or a pointer, a pointer that does not go strictly backwards, or longer than
/// [`MAX_NAME`].
pub(crate) fn read_name(message: &[u8], mut pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    let start = out.len();
    let mut end = None;
    // Each pointer must go strictly backwards, so the walk ends.
    let mut limit = pos;
    loop {
        let len = *message.get(pos)?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                out.push(0);
                if out.len() - start > MAX_NAME {
                    return None;
                }
                return Some(end.unwrap_or(pos + 1));
            }
            0x00 => {
                out.extend_from_slice(message.get(pos..pos + 1 + usize::from(len))?);
                if out.len() - start > MAX_NAME {
                    return None;
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let target = usize::from(read_u16(message, pos)? & 0x3fff);
                if end.is_none() {
                    end = Some(pos + 2);
                }
                if target >= limit {
                    return None;
                }
                limit = target;
                pos = target;
            }
            _ => return None,
        }
    }
}

/// The 4-byte big-endian field at `at` (a TTL, an SOA minimum), if the message has it.
pub(crate) fn read_u32(message: &[u8], at: usize) -> Option<u32> {
    let bytes = message.get(at..at + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

pub(crate) fn read_u16(message: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *message.get(at)?,
        *message.get(at + 1)?,
    ]))
}
