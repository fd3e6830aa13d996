//! What a DNS-over-HTTPS upstream sent back to one POST (RFC 8484 §4.2): its status, its
//! `Content-Type` and its body, checked into the DNS response or the reason it is none. Pure,
//! so that the fuzz target drives it with arbitrary bytes.

/// The media type of a DNS message (RFC 8484 §6).
pub const DNS_MESSAGE: &str = "application/dns-message";
/// Largest body read: a DNS message is at most 65535 bytes.
pub const MAX_BODY: usize = 65_535;
/// A DNS header's length: a body shorter than it is no message.
const HEADER_LEN: usize = 12;

/// Why an upstream's HTTP response is no DNS answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// A status other than 2xx (a 5xx or 429 from an overloaded server, a 4xx from one that
    /// does not serve DNS at that path).
    #[error("status {0}")]
    Status(u16),
    /// A 2xx whose body is something else than a DNS message (an HTML page, a captive portal).
    #[error("a 2xx response of type {0:?}, not application/dns-message")]
    ContentType(String),
    /// A body longer than any DNS message.
    #[error("a body over {MAX_BODY} bytes")]
    TooLong,
    /// A body that is not a response to the question asked.
    #[error("a body that is no answer to the question")]
    NotAnswer,
}

impl Rejection {
    /// Whether the upstream failed as a server (the status or type): it is backed off like
    /// one that cannot be reached. A body that does not answer is a bad response.
    pub fn is_server_failure(&self) -> bool {
        matches!(
            self,
            Rejection::Status(_) | Rejection::ContentType(_) | Rejection::TooLong
        )
    }
}

/// Checks the status and `Content-Type` before the body is read.
pub fn check_head(status: u16, content_type: Option<&[u8]>) -> Result<(), Rejection> {
    if !(200..300).contains(&status) {
        return Err(Rejection::Status(status));
    }
    let content_type = content_type.unwrap_or_default();
    if is_dns_message(content_type) {
        Ok(())
    } else {
        let shown = String::from_utf8_lossy(&content_type[..content_type.len().min(64)]);
        Err(Rejection::ContentType(shown.into_owned()))
    }
}

/// The body, when it is a DNS response to `question` (its wire form: name, type, class).
pub fn check_body<'a>(body: &'a [u8], question: &[u8]) -> Result<&'a [u8], Rejection> {
    if body.len() > MAX_BODY {
        return Err(Rejection::TooLong);
    }
    if body.len() < HEADER_LEN || !crate::wire::dns::response_matches(body, question) {
        return Err(Rejection::NotAnswer);
    }
    Ok(body)
}

/// `application/dns-message`, in any case, with or without parameters.
fn is_dns_message(content_type: &[u8]) -> bool {
    let media_type = content_type
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    media_type.eq_ignore_ascii_case(DNS_MESSAGE.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_of_the_dns_type_passes() {
        assert_eq!(check_head(200, Some(b"application/dns-message")), Ok(()));
        assert_eq!(
            check_head(200, Some(b"Application/DNS-Message; charset=x")),
            Ok(())
        );
        assert_eq!(
            check_head(503, Some(b"application/dns-message")),
            Err(Rejection::Status(503))
        );
        assert_eq!(check_head(301, None), Err(Rejection::Status(301)));
        assert_eq!(
            check_head(200, Some(b"text/html")),
            Err(Rejection::ContentType("text/html".into()))
        );
        assert_eq!(
            check_head(200, None),
            Err(Rejection::ContentType(String::new()))
        );
        assert_eq!(
            check_head(200, Some(b"application/dns-messagex")),
            Err(Rejection::ContentType("application/dns-messagex".into()))
        );
    }

    #[test]
    fn the_body_must_answer_the_question() {
        let question = b"\x03www\x04test\x00\x00\x01\x00\x01";
        let mut answer = vec![0, 0, 0x81, 0x80, 0, 1, 0, 0, 0, 0, 0, 0];
        answer.extend_from_slice(question);
        assert_eq!(check_body(&answer, question), Ok(&answer[..]));
        assert_eq!(
            check_body(&answer[..11], question),
            Err(Rejection::NotAnswer)
        );
        let other = b"\x03www\x04test\x00\x00\x1c\x00\x01";
        assert_eq!(check_body(&answer, other), Err(Rejection::NotAnswer));
        assert_eq!(
            check_body(&vec![0; MAX_BODY + 1], question),
            Err(Rejection::TooLong)
        );
    }
}
