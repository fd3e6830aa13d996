//! `check-config`: the effective configuration as TOML a user could paste into a file, each
//! value followed by a comment naming its source. The keys print themselves as declared; the
//! tables (`[metrics]`, `[[upstream]]`, `[[forward_zone]]`) are written here.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::declare::Keys as _;
use super::types::{UpstreamConfig, ZoneUpstream};
use super::units::toml_string;
use super::{Loaded, credential_path};

impl Loaded {
    /// The effective configuration as TOML a user could paste into a file, each value followed
    /// by a comment naming its source (`check-config`).
    pub fn describe(&self) -> String {
        let config = &self.config;
        let mut keys = Vec::new();
        config.render(&mut keys);
        let mut out = String::from(
            "# Effective dns-proxy configuration; the comment after each value names its source.\n",
        );
        for (key, value) in keys {
            let file = match key {
                "tls_certificate" => Some(&config.tls_certificate),
                "tls_key" => Some(&config.tls_key),
                _ => None,
            };
            match (value, file) {
                (Some(value), _) => {
                    out.push_str(&format!("{key} = {value}  # {}\n", self.origin(key)));
                }
                (None, Some(_)) => out.push_str(&format!(
                    "# {key} not set: no DNS over TLS or HTTPS for clients\n"
                )),
                (None, None) => {}
            }
            if let Some(Some(path)) = file {
                let read = credential_path(path, self.credentials.as_deref());
                if read != *path {
                    out.push_str(&format!(
                        "# {key} is read from {} ($CREDENTIALS_DIRECTORY)\n",
                        read.display()
                    ));
                } else if self.identity.is_none() {
                    out.push_str(&format!(
                        "# {key} not read here: a relative path, and no $CREDENTIALS_DIRECTORY \
                         (systemd sets it for the service); the daemon reads and checks it\n"
                    ));
                }
            }
        }
        match &config.metrics {
            Some(metrics) => {
                out.push_str(&format!("\n[metrics]  # {}\n", self.origin("metrics")));
                out.push_str(&format!(
                    "listen = {}\n",
                    toml_string(&metrics.listen.to_string())
                ));
            }
            None => out.push_str(
                "\n# [metrics] not set: no metrics endpoint, unless systemd passes a socket \
                 named \"metrics\"\n",
            ),
        }
        for upstream in &config.upstreams {
            out.push_str(&format!("\n[[upstream]]  # {}\n", self.origin("upstream")));
            describe_tls_upstream(&mut out, upstream);
        }
        for zone in &config.forward_zones {
            let names: Vec<String> = zone
                .zones
                .iter()
                .map(|name| toml_string(&name.to_string()))
                .collect();
            out.push_str(&format!(
                "\n[[forward_zone]]  # {}\nzones = [{}]\ndnssec = {}\n",
                self.origin("forward_zone"),
                names.join(", "),
                toml_string(zone.dnssec.as_str())
            ));
            for upstream in &zone.upstreams {
                out.push_str("[[forward_zone.upstream]]\n");
                match upstream {
                    ZoneUpstream::Tls(upstream) => describe_tls_upstream(&mut out, upstream),
                    ZoneUpstream::Plain(address) => out.push_str(&format!(
                        "address = {}\nprotocol = \"udp\"\n",
                        toml_string(&address.to_string())
                    )),
                }
            }
        }
        out
    }
}

/// The keys of a DNS-over-TLS or DNS-over-HTTPS upstream, for `check-config`.
fn describe_tls_upstream(out: &mut String, upstream: &UpstreamConfig) {
    match &upstream.url {
        None => out.push_str(&format!(
            "address = {}\nprotocol = \"tls\"\n",
            toml_string(&upstream.address.to_string())
        )),
        Some(url) => {
            out.push_str(&format!("url = {}\n", toml_string(&url.to_string())));
            if upstream.address_given {
                out.push_str(&format!(
                    "address = {}\n",
                    toml_string(&upstream.address.to_string())
                ));
            } else {
                out.push_str("# address not set: the URL's host is connected to\n");
            }
            out.push_str("protocol = \"https\"\n");
        }
    }
    out.push_str(&format!(
        "tls_name = {}\n",
        toml_string(&upstream.tls_name.to_str())
    ));
    match &upstream.ca_file {
        Some(path) => out.push_str(&format!(
            "ca_file = {}\n",
            toml_string(&path.display().to_string())
        )),
        None => out.push_str("# ca_file not set: the system's trusted roots are used\n"),
    }
    let pins: Vec<String> = upstream
        .pin_sha256
        .iter()
        .map(|pin| toml_string(&STANDARD.encode(pin)))
        .collect();
    out.push_str(&format!("pin_sha256 = [{}]\n", pins.join(", ")));
}
