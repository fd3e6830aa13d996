//! The outcomes of talking to an upstream that are counted by kind: the classes of upstream
//! errors and how a TLS handshake went. A leaf module: the upstream code that produces these
//! and the metrics that label series by them both import it, and neither imports the other
//! for it.

/// How a new upstream connection's TLS handshake went: a full one, or an earlier session
/// resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    Full,
    Resumed,
}

/// The classes of upstream errors (`UpstreamError::error_kind`): a closed set, so that metrics
/// can create one counter per kind up front and count an error with an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
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
}

impl UpstreamErrorKind {
    /// Every kind, in declaration order (`ALL[kind as usize] == kind`).
    pub const ALL: [UpstreamErrorKind; 16] = [
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
    ];

    pub fn as_str(self) -> &'static str {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
