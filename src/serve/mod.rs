//! The client side: the sockets (`listeners`), plain DNS on `udp` and `tcp`, DNS over TLS
//! (`dot`) and over HTTPS (`doh`, requests decoded by `doh_request`, answers one per TLS record
//! by `answer_records`), their TLS settings (`tls_server`), and whether a client is served
//! (`admission`).

pub(crate) mod admission;
pub(crate) mod answer_records;
pub(crate) mod doh;
pub mod doh_request;
pub(crate) mod dot;
pub mod listeners;
pub(crate) mod tcp;
pub mod tls_server;
pub(crate) mod udp;
