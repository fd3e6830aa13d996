//! Everything said to systemd (sd_notify), in one place: READY once sockets and upstreams are
//! set up, RELOADING/READY around a reload, STOPPING on exit, a STATUS line refreshed every few
//! seconds, and WATCHDOG pings at half the interval systemd asks for. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call does nothing.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::context::Context;

/// How often the STATUS line is refreshed.
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn reloading() {
    // systemd ≥ 253 wants the time of the reload request with RELOADING=1.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

pub(crate) fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

fn send(states: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(states) {
        debug!("sd_notify: {error}");
    }
}

/// Refreshes STATUS and pings the watchdog until `shutdown`. Pings come from this task on the
/// same runtime as the servers, so a wedged runtime stops them and systemd restarts us.
pub(crate) async fn heartbeat(context: Arc<Context>, shutdown: CancellationToken) {
    let watchdog = sd_notify::watchdog_enabled().map(|interval| interval / 2);
    let tick = watchdog.map_or(STATUS_INTERVAL, |w| w.min(STATUS_INTERVAL));
    let mut ticks = tokio::time::interval(tick);
    let mut last_status = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        if watchdog.is_some() {
            send(&[NotifyState::Watchdog]);
        }
        if last_status.elapsed() >= STATUS_INTERVAL {
            last_status = tokio::time::Instant::now();
            send(&[NotifyState::Status(&context.status())]);
        }
    }
}
