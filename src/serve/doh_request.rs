//! The DNS-over-HTTPS request (RFC 8484 §4.1), decoded as a pure function of what the client
//! sent: method, path, query string, content type, length and body become the DNS message it
//! carries, or the HTTP status it gets. No I/O, so the fuzz target `doh_request` and the unit
//! tests call it with any bytes; `doh.rs` calls [`check_head`] before reading a body, so that a
//! request refused by its head is answered without reading one.
//!
//! - Another path than `https_path`: 404.
//! - `GET` with `dns=` in base64url (RFC 4648 §5, unpadded as RFC 8484 §6 says, padding
//!   accepted too): the message. No `dns=`, or not base64url: 400.
//! - `POST` with `Content-Type: application/dns-message` (any case, parameters ignored):
//!   the body. Another or no content type: 415. A length over 65535 bytes: 413.
//! - Any other method: 405 (with `Allow: GET, POST`).
//! - A message shorter than a DNS header: 400.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The media type of a DNS message (RFC 8484 §6).
pub const DNS_MESSAGE: &str = "application/dns-message";

/// Longest DNS message: what its 2-byte length over TCP can say, and RFC 8484's limit too.
pub const MAX_MESSAGE: usize = 65_535;

/// Shortest DNS message: its header.
const HEADER_LEN: usize = crate::wire::dns::HEADER_LEN;

/// Why a request gets no DNS answer: the HTTP status it gets instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: no `dns=` parameter, not base64url, or shorter than a DNS header.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// 404: another path than `https_path`.
    #[error("not found")]
    NotFound,
    /// 405: neither `GET` nor `POST`.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: a message over 65535 bytes.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 415: a `POST` whose content type is not `application/dns-message`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
}

impl Refusal {
    /// The HTTP status code.
    pub fn status(self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 400,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed => 405,
            Refusal::PayloadTooLarge => 413,
            Refusal::UnsupportedMediaType => 415,
        }
    }
}

/// What a request's head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A `GET`: the message, decoded from `dns=`.
    Message(Vec<u8>),
    /// A `POST`: the message is its body, to be read up to [`MAX_MESSAGE`] bytes.
    Body,
}

/// The parts of a request head that decide how it is answered.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The URL path, without the query string.
    pub path: &'a str,
    /// The query string, without the `?`.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a [u8]>,
    pub content_length: Option<&'a [u8]>,
}

/// Decides a request by its head: `path` is the configured `https_path`.
pub fn check_head(head: &RequestHead<'_>, path: &str) -> Result<Head, Refusal> {
    if head.path != path {
        return Err(Refusal::NotFound);
    }
    match head.method {
        "GET" => {
            let value = head
                .query
                .and_then(dns_parameter)
                .ok_or(Refusal::BadRequest("no dns parameter"))?;
            decode_base64url(value).map(Head::Message)
        }
        "POST" => {
            if !head.content_type.is_some_and(is_dns_message) {
                return Err(Refusal::UnsupportedMediaType);
            }
            // A length that does not parse is left to the body's own limit.
            let length = head
                .content_length
                .and_then(|length| std::str::from_utf8(length).ok())
                .and_then(|length| length.trim().parse::<u64>().ok());
            if length.is_some_and(|length| length > MAX_MESSAGE as u64) {
                return Err(Refusal::PayloadTooLarge);
            }
            Ok(Head::Body)
        }
        _ => Err(Refusal::MethodNotAllowed),
    }
}

/// The message of a request whose body, already read, is `body`.
pub fn message(head: Head, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    let message = match head {
        Head::Message(message) => message,
        Head::Body if body.len() > MAX_MESSAGE => return Err(Refusal::PayloadTooLarge),
        Head::Body => body.to_vec(),
    };
    if message.len() < HEADER_LEN {
        return Err(Refusal::BadRequest("shorter than a DNS header"));
    }
    Ok(message)
}

/// The whole decision for a request with this head and body: what the fuzz target checks.
pub fn decode(head: &RequestHead<'_>, path: &str, body: &[u8]) -> Result<Vec<u8>, Refusal> {
    message(check_head(head, path)?, body)
}

/// The value of the first `dns=` parameter of a query string.
fn dns_parameter(query: &str) -> Option<&str> {
    query
        .split('&')
        .find_map(|parameter| parameter.strip_prefix("dns="))
}

/// base64url, with or without its `=` padding (also written `%3D`); at most what decodes to
/// [`MAX_MESSAGE`] bytes.
fn decode_base64url(value: &str) -> Result<Vec<u8>, Refusal> {
    let mut unpadded = value;
    loop {
        if let Some(rest) = unpadded.strip_suffix('=') {
            unpadded = rest;
        } else if let Some(rest) = unpadded
            .strip_suffix("%3D")
            .or_else(|| unpadded.strip_suffix("%3d"))
        {
            unpadded = rest;
        } else {
            break;
        }
    }
    // 4 characters per 3 bytes, rounded up.
    if unpadded.len() > MAX_MESSAGE.div_ceil(3) * 4 {
        return Err(Refusal::PayloadTooLarge);
    }
    let message = URL_SAFE_NO_PAD
        .decode(unpadded)
        .map_err(|_| Refusal::BadRequest("dns parameter is not base64url"))?;
    if message.len() > MAX_MESSAGE {
        return Err(Refusal::PayloadTooLarge);
    }
    Ok(message)
}

