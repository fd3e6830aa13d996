//! A client packet, arbitrary bytes, through `parse_query` and every answer the daemon can
//! send for it: the rejection answers, each error answer, the upstream query, an answer built
//! from a response synthesized from the same bytes, the same response stored in and served
//! from the cache, and UDP truncation of each. Every answer made here carries OPT exactly when
//! the packet did (RFC 6891 §7), malformed or not, as far as the packet can be read.
#![no_main]

use dns_proxy::wire::dns::{
    self, PADDING_BLOCK, PLAIN_UDP_LIMIT, Query, Rcode, Rejection, parse_query, response_matches,
    truncate_for_udp,
};
use std::sync::Arc;

use dns_proxy::resolve::cache::{Cache, Key, Lookup};
use dns_proxy::config::CacheConfig;
use dns_proxy::dnssec::verdict::Security;
use dns_proxy::wire::dns::Response;
use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tokio::time::Instant;
use libfuzzer_sys::fuzz_target;

const RCODES: [Rcode; 5] = [
    Rcode::FormErr,
    Rcode::ServFail,
    Rcode::NotImp,
    Rcode::Refused,
    Rcode::BadVers,
];

fuzz_target!(|packet: &[u8]| {
    let query = match parse_query(packet) {
        Ok(query) => query,
        Err(Rejection::Drop) => {
            assert!(packet.len() < dns::HEADER_LEN || packet[2] & 0x80 != 0);
            return;
        }
        Err(Rejection::Answer(answer, _)) => {
            check_error_answer(packet, &answer, None);
            check_truncation(&answer, PLAIN_UDP_LIMIT, packet);
            return;
        }
    };
    check_query(packet, &query);
    for rcode in RCODES {
        let answer = query.error_answer(rcode);
        check_error_answer(packet, &answer, Some((&query, rcode)));
        check_truncation(&answer, query.udp_limit(), packet);
        check_truncation(&answer, PLAIN_UDP_LIMIT, packet);
    }
    check_upstream_frame(&query);
    for response in synthesized_responses(packet, &query) {
        let Ok(answer) = query.answer_from(&response) else {
            continue;
        };
        check_answer(&query, &response, &answer);
        cache_paths(&query, &response);
        check_truncation(&answer, query.udp_limit(), packet);
        check_truncation(&answer, PLAIN_UDP_LIMIT, packet);
    }
});

/// The cache's paths for `response` to `query`: stored (or refused) and looked up. A hit is
/// exactly the answer the client would get from the stored copy (TTLs clamped, none elapsed),
/// with its id and question; an expired-entry path cannot come up at the same instant.
fn cache_paths(query: &Query, response: &[u8]) {
    let Ok(prepared) = Response::prepare(response) else {
        return;
    };
    // A fresh small cache per input, so an entry of an earlier input cannot answer.
    let cache = Cache::new(&CacheConfig {
        size: 64 << 10,
        ..CacheConfig::default()
    });
    let key = Key::of(query);
    let now = Instant::now();
    let stored = cache.insert(&key, Arc::new(prepared), now, Security::Unchecked);
    match cache.lookup(&key, query, now) {
        Lookup::Hit {
            answer,
            prefetch,
            security,
        } => {
            assert!(!prefetch, "no prefetch for an entry just stored");
            assert_eq!(security, Security::Unchecked, "a hit keeps its verdict");
            assert_eq!(answer, query.answer(&stored), "a hit is the stored answer");
            assert_eq!(answer[..2], query.id().to_be_bytes());
            assert_eq!(&answer[12..12 + query.question().len()], query.question());
        }
        Lookup::Stale(_) => panic!("an entry stored now cannot be stale now"),
        Lookup::Miss => assert!(cache.is_empty(), "a stored entry must be found"),
    }
    assert!(cache.weight() <= 64 << 10);
}

/// What a valid query exposes agrees with the packet it was read from.
fn check_query(packet: &[u8], query: &Query) {
    assert_eq!(query.id().to_be_bytes(), packet[..2]);
    if let Some(opt) = carried_opt(packet) {
        assert_eq!(opt.is_some(), query.edns().is_some(), "OPT seen as sent");
    }
    let question = query.question();
    // A name of 1 to 255 bytes (RFC 1035 §3.1), type and class.
    assert!((5..=259).contains(&question.len()));
    assert_eq!(&packet[12..12 + question.len()], question);
    assert!(
        !matches!(query.qtype(), 251 | 252),
        "zone transfers are refused"
    );
    assert!(query.udp_limit() >= PLAIN_UDP_LIMIT);
    assert!(!query.describe().is_empty());
}

