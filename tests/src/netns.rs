//! Network namespaces for tests: `NetnsPair` is a client namespace and a
//! gateway namespace joined by a veth pair, with fixed addresses (one on the
//! gateway side, several on the client side so a test has "bad" and "good"
//! sources), removed when dropped — also when the test panics. `Netns` runs
//! code inside a namespace (`run`, `spawn`: a thread that joins the namespace;
//! sockets it creates stay there) and builds commands that run inside it
//! (`command`, `nsenter_words`).
//!
//! Commands enter with `nsenter --net=/run/netns/<name>`, never
//! `ip netns exec`: the latter also makes a new mount namespace with its own
//! /sys, which hides /sys/fs/bpf and so the maps a previous gateway pinned.
//!
//! Every pair has its own namespaces, so the fixed addresses never clash
//! between tests running in parallel. Names carry the test process's pid and a
//! counter; namespaces left behind by a killed test run (its pid gone) are
//! removed by the next `NetnsPair::new`.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::client::IO_TIMEOUT;

/// The gateway namespace's address on the veth (/24 with the clients).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
/// The client namespace's addresses on the veth: distinct sources for one
/// test (e.g. `CLIENT_V4[0]` blocked, `CLIENT_V4[1]` served).
pub const CLIENT_V4: [Ipv4Addr; 4] = [
    Ipv4Addr::new(10, 200, 0, 10),
    Ipv4Addr::new(10, 200, 0, 11),
    Ipv4Addr::new(10, 200, 0, 12),
    Ipv4Addr::new(10, 200, 0, 13),
];
/// The gateway namespace's IPv6 address on the veth (/64 with the clients).
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x7467, 0, 0, 0, 0, 0, 1);
/// The client namespace's IPv6 addresses on the veth.
pub const CLIENT_V6: [Ipv6Addr; 2] = [
    Ipv6Addr::new(0xfd00, 0x7467, 0, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0xfd00, 0x7467, 0, 0, 0, 0, 0, 0x11),
];

/// Where `ip netns add` puts the namespace files.
const NETNS_DIR: &str = "/run/netns";
/// First letters of every namespace this module makes ("tollgate e2e"); the
/// stale sweep only touches names with it.
const PREFIX: &str = "tge";

/// A named network namespace (a file under /run/netns). Cloning copies the
/// name; whoever created it (`NetnsPair`) removes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, the file setns(2) and `nsenter --net=` open.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Runs `f` on a thread that has joined this namespace and returns its
    /// result; a panic in `f` continues in the caller. Sockets made by `f`
    /// belong to the namespace for their whole life, so they may be returned
    /// and used from any thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        let joined = std::thread::scope(|s| {
            s.spawn(move || {
                enter(&path);
                f()
            })
            .join()
        });
        joined.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Like `run`, on a thread the caller joins later (background load).
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
    }

    /// The words that run a command inside this namespace (network only; the
    /// mount namespace, and so /sys/fs/bpf, stays the caller's):
    /// `["nsenter", "--net=/run/netns/<name>", "--"]`. nsenter execs the
    /// command, so its pid is the command's.
    pub fn nsenter_words(&self) -> Vec<String> {
        vec![
            "nsenter".to_string(),
            format!("--net={}", self.path().display()),
            "--".to_string(),
        ]
    }

    /// A `Command` running `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let words = self.nsenter_words();
        let mut c = Command::new(&words[0]);
        c.args(&words[1..]).arg(program);
        c
    }

    /// Runs `program args` inside the namespace; panics with its output when
    /// it fails. Returns stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> String {
        let mut c = self.command(program);
        c.args(args);
        run_ok(&mut c, &format!("{program} {} (in {})", args.join(" "), self.name))
    }

    /// A TCP connection from this namespace, from source address `src` (any
    /// port), to `dst`, with the harness's read/write timeouts.
    pub fn connect_from(&self, src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
        self.run(|| {
            let domain = socket2::Domain::for_address(dst);
            let s = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::new(src, 0).into())?;
            s.connect_timeout(&dst.into(), timeout)?;
            let s: TcpStream = s.into();
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            s.set_nodelay(true)?;
            Ok(s)
        })
    }
}

/// Moves the calling thread into the namespace at `path`.
fn enter(path: &std::path::Path) {
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: setns(2) on a descriptor we own for the call's duration; it
    // changes only this thread's network namespace, which is what callers ask.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        panic!(
            "setns({}, CLONE_NEWNET): {}",
            path.display(),
            io::Error::last_os_error()
        );
    }
}

/// Runs `cmd`, panicking with its stderr unless it exits 0; returns stdout.
fn run_ok(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run ({e}); is it installed? cargo xtask setup installs it"));
    assert!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    run_ok(Command::new("ip").args(args), &format!("ip {}", args.join(" ")));
}

/// Whether this process runs as root (namespaces, veths, BPF need it).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A namespace this process created; deleted on drop.
#[derive(Debug)]
struct Owned(Netns);

impl Owned {
    fn create(name: String) -> Owned {
        ip(&["netns", "add", &name]);
        Owned(Netns { name })
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the veth end inside it, and
        // with it the peer. A process still inside keeps the namespace alive
        // until it exits, but the name is gone either way.
        if let Err(e) = Command::new("ip").args(["netns", "del", &self.0.name]).output() {
            eprintln!("ip netns del {}: {e}", self.0.name);
        }
    }
}

