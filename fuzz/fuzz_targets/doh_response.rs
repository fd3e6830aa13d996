//! What a DNS-over-HTTPS upstream sends back to one POST: its status, its `Content-Type` and
//! its body, through `doh_response::check_head` and `check_body`. Neither panics or decides
//! differently twice; a head passes only for a 2xx of type `application/dns-message`; a body
//! passes only when it is at most 65535 bytes, a response, and carries the question asked.
//!
//! Input: two bytes of status (big-endian, taken modulo 1000), one byte of content-type
//! length, the content type, then the body. The question is `www.test A IN`; when the
//! status's first byte has its top bit set, the body's question is replaced by it, so that
//! most inputs reach the record checks.
#![no_main]

use dns_proxy::upstream::doh_response::{self, MAX_BODY, Rejection};
use libfuzzer_sys::fuzz_target;

const QUESTION: &[u8] = b"\x03www\x04test\x00\x00\x01\x00\x01";

fuzz_target!(|data: &[u8]| {
    let [high, low, type_len, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*high & 0x7f, *low]) % 1000;
    let type_len = usize::from(*type_len).min(rest.len());
    let (content_type, body) = rest.split_at(type_len);
    let content_type = (!content_type.is_empty()).then_some(content_type);
    let body = if *high & 0x80 != 0 {
        with_question(body)
    } else {
        body.to_vec()
    };

    let head = doh_response::check_head(status, content_type);
    assert_eq!(head, doh_response::check_head(status, content_type));
    match &head {
        Ok(()) => {
            assert!((200..300).contains(&status));
            let media = content_type.unwrap_or_default();
            let media = media.split(|&b| b == b';').next().unwrap_or_default();
            assert!(media.trim_ascii().eq_ignore_ascii_case(b"application/dns-message"));
        }
        Err(Rejection::Status(code)) => {
            assert_eq!(*code, status);
            assert!(!(200..300).contains(&status));
        }
        Err(Rejection::ContentType(_)) => assert!((200..300).contains(&status)),
        Err(other) => panic!("the head cannot be {other:?}"),
    }
    let checked = doh_response::check_body(&body, QUESTION);
    assert_eq!(checked, doh_response::check_body(&body, QUESTION));
    match checked {
        Ok(message) => {
            assert_eq!(message, &body[..]);
            assert!(message.len() <= MAX_BODY && message.len() >= 12 + QUESTION.len());
            assert!(message[2] & 0x80 != 0, "a response");
            assert!(message[12..12 + QUESTION.len()].eq_ignore_ascii_case(QUESTION));
        }
        Err(Rejection::TooLong) => assert!(body.len() > MAX_BODY),
        Err(Rejection::NotAnswer) => {}
        Err(other) => panic!("the body cannot be {other:?}"),
    }
});

/// `body` as a response to the question: QR set, one question, and that question after the
/// header, the rest of `body` following as records.
fn with_question(body: &[u8]) -> Vec<u8> {
    let mut out = body.get(..12).unwrap_or(&[0; 12]).to_vec();
    out[2] |= 0x80;
    out[4..6].copy_from_slice(&[0, 1]);
    out.extend_from_slice(QUESTION);
    out.extend_from_slice(body.get(12..).unwrap_or_default());
    out
}
