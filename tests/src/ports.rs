//! Port allocation: bind 127.0.0.1:0, read the port the kernel chose, drop the
//! socket. A process-wide set remembers every port handed out so two tests in
//! the same run never get the same one even if the kernel offers it again.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::{Mutex, OnceLock};

fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static SET: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    SET.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A loopback port that was free a moment ago and that no other caller in this
/// process has received.
pub fn free_port() -> u16 {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
        if handed_out().lock().unwrap_or_else(|e| e.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("no free loopback port after 1000 attempts");
}

/// A loopback TCP port with nothing listening on it (for "connection refused").
pub fn closed_port() -> u16 {
    free_port()
}
