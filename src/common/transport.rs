//! The ways a client's query reaches the daemon, named once for the metrics' `transport` label,
//! the query log and the servers. A leaf module: the servers, the forwarder and the metrics
//! all import it, and it imports nothing.

/// How a client query came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// Plain DNS over UDP.
    Udp,
    /// Plain DNS over TCP (RFC 7766).
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484).
    Https,
    /// `ResolveHostname`, `ResolveAddress` and `ResolveRecord` on `org.freedesktop.resolve1`.
    Bus,
}

impl Transport {
    /// Every transport, in the order the metrics hold them.
    pub(crate) const ALL: [Transport; 5] = [
        Transport::Udp,
        Transport::Tcp,
        Transport::Tls,
        Transport::Https,
        Transport::Bus,
    ];

    /// The label value and the word in the query log.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Https => "https",
            Transport::Bus => "dbus",
        }
    }
}
