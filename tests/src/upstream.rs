//! `Upstream`: a small in-process HTTP/1.1 server (std threads, one per
//! connection) that stands in for a real backend. It counts TCP connections
//! and requests, records the request heads and body digests it saw, and
//! answers according to a `Behaviour` that a test may change while it runs.
//! `GET /health` is always answered with a status the test can flip, and is
//! counted apart from ordinary requests.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{fill_pattern, Fnv, PATTERN_BLOCK};

/// How the upstream answers ordinary (non-health) requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 with a JSON body describing the request (see `SeenRequest`).
    Echo,
    /// This status and body.
    Fixed { status: u16, body: String },
    /// Reads the request, waits, then echoes.
    Delay(Duration),
    /// Reads the request head, then closes without a byte.
    CloseWithoutResponse,
    /// Reads the request head, then writes bytes that are not HTTP and closes.
    Garbage,
    /// 200 with `len` pattern bytes (`crate::pattern_byte`), streamed,
    /// framed by Content-Length or chunked.
    Large { len: u64, chunked: bool },
    /// Answers `Upgrade: websocket` with 101, then echoes raw bytes until EOF.
    /// Other requests are echoed.
    WebSocket,
    /// 200 without Content-Length or chunking: the body ends when the
    /// upstream closes the connection.
    CloseDelimited { body: String },
    /// A status that has no body (204, 304), without framing headers.
    NoBody { status: u16 },
}

/// What the upstream saw of one request.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub version: String,
    /// Names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_hash: String,
    pub chunked: bool,
}

impl SeenRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    fn to_json(&self, port: u16, conn_request: usize) -> serde_json::Value {
        serde_json::json!({
            "upstream": port,
            "method": self.method,
            "path": self.path,
            "version": self.version,
            "headers": self.headers,
            "body_len": self.body_len,
            "body_hash": self.body_hash,
            "chunked": self.chunked,
            "conn_request": conn_request,
        })
    }
}

#[derive(Default)]
struct Stats {
    connections: AtomicUsize,
    requests: AtomicUsize,
    health_probes: AtomicUsize,
    in_flight: AtomicUsize,
    seen: Mutex<Vec<SeenRequest>>,
    open: Mutex<Vec<TcpStream>>,
}

struct Shared {
    port: u16,
    stats: Stats,
    health: AtomicU16,
    behaviour: Mutex<Behaviour>,
    stop: AtomicBool,
    /// Idle time after which a kept-alive connection is closed; 0 = 60 s.
    idle_close_ms: AtomicU64,
    /// Answer every request with `Connection: close` and close.
    close_each: AtomicBool,
}

