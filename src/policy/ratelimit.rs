//! Per-client rate limiting (off by default): a token bucket per client address, refilled at
//! `rate_limit` queries per second with one second's worth of burst. Meant for a resolver
//! that serves a network; on a host every local program shares 127.0.0.1.
//!
//! Clients are hashed into a fixed table of buckets, so memory stays the same whatever a
//! flood from spoofed addresses does; two clients that share a bucket share its budget.
//! IPv6 clients are counted per /64, since one host can use any address of its /64.

use crate::common::lock;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

/// Buckets in the table: 64 Ki × 16 bytes, allocated only when the limit is on.
const BUCKETS: usize = 1 << 16;

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f32,
    /// Milliseconds since the limiter started, at the last refill.
    at_ms: u32,
}

pub(crate) struct RateLimiter {
    rate: f32,
    started: Instant,
    buckets: Box<[Mutex<Bucket>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl RateLimiter {
    /// A limiter of `rate` queries per second per client (at least 1).
    pub(crate) fn new(rate: u32) -> RateLimiter {
        let rate = rate.max(1) as f32;
        let full = Bucket {
            tokens: rate,
            at_ms: 0,
        };
        RateLimiter {
            rate,
            started: Instant::now(),
            buckets: (0..BUCKETS).map(|_| Mutex::new(full)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// Whether a query from `client` at `now` is within its rate; takes a token if so.
    pub(crate) fn admit(&self, client: IpAddr, now: Instant) -> bool {
        let mut hasher = self.hasher.build_hasher();
        match client.to_canonical() {
            IpAddr::V4(ip) => hasher.write_u32(u32::from(ip)),
            IpAddr::V6(ip) => hasher.write_u64((u128::from(ip) >> 64) as u64),
        }
        let slot = (hasher.finish() as usize) % BUCKETS;
        let now_ms = now.saturating_duration_since(self.started).as_millis() as u32;
        let mut bucket = lock::lock(&self.buckets[slot]);
        let elapsed = now_ms.wrapping_sub(bucket.at_ms) as f32 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.rate);
        bucket.at_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn each_client_gets_its_rate_with_one_second_of_burst() {
        let limiter = RateLimiter::new(10);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let admitted = |ip| {
            (0..100)
                .filter(|_| limiter.admit(ip, Instant::now()))
                .count()
        };
        assert_eq!(admitted(a), 10, "the burst");
        assert_eq!(admitted(b), 10, "another client has its own budget");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(admitted(a), 5, "refilled at 10 per second");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(admitted(a), 10, "never more than one second's worth");
    }

    #[tokio::test(start_paused = true)]
    async fn ipv6_clients_are_counted_per_64() {
        let limiter = RateLimiter::new(5);
        let mut admitted = 0;
        for host in 0..20u16 {
            let ip: IpAddr = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            admitted += usize::from(limiter.admit(ip, Instant::now()));
        }
        assert_eq!(admitted, 5);
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.admit(other, Instant::now()));
    }
}
