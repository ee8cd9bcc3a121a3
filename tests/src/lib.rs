//! Test harness for Tollgate's end-to-end tests: the one way tests start the
//! gateway (`Gateway`), upstream servers (`Upstream`, `Nginx`), raw HTTP/1.1
//! clients (`client`), real redis-server (`Redis`), the built proxy-wasm
//! plugins (`plugins`), certificates and a rustls client (`tls`), cgroups for
//! worker sizing, eBPF programs run directly with BPF_PROG_TEST_RUN and the
//! live-frames traffic generator (`bpf`), network namespaces joined by veth
//! pairs (`netns`), and small helpers for metrics and
//! polling. Everything binds 127.0.0.1 on ports allocated at run time (or
//! lives in namespaces a test creates), so tests run in parallel without
//! shared state.

pub mod bpf;
pub mod cgroup;
pub mod client;
pub mod gateway;
pub mod metrics;
pub mod netns;
pub mod nginx;
pub mod plugins;
pub mod ports;
pub mod redis;
pub mod tls;
pub mod upstream;
pub mod wait;

pub use client::{raw_exchange, raw_request, Conn, Response};
pub use gateway::{Gateway, GatewayOptions};
pub use nginx::Nginx;
pub use redis::Redis;
pub use upstream::{Behaviour, Upstream};

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A YAML flow list of the upstreams' endpoints: `["127.0.0.1:1", "127.0.0.1:2"]`.
pub fn eps(ups: &[&Upstream]) -> String {
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.endpoint())).collect();
    format!("[{}]", list.join(", "))
}

/// The smallest proxy config: one listener (`http`), every host and path to
/// one cluster `backend` of `ups`; `cluster_extra` is spliced into the
/// cluster's flow mapping (e.g. `", lb_policy: least_request"`).
pub fn one_cluster_config(ups: &[&Upstream], cluster_extra: &str) -> String {
    r#"
runtime: {workers: 1}
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - {name: all, domains: ["*"], routes: [{name: all, proxy: {cluster: backend}}]}
clusters:
  - {name: backend, endpoints: UPS EXTRA}
"#
    .replace("UPS", &eps(ups))
    .replace("EXTRA", cluster_extra)
}

/// Connects to `addr` from the loopback source address `src` (any 127.x.y.z
/// works on Linux), so tests can act as many client IPs.
pub fn connect_from(src: [u8; 4], addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::from((src, 0)).into())?;
    s.connect_timeout(&addr.into(), client::IO_TIMEOUT)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(client::IO_TIMEOUT))?;
    s.set_write_timeout(Some(client::IO_TIMEOUT))?;
    Ok(s)
}

/// A loopback address where TCP connects hang: a listener with backlog 0
/// that never accepts, its queue already full, so the kernel drops new SYNs.
/// Keep the returned value alive while the address is in use.
pub struct Blackhole {
    _listener: socket2::Socket,
    _fillers: Vec<socket2::Socket>,
    pub addr: SocketAddr,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into()).expect("bind");
        l.listen(0).expect("listen");
        let addr = l.local_addr().expect("addr").as_socket().expect("inet");
        let mut fillers = Vec::new();
        for _ in 0..4 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            // Once the queue is full these time out; that is the point.
            let _ = s.connect_timeout(&addr.into(), Duration::from_millis(200));
            fillers.push(s);
        }
        Blackhole {
            _listener: l,
            _fillers: fillers,
            addr,
        }
    }
}

impl Default for Blackhole {
    fn default() -> Self {
        Blackhole::new()
    }
}

/// FNV-1a 64-bit: a dependency-free digest so the echo upstream and the tests
/// can compare large bodies without keeping them in memory.
#[derive(Clone, Copy, Debug)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// A buffer length that holds a whole number of pattern periods, so one
/// filled buffer can be written again and again at any multiple offset.
pub const PATTERN_BLOCK: usize = 251 * 256;

/// The byte at offset `i` of every generated test body: a pattern that is not
/// periodic at power-of-two sizes, so a dropped or repeated chunk changes the
/// digest.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

/// Digest of `len` bytes of `pattern_byte`.
pub fn pattern_hash(len: u64) -> String {
    let mut h = Fnv::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(buf.len() as u64) as usize;
        for (j, b) in buf[..n].iter_mut().enumerate() {
            *b = pattern_byte(off + j as u64);
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.hex()
}

/// Fills `buf` with the pattern starting at absolute offset `off`.
pub fn fill_pattern(buf: &mut [u8], off: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(off + j as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blackhole_connects_hang() {
        let b = Blackhole::new();
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let r = s.connect_timeout(&b.addr.into(), Duration::from_millis(300));
        assert!(r.is_err(), "connect to the blackhole succeeded");
    }

    #[test]
    fn pattern_block_repeats() {
        let mut a = vec![0u8; PATTERN_BLOCK];
        let mut b = vec![0u8; PATTERN_BLOCK];
        fill_pattern(&mut a, 0);
        fill_pattern(&mut b, PATTERN_BLOCK as u64 * 7);
        assert_eq!(a, b);
    }
}
