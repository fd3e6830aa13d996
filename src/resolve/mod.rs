//! A query to an answer: the `forwarder` (budget, retry, hedging, SERVFAIL), the `cache`,
//! identical queries shared while in flight (`coalesce`), and split DNS (`zones`).

pub mod cache;
pub(crate) mod coalesce;
pub(crate) mod forwarder;
pub(crate) mod zones;
