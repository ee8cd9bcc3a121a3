//! A tiny HTTP/1.1 client for tests that need exact bytes on the wire:
//! `raw_exchange` (write bytes, read until the peer closes), `raw_request`
//! (write bytes, parse one response) and `Conn`, a keep-alive connection that
//! sends several requests and reads responses framed by Content-Length,
//! chunked encoding or close. Every read and write has a timeout.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Default patience for one read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Interim (1xx) responses received before this one, by status.
    pub interim: Vec<u16>,
}

impl Response {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body when it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response body is not JSON ({e}): {:?}", self.body_str()))
    }

    /// Whether the response keeps the connection open (HTTP/1.1 default).
    pub fn keeps_alive(&self) -> bool {
        !self
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Connects with timeouts set.
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Writes `bytes`, then reads until the peer closes or nothing arrives for
/// `IO_TIMEOUT`. Returns everything read.
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // A peer that rejects the request may close before reading all of it; the
    // write error is then expected and the response is still readable.
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// Writes `bytes` on a new connection and parses one response.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> io::Result<Response> {
    let mut c = Conn::connect(addr)?;
    // See raw_exchange: the response may come before the whole request is read.
    let _ = c.send(bytes);
    c.read_response()
}

/// Builds a simple request: `method path`, Host, extra headers, optional body
/// with Content-Length.
pub fn request(method: &str, host: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// GET on a fresh connection; panics on transport errors.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> Response {
    raw_request(addr, &request("GET", host, path, &[("Connection", "close")], None))
        .unwrap_or_else(|e| panic!("GET {host}{path} via {addr}: {e}"))
}

/// What `Conn` runs over: a TCP stream, or a TLS stream on top of one
/// (`crate::tls`). The read timeout lets `peer_closed_within` wait boundedly.
pub trait Transport: Read + Write {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Transport for TcpStream {
    fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// A client connection that can carry several requests.
pub struct Conn<S = TcpStream> {
    stream: S,
    buf: Vec<u8>,
    closed: bool,
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> io::Result<Conn> {
        Ok(Conn::from_stream(connect(addr)?))
    }
}

impl<S: Transport> Conn<S> {
    /// Wraps an already connected stream (timeouts are the caller's).
    pub fn from_stream(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
            closed: false,
        }
    }

    pub fn stream(&mut self) -> &mut S {
        &mut self.stream
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes into the buffer; false on EOF.
    fn fill(&mut self) -> io::Result<bool> {
        if self.closed {
            return Ok(false);
        }
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        if n == 0 {
            self.closed = true;
            return Ok(false);
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(true)
    }

    fn eof_err(what: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("connection closed while reading {what}"),
        )
    }

    /// Reads a line ending in CRLF (without it).
    fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if !self.fill()? {
                return Err(Self::eof_err("a line"));
            }
        }
    }

    /// Reads a status line and headers into a `Response` with an empty body.
    pub fn read_head(&mut self) -> io::Result<Response> {
        let line = self.read_line()?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            ));
        }
        let status = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {line:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let h = self.read_line()?;
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap_or((&h, ""));
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Ok(Response {
            status,
            reason,
            headers,
            body: Vec::new(),
            interim: Vec::new(),
        })
    }

    /// Reads exactly `n` body bytes, feeding them to `sink`.
    fn read_exact_into(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        while n > 0 {
            if self.buf.is_empty() && !self.fill()? {
                return Err(Self::eof_err("a body"));
            }
            let take = (self.buf.len() as u64).min(n) as usize;
            sink(&self.buf[..take]);
            self.buf.drain(..take);
            n -= take as u64;
        }
        Ok(())
    }

    /// Reads one final response (skipping 1xx), passing body bytes to `sink`;
    /// the returned `Response` has an empty body. `head_only` is for
    /// responses to HEAD.
    pub fn read_response_with(&mut self, head_only: bool, sink: &mut dyn FnMut(&[u8])) -> io::Result<Response> {
        let mut interim = Vec::new();
        let mut resp = loop {
            let r = self.read_head()?;
            if (100..200).contains(&r.status) && r.status != 101 {
                interim.push(r.status);
                continue;
            }
            break r;
        };
        resp.interim = interim;
        let status = resp.status;
        let find = |name: &str| resp.header(name).map(str::to_string);
        let chunked = find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if head_only || status == 204 || status == 304 || status == 101 {
            // no body
        } else if chunked {
            loop {
                let size_line = self.read_line()?;
                let size_hex = size_line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size_hex, 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {size_line:?}")))?;
                if size == 0 {
                    while !self.read_line()?.is_empty() {}
                    break;
                }
                self.read_exact_into(size, sink)?;
                if !self.read_line()?.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk not followed by CRLF"));
                }
            }
        } else if let Some(cl) = find("content-length") {
            let n: u64 = cl
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad content-length {cl:?}")))?;
            self.read_exact_into(n, sink)?;
        } else {
            loop {
                if !self.buf.is_empty() {
                    sink(&self.buf);
                    self.buf.clear();
                }
                if !self.fill()? {
                    break;
                }
            }
        }
        Ok(resp)
    }

    /// Reads one response and keeps its body.
    pub fn read_response(&mut self) -> io::Result<Response> {
        let mut body = Vec::new();
        let mut resp = self.read_response_with(false, &mut |b| body.extend_from_slice(b))?;
        resp.body = body;
        Ok(resp)
    }

    /// Sends a request and reads its response.
    pub fn exchange(&mut self, bytes: &[u8]) -> io::Result<Response> {
        self.send(bytes)?;
        self.read_response()
    }

    /// Bytes already received but not consumed by a response (e.g. tunnel data).
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Whether the peer has closed: waits up to `timeout` for EOF.
    pub fn peer_closed_within(&mut self, timeout: Duration) -> bool {
        let _ = Transport::set_read_timeout(&self.stream, Some(timeout));
        let r = match self.fill() {
            Ok(more) => !more,
            Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut),
        };
        let _ = Transport::set_read_timeout(&self.stream, Some(IO_TIMEOUT));
        r
    }
}

/// Writes `len` pattern bytes (`crate::pattern_byte`) as a request body,
/// either raw (the head carried Content-Length) or as chunks whose sizes vary,
/// ending with the last chunk.
pub fn write_pattern_body(w: &mut impl Write, len: u64, chunked: bool) -> io::Result<()> {
    let mut buf = vec![0u8; crate::PATTERN_BLOCK];
    crate::fill_pattern(&mut buf, 0);
    let mut off = 0u64;
    let mut turn = 0usize;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        if chunked {
            // Uneven chunk sizes (but whole blocks overall) exercise the parser's
            // chunk boundaries.
            let cut = [n, n / 3, n - n / 3][turn % 3].max(1).min(n);
            let parts: &[&[u8]] = if cut == n {
                &[&buf[..n]]
            } else {
                &[&buf[..cut], &buf[cut..n]]
            };
            for p in parts {
                w.write_all(format!("{:x}\r\n", p.len()).as_bytes())?;
                w.write_all(p)?;
                w.write_all(b"\r\n")?;
            }
            turn += 1;
        } else {
            w.write_all(&buf[..n])?;
        }
        off += n as u64;
    }
    if chunked {
        w.write_all(b"0\r\n\r\n")?;
    }
    Ok(())
}
