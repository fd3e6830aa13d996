//! The upstream side: the `Exchange` trait every kind of upstream is asked through, the
//! `health` (backoff, probing) both kinds keep, an upstream over a `pool` of connections, DNS
//! over TLS as one (`dot`, its pipelined `connection`, certificate validation in `tls`), plain
//! DNS for forward zones (`plain`), and the `group` that picks one and hedges.

pub(crate) mod connection;
pub(crate) mod dot;
pub(crate) mod exchange;
pub(crate) mod group;
pub(crate) mod health;
pub(crate) mod plain;
pub(crate) mod pool;
pub mod tls;
