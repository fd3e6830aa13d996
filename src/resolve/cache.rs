//! The answer cache: upstream responses kept for their TTL, bounded in bytes.
//!
//! Entries are keyed by the question (name folded to lower case, type, class) and the header
//! bits that change an upstream's answer (RD, AD, CD, DO), so a DNSSEC-validating client never
//! gets an answer fetched without signatures. A hit costs one hash lookup and one copy: the
//! stored [`Response`] is already stripped of padding, and the offsets of its TTL fields are
//! known, so counting TTLs down needs no parsing.
//!
//! What is kept, and for how long (TTLs clamped to `cache_min_ttl`..`cache_max_ttl`):
//! - NOERROR with records: the smallest TTL of its records.
//! - NXDOMAIN and NODATA: the SOA's TTL or MINIMUM, whichever is smaller (RFC 2308 §5), at
//!   most `cache_negative_ttl`; without an SOA they are not cached.
//! - SERVFAIL from an upstream: a few seconds (RFC 9520), so a broken zone is not asked for on
//!   every query; it never replaces an answer that can still be served stale.
//! - An answer that failed DNSSEC validation (its SERVFAIL, or the data for a client that set
//!   CD): 60 s at most, so a zone that is fixed is soon answered again.
//! - Nothing else (REFUSED, truncated, TTL 0).
//!
//! Each entry keeps the DNSSEC verdict on its answer, for the counters and the query log: a
//! hit is never validated again.
//!
//! Expired entries stay until evicted: within `cache_serve_stale` of expiry the forwarder may
//! serve one with a 30 s TTL when every upstream fails (RFC 8767). Eviction is by weight (bytes)
//! with quick_cache's S3-FIFO, which keeps often-asked names when a scan of one-off names
//! passes through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quick_cache::Weighter;
use tokio::time::Instant;

use crate::config::CacheConfig;
use crate::dnssec::verdict::Security;
use crate::wire::dns::{self, Query, Response, Section};
use crate::wire::name::{ZoneName, suffixes};

/// TTL written into a stale answer (RFC 8767 §4 recommends 30 s).
pub(crate) const STALE_TTL: u32 = 30;
/// How long an upstream's SERVFAIL is kept.
const SERVFAIL_TTL: Duration = Duration::from_secs(5);
/// Longest an answer that failed validation is kept (unbound's `val-bogus-ttl`).
const BOGUS_TTL: Duration = Duration::from_secs(60);
/// A hit within the last tenth of an entry's lifetime triggers a background refresh, so a
/// name in steady use never expires in front of a client.
const PREFETCH_FRACTION: u32 = 10;
/// Entries living less than this are not prefetched: a refresh would cost more than it saves.
const PREFETCH_MIN_LIFETIME: Duration = Duration::from_secs(10);
/// Bytes an entry costs beyond its key, message and TTL offsets: the entry and its `Arc`, the
/// cache's slot and table, and the allocator's headers and rounding (measured: see
/// docs/design-measurements.md).
const ENTRY_OVERHEAD: u64 = 256;
/// Longest key: a 255-byte name with its root label, type, class, and the bits byte.
const MAX_KEY: usize = 256 + 4 + 1;
/// A guess of the average entry size, used only to size the table up front.
const TYPICAL_ENTRY: u64 = 512;

/// Bytes of a key after the question's name: type, class and the answer bits.
const KEY_TRAILER: usize = 4 + 1;

/// A cache key, built on the stack so a hit allocates nothing but the answer.
pub struct Key {
    bytes: [u8; MAX_KEY],
    len: usize,
}

