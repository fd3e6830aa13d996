//! TSIG-signed queries (RFC 8945). dns-proxy shares no key with any client, and its upstreams
//! share none with them either, so it cannot verify or produce a signature: instead of an
//! unsigned answer that looks like one to a signed query, such a query is answered NOTAUTH
//! with an unsigned TSIG record carrying error BADKEY (RFC 8945 §5.2, §5.3.2), which tells the
//! client its key is unknown here.

use crate::wire::field::{read_name, read_u16, skip_name};

const HEADER_LEN: usize = 12;
const TYPE_TSIG: u16 = 250;
const CLASS_ANY: u16 = 255;
/// TSIG error BADKEY.
const BADKEY: u16 = 17;

/// The TSIG record to answer `packet` with, if it carries one (the last record of the
/// additional section, RFC 8945 §5.1): the client's key name, algorithm, time and fudge, no
/// MAC, its original id and error BADKEY. `None` for an unsigned packet or one whose TSIG
/// record cannot be read, which the other checks then judge.
pub(crate) fn badkey_record(packet: &[u8]) -> Option<Vec<u8>> {
    let [questions, answers, authority, additional] =
        [4, 6, 8, 10].map(|at| usize::from(read_u16(packet, at).unwrap_or(0)));
    if additional == 0 {
        return None;
    }
    let mut pos = HEADER_LEN;
    for _ in 0..questions {
        pos = skip_name(packet, pos)? + 4;
    }
    let mut last = None;
    for _ in 0..answers + authority + additional {
        let start = pos;
        pos = skip_name(packet, pos)?;
        let rtype = read_u16(packet, pos)?;
        let rdata = pos + 10..pos + 10 + usize::from(read_u16(packet, pos + 8)?);
        pos = rdata.end;
        last = Some((start, rtype, rdata));
    }
    let (owner_at, TYPE_TSIG, rdata) = last? else {
        return None;
    };
    // Algorithm name, time signed (6), fudge (2), MAC size, MAC, original id. The algorithm
    // name must not be compressed (RFC 8945 §4.2); one that is, is written out in full, since
    // a pointer copied into the answer would point into the wrong message.
    let mut algorithm = Vec::with_capacity(32);
    let algorithm_end = read_name(packet, rdata.start, &mut algorithm)?;
    let fields = packet.get(algorithm_end..rdata.end)?;
    let time_and_fudge = fields.get(..8)?;
    let mac_len = usize::from(read_u16(fields, 8)?);
    let original_id = fields.get(10 + mac_len..12 + mac_len)?;
    let mut tsig = Vec::with_capacity(64 + algorithm.len());
    read_name(packet, owner_at, &mut tsig)?;
    tsig.extend_from_slice(&TYPE_TSIG.to_be_bytes());
    tsig.extend_from_slice(&CLASS_ANY.to_be_bytes());
    tsig.extend_from_slice(&[0, 0, 0, 0]);
    let rdlength = algorithm.len() + 8 + 2 + 2 + 2 + 2;
    tsig.extend_from_slice(&(rdlength as u16).to_be_bytes());
    tsig.extend_from_slice(&algorithm);
    tsig.extend_from_slice(time_and_fudge);
    // No MAC: the answer is unsigned.
    tsig.extend_from_slice(&[0, 0]);
    tsig.extend_from_slice(original_id);
    tsig.extend_from_slice(&BADKEY.to_be_bytes());
    tsig.extend_from_slice(&[0, 0]);
    Some(tsig)
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Message;

    use super::*;
    use crate::wire::dns::{Rcode, Rejection, parse_query};

    /// A query for example.com A with a TSIG record (key "key.example", hmac-sha256) and,
    /// if `opt`, an OPT record before it.
    fn signed_query(opt: bool) -> Vec<u8> {
        let mut q = vec![
            0x12,
            0x34,
            0x01,
            0x10,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            1 + u8::from(opt),
        ];
        q.extend_from_slice(b"\x07example\x03com\x00\x00\x01\x00\x01");
        if opt {
            q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
        }
        q.extend_from_slice(b"\x03key\xc0\x0c\x00\xfa\x00\xff\x00\x00\x00\x00");
        let mut rdata = b"\x0bhmac-sha256\x00".to_vec();
        rdata.extend_from_slice(&[0, 0, 0x65, 0, 0, 0, 1, 44, 0, 32]);
        rdata.extend_from_slice(&[7; 32]);
        rdata.extend_from_slice(&[0x12, 0x34, 0, 0, 0, 0]);
        q.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        q.extend_from_slice(&rdata);
        q
    }

    #[test]
    fn a_signed_query_gets_notauth_with_badkey() {
        for opt in [false, true] {
            let Err(Rejection::Answer(answer, Rcode::NotAuth)) = parse_query(&signed_query(opt))
            else {
                panic!("expected NOTAUTH");
            };
            let parsed = Message::from_vec(&answer).expect("hickory reads it");
            assert_eq!(u16::from(parsed.metadata.response_code), 9);
            assert_eq!(parsed.metadata.id, 0x1234);
            assert!(parsed.metadata.checking_disabled && parsed.metadata.recursion_available);
            assert_eq!(parsed.queries.len(), 1);
            assert_eq!(parsed.edns.is_some(), opt);
            let signature = parsed.signature.expect("a TSIG record");
            let text = format!("{signature:?}");
            assert!(text.contains("key.example"), "{text}");
            assert!(text.contains("BadKey") || text.contains("17"), "{text}");
            // The TSIG record is the last record and carries no MAC.
            let tail = &answer[answer.len() - 8..];
            assert_eq!(tail, &[0, 0, 0x12, 0x34, 0, 17, 0, 0]);
        }
    }

    /// `signed_query(false)` with its algorithm name replaced by `algorithm`.
    fn signed_with_algorithm(algorithm: &[u8]) -> Vec<u8> {
        let mut q = signed_query(false);
        let rdata_at = q.len() - 61;
        let mut rdata = algorithm.to_vec();
        rdata.extend_from_slice(&q[rdata_at + 13..]);
        q.truncate(rdata_at - 2);
        q.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        q.extend_from_slice(&rdata);
        q
    }

    #[test]
    fn a_compressed_algorithm_name_is_written_out_in_full() {
        // The algorithm name points at the question's "example.com".
        let q = signed_with_algorithm(&[0xc0, 0x0c]);
        let Err(Rejection::Answer(answer, Rcode::NotAuth)) = parse_query(&q) else {
            panic!("expected NOTAUTH");
        };
        let parsed = Message::from_vec(&answer).expect("hickory reads it");
        let text = format!("{:?}", parsed.signature);
        assert!(text.contains("example.com"), "{text}");
        let full = b"\x07example\x03com\x00";
        let copies = answer.windows(full.len()).filter(|w| w == full).count();
        assert_eq!(
            copies, 3,
            "question, key name and algorithm, all uncompressed"
        );
    }

    #[test]
    fn an_algorithm_name_too_long_to_be_a_name_gets_no_tsig_answer() {
        // Five 63-byte labels: 321 bytes, more than a name may have.
        let mut name = Vec::new();
        for _ in 0..5 {
            name.push(63);
            name.extend_from_slice(&[b'a'; 63]);
        }
        name.push(0);
        assert_eq!(badkey_record(&signed_with_algorithm(&name)), None);
    }

    #[test]
    fn unsigned_and_unreadable_queries_are_left_to_the_other_checks() {
        let mut q = signed_query(false);
        q[11] = 0;
        assert_eq!(badkey_record(&q), None);
        let q = signed_query(false);
        assert_eq!(badkey_record(&q[..q.len() - 10]), None);
    }
}
