//! A DNS-over-HTTPS request's method, path, query string, content type, length and body
//! through `doh_request::decode`: it never panics, decides the same twice, refuses another
//! path with 404 before anything else, and what it accepts is a message of a DNS header to
//! 65535 bytes that a GET carrying that message in base64url decodes to again.
//!
//! Input: one byte choosing the method, then the path, query, content type, content length
//! and body, separated by NUL bytes (missing ones are absent, an empty query is `?`).
#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dns_proxy::serve::doh_request::{self, MAX_MESSAGE, Refusal, RequestHead};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/dns-query";
const METHODS: [&str; 6] = ["GET", "POST", "PUT", "HEAD", "get", "DELETE"];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let method = METHODS[usize::from(selector) % METHODS.len()];
    let mut fields = rest.splitn(5, |&b| b == 0);
    // A missing path stands for the configured one, so most inputs reach the later checks.
    let path = text(fields.next()).filter(|p| !p.is_empty()).unwrap_or(PATH);
    let query = text(fields.next());
    let content_type = fields.next();
    let content_length = fields.next();
    let body = fields.next().unwrap_or_default();
    let head = RequestHead {
        method,
        path,
        query,
        content_type,
        content_length,
    };

    let decided = doh_request::decode(&head, PATH, body);
    assert_eq!(decided, doh_request::decode(&head, PATH, body));
    if path != PATH {
        assert_eq!(decided, Err(Refusal::NotFound));
        return;
    }
    match decided {
        Ok(message) => {
            assert!((12..=MAX_MESSAGE).contains(&message.len()));
            assert!(method == "GET" || method == "POST");
            if method == "POST" {
                assert_eq!(message, body);
            }
            // The message in a GET, unpadded, decodes to itself.
            let query = format!("dns={}", URL_SAFE_NO_PAD.encode(&message));
            let get = RequestHead {
                method: "GET",
                query: Some(&query),
                ..head
            };
            assert_eq!(doh_request::decode(&get, PATH, b""), Ok(message));
        }
        Err(refusal) => {
            assert!([400, 405, 413, 415].contains(&refusal.status()), "{refusal:?}");
        }
    }
});

/// A field as text; absent when missing or not UTF-8 (hyper hands the decoder `&str`s).
fn text(field: Option<&[u8]>) -> Option<&str> {
    field.and_then(|f| std::str::from_utf8(f).ok())
}