/// A running upstream; stops (closing every connection) when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Upstream {
    /// Starts on a fresh loopback port.
    pub fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let shared = Arc::new(Shared {
            port: addr.port(),
            stats: Stats::default(),
            health: AtomicU16::new(200),
            behaviour: Mutex::new(behaviour),
            stop: AtomicBool::new(false),
            idle_close_ms: AtomicU64::new(0),
            close_each: AtomicBool::new(false),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .expect("spawn upstream");
        Upstream { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// "127.0.0.1:PORT", the form config endpoints take.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// TCP connections accepted so far (health probes included).
    pub fn connections(&self) -> usize {
        self.shared.stats.connections.load(Ordering::SeqCst)
    }

    /// Ordinary requests whose head was read (health probes excluded).
    pub fn requests(&self) -> usize {
        self.shared.stats.requests.load(Ordering::SeqCst)
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.shared.stats.in_flight.load(Ordering::SeqCst)
    }

    pub fn health_probes(&self) -> usize {
        self.shared.stats.health_probes.load(Ordering::SeqCst)
    }

    /// Every ordinary request fully read so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared.stats.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The status `GET /health` returns from now on.
    pub fn set_health(&self, status: u16) {
        self.shared.health.store(status, Ordering::SeqCst);
    }

    /// Close a kept-alive connection after `d` without a new request, as
    /// servers with a short keep-alive timeout do.
    pub fn set_idle_close(&self, d: Duration) {
        self.shared
            .idle_close_ms
            .store(d.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    /// Answer with `Connection: close` and close after every request.
    pub fn set_close_each(&self, on: bool) {
        self.shared.close_each.store(on, Ordering::SeqCst);
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        *self.shared.behaviour.lock().unwrap_or_else(|e| e.into_inner()) = b;
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept so its thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for s in self
            .shared
            .stats
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        shared.stats.connections.fetch_add(1, Ordering::SeqCst);
        if let Ok(clone) = stream.try_clone() {
            shared.stats.open.lock().unwrap_or_else(|e| e.into_inner()).push(clone);
        }
        let s = shared.clone();
        let _ = thread::Builder::new().name("upstream-conn".into()).spawn(move || {
            let _ = serve(stream, &s);
        });
    }
}

struct Head {
    method: String,
    path: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Reads one request head; None on a clean EOF before any byte.
fn read_head(r: &mut BufReader<TcpStream>) -> io::Result<Option<Head>> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line)?;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(invalid("EOF inside request head".into()));
        }
        total += n;
        if total > 1 << 20 {
            return Err(invalid("request head over 1 MiB".into()));
        }
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_string();
        if text.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(text);
    }
    let mut first = lines[0].splitn(3, ' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let version = first.next().unwrap_or("").to_string();
    let headers = lines[1..]
        .iter()
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            (k.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    Ok(Some(Head {
        method,
        path,
        version,
        headers,
    }))
}

/// Reads the request body (Content-Length or chunked) in 64 KiB pieces,
/// returning (length, digest, chunked).
fn read_body(r: &mut BufReader<TcpStream>, head: &Head) -> io::Result<(u64, String, bool)> {
    let mut h = Fnv::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    if head.has_token("transfer-encoding", "chunked") {
        loop {
            let mut line = String::new();
            r.read_line(&mut line)?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let mut size =
                u64::from_str_radix(size_hex, 16).map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    if r.read_line(&mut t)? == 0 || t.trim().is_empty() {
                        break;
                    }
                }
                return Ok((total, h.hex(), true));
            }
            while size > 0 {
                let n = (size as usize).min(buf.len());
                r.read_exact(&mut buf[..n])?;
                h.update(&buf[..n]);
                size -= n as u64;
                total += n as u64;
            }
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    }
    let mut left: u64 = match head.get("content-length") {
        Some(v) => v.parse().map_err(|_| invalid(format!("bad content-length {v:?}")))?,
        None => 0,
    };
    while left > 0 {
        let n = (left as usize).min(buf.len());
        r.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
        total += n as u64;
    }
    Ok((total, h.hex(), false))
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        204 => "No Content",
        304 => "Not Modified",
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// How one response is written: whether it closes the connection and
/// whether it answers HEAD (head only, Content-Length of the would-be body).
#[derive(Clone, Copy)]
struct Reply {
    port: u16,
    close: bool,
    head_only: bool,
}

fn respond(w: &mut TcpStream, reply: Reply, status: u16, ctype: &str, body: &[u8]) -> io::Result<()> {
    let conn = if reply.close { "close" } else { "keep-alive" };
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nX-Upstream: {}\r\nConnection: {conn}\r\n\r\n",
        reason(status),
        body.len(),
        reply.port
    );
    w.write_all(head.as_bytes())?;
    if reply.head_only {
        return Ok(());
    }
    w.write_all(body)
}

fn serve(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    const BODY_TIMEOUT: Duration = Duration::from_secs(60);
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    let port = shared.port;
    let mut conn_request = 0usize;
    loop {
        let idle = match shared.idle_close_ms.load(Ordering::SeqCst) {
            0 => BODY_TIMEOUT,
            ms => Duration::from_millis(ms),
        };
        r.get_ref().set_read_timeout(Some(idle))?;
        let head = match read_head(&mut r) {
            Ok(Some(h)) => h,
            Ok(None) => return Ok(()),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                // Idle too long: close like a server whose keep-alive timer fired.
                let _ = w.shutdown(Shutdown::Both);
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        r.get_ref().set_read_timeout(Some(BODY_TIMEOUT))?;
        let close = head.has_token("connection", "close")
            || head.version == "HTTP/1.0"
            || shared.close_each.load(Ordering::SeqCst);
        let reply = Reply {
            port,
            close,
            head_only: head.method == "HEAD",
        };
        if head.method == "GET" && head.path == "/health" {
            shared.stats.health_probes.fetch_add(1, Ordering::SeqCst);
            let status = shared.health.load(Ordering::SeqCst);
            respond(&mut w, reply, status, "text/plain", b"health")?;
            if close {
                return Ok(());
            }
            continue;
        }
        conn_request += 1;
        shared.stats.requests.fetch_add(1, Ordering::SeqCst);
        shared.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        let result = handle(&mut r, &mut w, shared, head, conn_request, reply);
        shared.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
        if !result? || close {
            let _ = w.shutdown(Shutdown::Both);
            return Ok(());
        }
    }
}

/// Handles one request; Ok(false) when the connection must not be reused.
fn handle(
    r: &mut BufReader<TcpStream>,
    w: &mut TcpStream,
    shared: &Shared,
    head: Head,
    conn_request: usize,
    reply: Reply,
) -> io::Result<bool> {
    let port = shared.port;
    let behaviour = shared.behaviour.lock().unwrap_or_else(|e| e.into_inner()).clone();
    match behaviour {
        Behaviour::CloseWithoutResponse => {
            record_head_only(shared, &head);
            let _ = w.shutdown(Shutdown::Both);
            return Ok(false);
        }
        Behaviour::Garbage => {
            record_head_only(shared, &head);
            w.write_all(b"SSH-2.0-not-http\r\n\x00\x01\x02 garbage garbage\r\n\r\n")?;
            let _ = w.shutdown(Shutdown::Both);
            return Ok(false);
        }
        Behaviour::WebSocket if head.has_token("upgrade", "websocket") => {
            record_head_only(shared, &head);
            w.write_all(
                format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nX-Upstream: {port}\r\n\r\n")
                    .as_bytes(),
            )?;
            let mut buf = [0u8; 16 * 1024];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    let _ = w.shutdown(Shutdown::Write);
                    return Ok(false);
                }
                w.write_all(&buf[..n])?;
            }
        }
        _ => {}
    }
    if head.has_token("expect", "100-continue") {
        w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let (body_len, body_hash, chunked) = read_body(r, &head)?;
    let seen = SeenRequest {
        method: head.method,
        path: head.path,
        version: head.version,
        headers: head.headers,
        body_len,
        body_hash,
        chunked,
    };
    shared
        .stats
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(seen.clone());
    let echo = |w: &mut TcpStream| {
        let body = seen.to_json(port, conn_request).to_string();
        respond(w, reply, 200, "application/json", body.as_bytes())
    };
    match behaviour {
        Behaviour::Echo | Behaviour::WebSocket => echo(w)?,
        Behaviour::Delay(d) => {
            thread::sleep(d);
            echo(w)?;
        }
        Behaviour::Fixed { status, body } => respond(w, reply, status, "text/plain", body.as_bytes())?,
        Behaviour::Large { len, chunked } => write_large(w, port, len, chunked, reply.close)?,
        Behaviour::CloseDelimited { body } => {
            w.write_all(
                format!("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Upstream: {port}\r\n\r\n").as_bytes(),
            )?;
            w.write_all(body.as_bytes())?;
            let _ = w.shutdown(Shutdown::Both);
            return Ok(false);
        }
        Behaviour::NoBody { status } => {
            let conn = if reply.close { "close" } else { "keep-alive" };
            w.write_all(
                format!(
                    "HTTP/1.1 {status} {}\r\nX-Upstream: {port}\r\nConnection: {conn}\r\n\r\n",
                    reason(status)
                )
                .as_bytes(),
            )?;
        }
        Behaviour::CloseWithoutResponse | Behaviour::Garbage => unreachable!("handled before the body"),
    }
    Ok(true)
}

fn record_head_only(shared: &Shared, head: &Head) {
    shared
        .stats
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(SeenRequest {
            method: head.method.clone(),
            path: head.path.clone(),
            version: head.version.clone(),
            headers: head.headers.clone(),
            body_len: 0,
            body_hash: String::new(),
            chunked: false,
        });
}

fn write_large(w: &mut TcpStream, port: u16, len: u64, chunked: bool, close: bool) -> io::Result<()> {
    let conn = if close { "close" } else { "keep-alive" };
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {len}")
    };
    w.write_all(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n{framing}\r\nX-Upstream: {port}\r\nConnection: {conn}\r\n\r\n"
        )
        .as_bytes(),
    )?;
    // Every write starts at a multiple of PATTERN_BLOCK, so one fill serves all.
    let mut buf = vec![0u8; PATTERN_BLOCK];
    fill_pattern(&mut buf, 0);
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        if chunked {
            w.write_all(format!("{n:x}\r\n").as_bytes())?;
            w.write_all(&buf[..n])?;
            w.write_all(b"\r\n")?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{request, Conn};

    #[test]
    fn echo_reports_request_and_reuses_connection() {
        let up = Upstream::start(Behaviour::Echo);
        let mut c = Conn::connect(up.addr()).unwrap();
        let r1 = c
            .exchange(&request("POST", "a.test", "/x?y=1", &[("X-Test", "1")], Some(b"hello")))
            .unwrap();
        assert_eq!(r1.status, 200);
        let j = r1.json();
        assert_eq!(j["method"], "POST");
        assert_eq!(j["path"], "/x?y=1");
        assert_eq!(j["body_len"], 5);
        let mut h = Fnv::default();
        h.update(b"hello");
        assert_eq!(j["body_hash"], h.hex());
        c.send(
            b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\n\r\n",
        )
        .unwrap();
        let r2 = c.read_response().unwrap();
        assert_eq!(r2.json()["body_hash"], h.hex());
        assert_eq!(r2.json()["chunked"], true);
        assert_eq!(r2.json()["conn_request"], 2);
        assert_eq!(up.connections(), 1);
        assert_eq!(up.requests(), 2);
        assert_eq!(up.seen()[0].header("x-test"), Some("1"));
    }

    #[test]
    fn health_flips_and_is_not_counted() {
        let up = Upstream::start(Behaviour::Echo);
        assert_eq!(crate::client::get(up.addr(), "h", "/health").status, 200);
        up.set_health(503);
        assert_eq!(crate::client::get(up.addr(), "h", "/health").status, 503);
        assert_eq!(up.requests(), 0);
        assert_eq!(up.health_probes(), 2);
    }

    #[test]
    fn expect_continue_gets_interim_response() {
        let up = Upstream::start(Behaviour::Echo);
        let mut c = Conn::connect(up.addr()).unwrap();
        c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        assert_eq!(c.read_head().unwrap().status, 100);
        c.send(b"abc").unwrap();
        assert_eq!(c.read_response().unwrap().json()["body_len"], 3);
    }

    #[test]
    fn large_bodies_stream_with_both_framings() {
        for chunked in [false, true] {
            let up = Upstream::start(Behaviour::Large {
                len: 3_000_000,
                chunked,
            });
            let mut c = Conn::connect(up.addr()).unwrap();
            c.send(&request("GET", "a", "/", &[], None)).unwrap();
            let mut h = Fnv::default();
            let mut n = 0u64;
            let r = c
                .read_response_with(false, &mut |b| {
                    h.update(b);
                    n += b.len() as u64;
                })
                .unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(n, 3_000_000);
            assert_eq!(h.hex(), crate::pattern_hash(3_000_000));
            assert_eq!(r.header("transfer-encoding").is_some(), chunked);
        }
    }

    #[test]
    fn failure_behaviours() {
        let up = Upstream::start(Behaviour::CloseWithoutResponse);
        assert!(crate::client::raw_exchange(up.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").is_empty());
        up.set_behaviour(Behaviour::Garbage);
        let got = crate::client::raw_exchange(up.addr(), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(got.starts_with(b"SSH-2.0"));
        up.set_behaviour(Behaviour::Fixed {
            status: 503,
            body: "no".into(),
        });
        assert_eq!(crate::client::get(up.addr(), "a", "/").status, 503);
        assert_eq!(up.requests(), 3);
    }

    #[test]
    fn head_no_body_close_delimited_and_idle_close() {
        let up = Upstream::start(Behaviour::Echo);
        let mut c = Conn::connect(up.addr()).unwrap();
        c.send(&request("HEAD", "a", "/", &[], None)).unwrap();
        let r = c
            .read_response_with(true, &mut |_| panic!("HEAD response with a body"))
            .unwrap();
        assert!(r.header("content-length").is_some_and(|v| v != "0"));
        up.set_behaviour(Behaviour::NoBody { status: 204 });
        assert_eq!(c.exchange(&request("GET", "a", "/", &[], None)).unwrap().status, 204);
        up.set_behaviour(Behaviour::CloseDelimited {
            body: "until close".into(),
        });
        let r = c.exchange(&request("GET", "a", "/", &[], None)).unwrap();
        assert_eq!(r.body_str(), "until close");
        up.set_behaviour(Behaviour::Echo);
        up.set_idle_close(Duration::from_millis(100));
        let mut c = Conn::connect(up.addr()).unwrap();
        assert_eq!(c.exchange(&request("GET", "a", "/", &[], None)).unwrap().status, 200);
        assert!(c.peer_closed_within(Duration::from_secs(2)));
        up.set_close_each(true);
        let mut c = Conn::connect(up.addr()).unwrap();
        let r = c.exchange(&request("GET", "a", "/", &[], None)).unwrap();
        assert!(!r.keeps_alive());
        assert!(c.peer_closed_within(Duration::from_secs(2)));
    }

    #[test]
    fn websocket_upgrade_echoes_raw_bytes() {
        let up = Upstream::start(Behaviour::WebSocket);
        let mut c = Conn::connect(up.addr()).unwrap();
        c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            .unwrap();
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 101);
        c.send(b"\x81\x05hello").unwrap();
        let mut got = c.take_buffered();
        while got.len() < 7 {
            let mut b = [0u8; 64];
            let n = c.stream().read(&mut b).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&b[..n]);
        }
        assert_eq!(&got, b"\x81\x05hello");
    }
}
