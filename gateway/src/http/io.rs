//! Owned-buffer I/O with deadlines, over monoio's completion-based streams.
//!
//! monoio takes buffers by value for the duration of an operation (io_uring
//! writes into them after the call returns). These helpers move a `Vec` in and
//! put it back, so callers keep working with `&mut Vec<u8>`. When a deadline
//! fires the operation is dropped together with its buffer: callers must close
//! the connection after a timeout, never reuse it.

use std::io;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

/// Free space ensured before each read.
const MIN_READ_SPACE: usize = 4096;
/// Capacity added when the free space runs low.
pub const READ_CHUNK: usize = 16 * 1024;

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "timed out")
}

/// Appends what the peer sends next to `buf`. Returns 0 at end of stream.
pub async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<usize> {
    if buf.capacity() - buf.len() < MIN_READ_SPACE {
        buf.reserve(READ_CHUNK);
    }
    let filled = buf.len();
    let owned = std::mem::take(buf);
    match monoio::time::timeout(timeout, stream.read(owned.slice_mut(filled..))).await {
        Ok((result, slice)) => {
            *buf = slice.into_inner();
            result
        }
        Err(_) => Err(timed_out()),
    }
}

/// Writes `buf[range]` completely.
pub async fn write_range(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
    timeout: Duration,
) -> io::Result<()> {
    if range.is_empty() {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    match monoio::time::timeout(timeout, stream.write_all(owned.slice(range))).await {
        Ok((result, slice)) => {
            *buf = slice.into_inner();
            result.map(|_| ())
        }
        Err(_) => Err(timed_out()),
    }
}

/// Writes all of `buf`.
pub async fn write_all(stream: &mut TcpStream, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<()> {
    let len = buf.len();
    write_range(stream, buf, 0..len, timeout).await
}

/// The client side of a connection: plain TCP, or TLS over it.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<crate::tls::TlsStream>),
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, ClientStream::Tls(_))
    }

    /// Appends what the client sends next (decrypted) to `buf`; 0 at its end.
    pub async fn read_more(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<usize> {
        match self {
            ClientStream::Plain(stream) => read_more(stream, buf, timeout).await,
            ClientStream::Tls(stream) => stream.read_more(buf, timeout).await,
        }
    }

    pub async fn write_range(
        &mut self,
        buf: &mut Vec<u8>,
        range: std::ops::Range<usize>,
        timeout: Duration,
    ) -> io::Result<()> {
        match self {
            ClientStream::Plain(stream) => write_range(stream, buf, range, timeout).await,
            ClientStream::Tls(stream) => stream.write_range(&buf[range], timeout).await,
        }
    }

    pub async fn write_all(&mut self, buf: &mut Vec<u8>, timeout: Duration) -> io::Result<()> {
        let len = buf.len();
        self.write_range(buf, 0..len, timeout).await
    }
}