/// The length of the question at the start of `bytes` (its name, type and class), if whole.
fn question_len(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let len = usize::from(*bytes.get(at)?);
        let end = match len {
            0 => at + 5,
            0xc0.. => at + 6,
            _ => {
                at += 1 + len;
                continue;
            }
        };
        return Some(end).filter(|&end| end <= bytes.len());
    }
}

/// An error answer keeps the client's id, opcode, RD and question, says QR, and carries the
/// rcode; hickory reads it back. `from` is the valid query and rcode it was made with, if any.
fn check_error_answer(packet: &[u8], answer: &[u8], from: Option<(&Query, Rcode)>) {
    assert_eq!(answer[..2], packet[..2], "the client's id");
    assert_eq!(answer[2] & 0x80, 0x80, "QR");
    assert_eq!(answer[2] & 0x79, packet[2] & 0x79, "opcode and RD");
    let qdcount = u16::from_be_bytes([answer[4], answer[5]]);
    assert!(qdcount <= 1);
    assert_eq!(answer[6..10], [0; 4], "no records but OPT");
    if qdcount == 1 {
        let question_len = question_len(&answer[12..]).expect("the answer's question is whole");
        // After the question: nothing, or the one record counted in ARCOUNT (OPT, or the
        // TSIG record of a BADKEY answer).
        let rest = answer.len() - 12 - question_len;
        match answer[11] {
            0 => assert_eq!(rest, 0),
            _ => assert!(rest >= 11, "a whole additional record"),
        }
        assert_eq!(answer[12..12 + question_len], packet[12..12 + question_len]);
        assert!(response_matches(answer, &packet[12..12 + question_len]));
    }
    let parsed = Message::from_vec(answer).expect("hickory reads our error answers");
    assert_eq!(parsed.metadata.message_type, MessageType::Response);
    match carried_opt(packet) {
        Some(Some(dnssec_ok)) => {
            let edns = parsed.edns.as_ref().expect("a query with OPT gets OPT back");
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok, "the query's DO bit");
        }
        Some(None) => assert!(parsed.edns.is_none(), "a query without OPT gets none"),
        None => {}
    }
    let Some((query, rcode)) = from else {
        return;
    };
    assert_eq!(qdcount, 1);
    let expected = match rcode {
        Rcode::FormErr => 1,
        Rcode::ServFail => 2,
        Rcode::NotImp => 4,
        Rcode::Refused => 5,
        Rcode::NotAuth => 9,
        Rcode::BadVers => 16,
    };
    // Without OPT only the low four bits of an extended rcode can be sent.
    let expected = if query.edns().is_some() {
        expected
    } else {
        expected & 0x0f
    };
    assert_eq!(u16::from(parsed.metadata.response_code), expected);
    assert_eq!(parsed.edns.is_some(), query.edns().is_some());
    if let (Some(theirs), Some(ours)) = (&parsed.edns, query.edns()) {
        assert_eq!(theirs.flags().dnssec_ok, ours.dnssec_ok);
    }
}

/// Whether `packet` carries an OPT record, read with hickory's decoder, apart from the crate's
/// own walk: `Some(Some(do_bit))` for the first record of type OPT in the additional section,
/// whatever its owner and options; `Some(None)` when every record was read and none is one;
/// `None` when the packet breaks off before either is known.
fn carried_opt(packet: &[u8]) -> Option<Option<bool>> {
    let mut decoder = BinDecoder::new(packet);
    let mut header = [0usize; 6];
    for field in &mut header {
        *field = usize::from(decoder.read_u16().ok()?.unverified());
    }
    let [_, _, questions, answers, authorities, additionals] = header;
    for _ in 0..questions {
        Name::read(&mut decoder).ok()?;
        decoder.read_slice(4).ok()?;
    }
    for i in 0..answers + authorities + additionals {
        Name::read(&mut decoder).ok()?;
        let rtype = decoder.read_u16().ok()?.unverified();
        decoder.read_u16().ok()?;
        let ttl = decoder.read_u32().ok()?.unverified();
        if rtype == 41 && i >= answers + authorities {
            return Some(Some(ttl & 0x8000 != 0));
        }
        let length = decoder.read_u16().ok()?.unverified();
        decoder.read_slice(usize::from(length)).ok()?;
    }
    Some(None)
}

