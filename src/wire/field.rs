//! Reading fields of a DNS message: numbers at an offset, and stepping over a name. The lowest
//! layer of `wire`, which every other part of it reads messages with.

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
