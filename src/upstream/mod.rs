//! The upstream side: the `Exchange` trait every kind of upstream is asked through, the
//! `health` (backoff, probing) every kind keeps, an encrypted upstream over a `pool` of
//! connections: DNS over TLS (`dot`, its pipelined `connection`) or DNS over HTTPS (`doh`,
//! HTTP/2, whose responses `doh_response` checks), certificate validation in `tls`, host-name
//! upstreams' addresses from `bootstrap`, both built by `build`; plain DNS for forward zones
//! (`plain`), and the `group` that picks one and hedges.

pub(crate) mod bootstrap;
pub(crate) mod build;
pub(crate) mod connection;
pub(crate) mod doh;
pub mod doh_response;
pub(crate) mod dot;
pub(crate) mod exchange;
pub(crate) mod group;
pub(crate) mod health;
pub(crate) mod plain;
pub(crate) mod pool;
pub mod tls;
