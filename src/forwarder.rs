//! Turns a validated client query into the answer the client gets: picks an upstream, sends the
//! padded query, retries once when a connection dies under it, and maps every failure to
//! SERVFAIL within the query's time budget. This is the one place errors become DNS answers.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::config::Config;
use crate::dns::{Query, Rcode};
use crate::metrics::{GaugeGuard, Metrics};
use crate::tls::TlsSetupError;
use crate::upstream::{Upstream, UpstreamError};

pub struct Forwarder {
    /// In order of preference: the first available one is used.
    upstreams: Vec<Upstream>,
    timeout: Duration,
    log_queries: bool,
    /// Queries inside [`Forwarder::answer`]; shared with the forwarders before and after a reload.
    in_flight: Gauge,
}

impl Forwarder {
    /// Builds the upstreams, with handles to their series in `metrics` (which outlives us).
    pub fn new(config: &Config, metrics: &Metrics) -> Result<Forwarder, TlsSetupError> {
        let upstreams = config
            .upstreams
            .iter()
            .map(|upstream| {
                Upstream::new(
                    upstream,
                    config.upstream_idle_timeout,
                    metrics.upstream(upstream.address),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(Forwarder {
            upstreams,
            timeout: config.timeout,
            log_queries: config.log_queries,
            in_flight: metrics.in_flight.clone(),
        })
    }

    /// The answer for `query`: from an upstream, or SERVFAIL once the time budget is spent or
    /// no upstream can be reached. Never fails and never waits past the budget.
    pub async fn answer(&self, query: &Query, client: SocketAddr) -> Vec<u8> {
        let _in_flight = GaugeGuard::new(&self.in_flight);
        let started = Instant::now();
        let result = self.resolve(query, started + self.timeout).await;
        let (answer, upstream) = match result {
            Ok((answer, upstream)) => (answer, Some(upstream)),
            Err(error) => {
                debug!(error_kind = error.kind(), "query failed: {error}");
                (query.error_answer(Rcode::ServFail), None)
            }
        };
        if self.log_queries {
            info!(
                client = %client,
                question = %query.describe(),
                rcode = answer.get(3).map_or(0, |b| b & 0x0f),
                upstream = upstream.map(|u| u.to_string()).unwrap_or_default(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "query"
            );
        }
        answer
    }

    async fn resolve(
        &self,
        query: &Query,
        deadline: Instant,
    ) -> Result<(Vec<u8>, SocketAddr), UpstreamError> {
        let frame = query.upstream_frame();
        let mut tried = vec![false; self.upstreams.len()];
        let mut retried = false;
        let mut next = None;
        let mut last_error = UpstreamError::Down;
        loop {
            let Some(index) = next.take().or_else(|| self.pick(&tried)) else {
                return Err(last_error);
            };
            tried[index] = true;
            let upstream = &self.upstreams[index];
            let metrics = upstream.metrics();
            metrics.query_sent();
            let sent = Instant::now();
            let outcome = match upstream
                .query(frame.clone(), query.question(), deadline)
                .await
            {
                Ok(response) => query
                    .answer_from(&response)
                    .map_err(|_| UpstreamError::Protocol),
                Err(error) => Err(error),
            };
            if let Err(error) = &outcome {
                metrics.failed(error);
            }
            match outcome {
                Ok(answer) => {
                    metrics.answered(sent.elapsed());
                    return Ok((answer, upstream.address()));
                }
                // The connection died under the query: once, try again on a fresh connection
                // to the same upstream, or on the next one if this one is now down.
                Err(UpstreamError::Closed) if !retried => {
                    retried = true;
                    if upstream.is_available(Instant::now()) {
                        next = Some(index);
                    }
                    last_error = UpstreamError::Closed;
                }
                Err(UpstreamError::Timeout) => return Err(UpstreamError::Timeout),
                Err(error) => last_error = error,
            }
            if Instant::now() >= deadline {
                return Err(UpstreamError::Timeout);
            }
        }
    }

    /// The first available upstream this query has not tried yet.
    fn pick(&self, tried: &[bool]) -> Option<usize> {
        let now = Instant::now();
        self.upstreams
            .iter()
            .enumerate()
            .find(|(i, upstream)| !tried[*i] && upstream.is_available(now))
            .map(|(i, _)| i)
    }

    /// Whether at least one upstream is up (for the health check).
    pub fn any_upstream_up(&self) -> bool {
        self.upstreams.iter().any(Upstream::is_up)
    }

    /// Upstream states for the status line.
    pub fn describe_upstreams(&self) -> String {
        self.upstreams
            .iter()
            .map(Upstream::describe)
            .collect::<Vec<_>>()
            .join(", ")
    }
}
