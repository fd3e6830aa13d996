//! Why an upstream query failed, and the outcomes of talking to an upstream that are counted by
//! kind: the upstream error itself, its classes, and how a TLS handshake went. A leaf module:
//! the code that produces these (the upstream connections, the plain-DNS resolver) and the
//! metrics that label series by them all import it, and none imports another for it.

use std::io;
use std::sync::Arc;

use rustls::CertificateError;

/// Why a query got no answer from an upstream.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum UpstreamError {
    /// The TCP connection could not be made (refused, unreachable, …).
    #[error("{}", describe_connect_error(.0))]
    Connect(Arc<io::Error>),
    /// The upstream's certificate failed validation or pinning.
    #[error("{}", describe_certificate_error(.0))]
    Certificate(CertificateError),
    /// The TLS handshake failed for another reason (no common protocol version, an alert, …).
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The connection broke during the TLS handshake.
    #[error("connection lost during the TLS handshake: {0}")]
    HandshakeIo(Arc<io::Error>),
    /// No answer within the query's time budget.
    #[error("no answer in time")]
    Timeout,
    /// The TCP connection was not made in time: nothing came back, as when a firewall drops
    /// the packets or the route leads nowhere (a refusal would have come back at once).
    #[error("TCP connect timed out: no reply from the upstream (packets dropped on the way?)")]
    ConnectTimeout,
    /// The TCP connection was made but the TLS handshake did not finish in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
    /// The connection closed while the query was outstanding.
    #[error("connection closed")]
    Closed,
    /// The connection already carries as many queries as it may.
    #[error("too many queries outstanding")]
    Busy,
    /// The upstream sent something that is not a valid answer to what we asked.
    #[error("malformed or mismatched response")]
    Protocol,
    /// The upstream is in backoff after a failure; no attempt was made.
    #[error("upstream is down")]
    Down,
    /// A DNS-over-HTTPS upstream answered with an HTTP status other than 2xx, or a 2xx that
    /// is not `application/dns-message`.
    #[error("HTTP: {0}")]
    Http(Arc<str>),
    /// The upstream's host name has no known address: the `bootstrap` servers gave none.
    #[error("cannot resolve {0}")]
    Resolve(Arc<str>),
}

impl UpstreamError {
    /// A socket error: the connection could not be set up, or failed.
    pub(crate) fn connect(error: io::Error) -> UpstreamError {
        UpstreamError::Connect(Arc::new(error))
    }

    /// Classifies an error from the TLS connector, which wraps rustls errors in `io::Error`.
    pub(crate) fn from_handshake(error: io::Error) -> UpstreamError {
        match error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(rustls::Error::InvalidCertificate(cert)) => {
                UpstreamError::Certificate(cert.clone())
            }
            Some(other) => UpstreamError::Handshake(other.clone()),
            None => UpstreamError::HandshakeIo(Arc::new(error)),
        }
    }

    /// A short stable name for logs (`ERROR_KIND=` in the journal) and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }

    pub(crate) fn error_kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Connect(e) => match e.kind() {
                io::ErrorKind::ConnectionRefused => UpstreamErrorKind::Refused,
                io::ErrorKind::NetworkUnreachable | io::ErrorKind::HostUnreachable => {
                    UpstreamErrorKind::Unreachable
                }
                io::ErrorKind::PermissionDenied => UpstreamErrorKind::NotPermitted,
                _ => UpstreamErrorKind::Connect,
            },
            UpstreamError::Certificate(e) => match e {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    UpstreamErrorKind::CertificateName
                }
                CertificateError::UnknownIssuer => UpstreamErrorKind::CertificateUnknownCa,
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    UpstreamErrorKind::CertificateExpired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    UpstreamErrorKind::CertificateNotYetValid
                }
                CertificateError::Other(other) if other.0.is::<PinMismatch>() => {
                    UpstreamErrorKind::CertificatePin
                }
                _ => UpstreamErrorKind::Certificate,
            },
            UpstreamError::Handshake(_) | UpstreamError::HandshakeIo(_) => UpstreamErrorKind::Tls,
            UpstreamError::Timeout
            | UpstreamError::ConnectTimeout
            | UpstreamError::HandshakeTimeout => UpstreamErrorKind::Timeout,
            UpstreamError::Closed => UpstreamErrorKind::Closed,
            UpstreamError::Busy => UpstreamErrorKind::Busy,
            UpstreamError::Protocol => UpstreamErrorKind::Protocol,
            UpstreamError::Down => UpstreamErrorKind::Down,
            UpstreamError::Http(_) => UpstreamErrorKind::Http,
            UpstreamError::Resolve(_) => UpstreamErrorKind::Resolve,
        }
    }
}

