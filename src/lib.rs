//! dns-proxy: makes a host's own DNS private. It answers ordinary DNS on UDP and TCP (usually
//! sockets systemd passes it on 127.0.0.1:53 and [::1]:53) and forwards every query to upstream
//! resolvers over DNS-over-TLS, validating their certificates.
//!
//! # Layout
//! The modules are the folders of `src/` and the files at its top, listed bottom up: each
//! imports only those above it (`.ci/module-cycles` checks folders and files). The binary and
//! the fuzz targets use `cli`, `config`, `daemon` and the public modules inside the folders.
//!
//! - `common`: shared types below everything: `lock` (taking a lock whose holder panicked),
//!   `defer` (yielding behind queued tasks), `error` (why an upstream query failed, the kinds of
//!   upstream outcomes), `transport` (names), `snapshot` (the status `control` reports, which
//!   the forwarder, groups, cache and metrics fill in) and `metrics` (the counters, also behind
//!   the systemd status line, and their Prometheus rendering).
//! - `wire`: DNS as pure functions over bytes: `dns` (validation, padding, answers,
//!   truncation), `framing` (2-byte length framing shared by TCP clients and TLS upstreams),
//!   `name` (zone names).
//! - `policy`: `access` (who may ask) and `ratelimit` (how often).
//! - `config`: what to run with (layered TOML, environment, flags), each key declared once.
//! - `dnssec`: DNSSEC validation of upstream answers, from the trust anchors down.
//! - `upstream`: `exchange` (the trait every kind of upstream is asked through), `health`
//!   (backoff, probing), `pool` (an upstream over connections it keeps), `dot` (DNS over TLS,
//!   its pipelined TLS `connection`), `doh` (DNS over HTTPS on hyper's HTTP/2 client, responses
//!   checked by `doh_response`), certificate validation (`tls`), `bootstrap` (host-name
//!   upstreams' addresses), `build` (an upstream from its configuration), `plain` (a forward
//!   zone's plain-DNS upstream), `group` (picking an upstream: fastest, failover, round-robin;
//!   hedging; `AnyUpstream`, any kind).
//! - `resolve`: a query to an answer: `forwarder` (cache, upstream choice, retry, SERVFAIL on
//!   failure), `cache`, `coalesce` (identical queries in flight shared), `zones` (split DNS:
//!   which upstreams a name goes to, or its local answer).
//! - `link`: per-link DNS over `org.freedesktop.resolve1` (NetworkManager, resolvectl): each
//!   link's domains answered by its servers, a resolv.conf with their search list.
//! - `context`: what the daemon shares with the servers (configuration and forwarder in
//!   force, metrics).
//! - `serve`: the client side: `listeners` (the sockets, inherited from systemd or bound
//!   here), `udp`, `tcp`, `dot` (DNS over TLS, on `tcp`'s connection loop), `doh` (DNS over
//!   HTTPS: hyper, requests decoded by `doh_request`, an answer per TLS record on HTTP/2 by
//!   `answer_records`), `tls_server` (their certificate and TLS settings), `admission` (whether
//!   a client's query is served, refused or dropped, from `policy`).
//! - `ops`: running the daemon: `admin` (the HTTP endpoint serving the metrics and a health
//!   check), `control` (the control socket: `dns-proxy status`, `flush` and `reload`, server
//!   and client), `notify` (systemd), `logging`, `sandbox` (the service's IP allow list,
//!   computed from the configuration).
//! - `cli`, `daemon`: the command line; lifecycle, reload and signals, wiring the servers,
//!   the forwarder and the metrics together; no module imports the daemon.
//!
//! `ARCHITECTURE.md` follows one query through these modules.

pub mod cli;
pub(crate) mod common;
pub mod config;
pub(crate) mod context;
pub mod daemon;
pub mod dnssec;
pub(crate) mod link;
pub mod ops;
pub(crate) mod policy;
pub mod resolve;
pub mod serve;
pub mod upstream;
pub mod wire;