impl Key {
    /// The key of `query`.
    pub fn of(query: &Query) -> Key {
        let question = query.question();
        let mut bytes = [0u8; MAX_KEY];
        // parse_query guarantees a question fits; the min keeps a bad one from panicking.
        let len = question.len().min(MAX_KEY - 1);
        bytes[..len].copy_from_slice(&question[..len]);
        // Only the name folds case; label length bytes are below 64 and stay as they are.
        bytes[..len.saturating_sub(4)].make_ascii_lowercase();
        bytes[len] = query.answer_bits();
        Key {
            bytes,
            len: len + 1,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// A cached response.
pub struct Entry {
    /// With its TTLs clamped; held inline, one allocation fewer per entry.
    response: Response,
    /// Offsets of the TTL fields of every record but OPT (a message is at most 64 KiB).
    ttl_offsets: Box<[u16]>,
    stored_at: Instant,
    /// Fresh for this long after `stored_at`.
    lifetime: Duration,
    /// Set by the first hit that asks for a refresh, so one is started per entry.
    prefetching: AtomicBool,
    /// The DNSSEC verdict on the answer.
    security: Security,
}

impl Entry {
    fn answer(&self, query: &Query, ttl: impl Fn(u32) -> u32) -> Vec<u8> {
        let mut answer = query.answer(&self.response);
        let stored = self.response.bytes();
        for &at in self.ttl_offsets.iter() {
            let at = usize::from(at);
            if let Some(stored_ttl) = dns::read_u32(stored, at) {
                dns::set_ttl(&mut answer, at, ttl(stored_ttl));
            }
        }
        answer
    }

    /// The DNSSEC verdict on the entry's answer.
    pub(crate) fn security(&self) -> Security {
        self.security
    }
}

/// What the cache holds for a question.
pub enum Lookup {
    /// A fresh answer for the client; `prefetch` asks the caller to refresh the entry.
    Hit {
        answer: Vec<u8>,
        prefetch: bool,
        security: Security,
    },
    /// An expired entry still within the serve-stale window: the answer of last resort.
    Stale(Arc<Entry>),
    Miss,
}

/// Weighs entries by the bytes they hold.
#[derive(Clone)]
struct Bytes;

impl Weighter<Box<[u8]>, Arc<Entry>> for Bytes {
    fn weight(&self, key: &Box<[u8]>, entry: &Arc<Entry>) -> u64 {
        let offsets = std::mem::size_of_val(&*entry.ttl_offsets);
        (key.len() + entry.response.bytes().len() + offsets) as u64 + ENTRY_OVERHEAD
    }
}

pub struct Cache {
    entries: quick_cache::sync::Cache<Box<[u8]>, Arc<Entry>, Bytes>,
    config: CacheConfig,
}

impl Cache {
    pub fn new(config: &CacheConfig) -> Cache {
        let bytes = config.size as u64;
        let items = (bytes / TYPICAL_ENTRY).max(16) as usize;
        Cache {
            entries: quick_cache::sync::Cache::with_weighter(items, bytes, Bytes),
            config: config.clone(),
        }
    }

    /// The cached answer for `query` at `now`.
    pub fn lookup(&self, key: &Key, query: &Query, now: Instant) -> Lookup {
        let Some(entry) = self.entries.get(key.as_bytes()) else {
            return Lookup::Miss;
        };
        let age = now.saturating_duration_since(entry.stored_at);
        if age < entry.lifetime {
            let elapsed = age.as_secs().min(u64::from(u32::MAX)) as u32;
            let answer = entry.answer(query, |stored| stored.saturating_sub(elapsed));
            let prefetch = self.config.prefetch
                && entry.lifetime >= PREFETCH_MIN_LIFETIME
                && entry.lifetime - age < entry.lifetime / PREFETCH_FRACTION
                && !entry.prefetching.swap(true, Ordering::Relaxed);
            return Lookup::Hit {
                answer,
                prefetch,
                security: entry.security,
            };
        }
        if age < entry.lifetime + self.config.serve_stale
            && entry.response.rcode() != dns::RCODE_SERVFAIL
        {
            return Lookup::Stale(entry);
        }
        self.entries.remove(key.as_bytes());
        Lookup::Miss
    }

    /// The answer to serve from an expired entry when resolution failed.
    pub(crate) fn stale_answer(entry: &Entry, query: &Query) -> Vec<u8> {
        entry.answer(query, |stored| stored.min(STALE_TTL))
    }

    /// Keeps `response`, with its DNSSEC verdict `security`, for `key` if it may be cached.
    /// Returns the response to answer with: the cached copy, whose TTLs are clamped like every
    /// later hit's, or `response` itself.
    pub fn insert(
        &self,
        key: &Key,
        response: Arc<Response>,
        now: Instant,
        security: Security,
    ) -> Arc<Response> {
        let Some(entry) = self.entry(&response, now, security) else {
            return response;
        };
        let clamped = Arc::new(entry.response.clone());
        // A validation failure replaces what was there: the old answer must not be served
        // stale in its place.
        if response.rcode() == dns::RCODE_SERVFAIL && security != Security::Bogus {
            // A stale answer is worth more than a remembered failure.
            let servable = |old: &Arc<Entry>| {
                old.response.rcode() != dns::RCODE_SERVFAIL
                    && now.saturating_duration_since(old.stored_at)
                        < old.lifetime + self.config.serve_stale
            };
            if self
                .entries
                .peek(key.as_bytes())
                .is_some_and(|old| servable(&old))
            {
                return clamped;
            }
        }
        self.entries.insert(key.as_bytes().into(), Arc::new(entry));
        clamped
    }

    /// The entry for a response, with its TTLs clamped, or `None` if it must not be cached.
    fn entry(&self, response: &Response, now: Instant, security: Security) -> Option<Entry> {
        let config = &self.config;
        let negative = response.rcode() == dns::RCODE_NXDOMAIN
            || (response.rcode() == dns::RCODE_NOERROR && response.answer_count() == 0);
        let max_ttl = match (negative, security) {
            (_, Security::Bogus) => BOGUS_TTL.min(config.max_ttl.max(config.min_ttl)),
            (true, _) => config.negative_ttl,
            (false, _) => config.max_ttl,
        };
        // max, then min: a minimum above the maximum wins instead of panicking.
        let clamp = |ttl: u32| {
            let seconds = Duration::from_secs(u64::from(ttl))
                .max(config.min_ttl)
                .min(max_ttl);
            seconds.as_secs().min(u64::from(u32::MAX)) as u32
        };
        if dns::is_truncated(response.bytes()) {
            return None;
        }
        let mut response = response.clone();
        let records: Vec<dns::Record> = response.records().collect();
        let lifetime = match response.rcode() {
            dns::RCODE_SERVFAIL if security == Security::Bogus => BOGUS_TTL,
            dns::RCODE_SERVFAIL => SERVFAIL_TTL,
            _ if negative => {
                let soa = records
                    .iter()
                    .find(|r| r.section == Section::Authority && r.rtype == dns::TYPE_SOA)?;
                let rdata = response.rdata(soa);
                let minimum = dns::read_u32(rdata, rdata.len().checked_sub(4)?)?;
                Duration::from_secs(u64::from(clamp(soa.ttl.min(minimum))))
            }
            dns::RCODE_NOERROR => {
                let smallest = records.iter().map(|r| r.ttl).min()?;
                Duration::from_secs(u64::from(clamp(smallest)))
            }
            _ => return None,
        };
        if lifetime.is_zero() {
            return None;
        }
        let mut ttl_offsets = Vec::with_capacity(records.len());
        for record in &records {
            response.set_ttl(record.ttl_at, clamp(record.ttl));
            ttl_offsets.push(u16::try_from(record.ttl_at).ok()?);
        }
        Some(Entry {
            response,
            ttl_offsets: ttl_offsets.into_boxed_slice(),
            stored_at: now,
            lifetime,
            prefetching: AtomicBool::new(false),
            security,
        })
    }

    /// Bytes held, as weighed for the bound.
    pub fn weight(&self) -> u64 {
        self.entries.weight()
    }

    /// The bound on [`Cache::weight`] (`cache_size`).
    pub(crate) fn capacity(&self) -> u64 {
        self.entries.capacity()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Removes every entry whose name is one of `zones` or below one (label by label:
    /// `example.com` takes `a.example.com`, not `badexample.com`); with no zones, every entry.
    /// Returns how many went.
    ///
    /// Queries keep going meanwhile: each shard is locked only while it is swept, and an
    /// answer being fetched now is stored when it comes.
    pub(crate) fn flush(&self, zones: &[ZoneName]) -> u64 {
        let removed = AtomicU64::new(0);
        self.entries.retain(|key, _| {
            // The key's name is lower case, like a zone's.
            let name = &key[..key.len().saturating_sub(KEY_TRAILER)];
            let at_or_below = |zone: &ZoneName| suffixes(name).any(|suffix| suffix == zone.wire());
            let keep = !zones.is_empty() && !zones.iter().any(at_or_below);
            if !keep {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        removed.into_inner()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as Question};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    const FLAG_CD: u8 = 0x10;

    fn name(text: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        for label in text.split('.').filter(|l| !l.is_empty()) {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        wire
    }

    /// A client's A query, encoded by hickory-proto rather than by the code under test; `edns`
    /// is `Some(do_bit)`, `flags3` the header's fourth byte (only AD and CD are used).
    fn query(id: u16, qname: &str, edns: Option<bool>, flags3: u8) -> Query {
        let mut message = Message::new(id, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.metadata.authentic_data = flags3 & 0x20 != 0;
        message.metadata.checking_disabled = flags3 & FLAG_CD != 0;
        message.add_query(Question::query(
            Name::from_ascii(qname).unwrap(),
            RecordType::A,
        ));
        if let Some(dnssec_ok) = edns {
            let mut opt = Edns::new();
            opt.set_max_payload(1232).set_dnssec_ok(dnssec_ok);
            message.set_edns(opt);
        }
        dns::parse_query(&message.to_vec().unwrap()).unwrap()
    }

    /// An upstream response to `qname` with `rcode`, answer records (TTLs), an SOA in the
    /// authority section when `soa` gives (ttl, minimum), and an OPT record.
    fn response(qname: &str, rcode: u8, answers: &[u32], soa: Option<(u32, u32)>) -> Arc<Response> {
        let mut r = vec![0, 0, 0x81, 0x80 | rcode, 0, 1];
        r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
        r.extend_from_slice(&u16::from(soa.is_some()).to_be_bytes());
        r.extend_from_slice(&[0, 1]);
        r.extend_from_slice(&name(qname));
        r.extend_from_slice(&[0, 1, 0, 1]);
        for (i, ttl) in answers.iter().enumerate() {
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&[0, 4, 192, 0, 2, i as u8]);
        }
        if let Some((ttl, minimum)) = soa {
            let mut rdata = name("ns.example");
            rdata.extend_from_slice(&name("admin.example"));
            for value in [1u32, 7200, 900, 1_209_600, minimum] {
                rdata.extend_from_slice(&value.to_be_bytes());
            }
            r.extend_from_slice(&[0xc0, 12, 0, 6, 0, 1]);
            r.extend_from_slice(&ttl.to_be_bytes());
            r.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            r.extend_from_slice(&rdata);
        }
        // OPT with 8 bytes of padding, as upstreams answer padded queries.
        r.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 12, 0, 12, 0, 8]);
        r.extend_from_slice(&[0; 8]);
        Arc::new(Response::prepare(&r).unwrap())
    }

    fn ttls(answer: &[u8]) -> Vec<u32> {
        Response::prepare(answer)
            .unwrap()
            .records()
            .map(|r| r.ttl)
            .collect()
    }

    fn cache_with(change: impl FnOnce(&mut CacheConfig)) -> Cache {
        let mut config = CacheConfig::default();
        change(&mut config);
        Cache::new(&config)
    }

    fn hit(lookup: Lookup) -> Vec<u8> {
        match lookup {
            Lookup::Hit { answer, .. } => answer,
            Lookup::Stale(_) => panic!("expected a hit, got a stale entry"),
            Lookup::Miss => panic!("expected a hit, got a miss"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_count_down_and_the_entry_expires() {
        let cache = cache_with(|c| c.serve_stale = Duration::ZERO);
        let q = query(7, "example.com", Some(false), 0);
        let key = Key::of(&q);
        cache.insert(
            &key,
            response("example.com", 0, &[300, 60], None),
            Instant::now(),
            Security::Unchecked,
        );

        let answer = hit(cache.lookup(&key, &q, Instant::now()));
        assert_eq!(&answer[..2], &[0, 7], "the client's id");
        assert_eq!(ttls(&answer), vec![300, 60]);

        tokio::time::advance(Duration::from_secs(45)).await;
        assert_eq!(
            ttls(&hit(cache.lookup(&key, &q, Instant::now()))),
            vec![255, 15]
        );

        tokio::time::advance(Duration::from_secs(15)).await;
        assert!(matches!(
            cache.lookup(&key, &q, Instant::now()),
            Lookup::Miss
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn names_match_case_insensitively_and_keep_the_clients_spelling() {
        let cache = cache_with(|_| {});
        let lower = query(1, "example.com", None, 0);
        cache.insert(
            &Key::of(&lower),
            response("example.com", 0, &[60], None),
            Instant::now(),
            Security::Unchecked,
        );
        let mixed = query(2, "ExAmPlE.CoM", None, 0);
        let answer = hit(cache.lookup(&Key::of(&mixed), &mixed, Instant::now()));
        assert_eq!(&answer[12..12 + 13], &name("ExAmPlE.CoM")[..]);
        assert_eq!(answer[11], 0, "no OPT for a client without EDNS");
    }

    #[tokio::test(start_paused = true)]
    async fn do_and_cd_bits_are_kept_apart() {
        let cache = cache_with(|_| {});
        let plain = query(1, "example.com", Some(false), 0);
        cache.insert(
            &Key::of(&plain),
            response("example.com", 0, &[60], None),
            Instant::now(),
            Security::Unchecked,
        );
        for other in [
            query(2, "example.com", Some(true), 0),
            query(3, "example.com", Some(false), FLAG_CD),
        ] {
            assert!(matches!(
                cache.lookup(&Key::of(&other), &other, Instant::now()),
                Lookup::Miss
            ));
        }
        // A client without EDNS has DO clear too: it may share the plain entry.
        let no_edns = query(4, "example.com", None, 0);
        hit(cache.lookup(&Key::of(&no_edns), &no_edns, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn negative_answers_last_for_the_soa_minimum() {
        let cache = cache_with(|c| c.serve_stale = Duration::ZERO);
        let nx = query(1, "nx.example.com", None, 0);
        let nodata = query(2, "nodata.example.com", None, 0);
        let no_soa = query(3, "nosoa.example.com", None, 0);
        let now = Instant::now();
        cache.insert(
            &Key::of(&nx),
            response("nx.example.com", 3, &[], Some((3600, 30))),
            now,
            Security::Unchecked,
        );
        cache.insert(
            &Key::of(&nodata),
            response("nodata.example.com", 0, &[], Some((20, 900))),
            now,
            Security::Unchecked,
        );
        cache.insert(
            &Key::of(&no_soa),
            response("nosoa.example.com", 3, &[], None),
            now,
            Security::Unchecked,
        );

        let answer = hit(cache.lookup(&Key::of(&nx), &nx, now));
        assert_eq!(answer[3] & 0x0f, 3, "NXDOMAIN kept");
        hit(cache.lookup(&Key::of(&nodata), &nodata, now));
        assert!(
            matches!(cache.lookup(&Key::of(&no_soa), &no_soa, now), Lookup::Miss),
            "without an SOA a negative answer is not cached (RFC 2308 §5)"
        );

        tokio::time::advance(Duration::from_secs(21)).await;
        hit(cache.lookup(&Key::of(&nx), &nx, Instant::now()));
        assert!(matches!(
            cache.lookup(&Key::of(&nodata), &nodata, Instant::now()),
            Lookup::Miss
        ));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(
            cache.lookup(&Key::of(&nx), &nx, Instant::now()),
            Lookup::Miss
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn ttls_are_clamped() {
        let cache = cache_with(|c| {
            c.min_ttl = Duration::from_secs(60);
            c.max_ttl = Duration::from_secs(600);
            c.negative_ttl = Duration::from_secs(120);
        });
        let q = query(1, "example.com", None, 0);
        cache.insert(
            &Key::of(&q),
            response("example.com", 0, &[5, 86_400], None),
            Instant::now(),
            Security::Unchecked,
        );
        assert_eq!(
            ttls(&hit(cache.lookup(&Key::of(&q), &q, Instant::now()))),
            vec![60, 600]
        );

        let nx = query(2, "nx.example.com", None, 0);
        cache.insert(
            &Key::of(&nx),
            response("nx.example.com", 3, &[], Some((3600, 3600))),
            Instant::now(),
            Security::Unchecked,
        );
        assert_eq!(
            ttls(&hit(cache.lookup(&Key::of(&nx), &nx, Instant::now()))),
            vec![120]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn expired_answers_are_served_stale_within_the_window() {
        let cache = cache_with(|c| c.serve_stale = Duration::from_secs(3600));
        let q = query(9, "example.com", None, 0);
        let key = Key::of(&q);
        cache.insert(
            &key,
            response("example.com", 0, &[300], None),
            Instant::now(),
            Security::Unchecked,
        );

        tokio::time::advance(Duration::from_secs(301)).await;
        let Lookup::Stale(entry) = cache.lookup(&key, &q, Instant::now()) else {
            panic!("an expired entry within the window is stale");
        };
        let answer = Cache::stale_answer(&entry, &q);
        assert_eq!(&answer[..2], &[0, 9]);
        assert_eq!(ttls(&answer), vec![STALE_TTL]);

        // An upstream's SERVFAIL does not replace it.
        cache.insert(
            &key,
            response("example.com", 2, &[], None),
            Instant::now(),
            Security::Unchecked,
        );
        assert!(matches!(
            cache.lookup(&key, &q, Instant::now()),
            Lookup::Stale(_)
        ));

        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(matches!(
            cache.lookup(&key, &q, Instant::now()),
            Lookup::Miss
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_servfail_is_cached_briefly() {
        let cache = cache_with(|_| {});
        let q = query(1, "broken.example", None, 0);
        let key = Key::of(&q);
        cache.insert(
            &key,
            response("broken.example", 2, &[], None),
            Instant::now(),
            Security::Unchecked,
        );
        let answer = hit(cache.lookup(&key, &q, Instant::now()));
        assert_eq!(answer[3] & 0x0f, 2);
        tokio::time::advance(SERVFAIL_TTL).await;
        assert!(
            matches!(cache.lookup(&key, &q, Instant::now()), Lookup::Miss),
            "a SERVFAIL is never served stale"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_truncated_and_zero_ttl_answers_are_not_cached() {
        let cache = cache_with(|_| {});
        let q = query(1, "example.com", None, 0);
        let key = Key::of(&q);
        cache.insert(
            &key,
            response("example.com", 5, &[60], None),
            Instant::now(),
            Security::Unchecked,
        );
        cache.insert(
            &key,
            response("example.com", 0, &[0], None),
            Instant::now(),
            Security::Unchecked,
        );
        let mut truncated = response("example.com", 0, &[60], None).bytes().to_vec();
        truncated[2] |= 0x02;
        cache.insert(
            &key,
            Response::prepare(&truncated).unwrap().into(),
            Instant::now(),
            Security::Unchecked,
        );
        assert!(cache.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hit_near_expiry_asks_for_one_prefetch() {
        let cache = cache_with(|_| {});
        let q = query(1, "example.com", None, 0);
        let key = Key::of(&q);
        cache.insert(
            &key,
            response("example.com", 0, &[100], None),
            Instant::now(),
            Security::Unchecked,
        );
        let prefetch = |cache: &Cache| match cache.lookup(&key, &q, Instant::now()) {
            Lookup::Hit { prefetch, .. } => prefetch,
            _ => panic!("expected a hit"),
        };
        assert!(!prefetch(&cache));
        tokio::time::advance(Duration::from_secs(91)).await;
        assert!(prefetch(&cache), "within the last tenth of the TTL");
        assert!(!prefetch(&cache), "only once per entry");
    }

    #[tokio::test(start_paused = true)]
    async fn flush_takes_a_name_and_the_names_below_it_only() {
        let cache = cache_with(|_| {});
        let names = [
            "example.com",
            "A.Example.com",
            "b.a.example.com",
            "badexample.com",
            "example.com.org",
            "com",
            "other.test",
        ];
        for (i, qname) in names.iter().enumerate() {
            let q = query(i as u16, qname, None, 0);
            cache.insert(
                &Key::of(&q),
                response(qname, 0, &[60], None),
                Instant::now(),
                Security::Unchecked,
            );
        }
        // The same name with DO set is another entry, flushed with it.
        let dnssec = query(99, "a.example.com", Some(true), 0);
        cache.insert(
            &Key::of(&dnssec),
            response("a.example.com", 0, &[60], None),
            Instant::now(),
            Security::Unchecked,
        );
        assert_eq!(cache.len(), names.len() + 1);

        let zone = |text: &str| ZoneName::parse(text).unwrap();
        assert_eq!(cache.flush(&[zone("EXAMPLE.com")]), 4);
        let cached = |qname: &str| {
            let q = query(1, qname, None, 0);
            matches!(
                cache.lookup(&Key::of(&q), &q, Instant::now()),
                Lookup::Hit { .. }
            )
        };
        for gone in ["example.com", "a.example.com", "b.a.example.com"] {
            assert!(!cached(gone), "{gone} is still cached");
        }
        for kept in ["badexample.com", "example.com.org", "com", "other.test"] {
            assert!(cached(kept), "{kept} was flushed");
        }
        assert_eq!(cache.flush(&[zone("nothing.here"), zone("test")]), 1);
        assert_eq!(cache.flush(&[]), 3, "no names: everything");
        assert!(cache.is_empty());
        assert_eq!(cache.weight(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn memory_stays_within_the_bound() {
        let size = 256 << 10;
        let cache = cache_with(|c| c.size = size);
        for i in 0..20_000 {
            let qname = format!("host-{i}.example.com");
            let q = query(1, &qname, None, 0);
            cache.insert(
                &Key::of(&q),
                response(&qname, 0, &[300, 300, 300], None),
                Instant::now(),
                Security::Unchecked,
            );
        }
        assert!(cache.weight() <= size as u64, "{} > {size}", cache.weight());
        assert!(
            cache.len() > 100,
            "the cache still holds entries: {}",
            cache.len()
        );
        // The weight accounts for real bytes: at least the key and the message of each entry.
        assert!(cache.weight() >= cache.len() as u64 * (ENTRY_OVERHEAD + 60));
    }
}