/// Two namespaces joined by a veth pair: `client_if` (in `client()`, holding
/// `CLIENT_V4`/`CLIENT_V6`) ↔ `gateway_if` (in `gateway()`, holding
/// `GATEWAY_V4`/`GATEWAY_V6`). Both ends and `lo` are up. Drop it after the
/// gateway and clients that use it (declare it first in a test).
#[derive(Debug)]
pub struct NetnsPair {
    client: Owned,
    gateway: Owned,
    /// The veth end in the client namespace.
    pub client_if: String,
    /// The veth end in the gateway namespace (where the XDP guard attaches).
    pub gateway_if: String,
}

impl NetnsPair {
    /// Creates the namespaces and the veth pair; panics with the reason when
    /// it cannot (not root, `ip` or `ethtool` missing).
    pub fn new() -> NetnsPair {
        assert!(
            is_root(),
            "network namespace tests need root (CI runs them as root); run with sudo or as root"
        );
        sweep_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // "tge<pid>n<k>" + "c"/"g": at most 3+7+1+3+1 = 15 bytes, the
        // kernel's limit for interface names, so the names serve both.
        let base = format!(
            "{PREFIX}{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed) % 1000
        );
        let client = Owned::create(format!("{base}c"));
        let gateway = Owned::create(format!("{base}g"));
        let pair = NetnsPair {
            client_if: client.0.name.clone(),
            gateway_if: gateway.0.name.clone(),
            client,
            gateway,
        };
        ip(&[
            "link",
            "add",
            &pair.client_if,
            "netns",
            &pair.client.0.name,
            "type",
            "veth",
            "peer",
            "name",
            &pair.gateway_if,
            "netns",
            &pair.gateway.0.name,
        ]);
        pair.configure(&pair.client.0, &pair.client_if, &CLIENT_V4, &CLIENT_V6);
        pair.configure(&pair.gateway.0, &pair.gateway_if, &[GATEWAY_V4], &[GATEWAY_V6]);
        pair
    }

    fn configure(&self, ns: &Netns, dev: &str, v4: &[Ipv4Addr], v6: &[Ipv6Addr]) {
        let n = ns.name();
        ip(&["-n", n, "link", "set", "dev", "lo", "up"]);
        for a in v4 {
            ip(&["-n", n, "addr", "add", &format!("{a}/24"), "dev", dev]);
        }
        // nodad: usable at once, instead of "tentative" for a second or two.
        for a in v6 {
            ip(&["-n", n, "addr", "add", &format!("{a}/64"), "dev", dev, "nodad"]);
        }
        // A veth hands the peer packets whose TCP/UDP checksum is still to be
        // filled in (CHECKSUM_PARTIAL). XDP in native mode turns the frame
        // into an xdp_frame when it redirects it (CPU map), which drops that
        // state, and the receiver then rejects the checksum. Computing
        // checksums in software on both ends keeps every path valid.
        ns.exec("ethtool", &["-K", dev, "tx", "off"]);
        ip(&["-n", n, "link", "set", "dev", dev, "up"]);
    }

    pub fn client(&self) -> &Netns {
        &self.client.0
    }

    pub fn gateway(&self) -> &Netns {
        &self.gateway.0
    }

    /// A connection from the client namespace, source `src`, to `dst`.
    pub fn connect(&self, src: impl Into<IpAddr>, dst: SocketAddr) -> io::Result<TcpStream> {
        self.client().connect_from(src.into(), dst, IO_TIMEOUT)
    }
}

impl Default for NetnsPair {
    fn default() -> Self {
        NetnsPair::new()
    }
}

/// Deletes namespaces of this module whose creating process is gone (a test
/// run killed before its drops ran).
fn sweep_stale() {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else { return };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split_once('n'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !PathBuf::from(format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn pair_connects_from_chosen_sources_and_is_removed() {
        if !is_root() {
            println!("SKIPPED pair_connects_from_chosen_sources_and_is_removed: not root");
            return;
        }
        let pair = NetnsPair::new();
        let (gw_name, cl_name) = (pair.gateway().name().to_string(), pair.client().name().to_string());
        assert!(gw_name.len() <= 15 && cl_name.len() <= 15, "{gw_name} {cl_name}");
        let listener = pair
            .gateway()
            .run(|| TcpListener::bind(SocketAddr::from((GATEWAY_V4, 0))).expect("bind in gateway ns"));
        let dst = listener.local_addr().unwrap();
        // The listener's address exists only in the gateway namespace.
        assert!(TcpStream::connect_timeout(&dst, Duration::from_millis(300)).is_err());
        for src in [CLIENT_V4[0], CLIENT_V4[2]] {
            let mut c = pair.connect(src, dst).expect("connect from the client ns");
            let (mut s, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), IpAddr::V4(src));
            c.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
        }
        let l6 = pair
            .gateway()
            .run(|| TcpListener::bind(SocketAddr::from((GATEWAY_V6, 0))).expect("bind v6"));
        let dst6 = l6.local_addr().unwrap();
        pair.connect(CLIENT_V6[1], dst6).expect("connect v6");
        assert_eq!(l6.accept().unwrap().1.ip(), IpAddr::V6(CLIENT_V6[1]));
        let links = pair
            .gateway()
            .exec("ip", &["-o", "link", "show", "dev", &pair.gateway_if]);
        assert!(links.contains("UP"), "{links}");
        drop((listener, l6));
        drop(pair);
        assert!(!PathBuf::from(NETNS_DIR).join(&gw_name).exists());
        assert!(!PathBuf::from(NETNS_DIR).join(&cl_name).exists());
    }

    #[test]
    fn a_panic_inside_run_reaches_the_caller() {
        if !is_root() {
            println!("SKIPPED a_panic_inside_run_reaches_the_caller: not root");
            return;
        }
        let pair = NetnsPair::new();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pair.client().run(|| panic!("inside"))));
        assert!(r.is_err());
    }
}
