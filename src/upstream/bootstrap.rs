//! Upstreams given by host name: their addresses, learned only from the `bootstrap` servers
//! (plain DNS, asked for the upstream's own name and nothing else; never dns-proxy's own
//! listeners, never the system resolver, so resolving an upstream cannot wait on itself).
//!
//! Both A and AAAA are asked and used, IPv4 and IPv6 in turn; a failed address moves the next
//! one to the front. Addresses are kept for their TTL, at least [`MIN_KEEP`], and past it for
//! as long as a new lookup fails: an upstream that answered keeps answering when the
//! bootstrap servers go away. The [`AddressBook`] outlives a reload, so a new configuration
//! starts with what the old one knew.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::common::error::UpstreamError;
use crate::common::lock;
use crate::common::metrics::{Metrics, UpstreamMetrics};
use crate::upstream::exchange::Exchange;
use crate::upstream::plain::PlainUpstream;
use crate::wire::dns::{self, Query};

/// Shortest time addresses are kept, whatever their TTL says.
pub(crate) const MIN_KEEP: Duration = Duration::from_secs(300);
/// Longest time addresses are kept before they are asked for again.
const MAX_KEEP: Duration = Duration::from_secs(86_400);
/// After a failed lookup of a name whose addresses are known, the wait before the next one;
/// the known addresses serve meanwhile.
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Time given to a lookup made in the background (at start, or to renew addresses).
const BACKGROUND_BUDGET: Duration = Duration::from_secs(5);

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;

/// The `bootstrap` servers of one configuration.
pub(crate) struct Bootstrap {
    servers: Vec<(PlainUpstream, UpstreamMetrics)>,
}

/// What a lookup found: addresses in the order to try them, and how long to keep them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) addresses: Vec<IpAddr>,
    pub(crate) keep: Duration,
}

impl Bootstrap {
    /// Queries to each server count in the upstream series labelled `bootstrap IP:port`.
    pub(crate) fn new(servers: &[SocketAddr], metrics: &Metrics) -> Bootstrap {
        Bootstrap {
            servers: servers
                .iter()
                .map(|&address| {
                    let series = metrics.upstream_labelled(&format!("bootstrap {address}"));
                    (PlainUpstream::new(address, series.clone()), series)
                })
                .collect(),
        }
    }

