//! Shared types below everything else: the lock helper, yielding behind queued tasks, why an
//! upstream query failed, transport names, the status snapshot and the counters. Nothing here
//! imports another folder of the crate.

pub(crate) mod defer;
pub(crate) mod error;
pub(crate) mod lock;
pub(crate) mod metrics;
pub(crate) mod snapshot;
pub(crate) mod transport;
