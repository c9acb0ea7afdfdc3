//! Bytes waiting to be written to a socket, client or backend, written with one `writev` for as
//! many replies or requests as are ready.
//!
//! Small pieces are copied into one contiguous tail buffer (a syscall per batch, not per piece);
//! large ones (a 100 MiB value) are queued as the `Bytes` they already are and written from there,
//! never copied.
//!
//! A writer may keep part of what it accepted (TLS holds encrypted records the socket did not
//! take yet), so the queue flushes once it is empty, and counts as having something to write
//! until that flush is done.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::resp;

/// Pieces up to this size are copied into the tail; larger ones are queued by reference.
const COPY_LIMIT: usize = 16 * 1024;
/// At most this many buffers per `writev`.
const MAX_SLICES: usize = 64;

#[derive(Default)]
pub struct WriteQueue {
    /// Queued ahead of `tail`, in order.
    chunks: VecDeque<Bytes>,
    /// Written after every chunk.
    tail: BytesMut,
    /// Bytes in `chunks`.
    chunk_bytes: usize,
    /// Written since the writer was last flushed.
    unflushed: bool,
}

impl WriteQueue {
    pub fn new() -> Self {
        WriteQueue::default()
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.chunk_bytes + self.tail.len()
    }

    /// The largest piece queued by reference (0 if none): a large reply not copied. Walks the
    /// queue: only for rare checks.
    pub fn largest_piece(&self) -> usize {
        self.chunks.iter().map(Bytes::len).max().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Is there anything to write or to flush? (`write_to` has work to do.)
    pub fn wants_write(&self) -> bool {
        self.unflushed || !self.is_empty()
    }

    pub fn push(&mut self, bytes: Bytes) {
        if bytes.len() <= COPY_LIMIT {
            self.tail.put_slice(&bytes);
        } else {
            self.push_chunk(bytes);
        }
    }

    /// Queue a request, encoded as RESP multibulk; large arguments are not copied.
    pub fn push_request(&mut self, args: &[Bytes]) {
        resp::put_header(&mut self.tail, b'*', args.len() as i64);
        for arg in args {
            resp::put_header(&mut self.tail, b'$', arg.len() as i64);
            if arg.len() <= COPY_LIMIT {
                self.tail.put_slice(arg);
            } else {
                self.push_chunk(arg.clone());
            }
            self.tail.put_slice(b"\r\n");
        }
    }

    fn push_chunk(&mut self, bytes: Bytes) {
        if !self.tail.is_empty() {
            let head = self.tail.split().freeze();
            self.chunk_bytes += head.len();
            self.chunks.push_back(head);
        }
        self.chunk_bytes += bytes.len();
        self.chunks.push_back(bytes);
    }

    /// Write as much as one `writev` takes, and flush the writer once everything is written;
    /// returns the number of bytes written. Cancel-safe: nothing written is written twice, and
    /// a flush cut short is done again by the next call.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<usize> {
        if self.is_empty() {
            w.flush().await?;
            self.unflushed = false;
            return Ok(0);
        }
        let written = {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for chunk in self.chunks.iter().take(MAX_SLICES - 1) {
                slices[n] = IoSlice::new(chunk);
                n += 1;
            }
            if self.chunks.len() < MAX_SLICES && !self.tail.is_empty() {
                slices[n] = IoSlice::new(&self.tail);
                n += 1;
            }
            w.write_vectored(&slices[..n]).await?
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.consume(written);
        self.unflushed = true;
        if self.is_empty() {
            // Ready at once for TCP; for TLS, it pushes out the records still held.
            w.flush().await?;
            self.unflushed = false;
        }
        Ok(written)
    }

    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            match self.chunks.front_mut() {
                Some(chunk) if chunk.len() <= n => {
                    n -= chunk.len();
                    self.chunk_bytes -= chunk.len();
                    self.chunks.pop_front();
                }
                Some(chunk) => {
                    chunk.advance(n);
                    self.chunk_bytes -= n;
                    return;
                }
                None => {
                    self.tail.advance(n);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_everything_in_order() {
        let mut q = WriteQueue::new();
        let big = Bytes::from(vec![b'x'; COPY_LIMIT + 1]);
        q.push(Bytes::from_static(b"+OK\r\n"));
        q.push_request(&[Bytes::from_static(b"SET"), big.clone()]);
        q.push(Bytes::from_static(b":1\r\n"));
        let mut want = b"+OK\r\n".to_vec();
        let mut enc = BytesMut::new();
        resp::encode_request(&[Bytes::from_static(b"SET"), big], &mut enc);
        want.extend_from_slice(&enc);
        want.extend_from_slice(b":1\r\n");
        assert_eq!(q.len(), want.len());
        let mut out = Vec::new();
        while !q.is_empty() {
            q.write_to(&mut out).await.unwrap();
        }
        assert_eq!(out, want);
        assert_eq!(q.len(), 0);
    }

    /// A writer that keeps what it accepted until flushed (as TLS keeps encrypted records the
    /// socket did not take): the queue is not done until it has flushed it.
    #[tokio::test]
    async fn flushes_what_the_writer_holds() {
        let mut q = WriteQueue::new();
        let mut w = tokio::io::BufWriter::new(Vec::new());
        q.push(Bytes::from_static(b"+OK\r\n"));
        assert!(q.wants_write());
        while q.wants_write() {
            q.write_to(&mut w).await.unwrap();
        }
        assert_eq!(w.get_ref(), b"+OK\r\n");
    }
}
