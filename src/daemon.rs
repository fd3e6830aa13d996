//! The running daemon: starts a server task per socket (DNS over UDP, TCP, TLS and HTTPS, and
//! the metrics endpoint when there is one), tells systemd it is ready, then waits for signals.
//! SIGHUP reloads the configuration, the TLS certificate and key with it (a bad one is refused
//! and the running one stays; sockets and open connections are never closed by a reload).
//! SIGTERM and SIGINT stop accepting, let in-flight queries finish for a bounded time, and
//! return. Under socket activation a configuration or trust store it cannot use at
//! start leaves it degraded (local zones only) instead of stopping it; see [`run`].

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::common::lock::lock;
use crate::common::metrics::Metrics;
use crate::common::snapshot::{self, Listener, Status};
use crate::common::transport::Transport;
use crate::config::Identity;
use crate::config::{self, Config, Sources};
use crate::context::Context;
use crate::ops::admin::Admin;
use crate::ops::control::{self, Control, Handler};
use crate::ops::notify;
use crate::resolve::forwarder::Forwarder;
use crate::serve::listeners::{self, Inherited, ListenError};
use crate::serve::tcp::Serve;
use crate::serve::tls_server::{self, CurrentIdentity, TlsServerError};
use crate::serve::{doh, dot, tcp, udp};
use crate::upstream::tls::TlsSetupError;

