//! What every server task shares with the daemon: the configuration and forwarder in force,
//! why the daemon is degraded if it is, and the metrics. The daemon owns and swaps them; the
//! servers (udp, tcp) and the systemd notifier only read them, so they depend on this module
//! and not on the daemon.

use std::sync::{Arc, RwLock};

use crate::common::lock;
use crate::common::metrics::Metrics;
use crate::common::snapshot::{self, Status};
use crate::config::Config;
use crate::resolve::forwarder::Forwarder;
use crate::upstream::bootstrap::AddressBook;

/// What every server task shares: the configuration and forwarder in force (swapped whole on
/// reload, so a query sees one consistent pair) and the metrics, which live here rather than
/// in the forwarder so that a reload keeps them.
pub(crate) struct Context {
    current: RwLock<(Arc<Config>, Arc<Forwarder>)>,
    /// Why the daemon is degraded (serving local zones only), until a reload fixes it.
    problem: RwLock<Option<String>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Upstream host names' addresses, which a reload keeps too: a new configuration starts
    /// with them even when the bootstrap servers cannot be reached then.
    pub(crate) addresses: Arc<AddressBook>,
}

impl Context {
    pub(crate) fn new(
        config: Config,
        forwarder: Forwarder,
        problem: Option<String>,
        metrics: Arc<Metrics>,
        addresses: Arc<AddressBook>,
    ) -> Self {
        Context {
            current: RwLock::new((Arc::new(config), Arc::new(forwarder))),
            problem: RwLock::new(problem),
            metrics,
            addresses,
        }
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        self.read().0.clone()
    }

    pub(crate) fn forwarder(&self) -> Arc<Forwarder> {
        self.read().1.clone()
    }

    /// Both at once, from one read: they belong to the same reload.
    pub(crate) fn current(&self) -> (Arc<Config>, Arc<Forwarder>) {
        let pair = self.read();
        (pair.0.clone(), pair.1.clone())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Arc<Config>, Arc<Forwarder>)> {
        lock::read(&self.current)
    }

    pub(crate) fn replace(&self, config: Config, forwarder: Forwarder) {
        *lock::write(&self.current) = (Arc::new(config), Arc::new(forwarder));
    }

    pub(crate) fn problem(&self) -> Option<String> {
        lock::read(&self.problem).clone()
    }

    pub(crate) fn set_problem(&self, problem: Option<String>) {
        *lock::write(&self.problem) = problem;
    }

    /// The state of the configuration and forwarder in force, the cache and the counters, for
    /// `dns-proxy status`; the daemon adds what it fixed at start (listeners, start time).
    pub(crate) fn snapshot(&self) -> Status {
        let (config, forwarder) = self.current();
        let metrics = &self.metrics;
        let forward_zones = config
            .forward_zones
            .iter()
            .zip(forwarder.zones_snapshot())
            .map(|(zone, upstreams)| snapshot::ForwardZone {
                zones: zone.zones.iter().map(ToString::to_string).collect(),
                upstreams,
            })
            .collect();
        let cache_size = forwarder.cache_size();
        let (entries, bytes, max_bytes) = cache_size.unwrap_or_default();
        Status {
            degraded: self.problem(),
            upstreams: forwarder.upstreams_snapshot(),
            forward_zones,
            link_zones: forwarder.learned_snapshot(),
            cache: snapshot::Cache {
                enabled: cache_size.is_some(),
                entries,
                bytes,
                max_bytes,
                hits: metrics.cache.hits.get(),
                misses: metrics.cache.misses.get(),
                stale: metrics.cache.stale.get(),
            },
            queries: metrics.transports_snapshot(),
            rate_limited: metrics.rate_limited.get(),
            local_answers: metrics.local_answers.get(),
            hedged: metrics.hedged.get(),
            in_flight: metrics.queries_in_flight.get(),
            dnssec: snapshot::Dnssec {
                mode: config.dnssec.as_str().to_string(),
                zones_cached: forwarder.zones_cached(),
                secure: metrics.dnssec[0].get(),
                insecure: metrics.dnssec[1].get(),
                bogus: metrics.dnssec[2].get(),
                indeterminate: metrics.dnssec[3].get(),
            },
            ..Status::default()
        }
    }

    /// The systemd STATUS line: traffic so far and upstream health, or why only the local
    /// zones are served.
    pub(crate) fn status(&self) -> String {
        match self.problem() {
            Some(problem) => format!(
                "degraded, local zones only (fix it, then reload): {problem}; {}",
                self.metrics.summary()
            ),
            None => format!(
                "{}; upstreams: {}",
                self.metrics.summary(),
                self.forwarder().describe_upstreams()
            ),
        }
    }
}