    /// The A and AAAA records of `host`, from the first server that has some; each server
    /// gets an equal share of the time left.
    pub(crate) async fn lookup(
        &self,
        host: &str,
        deadline: Instant,
    ) -> Result<Found, UpstreamError> {
        let queries = [TYPE_A, TYPE_AAAA].map(|qtype| question(host, qtype));
        let [Some(a), Some(aaaa)] = queries else {
            return Err(UpstreamError::Resolve(
                format!("{host}: not a valid name").into(),
            ));
        };
        let mut last = UpstreamError::Resolve(format!("{host}: no bootstrap server").into());
        for (i, (server, metrics)) in self.servers.iter().enumerate() {
            let left = (self.servers.len() - i) as u32;
            let now = Instant::now();
            let until = now + deadline.saturating_duration_since(now) / left;
            let (v4, v6) = tokio::join!(
                ask(server, metrics, &a, until),
                ask(server, metrics, &aaaa, until)
            );
            match found(host, v4.as_deref(), v6.as_deref()) {
                Ok(found) => return Ok(found),
                Err(error) => {
                    debug!(bootstrap = %server.address(), "lookup of {host} failed: {error}");
                    last = error;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(last)
    }
}

/// One query to one bootstrap server, counted in its series.
async fn ask(
    server: &PlainUpstream,
    metrics: &UpstreamMetrics,
    query: &Query,
    deadline: Instant,
) -> Result<Vec<u8>, UpstreamError> {
    metrics.query_sent();
    let started = Instant::now();
    let result = server.exchange(query, &[], deadline).await;
    match &result {
        Ok(_) => metrics.answered(started.elapsed()),
        Err(error) => metrics.failed(error.error_kind()),
    }
    result
}

/// A recursive query for `host` of type `qtype`, as a client would send it.
fn question(host: &str, qtype: u16) -> Option<Query> {
    let mut packet = vec![0, 0, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in host.split('.').filter(|l| !l.is_empty()) {
        packet.push(u8::try_from(label.len()).ok().filter(|l| *l <= 63)?);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&qtype.to_be_bytes());
    packet.extend_from_slice(&[0, 1]);
    dns::parse_query(&packet).ok()
}

/// The addresses in the answers to the A and the AAAA query, IPv4 and IPv6 in turn, kept for
/// their smallest TTL within [`MIN_KEEP`]..[`MAX_KEEP`]. One answer is enough; none with an
/// address is an error, never remembered as "no address".
pub(crate) fn found(
    host: &str,
    v4: Result<&[u8], &UpstreamError>,
    v6: Result<&[u8], &UpstreamError>,
) -> Result<Found, UpstreamError> {
    let mut lists = [Vec::new(), Vec::new()];
    let mut ttl = u32::MAX;
    let mut why = None;
    for (list, response) in lists.iter_mut().zip([v4, v6]) {
        let message = match response.map(Message::from_vec) {
            Ok(Ok(message)) => message,
            Ok(Err(_)) => {
                why = Some("a malformed answer".to_string());
                continue;
            }
            Err(error) => {
                why = Some(error.to_string());
                continue;
            }
        };
        if message.metadata.response_code != ResponseCode::NoError {
            why = Some(format!("{}", message.metadata.response_code));
            continue;
        }
        for record in &message.answers {
            let ip = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            if !list.contains(&ip) {
                list.push(ip);
                ttl = ttl.min(record.ttl);
            }
        }
    }
    let [v4, v6] = lists;
    let mut addresses = Vec::with_capacity(v4.len() + v6.len());
    for i in 0..v4.len().max(v6.len()) {
        addresses.extend(v4.get(i));
        addresses.extend(v6.get(i));
    }
    if addresses.is_empty() {
        let why = why.unwrap_or_else(|| "no A or AAAA record".to_string());
        return Err(UpstreamError::Resolve(format!("{host}: {why}").into()));
    }
    let keep = Duration::from_secs(u64::from(ttl)).clamp(MIN_KEEP, MAX_KEEP);
    Ok(Found { addresses, keep })
}

/// Upstream names' addresses, kept across reloads.
#[derive(Default)]
pub(crate) struct AddressBook {
    names: Mutex<HashMap<String, Arc<Known>>>,
}

impl AddressBook {
    /// Where `host`'s addresses are kept, shared by every upstream of that name.
    fn entry(&self, host: &str) -> Arc<Known> {
        lock::lock(&self.names)
            .entry(host.to_string())
            .or_default()
            .clone()
    }
}

/// What is known of one name.
#[derive(Default)]
struct Known {
    state: Mutex<KnownState>,
    /// Held while looking the name up, so queries share one lookup.
    looking_up: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct KnownState {
    /// In the order to try; empty until the first lookup succeeds.
    addresses: Vec<IpAddr>,
    /// When they should be asked for again.
    renew_at: Option<Instant>,
    /// Index of the address to try first: moves on when one fails.
    first: usize,
}

/// Where an encrypted upstream connects.
pub(crate) enum Target {
    Ip(SocketAddr),
    Name(Named),
}

/// A host name and port, with what is known of the name.
pub(crate) struct Named {
    host: Arc<str>,
    port: u16,
    known: Arc<Known>,
    bootstrap: Arc<Bootstrap>,
}

impl Target {
    /// `host:port`, resolved through `bootstrap`, its addresses kept in `book`; a lookup
    /// starts now in the background, so that the first query does not wait for it.
    pub(crate) fn named(
        host: &str,
        port: u16,
        bootstrap: Arc<Bootstrap>,
        book: &AddressBook,
    ) -> Target {
        let named = Named {
            host: host.into(),
            port,
            known: book.entry(host),
            bootstrap,
        };
        if tokio::runtime::Handle::try_current().is_ok() && named.state().addresses.is_empty() {
            named.spawn_lookup();
        }
        Target::Name(named)
    }

    /// The addresses to try, best first; may wait, until `deadline`, for the first lookup.
    pub(crate) async fn addresses(
        &self,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, UpstreamError> {
        match self {
            Target::Ip(address) => Ok(vec![*address]),
            Target::Name(named) => named.addresses(deadline).await,
        }
    }

    /// A connection made by `open` to the first address that takes one, trying the next
    /// while time is left; an address that fails moves the next one to the front.
    pub(crate) async fn connect<T, F>(
        &self,
        deadline: Instant,
        open: impl Fn(SocketAddr) -> F,
    ) -> Result<T, UpstreamError>
    where
        F: Future<Output = Result<T, UpstreamError>>,
    {
        let mut last = UpstreamError::Timeout;
        for address in self.addresses(deadline).await? {
            if Instant::now() >= deadline {
                break;
            }
            match open(address).await {
                Ok(connection) => return Ok(connection),
                Err(error) => {
                    self.failed(address);
                    last = error;
                }
            }
        }
        Err(last)
    }

    /// `address` failed: the next one is tried first from now on.
    pub(crate) fn failed(&self, address: SocketAddr) {
        if let Target::Name(named) = self {
            let mut state = named.state();
            let len = state.addresses.len();
            if len > 1 && state.addresses.get(state.first) == Some(&address.ip()) {
                state.first = (state.first + 1) % len;
            }
        }
    }

    /// The address tried first now (unspecified while a name has none yet).
    pub(crate) fn current(&self) -> SocketAddr {
        match self {
            Target::Ip(address) => *address,
            Target::Name(named) => {
                let state = named.state();
                let ip = state
                    .addresses
                    .get(state.first)
                    .copied()
                    .unwrap_or(IpAddr::from([0, 0, 0, 0]));
                SocketAddr::new(ip, named.port)
            }
        }
    }
}

impl Named {
    fn state(&self) -> std::sync::MutexGuard<'_, KnownState> {
        lock::lock(&self.known.state)
    }

    async fn addresses(&self, deadline: Instant) -> Result<Vec<SocketAddr>, UpstreamError> {
        if let Some(addresses) = self.known_addresses() {
            return Ok(addresses);
        }
        // Nothing known yet: this query waits for the one lookup in progress, or makes it.
        let _looking_up = tokio::time::timeout_at(deadline, self.known.looking_up.lock())
            .await
            .map_err(|_| UpstreamError::Timeout)?;
        if let Some(addresses) = self.known_addresses() {
            return Ok(addresses);
        }
        let found = self.bootstrap.lookup(&self.host, deadline).await?;
        learn(&self.host, &self.known, found);
        self.known_addresses()
            .ok_or_else(|| UpstreamError::Resolve(self.host.to_string().into()))
    }

    /// The known addresses, the first to try first, renewed in the background once due.
    fn known_addresses(&self) -> Option<Vec<SocketAddr>> {
        let mut state = self.state();
        if state.addresses.is_empty() {
            return None;
        }
        let now = Instant::now();
        if state.renew_at.is_some_and(|at| now >= at) {
            // Not again before this one has had its chance.
            state.renew_at = Some(now + RETRY_AFTER);
            self.spawn_lookup();
        }
        let (before, after) = state
            .addresses
            .split_at(state.first.min(state.addresses.len()));
        Some(
            after
                .iter()
                .chain(before)
                .map(|ip| SocketAddr::new(*ip, self.port))
                .collect(),
        )
    }

    /// Looks the name up in a task of its own, unless a lookup is already under way.
    fn spawn_lookup(&self) {
        let (host, known, bootstrap) = (
            self.host.clone(),
            self.known.clone(),
            self.bootstrap.clone(),
        );
        tokio::spawn(async move {
            let Ok(_looking_up) = known.looking_up.try_lock() else {
                return;
            };
            match bootstrap
                .lookup(&host, Instant::now() + BACKGROUND_BUDGET)
                .await
            {
                Ok(found) => learn(&host, &known, found),
                Err(error) => {
                    let state = lock::lock(&known.state);
                    if state.addresses.is_empty() {
                        warn!("upstream {host}: no address yet: {error}");
                    } else {
                        warn!(
                            "upstream {host}: lookup failed ({error}); its addresses are kept, \
                             another lookup in {}s",
                            RETRY_AFTER.as_secs()
                        );
                    }
                }
            }
        });
    }
}

/// Keeps what a lookup of `host` found.
fn learn(host: &str, known: &Known, found: Found) {
    let mut state = lock::lock(&known.state);
    if state.addresses != found.addresses {
        info!(
            "upstream {host} is at {} (from bootstrap; kept {}s)",
            found
                .addresses
                .iter()
                .map(IpAddr::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            found.keep.as_secs()
        );
        state.addresses = found.addresses;
        state.first = 0;
    }
    state.renew_at = Some(Instant::now() + found.keep);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{MessageType, OpCode};
    use hickory_proto::rr::rdata::{A, AAAA};
    use hickory_proto::rr::{Name, Record};

    fn answer(ttl: u32, data: &[RData], rcode: ResponseCode) -> Vec<u8> {
        let mut message = Message::new(0, MessageType::Response, OpCode::Query);
        message.metadata.response_code = rcode;
        let name = Name::from_ascii("doh.test.").unwrap();
        for rdata in data {
            message
                .answers
                .push(Record::from_rdata(name.clone(), ttl, rdata.clone()));
        }
        message.to_vec().unwrap()
    }

    #[test]
    fn addresses_alternate_families_and_are_kept_at_least_five_minutes() {
        let v4 = answer(
            60,
            &[
                RData::A(A::new(192, 0, 2, 1)),
                RData::A(A::new(192, 0, 2, 2)),
            ],
            ResponseCode::NoError,
        );
        let v6 = answer(
            7200,
            &[RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))],
            ResponseCode::NoError,
        );
        let found = found("doh.test", Ok(&v4), Ok(&v6)).unwrap();
        let texts: Vec<String> = found.addresses.iter().map(|a| a.to_string()).collect();
        assert_eq!(texts, ["192.0.2.1", "2001:db8::1", "192.0.2.2"]);
        assert_eq!(found.keep, MIN_KEEP);
    }

    #[test]
    fn one_family_is_enough_and_none_is_an_error() {
        let v4 = answer(
            3600,
            &[RData::A(A::new(192, 0, 2, 1))],
            ResponseCode::NoError,
        );
        let empty = answer(3600, &[], ResponseCode::NoError);
        let timeout = UpstreamError::Timeout;
        let one = found("doh.test", Ok(&v4), Err(&timeout)).unwrap();
        assert_eq!(one.keep, Duration::from_secs(3600));
        assert!(found("doh.test", Ok(&empty), Ok(&empty)).is_err());
        let nxdomain = answer(3600, &[], ResponseCode::NXDomain);
        let error = found("doh.test", Ok(&nxdomain), Err(&timeout)).unwrap_err();
        assert_eq!(error.kind(), "resolve");
        assert!(found("doh.test", Ok(b"\x00"), Ok(b"junk")).is_err());
    }

    #[test]
    fn questions_are_valid_queries() {
        let query = question("doh.test", TYPE_AAAA).unwrap();
        assert_eq!(query.qtype(), TYPE_AAAA);
        assert_eq!(query.question(), b"\x03doh\x04test\x00\x00\x1c\x00\x01");
        assert!(question(&"a".repeat(64), TYPE_A).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_address_moves_the_next_to_the_front() {
        let book = AddressBook::default();
        let known = book.entry("doh.test");
        learn(
            "doh.test",
            &known,
            Found {
                addresses: vec![[192, 0, 2, 1].into(), [192, 0, 2, 2].into()],
                keep: MIN_KEEP,
            },
        );
        let bootstrap = Arc::new(Bootstrap {
            servers: Vec::new(),
        });
        let target = Target::named("doh.test", 443, bootstrap, &book);
        let deadline = Instant::now() + Duration::from_secs(1);
        let first = target.addresses(deadline).await.unwrap();
        assert_eq!(first[0], "192.0.2.1:443".parse().unwrap());
        target.failed(first[0]);
        let next = target.addresses(deadline).await.unwrap();
        assert_eq!(next, ["192.0.2.2:443".parse().unwrap(), first[0]]);
        assert_eq!(target.current(), next[0]);
        // Past their time, with no server to ask, they are still used.
        tokio::time::advance(MIN_KEEP * 2).await;
        let later = target
            .addresses(Instant::now() + Duration::from_secs(1))
            .await;
        assert_eq!(later.unwrap().len(), 2);
    }
}
