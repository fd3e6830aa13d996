//! A byte stream, delivered in pieces of arbitrary sizes with reads that are not ready yet,
//! through `FrameReader`, checked against the pure `parse_frame` and `frame`.
//!
//! Input: one byte `k`, then `k % 16` schedule bytes, then the stream. Each schedule byte is one
//! read: bit 7 makes that read return `Pending` first, after which the caller drops the `next()`
//! future as a timeout does (bit 6 clear) or polls it again (bit 6 set); bits 0..5 give the
//! read's size minus one. The schedule repeats; with none, every read takes all it can. A set bit 4 of `k` ends the stream
//! with an I/O error instead of end of file.
#![no_main]

use std::io;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use dns_proxy::wire::framing::{FrameReader, frame, parse_frame};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let (schedule, stream) = rest.split_at(usize::from(k % 16).min(rest.len()));
    let fail_at_end = k & 0x10 != 0;
    let (messages, outcome) = read_all(Pieces {
        stream,
        pos: 0,
        schedule,
        turn: 0,
        pending_served: false,
        fail_at_end,
    });

    // Framing the messages read again gives back exactly the bytes they were read from.
    let reframed: Vec<u8> = messages
        .iter()
        .flat_map(|m| frame(m).expect("a message read from a frame fits in one"))
        .collect();
    assert_eq!(reframed, stream[..reframed.len()]);
    let rest = &stream[reframed.len()..];

    // The pure parser splits the stream into the same messages.
    let mut pure = Vec::new();
    let mut buf = stream;
    while let Some(range) = parse_frame(buf) {
        assert_eq!(range.start, 2);
        pure.push(&buf[range.clone()]);
        buf = &buf[range.end..];
    }
    assert_eq!(pure, messages);
    assert_eq!(parse_frame(rest), None, "a complete frame was left unread");

    match outcome {
        Ok(()) => assert!(rest.is_empty() && !fail_at_end),
        Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => {
            assert!(!rest.is_empty() && !fail_at_end);
        }
        Err(error) => {
            assert!(fail_at_end, "unexpected error {error}");
        }
    }
});

/// Every message until the reader ends, and how it ended. A `Pending` read cancels the `next()`
/// call or polls it again; either way no byte may be lost.
fn read_all(pieces: Pieces<'_>) -> (Vec<Vec<u8>>, io::Result<()>) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut reader = FrameReader::new(pieces);
    let mut messages = Vec::new();
    loop {
        let result = loop {
            let mut next = pin!(reader.next());
            let polled = loop {
                match next.as_mut().poll(&mut cx) {
                    Poll::Ready(result) => break Some(result),
                    Poll::Pending if CANCEL.get() => break None,
                    Poll::Pending => {}
                }
            };
            if let Some(result) = polled {
                break result;
            }
        };
        match result {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, Ok(())),
            Err(error) => return (messages, Err(error)),
        }
    }
}

thread_local! {
    /// Set by `Pieces` when it returns `Pending`: whether the caller drops the future.
    static CANCEL: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

/// An in-memory stream handing out `stream` as `schedule` says.
struct Pieces<'a> {
    stream: &'a [u8],
    pos: usize,
    schedule: &'a [u8],
    turn: usize,
    pending_served: bool,
    fail_at_end: bool,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let mut size = usize::MAX;
        if let Some(&step) = this.schedule.get(this.turn % this.schedule.len().max(1)) {
            if step & 0x80 != 0 && !this.pending_served {
                this.pending_served = true;
                CANCEL.set(step & 0x40 == 0);
                return Poll::Pending;
            }
            size = usize::from(step & 0x3f) + 1;
        }
        this.turn += 1;
        this.pending_served = false;
        let rest = &this.stream[this.pos..];
        if rest.is_empty() && this.fail_at_end {
            return Poll::Ready(Err(io::Error::other("injected read error")));
        }
        let n = rest.len().min(size).min(buf.remaining());
        buf.put_slice(&rest[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}
