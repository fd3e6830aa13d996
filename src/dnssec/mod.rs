//! DNSSEC validation (RFC 4033–4035, 5155, 6840): every answer from an upstream is checked
//! here, from the trust anchors down, instead of trusting the upstream's AD bit.
//!
//! # Layout
//! - `anchors`: the built-in root anchors and the `trust_anchors` file format.
//! - `validator`: one answer's verdict: each RRset signed by its zone or below an unsigned
//!   delegation, the CNAME/DNAME chain, negative answers and wildcards with their proofs.
//! - `chain`: the chain of trust, zone by zone from an anchor (DS, then DNSKEY), with the
//!   cache of what is known of each zone, and the [`chain::Fetch`] trait the forwarder
//!   implements to ask for keys and delegations.
//! - `denial`: NSEC and NSEC3 proofs of non-existence, wildcards and insecure delegations.
//! - `verify`: RRSIG checks against a zone's keys, with their limits and clock skew.
//! - `canonical`: the data an RRSIG signs, built from the wire form.
//! - `message`: a response's records grouped into RRsets with their RRSIGs.
//! - `name`: names read out of messages, and their canonical order.
//! - `verdict`: what validation concluded, and the Extended DNS Error that says why.
//!
//! Everything here is pure over bytes except [`chain::Fetch`] and the clock; it imports only
//! `wire`.

pub mod anchors;
mod canonical;
pub mod chain;
mod denial;
mod message;
pub(crate) mod name;
pub mod validator;
pub mod verdict;
mod verify;

#[cfg(test)]
mod tests;