/// EPERM on connect means the kernel refused the packet before it left: under the packaged
/// unit that is its `IPAddressAllow=` list, set from the configuration unless systemd could
/// not set it.
fn describe_connect_error(error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::PermissionDenied {
        format!(
            "TCP connect not permitted ({error}): a firewall or the unit's IP allow list blocks \
             this address (`dns-proxy check-config` prints the list the configuration needs)"
        )
    } else {
        format!("TCP connect failed: {error}")
    }
}

fn describe_certificate_error(error: &CertificateError) -> String {
    match error {
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => format!(
            "certificate not valid for name {:?} (it names {})",
            expected.to_str(),
            presented.join(", ")
        ),
        CertificateError::NotValidForName => "certificate not valid for name".to_string(),
        CertificateError::UnknownIssuer => "certificate issued by an unknown CA".to_string(),
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            "certificate expired".to_string()
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "certificate not valid yet".to_string()
        }
        CertificateError::Other(other) if other.0.is::<PinMismatch>() => other.0.to_string(),
        other => format!("certificate rejected: {other}"),
    }
}

/// The server's key matched none of the configured `pin_sha256` values.
#[derive(Debug, thiserror::Error)]
#[error("certificate key matches no pin_sha256")]
pub(crate) struct PinMismatch;

/// How a new upstream connection's TLS handshake went: a full one, or an earlier session
/// resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    Full,
    Resumed,
}

/// The classes of upstream errors (`UpstreamError::error_kind`): a closed set, so that metrics
/// can create one counter per kind up front and count an error with an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamErrorKind {
    Refused,
    Unreachable,
    NotPermitted,
    Connect,
    CertificateName,
    CertificateUnknownCa,
    CertificateExpired,
    CertificateNotYetValid,
    CertificatePin,
    Certificate,
    Tls,
    Timeout,
    Closed,
    Busy,
    Protocol,
    Down,
    Http,
    Resolve,
}

impl UpstreamErrorKind {
    /// Every kind, in declaration order (`ALL[kind as usize] == kind`).
    pub(crate) const ALL: [UpstreamErrorKind; 18] = [
        UpstreamErrorKind::Refused,
        UpstreamErrorKind::Unreachable,
        UpstreamErrorKind::NotPermitted,
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::CertificateName,
        UpstreamErrorKind::CertificateUnknownCa,
        UpstreamErrorKind::CertificateExpired,
        UpstreamErrorKind::CertificateNotYetValid,
        UpstreamErrorKind::CertificatePin,
        UpstreamErrorKind::Certificate,
        UpstreamErrorKind::Tls,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::Closed,
        UpstreamErrorKind::Busy,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Down,
        UpstreamErrorKind::Http,
        UpstreamErrorKind::Resolve,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Refused => "refused",
            UpstreamErrorKind::Unreachable => "unreachable",
            UpstreamErrorKind::NotPermitted => "not_permitted",
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::CertificateName => "certificate_name",
            UpstreamErrorKind::CertificateUnknownCa => "certificate_unknown_ca",
            UpstreamErrorKind::CertificateExpired => "certificate_expired",
            UpstreamErrorKind::CertificateNotYetValid => "certificate_not_yet_valid",
            UpstreamErrorKind::CertificatePin => "certificate_pin",
            UpstreamErrorKind::Certificate => "certificate",
            UpstreamErrorKind::Tls => "tls",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Closed => "closed",
            UpstreamErrorKind::Busy => "busy",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Down => "down",
            UpstreamErrorKind::Http => "http",
            UpstreamErrorKind::Resolve => "resolve",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_connect_names_the_allow_list() {
        let blocked = UpstreamError::Connect(Arc::new(io::Error::from_raw_os_error(1)));
        assert_eq!(blocked.kind(), "not_permitted");
        assert!(blocked.to_string().contains("IP allow list"), "{blocked}");

        let refused =
            UpstreamError::Connect(Arc::new(io::Error::from(io::ErrorKind::ConnectionRefused)));
        assert_eq!(refused.kind(), "refused");
        assert!(
            refused.to_string().starts_with("TCP connect failed"),
            "{refused}"
        );
    }

    #[test]
    fn error_kinds_are_named() {
        assert_eq!(UpstreamError::Timeout.kind(), "timeout");
    }

    #[test]
    fn error_kinds_index_their_own_position() {
        for (i, kind) in UpstreamErrorKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind:?}");
        }
        let names: std::collections::BTreeSet<_> =
            UpstreamErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), UpstreamErrorKind::ALL.len(), "duplicate names");
    }
}