/// Whether a `Content-Type` value is `application/dns-message`, in any case, with any
/// parameters (RFC 9110 §8.3.1).
fn is_dns_message(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    media_type
        .trim_ascii()
        .eq_ignore_ascii_case(DNS_MESSAGE.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/dns-query";
    /// A query for www.example.com A, id 0 (RFC 8484 §4.1.1's example).
    const EXAMPLE: &str = "AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB";

    fn get(path: &str, query: Option<&str>) -> Result<Vec<u8>, Refusal> {
        let head = RequestHead {
            method: "GET",
            path,
            query,
            content_type: None,
            content_length: None,
        };
        decode(&head, PATH, b"")
    }

    fn post(
        content_type: Option<&str>,
        length: Option<&str>,
        body: &[u8],
    ) -> Result<Vec<u8>, Refusal> {
        let head = RequestHead {
            method: "POST",
            path: PATH,
            query: None,
            content_type: content_type.map(str::as_bytes),
            content_length: length.map(str::as_bytes),
        };
        decode(&head, PATH, body)
    }

    #[test]
    fn get_decodes_base64url_with_or_without_padding() {
        let message = get(PATH, Some(&format!("dns={EXAMPLE}"))).unwrap();
        assert_eq!(message.len(), 33);
        assert_eq!(&message[12..17], b"\x03www\x07");
        // 33 bytes need no padding; 32 bytes need one `=`.
        let short = URL_SAFE_NO_PAD.encode(&message[..32]);
        for query in [
            format!("dns={short}"),
            format!("dns={short}="),
            format!("dns={short}%3D"),
            format!("ct=x&dns={short}&dns=ignored"),
        ] {
            assert_eq!(get(PATH, Some(&query)).unwrap(), &message[..32], "{query}");
        }
    }

    #[test]
    fn get_refusals() {
        assert_eq!(
            get("/other", Some(&format!("dns={EXAMPLE}"))),
            Err(Refusal::NotFound)
        );
        assert_eq!(get("/dns-query/", None), Err(Refusal::NotFound));
        for query in [None, Some(""), Some("name=example.com"), Some("DNS=AAAA")] {
            assert_eq!(
                get(PATH, query).map_err(Refusal::status),
                Err(400),
                "{query:?}"
            );
        }
        // Standard base64's `+` and `/` are not base64url.
        assert_eq!(
            get(PATH, Some("dns=AAAB+AAB/AAA")).map_err(Refusal::status),
            Err(400)
        );
        // Decodes, but to fewer bytes than a DNS header.
        assert_eq!(
            get(PATH, Some("dns=AAAA")).map_err(Refusal::status),
            Err(400)
        );
        let huge = "A".repeat(MAX_MESSAGE / 3 * 4 + 8);
        assert_eq!(
            get(PATH, Some(&format!("dns={huge}"))),
            Err(Refusal::PayloadTooLarge)
        );
    }

    #[test]
    fn post_takes_the_body_of_a_dns_message() {
        let body = [7u8; 40];
        for content_type in [
            "application/dns-message",
            "Application/DNS-Message",
            "application/dns-message; charset=binary",
        ] {
            assert_eq!(post(Some(content_type), Some("40"), &body).unwrap(), body);
        }
        assert_eq!(post(None, None, &body), Err(Refusal::UnsupportedMediaType));
        assert_eq!(
            post(Some("application/x-www-form-urlencoded"), None, &body),
            Err(Refusal::UnsupportedMediaType)
        );
        let dns = Some(DNS_MESSAGE);
        assert_eq!(post(dns, Some("65536"), b""), Err(Refusal::PayloadTooLarge));
        assert_eq!(
            post(dns, None, &vec![0; MAX_MESSAGE + 1]),
            Err(Refusal::PayloadTooLarge)
        );
        assert_eq!(
            post(dns, Some("3"), b"abc").map_err(Refusal::status),
            Err(400)
        );
        assert_eq!(post(dns, Some("x"), &body).unwrap(), body);
    }

    #[test]
    fn other_methods_are_405_but_the_path_is_checked_first() {
        let query = format!("dns={EXAMPLE}");
        for method in ["PUT", "DELETE", "HEAD", "OPTIONS", "get", "PATCH"] {
            let head = RequestHead {
                method,
                path: PATH,
                query: Some(&query),
                content_type: Some(DNS_MESSAGE.as_bytes()),
                content_length: None,
            };
            assert_eq!(
                decode(&head, PATH, b""),
                Err(Refusal::MethodNotAllowed),
                "{method}"
            );
            let elsewhere = RequestHead { path: "/", ..head };
            assert_eq!(decode(&elsewhere, PATH, b""), Err(Refusal::NotFound));
        }
    }
}
