//! dns-proxy: makes a host's own DNS private. It answers ordinary DNS on UDP and TCP (usually
//! sockets systemd passes it on 127.0.0.1:53 and [::1]:53) and forwards every query to upstream
//! resolvers over DNS-over-TLS, validating their certificates.
//!
//! # Layout
//! Most modules are private to the crate; the binary and the fuzz targets use `cli`, `config`,
//! `daemon`, `listeners`, `logging`, `sandbox`, `tls`, `tls_server`, `dns`, `doh_request`,
//! `cache`, `framing` and `control`.
//!
//! - `cli`, `config`: what to run and with which settings (layered TOML, environment, flags).
//! - `listeners`: the client sockets, inherited from systemd or bound here.
//! - `udp`, `tcp`: the client-facing servers; `dot`, `doh`: DNS over TLS (on `tcp`'s
//!   connection loop) and DNS over HTTPS (hyper, requests decoded by `doh_request`, an answer
//!   per TLS record on HTTP/2 by `answer_records`), with
//!   `tls_server` holding their certificate and TLS settings; `transport`: their names;
//!   `admission`: whether a client's query is served, refused or dropped, from `access` (who
//!   may ask) and `ratelimit` (how often).
//! - `dns`: DNS rules as pure functions over bytes (validation, padding, answers, truncation).
//! - `dnssec`: DNSSEC validation of upstream answers, from the trust anchors down.
//! - `framing`: 2-byte length framing shared by TCP clients and TLS upstreams.
//! - `forwarder`: a query to an answer: cache, upstream choice, retry, SERVFAIL on failure.
//! - `group`: picking an upstream (fastest, failover, round-robin) and hedging's delay;
//!   `exchange`: the trait every kind of upstream is asked through.
//! - `cache`, `coalesce`: answers kept for their TTL; identical queries in flight shared.
//! - `zones`: split DNS: which upstreams a name goes to, or its local answer.
//! - `upstream` (`TlsUpstream`), `connection`, `tls`: a DoT upstream's health, its pipelined
//!   TLS connection, and certificate validation; `plain`: a forward zone's plain-DNS upstream;
//!   `group::AnyUpstream`: either kind.
//! - `daemon`, `notify`, `logging`: lifecycle, systemd, logs; `context`: what the
//!   daemon shares with the servers (configuration and forwarder in force, metrics);
//!   `sandbox`: the service's IP allow list, computed from the configuration.
//! - `metrics`: the counters (also behind the systemd status line) and their Prometheus
//!   rendering; `admin`: the HTTP endpoint serving them and a health check (hyper).
//! - `control`: the control socket (`dns-proxy status` and `flush`), server and client;
//!   `snapshot`: the status it reports, which the forwarder, groups, cache and metrics fill in.
//! - `lock`, `defer`: taking a lock whose holder panicked; yielding behind queued tasks.
//! - `error`: why an upstream query failed and the kinds of upstream outcomes, which the
//!   upstream code, the plain-DNS resolver and the metrics use.
//!
//! Modules depend on each other one way, with no cycle (`.ci/module-cycles` checks it): the
//! daemon wires the servers, the forwarder and the metrics together, and none of them
//! imports the daemon.
//!
//! `ARCHITECTURE.md` follows one query through these modules.

pub mod cli;
pub(crate) mod common;
pub mod config;
pub(crate) mod context;
pub mod daemon;
pub mod dnssec;
pub mod ops;
pub(crate) mod policy;
pub mod resolve;
pub mod serve;
pub mod upstream;
pub mod wire;
