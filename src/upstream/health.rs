//! Whether an upstream is up, and when a down one may be tried again: the state both kinds of
//! upstream keep (DoT in `pool`, plain DNS in `plain`). A failed try marks the upstream down
//! with exponential backoff, counted from the start of the try; once the backoff is over, one
//! query at a time probes it, until an answer shows it is up.
//!
//! State changes (down with the real cause, up again) are logged once each, not per query.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::common::error::UpstreamError;
use crate::common::lock;
use crate::upstream::exchange::Readiness;

/// Backoff after the first failure; doubles with each further failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(125);
/// Longest backoff: also the longest a recovered upstream waits to be probed again.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One upstream's health.
pub(crate) struct Health {
    /// How logs and the status line name it: its address, or its DoH URL.
    upstream: String,
    /// Shown in the "is down" warning beside the address: the TLS name, or "plain DNS".
    label: String,
    state: Mutex<State>,
}

struct State {
    /// Failures since the last success; zero means up.
    failures: u32,
    /// When it last went down or came back up, or was set up: for `dns-proxy status`.
    since: SystemTime,
    /// No new try before this instant.
    retry_at: Option<Instant>,
    /// The cause of the last failure, for the status line and to log changes of cause.
    last_error: Option<UpstreamError>,
    /// A query is probing the upstream after its backoff.
    probing: bool,
}

impl State {
    fn new() -> State {
        State {
            failures: 0,
            since: SystemTime::now(),
            retry_at: None,
            last_error: None,
            probing: false,
        }
    }
}

/// The one query probing a down upstream; the upstream is free for another probe when it
/// ends, however it ends.
pub(crate) struct Probe<'a>(&'a Health);

impl Drop for Probe<'_> {
    fn drop(&mut self) {
        self.0.lock().probing = false;
    }
}

impl Health {
    pub(crate) fn new(upstream: String, label: String) -> Health {
        Health {
            upstream,
            label,
            state: Mutex::new(State::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock::lock(&self.state)
    }

    /// Up: no failure since the last answer (or none yet).
    pub(crate) fn is_up(&self) -> bool {
        self.lock().failures == 0
    }

    /// Failures since the last answer.
    pub(crate) fn failures(&self) -> u32 {
        self.lock().failures
    }

    /// Whether it is up, and since when: for `dns-proxy status`.
    pub(crate) fn state(&self) -> (bool, SystemTime) {
        let state = self.lock();
        (state.failures == 0, state.since)
    }

    /// `None` while up; while down, [`Readiness::Probe`] once the backoff is over and no other
    /// query probes it, else [`Readiness::Down`].
    pub(crate) fn down(&self, now: Instant) -> Option<Readiness> {
        let state = self.lock();
        if state.failures == 0 {
            return None;
        }
        Some(
            match !state.probing && state.retry_at.is_none_or(|at| now >= at) {
                true => Readiness::Probe,
                false => Readiness::Down,
            },
        )
    }

    /// `Ok(None)` while up; while down, the probe for the one query that may try it now, or
    /// `Down` for the others.
    pub(crate) fn probe(&self) -> Result<Option<Probe<'_>>, UpstreamError> {
        let mut state = self.lock();
        if state.failures == 0 {
            return Ok(None);
        }
        if state.probing || state.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(UpstreamError::Down);
        }
        state.probing = true;
        Ok(Some(Probe(self)))
    }

    /// `1.1.1.1:853 up` or `1.1.1.1:853 down (TCP connect failed: …)`, for the status line.
    pub(crate) fn describe(&self) -> String {
        let state = self.lock();
        match (&state.last_error, state.failures) {
            (Some(error), failures) if failures > 0 => {
                format!("{} down ({error})", self.upstream)
            }
            _ => format!("{} up", self.upstream),
        }
    }

    /// A down upstream may be tried by the next query, its backoff forgotten.
    pub(crate) fn retry_now(&self) {
        self.lock().retry_at = None;
    }

    pub(crate) fn record_success(&self) {
        let mut state = self.lock();
        if state.failures > 0 {
            info!(upstream = %self.upstream, "upstream {} is up again", self.upstream);
            let probing = state.probing;
            *state = State::new();
            // The probe's guard clears it when the probe ends.
            state.probing = probing;
        }
    }

    /// Counts a failed try that began at `since`. The backoff runs from there, not from now: a
    /// try that hung until its deadline has waited already, and an upstream that recovered
    /// during it is to be tried again within `BACKOFF_MAX` of recovering. Still, at least
    /// `BACKOFF_FIRST` passes after any failure, so queries asked one after the other do not
    /// each wait on an upstream that hangs.
    pub(crate) fn record_failure(&self, error: UpstreamError, since: Instant) {
        let mut state = self.lock();
        let changed = state.failures == 0
            || state
                .last_error
                .as_ref()
                .is_none_or(|last| last.kind() != error.kind());
        if state.failures == 0 {
            state.since = SystemTime::now();
        }
        state.failures = state.failures.saturating_add(1);
        let doublings = (state.failures - 1).min(16);
        let backoff = BACKOFF_FIRST
            .saturating_mul(1 << doublings)
            .min(BACKOFF_MAX);
        state.retry_at = Some((since + backoff).max(Instant::now() + BACKOFF_FIRST));
        if changed {
            warn!(
                upstream = %self.upstream,
                error_kind = error.kind(),
                "upstream {} ({}) is down: {error}",
                self.upstream,
                self.label,
            );
        } else {
            debug!(upstream = %self.upstream, error_kind = error.kind(), "upstream still down: {error}");
        }
        state.last_error = Some(error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new("127.0.0.1:853".into(), "dns.test".into())
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_backs_off_then_one_query_probes() {
        let health = health();
        assert_eq!(health.down(Instant::now()), None);
        health.record_failure(UpstreamError::Timeout, Instant::now());
        assert_eq!(health.down(Instant::now()), Some(Readiness::Down));
        assert!(matches!(health.probe(), Err(UpstreamError::Down)));
        tokio::time::advance(BACKOFF_FIRST).await;
        assert_eq!(health.down(Instant::now()), Some(Readiness::Probe));
        let probe = health.probe().unwrap();
        assert!(probe.is_some());
        // Only one probe at a time.
        assert_eq!(health.down(Instant::now()), Some(Readiness::Down));
        assert!(matches!(health.probe(), Err(UpstreamError::Down)));
        health.record_success();
        drop(probe);
        assert_eq!(health.down(Instant::now()), None);
        assert!(health.is_up());
    }

    #[tokio::test(start_paused = true)]
    async fn the_backoff_runs_from_the_start_of_a_long_try() {
        let health = health();
        let started = Instant::now();
        for _ in 0..4 {
            health.record_failure(UpstreamError::Timeout, Instant::now());
        }
        // A fifth try that hung for 2 s: the 1 s backoff ran out during it, so the next try
        // comes after the shortest one.
        tokio::time::advance(Duration::from_secs(2)).await;
        health.record_failure(UpstreamError::Timeout, started);
        tokio::time::advance(BACKOFF_FIRST - Duration::from_millis(1)).await;
        assert_eq!(health.down(Instant::now()), Some(Readiness::Down));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(health.down(Instant::now()), Some(Readiness::Probe));
    }
}
