//! Counters shared by the listeners and the forwarder, read for the systemd `STATUS=` line.
//! Plain relaxed atomics: they are statistics, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Stats {
    /// Client queries received over UDP (valid or not).
    pub udp_queries: AtomicU64,
    /// Client queries received over TCP (valid or not).
    pub tcp_queries: AtomicU64,
    /// Answers that came from an upstream.
    pub answered: AtomicU64,
    /// Queries answered from the cache.
    pub cache_hits: AtomicU64,
    /// Queries the cache could not answer (only counted while the cache is on).
    pub cache_misses: AtomicU64,
    /// Queries answered with an expired entry because every upstream failed.
    pub cache_stale: AtomicU64,
    /// Queries answered by a built-in local zone (localhost, private reverse zones).
    pub local: AtomicU64,
    /// Queries also sent to a second upstream because the first was slow (hedging).
    pub hedged: AtomicU64,
    /// Queries answered SERVFAIL because no upstream answered in time.
    pub failed: AtomicU64,
    /// Malformed or unsupported queries answered FORMERR, NOTIMP, REFUSED or BADVERS.
    pub rejected: AtomicU64,
    /// Queries over the per-client rate limit (dropped or refused, per `rate_limit_action`).
    pub rate_limited: AtomicU64,
    /// Packets dropped without an answer (too short, responses, over the in-flight limit).
    pub dropped: AtomicU64,
}

impl Stats {
    pub fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One line for `STATUS=`: what has been served so far.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} queries (udp {}, tcp {}): {} from cache, {} answered by upstream, {} local, {} stale, {} failed, {} rejected, {} rate-limited, {} dropped",
            get(&self.udp_queries) + get(&self.tcp_queries),
            get(&self.udp_queries),
            get(&self.tcp_queries),
            get(&self.cache_hits),
            get(&self.answered),
            get(&self.local),
            get(&self.cache_stale),
            get(&self.failed),
            get(&self.rejected),
            get(&self.rate_limited),
            get(&self.dropped),
        )
    }
}
