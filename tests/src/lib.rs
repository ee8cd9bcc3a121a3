//! Test harness for Tollgate's end-to-end tests: the one way tests start the
//! gateway (`Gateway`), upstream servers (`Upstream`, `Nginx`), raw HTTP/1.1
//! clients (`client`), cgroups for worker sizing, and small helpers for
//! metrics and polling. Everything binds 127.0.0.1 on ports allocated at run
//! time, so tests run in parallel without shared state.

pub mod cgroup;
pub mod client;
pub mod gateway;
pub mod metrics;
pub mod nginx;
pub mod ports;
pub mod upstream;
pub mod wait;

pub use client::{raw_exchange, raw_request, Conn, Response};
pub use gateway::{Gateway, GatewayOptions};
pub use nginx::Nginx;
pub use upstream::{Behaviour, Upstream};

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
