//! Who may ask (the allow list and its networks) and how often (the per-client rate limit).

pub(crate) mod access;
pub(crate) mod ratelimit;
