//! Where an upstream is reached, as written in `address` and `url`: an IP address and port, or
//! a host name and port that only the `bootstrap` servers may resolve; and the
//! `https://HOST[:port]/path` of a DNS-over-HTTPS upstream (RFC 8484). Pure parsing, no I/O.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use rustls::pki_types::ServerName;

/// DNS over HTTPS's port, when a `url` gives none.
pub(crate) const HTTPS_PORT: u16 = 443;
/// Longest URL path: far more than any real one.
const MAX_PATH: usize = 256;

/// Where to connect to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// An address: no lookup at all.
    Ip(SocketAddr),
    /// A host name, lower case without the final dot, resolved through `bootstrap` only.
    Name { host: String, port: u16 },
}

impl Endpoint {
    /// The address, when it is one.
    pub fn ip(&self) -> Option<SocketAddr> {
        match self {
            Endpoint::Ip(address) => Some(*address),
            Endpoint::Name { .. } => None,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            Endpoint::Ip(address) => address.port(),
            Endpoint::Name { port, .. } => *port,
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Ip(address) => address.fmt(f),
            Endpoint::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The URL of a DNS-over-HTTPS upstream, split as requests need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpsUrl {
    /// `HOST[:port]` as written (lower case): the request's `:authority`.
    pub(crate) authority: String,
    /// The host: an IP address (IPv6 without brackets) or a name.
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Starts with `/`; no query string, no fragment.
    pub(crate) path: String,
}

impl fmt::Display for HttpsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority, self.path)
    }
}

impl HttpsUrl {
    /// Where the URL's host is, without any lookup: its address when the host is one.
    pub(crate) fn endpoint(&self) -> Endpoint {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => Endpoint::Ip(SocketAddr::new(ip, self.port)),
            Err(_) => Endpoint::Name {
                host: self.host.clone(),
                port: self.port,
            },
        }
    }
}

/// Parses `https://HOST[:port]/path`; the error is the reason, for the `url` key.
pub(crate) fn parse_https_url(text: &str) -> Result<HttpsUrl, String> {
    let text = text.trim();
    let Some(rest) = strip_prefix_ignore_case(text, "https://") else {
        return Err(format!(
            "{text:?} is not an https:// URL (DNS over HTTPS is always over TLS, e.g. \
             \"https://dns.quad9.net/dns-query\")"
        ));
    };
    if let Some(at) = rest.find(['?', '#']) {
        let what = match rest.as_bytes()[at] {
            b'?' => "a query string",
            _ => "a fragment",
        };
        return Err(format!(
            "{text:?} has {what}: the URL is a path only (POST requests carry the query)"
        ));
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if authority.contains('@') {
        return Err(format!("{text:?} has user information; none is allowed"));
    }
    let (host, port) = split_host_port(authority).ok_or_else(|| {
        format!("{text:?} has no host (e.g. \"https://dns.quad9.net/dns-query\")")
    })?;
    let port = match port {
        None => HTTPS_PORT,
        Some(port) => match port.parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(format!("{text:?} has a port that is not 1 to 65535")),
        },
    };
    let host = host_name(host).ok_or_else(|| {
        format!("{text:?}: {host:?} is neither an IP address nor a valid host name")
    })?;
    let visible = path.bytes().all(|b| b.is_ascii_graphic());
    if !path.starts_with('/') || !visible || path.len() > MAX_PATH {
        return Err(format!(
            "{text:?}: the path must start with '/' and be at most {MAX_PATH} visible ASCII \
             characters (e.g. \"https://dns.quad9.net/dns-query\")"
        ));
    }
    Ok(HttpsUrl {
        authority: authority.to_ascii_lowercase(),
        host,
        port,
        path: path.to_string(),
    })
}

/// A DoT `address` that is not an IP address: `name` or `name:port`; `None` if it is not a
/// valid host name.
pub(crate) fn parse_host_endpoint(text: &str, default_port: u16) -> Option<Endpoint> {
    let text = text.trim();
    let (host, port) = match text.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().ok().filter(|p| *p != 0)?),
        None => (text, default_port),
    };
    let host = host_name(host)?;
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    Some(Endpoint::Name { host, port })
}

/// `host` lower case without a final dot, if it is an IP address or a valid DNS name of at
/// least two labels (a single label would be looked up as a search-list name elsewhere).
fn host_name(host: &str) -> Option<String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let valid_labels = host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let name_ok = valid_labels && host.contains('.') && host.len() <= 253;
    (name_ok && ServerName::try_from(host.as_str()).is_ok()).then_some(host)
}

/// `host[:port]` or `[v6][:port]`: the host (without brackets) and the port as written.
fn split_host_port(authority: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        return (!host.is_empty()).then_some((host, port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    (!host.is_empty()).then_some((host, port))
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &text[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_urls_are_split() {
        let url = parse_https_url("https://dns.quad9.net/dns-query").unwrap();
        assert_eq!(url.authority, "dns.quad9.net");
        assert_eq!(url.port, 443);
        assert_eq!(url.path, "/dns-query");
        assert_eq!(url.to_string(), "https://dns.quad9.net/dns-query");
        assert_eq!(
            url.endpoint(),
            Endpoint::Name {
                host: "dns.quad9.net".into(),
                port: 443
            }
        );
        let url = parse_https_url("HTTPS://Doh.Test:8443/q").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("doh.test", 8443));
        assert_eq!(url.authority, "doh.test:8443");
        let url = parse_https_url("https://[2620:fe::fe]/dns-query").unwrap();
        assert_eq!(
            url.endpoint(),
            Endpoint::Ip("[2620:fe::fe]:443".parse().unwrap())
        );
        let url = parse_https_url("https://127.0.0.1:8443/").unwrap();
        assert_eq!(
            url.endpoint(),
            Endpoint::Ip("127.0.0.1:8443".parse().unwrap())
        );
    }

    #[test]
    fn bad_urls_say_why() {
        for (url, reason) in [
            ("http://dns.quad9.net/dns-query", "not an https:// URL"),
            ("dns.quad9.net/dns-query", "not an https:// URL"),
            ("https:///dns-query", "no host"),
            ("https://:443/dns-query", "no host"),
            ("https://dns.quad9.net/dns-query?dns=x", "query string"),
            ("https://dns.quad9.net/dns-query#x", "fragment"),
            ("https://dns.quad9.net", "must start with '/'"),
            ("https://dns.quad9.net:0/q", "port"),
            ("https://dns.quad9.net:99999/q", "port"),
            ("https://user@dns.quad9.net/q", "user information"),
            ("https://bad_host!/q", "neither an IP address"),
            ("https://dns.quad9.net/a b", "visible ASCII"),
        ] {
            let error = parse_https_url(url).unwrap_err();
            assert!(error.contains(reason), "{url}: {error}");
        }
    }

    #[test]
    fn host_endpoints() {
        assert_eq!(
            parse_host_endpoint("dns.quad9.net", 853),
            Some(Endpoint::Name {
                host: "dns.quad9.net".into(),
                port: 853
            })
        );
        assert_eq!(
            parse_host_endpoint("Dns.Google.:8853", 853).map(|e| e.to_string()),
            Some("dns.google:8853".to_string())
        );
        for bad in [
            "",
            "dns",
            "dns.google:0",
            "dns.google:x",
            "a b.c",
            "9.9.9.9",
            "-a.b",
        ] {
            assert_eq!(parse_host_endpoint(bad, 853), None, "{bad}");
        }
    }
}
