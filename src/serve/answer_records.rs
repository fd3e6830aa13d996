//! One TLS record per DNS-over-HTTPS answer on HTTP/2 connections.
//!
//! HTTP/2 writes the frames of every answer that is ready in one go, and TLS would carry them
//! in one record. Some clients read a record at a time and take at most one answer from each:
//! dnsperf 2.10's `-m doh` drops the rest and counts them lost (measured: 2 answers of 10
//! outstanding). So the write side of the stream is cut after each frame that ends a stream
//! (DATA or HEADERS with END_STREAM), and each piece becomes records of its own. The bytes
//! are unchanged; only where records end differs, at the cost of a record header and an AEAD
//! tag (about 22 bytes) per answer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Length of an HTTP/2 frame header (RFC 9113 §4.1).
const FRAME_HEADER: usize = 9;
/// Frame types that can end a stream.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
/// The END_STREAM flag of DATA and HEADERS frames.
const END_STREAM: u8 = 0x1;

/// Where the writer is in the sequence of frames it has written.
#[derive(Debug, Clone, Copy, Default)]
struct Frames {
    /// Bytes of the current frame's header seen so far (all of it once in the payload).
    header: [u8; FRAME_HEADER],
    header_seen: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
}

impl Frames {
    /// Consumes `bytes` up to and including the end of the first frame that ends a stream,
    /// and returns how many bytes that is; `None` when there is none in `bytes`, all of which
    /// are then consumed.
    fn until_stream_end(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut at = 0;
        while at < bytes.len() {
            if self.header_seen < FRAME_HEADER {
                let take = (FRAME_HEADER - self.header_seen).min(bytes.len() - at);
                self.header[self.header_seen..self.header_seen + take]
                    .copy_from_slice(&bytes[at..at + take]);
                self.header_seen += take;
                at += take;
                if self.header_seen < FRAME_HEADER {
                    return None;
                }
                let [a, b, c, ..] = self.header;
                self.payload_left = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
            } else {
                let take = self.payload_left.min(bytes.len() - at);
                self.payload_left -= take;
                at += take;
            }
            if self.header_seen == FRAME_HEADER && self.payload_left == 0 {
                let ends_stream =
                    matches!(self.header[3], DATA | HEADERS) && self.header[4] & END_STREAM != 0;
                self.header_seen = 0;
                if ends_stream {
                    return Some(at);
                }
            }
        }
        None
    }

    /// Consumes all of `bytes`.
    fn consume(&mut self, mut bytes: &[u8]) {
        while let Some(at) = self.until_stream_end(bytes) {
            bytes = &bytes[at..];
        }
    }
}

/// A stream whose writes are cut after each HTTP/2 frame that ends a stream, when `split` is
/// on (an HTTP/2 connection); otherwise it passes everything through.
pub(crate) struct AnswerRecords<S> {
    inner: S,
    split: bool,
    frames: Frames,
}

impl<S> AnswerRecords<S> {
    pub(crate) fn new(inner: S, split: bool) -> AnswerRecords<S> {
        AnswerRecords {
            inner,
            split,
            frames: Frames::default(),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AnswerRecords<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AnswerRecords<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if !this.split {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        // Up to the end of the first answer; the caller writes the rest in the next call.
        let mut probe = this.frames;
        let end = probe.until_stream_end(buf).unwrap_or(buf.len());
        let written = Pin::new(&mut this.inner).poll_write(cx, &buf[..end]);
        if let Poll::Ready(Ok(n)) = written {
            this.frames.consume(&buf[..n]);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut frame = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        frame.extend(std::iter::repeat_n(0xaa, payload));
        frame
    }

    /// Where the cuts fall when `stream` is offered in pieces of `piece` bytes.
    fn cuts(stream: &[u8], piece: usize) -> Vec<usize> {
        let mut frames = Frames::default();
        let mut cuts = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let offered = &stream[at..(at + piece).min(stream.len())];
            match frames.until_stream_end(offered) {
                Some(end) => {
                    at += end;
                    cuts.push(at);
                }
                None => at += offered.len(),
            }
        }
        cuts
    }

    #[test]
    fn writes_end_after_each_frame_that_ends_a_stream() {
        let settings = frame(0x4, 0, 6);
        let answer = [frame(HEADERS, 0x4, 20), frame(DATA, END_STREAM, 40)].concat();
        let headers_only = frame(HEADERS, 0x4 | END_STREAM, 12);
        let stream = [
            settings.clone(),
            answer.clone(),
            answer.clone(),
            headers_only.clone(),
            frame(DATA, END_STREAM, 0),
            answer.clone(),
        ]
        .concat();
        let mut ends = Vec::new();
        let mut sum = settings.len();
        for part in [
            &answer,
            &answer,
            &headers_only,
            &frame(DATA, END_STREAM, 0),
            &answer,
        ] {
            sum += part.len();
            ends.push(sum);
        }
        // Offered whole, or in pieces that cut headers and payloads anywhere: the same ends.
        for piece in [stream.len(), 1, 4, 9, 10, 33] {
            assert_eq!(cuts(&stream, piece), ends, "pieces of {piece}");
        }
    }

    #[test]
    fn a_partial_write_keeps_the_place_in_the_frame() {
        let stream = [frame(HEADERS, 0x4, 5), frame(DATA, END_STREAM, 300)].concat();
        let mut frames = Frames::default();
        frames.consume(&stream[..100]);
        assert_eq!(
            frames.until_stream_end(&stream[100..]),
            Some(stream.len() - 100)
        );
        assert_eq!(
            (frames.header_seen, frames.payload_left),
            (0, 0),
            "at a frame boundary"
        );
    }
}
