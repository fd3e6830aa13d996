//! DNSSEC validation (RFC 4033–4035, 5155, 6840): every answer from an upstream is checked
//! here, from the trust anchors down, instead of trusting the upstream's AD bit.
//!
//! # Layout
//! - `anchors`: the built-in root anchors and the `trust_anchors` file format.
//! - `name`: names read out of messages, and their canonical order.
//! - `verdict`: what validation concluded, and the Extended DNS Error that says why.

pub mod anchors;
pub(crate) mod name;
pub mod verdict;