/// The query sent upstream: framed, padded, id left zero, the client's question and flags, and
/// itself a query this crate would accept.
fn check_upstream_frame(query: &Query) {
    let frame = query.upstream_frame();
    let message = &frame[2..];
    assert_eq!(
        usize::from(u16::from_be_bytes([frame[0], frame[1]])),
        message.len()
    );
    assert_eq!(message.len() % PADDING_BLOCK, 0);
    assert_eq!(message[..2], [0, 0]);
    assert_eq!(&message[12..12 + query.question().len()], query.question());
    let again = parse_query(message).expect("the upstream query is a valid query");
    assert_eq!(again.question(), query.question());
    assert_eq!(
        again.edns().map(|e| e.dnssec_ok),
        Some(query.edns().is_some_and(|e| e.dnssec_ok))
    );
    assert!(!response_matches(message, query.question()));
}

/// Responses made from the client's packet: the packet itself with QR set (its records become
/// the response's), and the same with `n` A records inserted after the question, so answers of
/// every size up to a few kilobytes reach truncation.
fn synthesized_responses(packet: &[u8], query: &Query) -> Vec<Vec<u8>> {
    let question_end = 12 + query.question().len();
    let mut plain = packet.to_vec();
    plain[2] |= 0x80;
    let mut responses = vec![plain.clone()];
    let n = packet.last().copied().unwrap_or(0);
    let ancount = u16::from_be_bytes([packet[6], packet[7]]);
    if let Some(ancount) = ancount.checked_add(u16::from(n)) {
        let mut grown = plain[..question_end].to_vec();
        grown[6..8].copy_from_slice(&ancount.to_be_bytes());
        for i in 0..n {
            grown.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, i]);
        }
        grown.extend_from_slice(&plain[question_end..]);
        responses.push(grown);
    }
    responses
}

/// An answer from an upstream response: the client's id and question, the response's header
/// otherwise, never longer than the response, readable wherever the response was.
fn check_answer(query: &Query, response: &[u8], answer: &[u8]) {
    assert_eq!(answer[..2], query.id().to_be_bytes());
    assert_eq!(answer[2..10], response[2..10]);
    let question = query.question();
    assert_eq!(&answer[12..12 + question.len()], question);
    assert!(answer.len() <= response.len());
    assert!(response_matches(answer, question));
    if let Ok(theirs) = Message::from_vec(response) {
        let ours = Message::from_vec(answer).expect("an answer from a readable response");
        assert_eq!(ours.answers.len(), theirs.answers.len());
        assert_eq!(ours.authorities.len(), theirs.authorities.len());
        if query.edns().is_some() {
            assert_eq!(ours.edns.is_some(), theirs.edns.is_some());
        }
    }
    // An answer is itself a well-formed response to the query; for an EDNS client it is
    // already in its final form.
    let again = query.answer_from(answer);
    assert!(again.is_ok(), "the answer does not read back: {again:?}");
    if query.edns().is_some() {
        assert_eq!(again.as_deref(), Ok(answer));
    }
}

/// UDP truncation at `limit` (never below 512): the result fits, keeps the id and question,
/// and is either the answer untouched or a TC=1 answer with no records but OPT.
fn check_truncation(answer: &[u8], limit: usize, packet: &[u8]) {
    let short = truncate_for_udp(answer.to_vec(), limit);
    assert!(short.len() <= limit, "{} > {limit}", short.len());
    assert_eq!(short[..2], packet[..2]);
    if answer.len() <= limit {
        assert_eq!(short, answer);
        return;
    }
    assert_eq!(short[2] & 0x02, 0x02, "TC");
    assert_eq!(short[3..6], answer[3..6]);
    assert_eq!(short[6..10], [0; 4]);
    let question_len = short.len() - 12 - if short[11] == 1 { 11 } else { 0 };
    assert_eq!(short[12..12 + question_len], answer[12..12 + question_len]);
    if Message::from_vec(answer).is_ok() {
        let parsed = Message::from_vec(&short).expect("a truncated readable answer");
        assert!(parsed.metadata.truncation);
        assert!(parsed.answers.is_empty() && parsed.authorities.is_empty());
    }
}