/// How long in-flight queries may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    #[error(transparent)]
    TlsServer(#[from] TlsServerError),
    #[error("cannot serve a socket: {0}")]
    Socket(io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(io::Error),
    #[error(transparent)]
    Control(#[from] control::SocketError),
}

/// Runs until SIGTERM or SIGINT. `inherited` holds the sockets systemd passed, if any;
/// `identity` is the certificate and key of `config`, for DNS over TLS and HTTPS.
///
/// `problem` is a configuration error found at start, `config` then being the defaults. With
/// sockets from systemd, such a problem or a trust store that cannot be used does not stop the
/// daemon: it serves the built-in local zones, answers SERVFAIL for every other name and says
/// why (log, STATUS) until a reload finds it fixed. Clients already wait on those sockets, and
/// exiting would get the service restarted into the same failure until systemd gives up on
/// the socket too, leaving the host with no DNS at all.
pub async fn run(
    sources: Sources,
    config: Config,
    identity: Option<Identity>,
    problem: Option<String>,
    inherited: Option<Inherited>,
) -> Result<(), DaemonError> {
    let started = (SystemTime::now(), Instant::now());
    let activated = inherited.is_some();
    if nix::unistd::geteuid().is_root() {
        warn!(
            "running as root: dns-proxy needs no privilege; let systemd pass port 53 \
             (dns-proxy.socket) or listen on a port above 1023"
        );
    }
    let (listeners, passed_metrics) = match inherited {
        Some(inherited) => {
            info!(
                "socket activation: {} UDP, {} TCP, {} DNS over TLS and {} DNS over HTTPS sockets from systemd ({}); listen, listen_tls and listen_https are ignored",
                inherited.listeners.udp.len(),
                inherited.listeners.tcp.len(),
                inherited.listeners.tls.len(),
                inherited.listeners.https.len(),
                inherited.names.join(", "),
            );
            for unusable in &inherited.unusable {
                warn!("socket activation: {unusable}; not used");
            }
            (inherited.listeners, inherited.metrics)
        }
        None => (listeners::bind(&config)?, Vec::new()),
    };
    // A socket passed for metrics wins over [metrics] listen, as passed DNS sockets win over
    // listen: whoever set up the socket unit decided where metrics are served.
    let metrics_listeners = if !passed_metrics.is_empty() {
        if config.metrics.is_some() {
            info!("metrics: serving on the socket from systemd; [metrics] listen is ignored");
        }
        passed_metrics
    } else if let Some(settings) = &config.metrics {
        vec![listeners::bind_metrics(settings.listen)?]
    } else {
        Vec::new()
    };
    let metrics = Arc::new(Metrics::new());
    let (forwarder, problem) = match problem {
        Some(problem) => (Forwarder::local_only(&config, &metrics), Some(problem)),
        None => match Forwarder::new(&config, &metrics) {
            Ok(forwarder) => (forwarder, None),
            Err(error) if activated => (
                Forwarder::local_only(&config, &metrics),
                Some(error.to_string()),
            ),
            Err(error) => return Err(error.into()),
        },
    };
    if let Some(problem) = &problem {
        error!(
            "degraded: {problem}; answering local zones only, SERVFAIL for other names, until a reload or restart finds this fixed"
        );
    }
    let connections = Arc::new(tcp::Slots::new(
        config.tcp_max_connections,
        config.tcp_max_connections_per_client,
    ));
    let (serve_udp, serve_tcp) = (config.udp, config.tcp);
    let control_socket = match &config.control_socket {
        Some(path) => match control::bind(path) {
            Ok(bound) => Some(bound),
            // Clients already wait on the sockets systemd passed: DNS matters more than this.
            Err(error) if activated => {
                error!("{error}; dns-proxy status and flush are unavailable");
                None
            }
            Err(error) => return Err(error.into()),
        },
        None => None,
    };
    let context = Arc::new(Context::new(config, forwarder, problem, metrics));
    let current_identity = Arc::new(CurrentIdentity::default());
    current_identity.replace(identity.as_ref());
    let encrypted = listeners.tls.len() + listeners.https.len();
    if encrypted > 0 && !current_identity.is_set() {
        error!(
            "{encrypted} DNS over TLS or HTTPS sockets but no certificate (tls_certificate, tls_key): their TLS handshakes fail until a reload sets one"
        );
    }

    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut addresses = Vec::new();
    let mut served = Vec::new();
    if !serve_udp && !listeners.udp.is_empty() {
        info!(
            "udp is off: {} UDP sockets left unused",
            listeners.udp.len()
        );
    }
    if !serve_tcp && !listeners.tcp.is_empty() {
        info!(
            "tcp is off: {} TCP sockets left unused",
            listeners.tcp.len()
        );
    }
    for socket in listeners.udp.into_iter().filter(|_| serve_udp) {
        addresses.push(describe("udp", socket.local_addr(), &mut served));
        socket.set_nonblocking(true).map_err(DaemonError::Socket)?;
        let socket = tokio::net::UdpSocket::from_std(socket).map_err(DaemonError::Socket)?;
        tracker.spawn(udp::serve(
            Arc::new(socket),
            context.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    for listener in listeners.tcp.into_iter().filter(|_| serve_tcp) {
        addresses.push(describe("tcp", listener.local_addr(), &mut served));
        tracker.spawn(tcp::serve(
            tokio_listener(listener)?,
            context.clone(),
            connections.clone(),
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    let serve = |transport| Serve {
        context: context.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        transport,
    };
    if !listeners.tls.is_empty() {
        let acceptor = tls_server::acceptor(current_identity.clone(), &[tls_server::ALPN_DOT])?;
        for listener in listeners.tls {
            addresses.push(describe("tls", listener.local_addr(), &mut served));
            tracker.spawn(dot::serve(
                tokio_listener(listener)?,
                acceptor.clone(),
                connections.clone(),
                serve(Transport::Tls),
            ));
        }
    }
    if !listeners.https.is_empty() {
        let acceptor = tls_server::acceptor(current_identity.clone(), &tls_server::ALPN_DOH)?;
        for listener in listeners.https {
            addresses.push(describe("https", listener.local_addr(), &mut served));
            tracker.spawn(doh::serve(
                tokio_listener(listener)?,
                acceptor.clone(),
                connections.clone(),
                serve(Transport::Https),
            ));
        }
    }
    for listener in metrics_listeners {
        match listener.local_addr() {
            Ok(address) => info!("metrics: serving http://{address}/metrics and /healthz"),
            Err(_) => info!("metrics: serving /metrics and /healthz"),
        }
        describe("metrics", listener.local_addr(), &mut served);
        tracker.spawn(admin_endpoint(&context).serve(
            tokio_listener(listener)?,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    if let Some(bound) = control_socket {
        info!("control socket: serving {}", bound.path().display());
        served.push(Listener {
            kind: "control".to_string(),
            address: bound.path().display().to_string(),
        });
        let handler = control_handler(
            &context,
            &sources,
            &current_identity,
            served.clone(),
            started,
        );
        tracker.spawn(Arc::new(Control::new(handler)).serve(
            bound,
            shutdown.clone(),
            tracker.clone(),
        ));
    }
    let mut hangup = signal(SignalKind::hangup()).map_err(DaemonError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(DaemonError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(DaemonError::Signals)?;

    match context.problem() {
        Some(_) => info!("ready: serving {} (local zones only)", addresses.join(", ")),
        None => info!(
            "ready: serving {}; upstreams {}",
            addresses.join(", "),
            context.forwarder().describe_upstreams()
        ),
    }
    notify::ready(&context.status());
    tracker.spawn(notify::heartbeat(context.clone(), shutdown.clone()));

    loop {
        tokio::select! {
            _ = hangup.recv() => {
                // The outcome is logged; `dns-proxy reload` is the way to wait for it.
                let _ = reload(&sources, &context, &current_identity);
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }

    info!("stopping: finishing queries in flight");
    notify::stopping();
    shutdown.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        warn!("queries still in flight after {SHUTDOWN_GRACE:?}; exiting anyway");
    }
    Ok(())
}

/// Loads the configuration again and puts it in force if it is valid, with its certificate and
/// key: new TLS handshakes get them, connections already open keep their session. SIGHUP and
/// `dns-proxy reload` both come here; the error is why the new configuration was refused.
fn reload(sources: &Sources, context: &Context, identity: &CurrentIdentity) -> Result<(), String> {
    // One at a time: a signal and a control request may arrive together.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _reloading = lock(&ONE_AT_A_TIME);
    notify::reloading();
    let outcome = config::load(sources)
        .map_err(|e| e.to_string())
        .and_then(|loaded| {
            Forwarder::new(&loaded.config, &context.metrics)
                .map(|forwarder| (loaded.config, loaded.identity, forwarder))
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok((config, new_identity, forwarder)) => {
            let old = context.config();
            if old.listen != config.listen
                || old.listen_tls != config.listen_tls
                || old.listen_https != config.listen_https
                || old.udp != config.udp
                || old.tcp != config.tcp
                || old.tcp_max_connections != config.tcp_max_connections
                || old.tcp_max_connections_per_client != config.tcp_max_connections_per_client
                || old.log_level != config.log_level
                || old.metrics != config.metrics
                || old.threads != config.threads
                || old.control_socket != config.control_socket
            {
                warn!(
                    "listen, listen_tls, listen_https, udp, tcp, tcp_max_connections(_per_client), log_level, threads, control_socket and [metrics] take effect at the next restart"
                );
            }
            identity.replace(new_identity.as_ref());
            context.replace(config, forwarder);
            let recovered = if context.problem().is_some() {
                "; no longer degraded"
            } else {
                ""
            };
            context.set_problem(None);
            info!(
                "configuration reloaded{recovered}; upstreams {}",
                context.forwarder().describe_upstreams()
            );
            notify::ready(&context.status());
            Ok(())
        }
        Err(error) => {
            if context.problem().is_some() {
                error!("reload: still degraded, local zones only: {error}");
                context.set_problem(Some(error.clone()));
            } else {
                error!("reload refused, the running configuration stays in force: {error}");
            }
            notify::ready(&context.status());
            Err(error)
        }
    }
}

/// `udp 127.0.0.1:53`, for the log; also adds the socket to those `dns-proxy status` lists.
fn describe(
    transport: &str,
    address: io::Result<std::net::SocketAddr>,
    served: &mut Vec<Listener>,
) -> String {
    let address = match address {
        Ok(address) => address.to_string(),
        Err(_) => "(unknown address)".to_string(),
    };
    served.push(Listener {
        kind: transport.to_string(),
        address: address.clone(),
    });
    format!("{transport} {address}")
}

/// What the control socket's commands do in this daemon: the status of the configuration and
/// forwarder in force with what was fixed at start (`served`, `started`), and a flush of the
/// cache in force.
fn control_handler(
    context: &Arc<Context>,
    sources: &Sources,
    identity: &Arc<CurrentIdentity>,
    served: Vec<Listener>,
    started: (SystemTime, Instant),
) -> Handler {
    let (status_context, flush_context) = (context.clone(), context.clone());
    let (reload_context, identity) = (context.clone(), identity.clone());
    let (sources, reload_sources) = (sources.clone(), sources.clone());
    Handler {
        status: Box::new(move || Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            started: snapshot::timestamp(started.0),
            uptime_seconds: started.1.elapsed().as_secs(),
            config_files: sources
                .files()
                .iter()
                .map(|path| path.display().to_string())
                .collect(),
            listeners: served.clone(),
            ..status_context.snapshot()
        }),
        flush: Box::new(move |names| flush_context.forwarder().flush(names)),
        reload: Box::new(move || reload(&reload_sources, &reload_context, &identity)),
    }
}

/// The admin endpoint, serving this daemon's metrics and its health: healthy while an
/// upstream of the forwarder in force is up.
fn admin_endpoint(context: &Arc<Context>) -> Arc<Admin> {
    let (metrics, health) = (context.metrics.clone(), context.clone());
    Arc::new(Admin::new(
        move || metrics.render(),
        move || match health.forwarder().any_upstream_up() {
            true => Ok(()),
            false => Err("no upstream is up"),
        },
    ))
}

/// A listening socket handed to tokio, which needs it non-blocking.
fn tokio_listener(listener: std::net::TcpListener) -> Result<tokio::net::TcpListener, DaemonError> {
    listener
        .set_nonblocking(true)
        .map_err(DaemonError::Socket)?;
    tokio::net::TcpListener::from_std(listener).map_err(DaemonError::Socket)
}
