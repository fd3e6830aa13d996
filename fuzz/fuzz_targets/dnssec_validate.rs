//! DNSSEC validation of arbitrary and mutated signed answers: `Validator::validate` must
//! never panic and must stay within its work budget whatever the upstream sends.
//!
//! Input: messages, each preceded by its 2-byte length. The first is the answer to validate
//! (its question is the one asked); the others are served, in order, as the answers to the
//! validator's own DNSKEY and DS queries, and once they run out a query times out. The trust
//! anchors are the root's DNSKEY records in the first served answer, so that signed seeds
//! (fuzz/corpus/dnssec_validate, written by the `fuzz_seeds` test of `dnssec`) validate as
//! they were signed and their mutations reach the signature, chain and denial checks.
#![no_main]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use dns_proxy::dnssec::anchors::{Anchor, TYPE_DNSKEY};
use dns_proxy::dnssec::chain::{Fetch, FetchError};
use dns_proxy::dnssec::validator::Validator;
use dns_proxy::wire::dns::Response;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use hickory_proto::serialize::binary::BinEncodable;
use libfuzzer_sys::fuzz_target;

/// The answers served to the validator's own queries, in order.
struct Served {
    responses: Vec<Arc<Response>>,
    next: AtomicUsize,
}

impl Fetch for Served {
    async fn fetch(&self, _name: &[u8], _qtype: u16) -> Result<Arc<Response>, FetchError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed);
        self.responses.get(index).cloned().ok_or(FetchError::Timeout)
    }
}

fuzz_target!(|data: &[u8]| {
    let messages = split(data);
    let Some((answer, served)) = messages.split_first() else {
        return;
    };
    let Ok(answer) = Response::prepare(answer) else {
        return;
    };
    let anchors = served.first().map(|m| root_keys(m)).unwrap_or_default();
    let served = Served {
        responses: served
            .iter()
            .filter_map(|m| Response::prepare(m).ok())
            .map(Arc::new)
            .collect(),
        next: AtomicUsize::new(0),
    };
    let validator = Validator::new(anchors, &[], &[]);
    let verdict = run(validator.validate(answer.question(), &answer, &served));
    // The budget bounds the validator's own queries.
    assert!(served.next.load(Ordering::Relaxed) <= 24, "{verdict:?}");
});

/// The length-prefixed messages of the input.
fn split(mut data: &[u8]) -> Vec<&[u8]> {
    let mut messages = Vec::new();
    while let [high, low, rest @ ..] = data {
        let len = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
        messages.push(&rest[..len]);
        data = &rest[len..];
    }
    messages
}

/// The root's DNSKEY records in `message`, as trust anchors.
fn root_keys(message: &[u8]) -> Vec<Anchor> {
    let Ok(message) = Message::from_vec(message) else {
        return Vec::new();
    };
    message
        .answers
        .iter()
        .filter(|r| r.name.is_root() && r.record_type() == RecordType::DNSKEY)
        .filter_map(|r| Anchor::new(&[0], TYPE_DNSKEY, &r.data.to_bytes().ok()?))
        .collect()
}

/// Runs a future that never waits (the served answers are all ready) to completion.
fn run<F: Future>(future: F) -> F::Output {
    static WAKER: OnceLock<Waker> = OnceLock::new();
    let waker = WAKER.get_or_init(|| Waker::noop().clone());
    let mut context = Context::from_waker(waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}
