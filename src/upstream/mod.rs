//! The upstream side: the `Exchange` trait every kind of upstream is asked through, the
//! encrypted upstreams (`dot`'s `TlsUpstream`, over a `link`: DNS over TLS's pipelined
//! `connection` or DNS over HTTPS's HTTP/2 `doh`, whose responses `doh_response` checks),
//! certificate validation in `tls`, host-name upstreams' addresses from `bootstrap`, plain DNS
//! for forward zones (`plain`), and the `group` that picks one and hedges.

pub(crate) mod bootstrap;
pub(crate) mod build;
pub(crate) mod connection;
pub(crate) mod doh;
pub mod doh_response;
pub(crate) mod dot;
pub(crate) mod exchange;
pub(crate) mod group;
pub(crate) mod link;
pub(crate) mod plain;
pub mod tls;
