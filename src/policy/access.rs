//! Which clients may use the resolver. The default is loopback only, so binding a public
//! address by mistake does not turn the host into an open resolver.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// An IP network: an address and how many of its leading bits a client must share. IPv4
/// addresses are always held as IPv4, so a client seen on a dual-stack socket as
/// `::ffff:a.b.c.d` and a network written that way match as the IPv4 they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network(IpNet);

/// Why a network in the configuration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address or network (e.g. \"192.168.1.0/24\" or \"::1\")")]
    Syntax(String),
    #[error("{text:?}: the prefix length must be at most {max}")]
    Prefix { text: String, max: u8 },
}

impl Network {
    /// 127.0.0.0/8.
    pub(crate) const LOOPBACK_V4: Network = Network(IpNet::V4(Ipv4Net::new_assert(
        Ipv4Addr::new(127, 0, 0, 0),
        8,
    )));
    /// ::1/128.
    pub(crate) const LOOPBACK_V6: Network =
        Network(IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)));

    /// Loopback, IPv4 and IPv6: the default `allow`.
    pub(crate) fn loopback() -> Vec<Network> {
        vec![Network::LOOPBACK_V4, Network::LOOPBACK_V6]
    }

    /// One address alone (/32 or /128). An IPv4-mapped IPv6 address is the IPv4 address it is.
    pub(crate) fn host(ip: IpAddr) -> Network {
        Network(IpNet::from(ip.to_canonical()))
    }

    /// Whether every address of `other` lies in this network.
    pub(crate) fn covers(&self, other: &Network) -> bool {
        self.0.contains(&other.0)
    }

    /// Whether `ip` lies in this network.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.0.contains(&ip.to_canonical())
    }
}

/// Whether any of `networks` holds `ip`.
pub(crate) fn allows(networks: &[Network], ip: IpAddr) -> bool {
    networks.iter().any(|network| network.contains(ip))
}

impl FromStr for Network {
    type Err = NetworkError;

    /// `address/prefix`, or a bare address meaning that address alone.
    fn from_str(text: &str) -> Result<Network, NetworkError> {
        let syntax = || NetworkError::Syntax(text.to_string());
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let net = match prefix {
            None => IpNet::from(addr),
            Some(prefix) => {
                let prefix = prefix.parse::<u8>().map_err(|_| syntax())?;
                IpNet::new(addr, prefix).map_err(|_| NetworkError::Prefix {
                    text: text.to_string(),
                    max: if addr.is_ipv4() { 32 } else { 128 },
                })?
            }
        };
        // `::ffff:a.b.c.d/n` names IPv4 addresses, which is how clients are matched.
        if let IpNet::V6(v6) = net
            && let (Some(v4), 96..) = (v6.addr().to_ipv4_mapped(), v6.prefix_len())
        {
            let net = Ipv4Net::new(v4, v6.prefix_len() - 96).map_err(|_| syntax())?;
            return Ok(Network(IpNet::V4(net)));
        }
        Ok(Network(net))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.0.addr(), self.0.prefix_len())
    }
}

/// What a client outside `allow` gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DenyAction {
    /// A REFUSED answer: the client learns at once that it must ask elsewhere.
    Refuse,
    /// Nothing: the query is ignored and a TCP connection closed, revealing less to a scanner.
    Drop,
}

impl DenyAction {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DenyAction::Refuse => "refuse",
            DenyAction::Drop => "drop",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<DenyAction> {
        match text {
            "refuse" => Some(DenyAction::Refuse),
            "drop" => Some(DenyAction::Drop),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn matches_by_prefix() {
        assert!(net("192.168.1.0/24").contains(ip("192.168.1.200")));
        assert!(!net("192.168.1.0/24").contains(ip("192.168.2.1")));
        assert!(net("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        assert!(net("fd00::/8").contains(ip("fd12:3456::1")));
        assert!(!net("fd00::/8").contains(ip("fe80::1")));
        assert!(net("::1").contains(ip("::1")));
        assert!(!net("::1").contains(ip("::2")));
        assert!(net("198.51.100.7").contains(ip("198.51.100.7")));
        assert!(!net("198.51.100.7").contains(ip("198.51.100.8")));
    }

    #[test]
    fn mapped_ipv4_is_matched_as_ipv4() {
        assert!(allows(&Network::loopback(), ip("::ffff:127.0.0.1")));
        assert!(!allows(&Network::loopback(), ip("::ffff:192.0.2.1")));
        assert!(net("::ffff:192.0.2.0/120").contains(ip("192.0.2.9")));
        assert_eq!(net("::ffff:192.0.2.0/120").to_string(), "192.0.2.0/24");
    }

    #[test]
    fn default_is_loopback_only() {
        let loopback = Network::loopback();
        assert!(allows(&loopback, ip("127.0.0.1")));
        assert!(allows(&loopback, ip("127.1.2.3")));
        assert!(allows(&loopback, ip("::1")));
        assert!(!allows(&loopback, ip("192.168.1.1")));
        assert!(!allows(&loopback, ip("2001:db8::1")));
    }

    #[test]
    fn host_and_covers() {
        assert_eq!(Network::host(ip("192.0.2.1")).to_string(), "192.0.2.1/32");
        assert_eq!(
            Network::host(ip("::ffff:192.0.2.1")).to_string(),
            "192.0.2.1/32"
        );
        assert_eq!(
            Network::host(ip("2001:db8::1")).to_string(),
            "2001:db8::1/128"
        );
        assert!(net("10.0.0.0/8").covers(&net("10.1.0.0/16")));
        assert!(net("10.0.0.0/8").covers(&net("10.0.0.0/8")));
        assert!(!net("10.1.0.0/16").covers(&net("10.0.0.0/8")));
        assert!(!net("10.0.0.0/8").covers(&net("11.0.0.0/16")));
        assert!(net("0.0.0.0/0").covers(&net("203.0.113.9")));
        assert!(!net("0.0.0.0/0").covers(&net("::1")));
    }

    #[test]
    fn rejects_bad_networks() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/x",
            "10.0.0/8",
            "host.example",
            "10.0.0.0/8/1",
        ] {
            assert!(
                matches!(bad.parse::<Network>(), Err(NetworkError::Syntax(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            "10.0.0.0/33".parse::<Network>(),
            Err(NetworkError::Prefix { max: 32, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Network>(),
            Err(NetworkError::Prefix { max: 128, .. })
        ));
        assert_eq!(net("10.1.0.0/16").to_string(), "10.1.0.0/16");
        assert_eq!(net("::1").to_string(), "::1/128");
    }
}
