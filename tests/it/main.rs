//! Integration tests of dns-proxy: the real binary, launched the way systemd launches it, in
//! front of fake DNS-over-TLS upstreams (and a real one, unbound), queried over loopback only.

mod support;

mod access_control;
mod activation;
mod answer_source;
mod blocked_853;
mod cache;
mod certificates;
mod check_config;
mod connection_reuse;
mod container;
mod control;
mod degraded;
mod dns_over_https;
mod dns_over_tls;
mod dnssec;
mod doh_upstream;
mod doh_upstream_faults;
mod fault_matrix;
mod harness_selftest;
mod idle_timeouts;
mod link_dns;
mod listen;
mod malformed;
mod man_page;
mod metrics;
mod nagle_upstream;
mod padding;
mod pipelining;
mod privileged;
mod rate_limit;
mod real_clients;
mod signals;
mod slowloris;
mod split_dns;
mod strategy;
mod tls_identity;
mod truncation;
