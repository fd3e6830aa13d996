//! Builds the upstreams a configuration names: each `[[upstream]]` and encrypted forward-zone
//! upstream as DNS over TLS or over HTTPS, connecting to its address or, for a host name, to
//! the addresses the `bootstrap` servers give.

use std::sync::Arc;
use std::time::Duration;

use crate::common::metrics::Metrics;
use crate::config::{Endpoint, UpstreamConfig};
use crate::upstream::bootstrap::{AddressBook, Bootstrap, Target};
use crate::upstream::group::AnyUpstream;
use crate::upstream::tls::TlsSetupError;
use crate::upstream::{doh, dot};

/// What every encrypted upstream of one configuration shares.
pub(crate) struct Encrypted<'a> {
    pub(crate) idle_timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) metrics: &'a Metrics,
    pub(crate) bootstrap: Arc<Bootstrap>,
    /// Host names' addresses, kept across reloads.
    pub(crate) book: &'a AddressBook,
}

impl Encrypted<'_> {
    /// The upstream `config` describes, DNS over TLS or over HTTPS.
    pub(crate) fn build(&self, config: &UpstreamConfig) -> Result<AnyUpstream, TlsSetupError> {
        let target = match &config.address {
            Endpoint::Ip(address) => Target::Ip(*address),
            Endpoint::Name { host, port } => {
                Target::named(host, *port, self.bootstrap.clone(), self.book)
            }
        };
        let metrics = self.metrics.upstream_labelled(&config.label());
        let (idle, pool) = (self.idle_timeout, self.pool_size);
        match &config.url {
            None => dot::upstream(config, target, idle, pool, metrics)
                .map(|upstream| AnyUpstream::Tls(Box::new(upstream))),
            Some(url) => doh::upstream(config, url, target, idle, pool, metrics)
                .map(|upstream| AnyUpstream::Https(Box::new(upstream))),
        }
    }
}
