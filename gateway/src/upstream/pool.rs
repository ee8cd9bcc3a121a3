//! Per-worker keep-alive pools of upstream connections, keyed by endpoint
//! address. Never shared between workers: a worker only reuses connections it
//! opened, so taking and returning one needs no synchronisation.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::KeepaliveSettings;

/// A pooled connection idle for longer than this is probed before reuse: the
/// upstream may have closed it in the meantime.
const PROBE_AFTER_IDLE: Duration = Duration::from_secs(1);

pub struct UpstreamConn {
    pub stream: TcpStream,
    pub addr: SocketAddr,
    /// Requests already sent over this connection.
    pub requests: u32,
    idle_since: Instant,
    /// The owning cluster's idle timeout, fixed when the connection is pooled.
    idle_timeout: Duration,
}

impl UpstreamConn {
    pub fn new(stream: TcpStream, addr: SocketAddr) -> UpstreamConn {
        UpstreamConn {
            stream,
            addr,
            requests: 0,
            idle_since: Instant::now(),
            idle_timeout: Duration::ZERO,
        }
    }

    pub fn is_reused(&self) -> bool {
        self.requests > 0
    }

    /// A non-blocking peek: an idle upstream connection must have nothing to
    /// read; EOF or stray bytes mean it cannot carry another request.
    fn looks_open(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv into a one-byte stack buffer on a socket this value owns.
        let got = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        got < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

#[derive(Default)]
pub struct Pools {
    idle: HashMap<SocketAddr, Vec<UpstreamConn>>,
    idle_count: usize,
}

impl Pools {
    pub fn idle_count(&self) -> usize {
        self.idle_count
    }

    /// The most recently used live connection to `addr`, if any.
    pub fn take(&mut self, addr: SocketAddr, settings: &KeepaliveSettings) -> Option<UpstreamConn> {
        let idle = self.idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(conn) = idle.pop() {
            self.idle_count -= 1;
            let idle_for = now.duration_since(conn.idle_since);
            if idle_for >= settings.idle_timeout {
                continue;
            }
            if idle_for >= PROBE_AFTER_IDLE && !conn.looks_open() {
                continue;
            }
            return Some(conn);
        }
        None
    }

    /// Keeps `conn` for reuse unless it has served its quota or the pool for
    /// its endpoint is full. Returns whether it was kept.
    pub fn put(&mut self, mut conn: UpstreamConn, settings: &KeepaliveSettings) -> bool {
        if conn.requests >= settings.max_requests || settings.max_idle == 0 {
            return false;
        }
        let idle = self.idle.entry(conn.addr).or_default();
        if idle.len() >= settings.max_idle {
            return false;
        }
        conn.idle_since = Instant::now();
        conn.idle_timeout = settings.idle_timeout;
        idle.push(conn);
        self.idle_count += 1;
        true
    }

    /// Closes connections idle for longer than their cluster allows.
    pub fn sweep(&mut self) {
        let now = Instant::now();
        let mut closed = 0;
        self.idle.retain(|_, conns| {
            let before = conns.len();
            conns.retain(|conn| now.duration_since(conn.idle_since) < conn.idle_timeout);
            closed += before - conns.len();
            !conns.is_empty()
        });
        self.idle_count -= closed;
    }

    pub fn clear(&mut self) {
        self.idle.clear();
        self.idle_count = 0;
    }
}
