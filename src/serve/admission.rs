//! Whether a client's query is served, refused or dropped: the allow list, then the per-client
//! rate limit. Decided here once for every transport; the servers only act on the decision.

use std::net::IpAddr;

use crate::common::metrics::Metrics;
use crate::config::Config;
use crate::policy::access::{self, DenyAction};
use crate::resolve::forwarder::Forwarder;

/// What a server does with a client's query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Serve,
    /// Answer REFUSED.
    Refuse,
    /// No answer: a UDP datagram is ignored, a TCP connection closed.
    Drop,
}

impl Admission {
    /// The allow list's decision for `client`: whether it may ask at all. TCP decides this once
    /// per connection, UDP once per datagram.
    pub(crate) fn of_client(config: &Config, client: IpAddr) -> Admission {
        match access::allows(&config.allow, client) {
            true => Admission::Serve,
            false => Admission::of_action(config.deny_action),
        }
    }

    /// The decision for one query of a client admitted as `self`: an allowed client over the
    /// rate limit gets `rate_limit_action`, and is counted.
    pub(crate) fn of_query(
        self,
        config: &Config,
        forwarder: &Forwarder,
        metrics: &Metrics,
        client: IpAddr,
    ) -> Admission {
        if self != Admission::Serve || forwarder.admit(client) {
            return self;
        }
        metrics.rate_limited.inc();
        Admission::of_action(config.rate_limit_action)
    }

    fn of_action(action: DenyAction) -> Admission {
        match action {
            DenyAction::Refuse => Admission::Refuse,
            DenyAction::Drop => Admission::Drop,
        }
    }
}
