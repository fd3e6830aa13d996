//! What an upstream sends back, arbitrary bytes, for a valid query built from the start of the
//! input: `response_matches`, `message_id` and `Query::answer_from`.
//!
//! Input: one control byte, one byte giving the name's length, the name's bytes, then the
//! response. Control bits choose the query's type, EDNS and DO bit, and whether the response's
//! question is replaced by the query's own (with its case flipped), which takes most inputs past
//! the question checks into the record walk.
#![no_main]

use dns_proxy::wire::dns::{self, Query, WireError, message_id, parse_query, response_matches};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

const QTYPES: [u16; 8] = [1, 28, 16, 15, 65, 255, 43, 12];

fuzz_target!(|data: &[u8]| {
    let [control, name_len, rest @ ..] = data else {
        return;
    };
    let name_len = usize::from(*name_len).min(rest.len());
    let (name, response) = rest.split_at(name_len);
    let packet = client_query(*control, name);
    let query = parse_query(&packet).expect("the built query is valid");
    let response = if control & 0x40 != 0 {
        with_question(response, query.question())
    } else {
        response.to_vec()
    };
    check(&query, &response);
});

/// A query with id 0x5a5a, RD, one question for a name spelled from `name` (letters, digits and
/// hyphens, labels of up to 63 bytes) and, as `control` says, an OPT record.
fn client_query(control: u8, name: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 38] = b"abcdefghijklmnopqrstuvwxyzABCDEF0123-_";
    let mut packet = vec![0x5a, 0x5a, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    let mut wire = Vec::new();
    // A zero byte ends a label; the whole name stays under 255 bytes.
    for label in name.split(|&b| b == 0).filter(|l| !l.is_empty()) {
        let label = &label[..label.len().min(63)];
        if wire.len() + 1 + label.len() + 1 > 255 {
            break;
        }
        wire.push(label.len() as u8);
        wire.extend(
            label
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()]),
        );
    }
    wire.push(0);
    packet.extend_from_slice(&wire);
    packet.extend_from_slice(&QTYPES[usize::from(control & 7)].to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    if control & 0x08 != 0 {
        packet[11] = 1;
        let dnssec_ok = if control & 0x10 != 0 { 0x80 } else { 0 };
        let payload: u16 = if control & 0x20 != 0 { 4096 } else { 512 };
        packet.push(0);
        packet.extend_from_slice(&41u16.to_be_bytes());
        packet.extend_from_slice(&payload.to_be_bytes());
        packet.extend_from_slice(&[0, 0, dnssec_ok, 0, 0, 0]);
    }
    packet
}

/// `response` with QR and QDCOUNT=1 set and its question replaced by `question`, its name's case
/// flipped: everything after the fixed header is read as the records.
fn with_question(response: &[u8], question: &[u8]) -> Vec<u8> {
    let mut out = response.get(..dns::HEADER_LEN).unwrap_or(&[0; 12]).to_vec();
    out[2] |= 0x80;
    out[4..6].copy_from_slice(&[0, 1]);
    let name_len = question.len() - 4;
    out.extend(question[..name_len].iter().map(|b| {
        if b.is_ascii_alphabetic() {
            b ^ 0x20
        } else {
            *b
        }
    }));
    out.extend_from_slice(&question[name_len..]);
    out.extend_from_slice(response.get(dns::HEADER_LEN..).unwrap_or_default());
    out
}

fn check(query: &Query, response: &[u8]) {
    let id = message_id(response);
    assert_eq!(id.is_some(), response.len() >= 2);
    if let Some(id) = id {
        assert_eq!(id.to_be_bytes(), response[..2]);
    }
    let matches = response_matches(response, query.question());
    if matches {
        assert!(response.len() >= dns::HEADER_LEN && response[2] & 0x80 != 0);
        let len = query.question().len();
        assert!(response[12..12 + len].eq_ignore_ascii_case(query.question()));
    }
    let answer = match query.answer_from(response) {
        Ok(answer) => answer,
        Err(WireError::Short) => {
            assert!(response.len() < dns::HEADER_LEN);
            return;
        }
        Err(WireError::NotResponse) => {
            assert_eq!(response[2] & 0x80, 0);
            return;
        }
        Err(WireError::QuestionCount | WireError::Malformed) => return,
    };
    // The forwarder only delivers matching responses, but any answer must be well formed.
    assert_eq!(answer[..2], query.id().to_be_bytes());
    assert_eq!(answer[2..10], response[2..10]);
    let question = query.question();
    assert_eq!(&answer[12..12 + question.len()], question);
    assert!(answer.len() <= response.len());
    // Names in records may point anywhere before them, even into the id: compare with the
    // response as it reads with the client's id, and only when it shares the client's question.
    let mut with_client_id = response.to_vec();
    with_client_id[..2].copy_from_slice(&answer[..2]);
    if let (true, Ok(theirs)) = (matches, Message::from_vec(&with_client_id)) {
        let ours = Message::from_vec(&answer).expect("an answer from a readable response");
        assert_eq!(ours.answers, theirs.answers);
        assert_eq!(ours.authorities, theirs.authorities);
        assert_eq!(ours.additionals, theirs.additionals, "only OPT is edited");
    }
    // An answer is itself a well-formed response to the query; for an EDNS client it is
    // already in its final form.
    let again = query.answer_from(&answer);
    assert!(again.is_ok(), "the answer does not read back: {again:?}");
    if query.edns().is_some() {
        assert_eq!(again.as_deref(), Ok(&answer[..]));
    }
}
