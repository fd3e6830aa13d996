//! A plain-DNS upstream: UDP, retried over TCP when the answer is truncated. Used only for a
//! forward zone whose configuration says `protocol = "udp"`, i.e. a resolver inside the
//! network (a VPC resolver, a corporate DNS server, the cluster DNS); the default upstreams
//! are always DNS over TLS and nothing ever falls back to this.
//!
//! Each query uses a fresh socket on a random port with a random id, and accepts only a
//! response from the server's address with that id and our question, so an off-path attacker
//! has to guess both to spoof an answer.
//!
//! A server that lets a query go unanswered, and answers nothing else meanwhile, is marked
//! down with the same backoff as a DoT upstream (`health`); while down it is asked only when no
//! other server of the zone can be (with no connection to set up, asking costs nothing more),
//! and once the backoff is over one query probes it.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::common::error::UpstreamError;
use crate::common::metrics::UpstreamMetrics;
use crate::upstream::exchange::{Exchange, Readiness};
use crate::upstream::health::Health;
use crate::wire::dns::{self, Query};
use crate::wire::framing::{self, FrameReader};

/// Largest UDP response we accept; we advertise 1232 but some servers send more.
const MAX_UDP_RESPONSE: usize = 4096;

pub(crate) struct PlainUpstream {
    address: SocketAddr,
    random: SystemRandom,
    metrics: UpstreamMetrics,
    health: Health,
    /// Queries answered so far: a query that times out while this did not move shows the
    /// server silent, not merely one name slow to resolve.
    answers: AtomicU64,
}

impl PlainUpstream {
    pub(crate) fn new(address: SocketAddr, metrics: UpstreamMetrics) -> PlainUpstream {
        PlainUpstream {
            address,
            random: SystemRandom::new(),
            metrics,
            health: Health::new(address.to_string(), "plain DNS".to_string()),
            answers: AtomicU64::new(0),
        }
    }

    /// Whether it is up, and since when: for `dns-proxy status`.
    pub(crate) fn state(&self) -> (bool, SystemTime) {
        self.health.state()
    }

    /// The response to `query`, at the latest at `deadline`.
    async fn query(&self, query: &Query, deadline: Instant) -> Result<Vec<u8>, UpstreamError> {
        let mut id = [0u8; 2];
        self.random
            .fill(&mut id)
            .map_err(|_| UpstreamError::Connect(Arc::new(io::Error::other("no randomness"))))?;
        let id = u16::from_be_bytes(id);
        let message = query.plain_upstream_message(id);
        let exchange = async {
            let response = self.udp(&message, id, query.question()).await?;
            if dns::is_truncated(&response) {
                return self.tcp(&message, id, query.question()).await;
            }
            Ok(response)
        };
        tokio::time::timeout_at(deadline, exchange)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn udp(
        &self,
        message: &[u8],
        id: u16,
        question: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let local: SocketAddr = match self.address {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(UpstreamError::connect)?;
        socket
            .connect(self.address)
            .await
            .map_err(UpstreamError::connect)?;
        socket.send(message).await.map_err(UpstreamError::connect)?;
        let mut buf = vec![0u8; MAX_UDP_RESPONSE];
        loop {
            let len = socket
                .recv(&mut buf)
                .await
                .map_err(UpstreamError::connect)?;
            let response = &buf[..len];
            // Anything else is stray or spoofed: keep waiting for the real answer.
            if dns::message_id(response) == Some(id) && dns::response_matches(response, question) {
                return Ok(response.to_vec());
            }
        }
    }

    async fn tcp(
        &self,
        message: &[u8],
        id: u16,
        question: &[u8],
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut stream = TcpStream::connect(self.address)
            .await
            .map_err(UpstreamError::connect)?;
        let frame = framing::frame(message).ok_or(UpstreamError::Protocol)?;
        stream
            .write_all(&frame)
            .await
            .map_err(|_| UpstreamError::Closed)?;
        let response = FrameReader::new(&mut stream)
            .next()
            .await
            .map_err(|_| UpstreamError::Closed)?
            .ok_or(UpstreamError::Closed)?;
        if dns::message_id(&response) != Some(id) || !dns::response_matches(&response, question) {
            return Err(UpstreamError::Protocol);
        }
        Ok(response)
    }
}

impl Exchange for PlainUpstream {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Up: `Ready`. Down: `Probe` once the backoff is over, else `LastResort`, never `Down`:
    /// a zone whose only server is down still asks it.
    fn readiness(&self, now: Instant) -> Readiness {
        match self.health.down(now) {
            None => Readiness::Ready,
            Some(Readiness::Probe) => Readiness::Probe,
            Some(_) => Readiness::LastResort,
        }
    }

    fn is_up(&self) -> bool {
        self.health.is_up()
    }

    fn describe(&self) -> String {
        format!("{} (plain DNS)", self.health.describe())
    }

    /// Nothing tells a dead server from a slow one but time.
    fn detects_failure(&self) -> bool {
        false
    }

    async fn exchange(
        &self,
        query: &Query,
        _frame: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, UpstreamError> {
        let started = Instant::now();
        let answers = self.answers.load(Ordering::Relaxed);
        // Held to its end: other queries meanwhile see it as a last resort, not a probe.
        let _probe = self.health.probe();
        let result = self.query(query, deadline).await;
        match &result {
            Ok(_) => {
                self.answers.fetch_add(1, Ordering::Relaxed);
                self.health.record_success();
            }
            Err(UpstreamError::Timeout) if self.answers.load(Ordering::Relaxed) == answers => {
                self.health.record_failure(UpstreamError::Timeout, started);
            }
            Err(error @ UpstreamError::Connect(_)) => {
                self.health.record_failure(error.clone(), started);
            }
            Err(_) => {}
        }
        result
    }
}
