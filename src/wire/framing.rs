//! DNS over a byte stream (RFC 1035 §4.2.2, RFC 7766): every message is preceded by its length
//! in two bytes. Client TCP connections and upstream TLS connections both use this.
//!
//! Reading is split into a pure [`parse_frame`] over a buffer and a [`FrameReader`] that only
//! fills that buffer, so a half-received message is a normal state, not an error, and reading
//! can be cancelled (by a timeout or shutdown) at any point without losing bytes.

use std::io;
use std::ops::Range;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

/// Most bytes of queued frames written together: a TLS record's worth of plaintext.
const WRITE_BATCH: usize = 16 * 1024;

/// Where the first complete message in `buf` lies, or `None` while more bytes are needed.
pub fn parse_frame(buf: &[u8]) -> Option<Range<usize>> {
    let len = usize::from(u16::from_be_bytes([*buf.first()?, *buf.get(1)?]));
    (buf.len() >= 2 + len).then_some(2..2 + len)
}

/// Puts `first` and the frames queued behind it (up to [`WRITE_BATCH`] bytes) in `batch`, for
/// one write: over TLS one record, which the peer also reads and decrypts in one go. The tasks
/// that queue frames often run on this thread right after the one that woke the writer (one
/// received batch of queries is many tasks): they run first.
pub(crate) async fn gather(batch: &mut Vec<u8>, first: &[u8], queue: &mut mpsc::Receiver<Vec<u8>>) {
    crate::common::defer::behind_queued_tasks().await;
    batch.clear();
    batch.extend_from_slice(first);
    while batch.len() < WRITE_BATCH {
        match queue.try_recv() {
            Ok(frame) => batch.extend_from_slice(&frame),
            Err(_) => break,
        }
    }
}

/// `message` with its length prefix, ready to write in one call (one TLS record, one segment).
/// `None` if it is too long to frame.
pub fn frame(message: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(message.len()).ok()?;
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    Some(out)
}

/// Reads length-prefixed messages from a stream.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The next message; `Ok(None)` when the peer closed cleanly between messages.
    ///
    /// Cancel-safe: bytes already read stay buffered for the next call.
    pub async fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some(range) = parse_frame(&self.buf) {
                let message = self.buf[range.clone()].to_vec();
                self.buf.drain(..range.end);
                return Ok(Some(message));
            }
            self.buf.reserve(4096);
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incomplete_frames_wait_for_more() {
        assert_eq!(parse_frame(&[]), None);
        assert_eq!(parse_frame(&[0]), None);
        assert_eq!(parse_frame(&[0, 3, 1, 2]), None);
        assert_eq!(parse_frame(&[0, 3, 1, 2, 3, 9]), Some(2..5));
        assert_eq!(parse_frame(&[0, 0]), Some(2..2));
    }

    #[test]
    fn frame_round_trips() {
        let framed = frame(b"hello").unwrap();
        assert_eq!(parse_frame(&framed), Some(2..7));
        assert!(frame(&vec![0; 70_000]).is_none());
    }

    #[tokio::test]
    async fn reader_handles_any_split() {
        let mut stream = Vec::new();
        for message in [&b"abc"[..], b"", b"0123456789"] {
            stream.extend_from_slice(&frame(message).unwrap());
        }
        for chunk in 1..stream.len() {
            let (client, mut server) = tokio::io::duplex(64);
            let bytes = stream.clone();
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for piece in bytes.chunks(chunk) {
                    server.write_all(piece).await.unwrap();
                }
            });
            let mut reader = FrameReader::new(client);
            assert_eq!(reader.next().await.unwrap().unwrap(), b"abc");
            assert_eq!(reader.next().await.unwrap().unwrap(), b"");
            assert_eq!(reader.next().await.unwrap().unwrap(), b"0123456789");
            writer.await.unwrap();
            assert!(reader.next().await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn eof_inside_a_frame_is_an_error() {
        let mut reader = FrameReader::new(&[0u8, 5, 1, 2][..]);
        assert!(reader.next().await.is_err());
    }
}
