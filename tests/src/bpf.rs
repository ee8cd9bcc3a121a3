//! Driving eBPF programs directly, without the gateway: what the packet tests
//! and `cargo xtask bench xdp` share. Load an object from bytes with aya (its
//! pinned maps in a private bpffs mount, so nothing outlives the test); run
//! an XDP program once on a crafted frame (at least an Ethernet header long)
//! with BPF_PROG_TEST_RUN and read its verdict (`run_once`); or send traffic
//! with a `Generator`, a trafficgen program run in live-frames mode
//! (BPF_F_TEST_XDP_LIVE_FRAMES, kernel ≥ 5.18): the kernel runs it on copies
//! of one frame and transmits those it returns XDP_TX for out of the
//! interface given by `ingress_ifindex`, which must be in the calling
//! thread's network namespace. Also: frame builders (Ethernet, VLAN,
//! IPv4/IPv6 with options and extension headers, TCP, UDP) with correct
//! checksums, and GUARD_COUNTERS summed over CPUs.
//!
//! aya 0.14 issues BPF_PROG_TEST_RUN itself (`TestRun`), so the `bpf_attr`
//! layout stays in aya, and the ebpf/common map types are plain data for aya
//! through that crate's `aya` feature. The unsafe left here is pinning the
//! calling thread to one CPU (sched_setaffinity).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray};
use aya::programs::Xdp;
use aya::{Ebpf, EbpfLoader, TestRun, TestRunAttrs, TestRunOptions};
use tollgate_ebpf_common::{Count, GuardCounter, GUARD_COUNTERS_LEN};

use crate::netns::Netns;

/// A bpffs instance mounted on a fresh temp directory: a place to pin an
/// object's maps that no other test or gateway sees, unmounted (and the pins
/// with it) on drop.
pub struct PrivateBpffs {
    dir: tempfile::TempDir,
}

impl PrivateBpffs {
    pub fn mount() -> io::Result<PrivateBpffs> {
        let dir = tempfile::Builder::new().prefix("tollgate-bpffs-").tempdir()?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(dir.path()))?;
        Ok(PrivateBpffs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateBpffs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(self.dir.path())) {
            eprintln!("umount {}: {e}", self.dir.path().display());
        }
    }
}

/// Loads an object from bytes; maps declared pinned go under `pins` (an
/// object without pinned maps, like the traffic generator, needs none). A
/// `CPU_MAP` (the guard's) is sized to the possible CPUs, as the gateway
/// does: the kernel refuses one larger than its NR_CPUS.
pub fn load(object: &[u8], pins: Option<&Path>) -> Result<Ebpf, aya::EbpfError> {
    let cpus = aya::util::nr_cpus().map_err(|(path, error)| aya::EbpfError::FileError {
        path: PathBuf::from(path),
        error,
    })?;
    let mut loader = EbpfLoader::new();
    if let Some(pins) = pins {
        loader.default_map_pin_directory(pins);
    }
    loader
        .map_max_entries(tollgate_ebpf_common::maps::CPU_MAP, cpus as u32)
        .load(object)
}

/// The traffic generator object (`trafficgen_tx`, `trafficgen_syn`) the
/// gateway's build script built; never embedded in the gateway.
pub const TRAFFICGEN_OBJECT: &str = env!("TOLLGATE_TRAFFICGEN_OBJECT");

/// The XDP program `name` of `ebpf`, loaded into the kernel (verifier run).
pub fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, String> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("the object has no program {name}"))?
        .try_into()
        .map_err(|e| format!("{name} is not an XDP program: {e}"))?;
    program.load().map_err(|e| format!("loading {name}: {}", chain(&e)))?;
    Ok(program)
}

/// An error and its sources on one line (aya puts the verifier log in a source).
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// An XDP program's return value (`enum xdp_action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Other(u32),
}

impl From<u32> for Verdict {
    fn from(retval: u32) -> Verdict {
        match retval {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            n => Verdict::Other(n),
        }
    }
}

/// The context BPF_PROG_TEST_RUN takes for XDP: `struct xdp_md`. In test
/// runs `data` is the length of metadata in front of the frame (none here),
/// `data_end` the whole input length, `data_meta` and `egress_ifindex` must
/// be 0, and `ingress_ifindex` (with `rx_queue_index` below its queue count)
/// names a device of the caller's network namespace.
#[derive(Clone, Copy, Debug, Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

impl XdpMd {
    fn bytes(&self) -> [u8; 24] {
        let fields = [
            self.data,
            self.data_end,
            self.data_meta,
            self.ingress_ifindex,
            self.rx_queue_index,
            self.egress_ifindex,
        ];
        let mut out = [0u8; 24];
        for (chunk, field) in out.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&field.to_ne_bytes());
        }
        out
    }
}

/// The shortest frame BPF_PROG_TEST_RUN takes for XDP: an Ethernet header.
/// (Kernel 6.18 also refuses shorter frames behind metadata bytes, so a
/// program's "shorter than Ethernet" branch cannot be run this way.)
pub const MIN_FRAME: usize = 14;

/// Runs `program` once on `frame` and returns its verdict.
pub fn run_once(program: &Xdp, frame: &[u8]) -> io::Result<Verdict> {
    if frame.len() < MIN_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "BPF_PROG_TEST_RUN refuses XDP frames under {MIN_FRAME} bytes (got {})",
                frame.len()
            ),
        ));
    }
    let opts = TestRunOptions {
        data_in: Some(frame),
        ..TestRunOptions::default()
    };
    let result = program.test_run(opts).map_err(|e| io::Error::other(chain(&e)))?;
    Ok(Verdict::from(result.return_value))
}

/// Frames per kernel batch in live-frames mode (the kernel's maximum is 256).
pub const LIVE_BATCH: u32 = 64;

/// One live-frames run: the kernel runs `program` `repeat` times on copies
/// of `frame` arriving on `ifindex`, transmitting every copy it returns
/// XDP_TX for out of that interface. The calling thread must be in the
/// interface's network namespace. Returns the kernel's own run time.
pub fn run_live(program: &Xdp, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<Duration> {
    let ctx = XdpMd {
        data_end: frame.len() as u32,
        ingress_ifindex: ifindex,
        ..XdpMd::default()
    }
    .bytes();
    let opts = TestRunOptions {
        data_in: Some(frame),
        ctx_in: Some(&ctx),
        repeat,
        attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
        ..TestRunOptions::default()
    };
    let result = program.test_run(opts).map_err(|e| io::Error::other(chain(&e)))?;
    Ok(result.duration.saturating_mul(repeat))
}

/// How long and how fast a `flood` sends.
#[derive(Clone, Copy, Debug)]
pub struct FloodLimit {
    pub duration: Duration,
    /// Frames per second; `None` sends as fast as the CPU allows.
    pub rate: Option<u64>,
}

/// What a flood sent: frames the generator program ran on (each returned
/// XDP_TX; the device may still drop some when the receiver falls behind).
#[derive(Clone, Copy, Debug)]
pub struct FloodReport {
    pub frames: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn pps(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64()
    }
}

/// How long one unpaced live-frames syscall runs: long enough to amortise
/// the syscall, short enough to keep the duration bound closely.
const CALL_TIME: Duration = Duration::from_millis(50);
/// A paced flood sends one burst of rate × this per period, then sleeps:
/// short, so the bursts stay small against a veth's 256-frame ring.
const PACE_PERIOD: Duration = Duration::from_millis(1);
/// The first unpaced call's size, before the rate is known.
const FIRST_CHUNK: u32 = 65_536;

/// A live-frames traffic generator: one program of the trafficgen object
/// (e.g. `trafficgen_tx`, `trafficgen_syn`), kept in the kernel's XDP
/// dispatcher for its whole life. A live-frames run otherwise adds the
/// program to the dispatcher and removes it again, each an RCU wait of tens
/// of milliseconds, which would make short (smoothly paced) calls
/// impossible; so the generator attaches the program in driver mode to a
/// veth pair of its own, which carries no traffic and is deleted on drop.
///
/// Create and use it on a thread inside the network namespace of the
/// interface it sends from (see `Netns::run`/`spawn`).
pub struct Generator {
    ebpf: Ebpf,
    program: String,
    anchor: String,
}

impl Generator {
    pub fn new(object: &[u8], program: &str) -> io::Result<Generator> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let anchor = format!(
            "tgen{}a{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let peer = format!("{anchor}p");
        // `ip` forked from this thread runs in this thread's namespace.
        run(Command::new("ip").args(["link", "add", &anchor, "type", "veth", "peer", "name", &peer]))?;
        let mut generator = Generator {
            ebpf: load(object, None).map_err(|e| io::Error::other(chain(&e)))?,
            program: program.to_owned(),
            anchor,
        };
        let xdp = xdp(&mut generator.ebpf, program).map_err(io::Error::other)?;
        xdp.attach(&generator.anchor, aya::programs::XdpMode::Driver)
            .map_err(|e| io::Error::other(format!("attaching {program} to {}: {}", generator.anchor, chain(&e))))?;
        Ok(generator)
    }

    fn program(&self) -> &Xdp {
        let program = self.ebpf.program(&self.program).expect("loaded in new");
        program.try_into().expect("an XDP program (checked in new)")
    }

    /// Sends copies of `frame` out of `ifindex` until `limit.duration` has
    /// passed (plus at most one call). Unpaced, each call is sized from the
    /// previous one to last about `CALL_TIME`; paced, each millisecond's
    /// frames go in one call and the thread sleeps until the next is due.
    pub fn flood(&self, frame: &[u8], ifindex: u32, limit: FloodLimit) -> io::Result<FloodReport> {
        let program = self.program();
        let start = Instant::now();
        let mut frames = 0u64;
        let mut chunk = match limit.rate {
            Some(rate) => (rate as f64 * PACE_PERIOD.as_secs_f64()).clamp(1.0, f64::from(u32::MAX)) as u32,
            None => FIRST_CHUNK,
        };
        while start.elapsed() < limit.duration {
            let call = Instant::now();
            run_live(program, frame, ifindex, chunk)?;
            frames += u64::from(chunk);
            match limit.rate {
                None => {
                    let per_second = f64::from(chunk) / call.elapsed().as_secs_f64().max(1e-6);
                    chunk = (per_second * CALL_TIME.as_secs_f64()).clamp(1.0, f64::from(u32::MAX)) as u32;
                }
                Some(rate) => {
                    let due = Duration::from_secs_f64(frames as f64 / rate as f64);
                    let left = limit.duration.saturating_sub(start.elapsed());
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait.min(left));
                    }
                }
            }
        }
        Ok(FloodReport {
            frames,
            elapsed: start.elapsed(),
        })
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        // Deleting one end deletes the pair and detaches the program.
        if let Err(e) = run(Command::new("ip").args(["link", "del", &self.anchor])) {
            eprintln!("ip link del {}: {e}", self.anchor);
        }
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data (all zeros is the empty set);
    // CPU_SET indexes inside it for cpu < CPU_SETSIZE (checked), and
    // sched_setaffinity(0, ...) reads the set we own and changes only the
    // calling thread's affinity.
    let rc = unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::other(format!("CPU {cpu} out of range")));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Interface `dev` of namespace `ns` as a frame sender needs it.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The index and MAC address of interface `dev` in namespace `ns`.
pub fn link(ns: &Netns, dev: &str) -> io::Result<Link> {
    let out = ns.command("ip").args(["-j", "link", "show", "dev", dev]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip link show dev {dev} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(io::Error::other)?;
    let bad = || io::Error::other(format!("no ifindex or MAC for {dev} in {links}"));
    let ifindex = links[0]["ifindex"]
        .as_u64()
        .and_then(|i| u32::try_from(i).ok())
        .ok_or_else(bad)?;
    let octets: Vec<u8> = links[0]["address"]
        .as_str()
        .ok_or_else(bad)?
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| bad())?;
    let mac = octets.try_into().map_err(|_| bad())?;
    Ok(Link { ifindex, mac })
}

/// `GUARD_COUNTERS` summed over CPUs, indexed by `GuardCounter`.
pub struct GuardCounts(pub [Count; GUARD_COUNTERS_LEN as usize]);

impl GuardCounts {
    /// Reads the map from an `Ebpf` this process loaded.
    pub fn read(ebpf: &Ebpf) -> Result<GuardCounts, String> {
        let map = ebpf
            .map(tollgate_ebpf_common::maps::GUARD_COUNTERS)
            .ok_or("the object has no GUARD_COUNTERS map")?;
        let counters = PerCpuArray::<_, Count>::try_from(map).map_err(|e| chain(&e))?;
        Self::sum(&counters)
    }

    /// Reads the map pinned at `<pin_dir>/GUARD_COUNTERS` (a running gateway's).
    pub fn read_pinned(pin_dir: &Path) -> Result<GuardCounts, String> {
        let path: PathBuf = pin_dir.join(tollgate_ebpf_common::maps::GUARD_COUNTERS);
        let data = MapData::from_pin(&path).map_err(|e| format!("{}: {}", path.display(), chain(&e)))?;
        let counters = PerCpuArray::<_, Count>::try_from(aya::maps::Map::PerCpuArray(data))
            .map_err(|e| format!("{}: {}", path.display(), chain(&e)))?;
        Self::sum(&counters)
    }

    fn sum<T: std::borrow::Borrow<MapData>>(counters: &PerCpuArray<T, Count>) -> Result<GuardCounts, String> {
        let mut out = [Count::default(); GUARD_COUNTERS_LEN as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = counters
                .get(&(i as u32), 0)
                .map_err(|e| chain(&e))?
                .iter()
                .copied()
                .sum();
        }
        Ok(GuardCounts(out))
    }

    pub fn get(&self, counter: GuardCounter) -> Count {
        self.0[counter as usize]
    }

    /// What changed since `earlier`, per counter.
    pub fn since(&self, earlier: &GuardCounts) -> GuardCounts {
        let mut out = [Count::default(); GUARD_COUNTERS_LEN as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            slot.packets = self.0[i].packets - earlier.0[i].packets;
            slot.bytes = self.0[i].bytes - earlier.0[i].bytes;
        }
        GuardCounts(out)
    }
}

impl fmt::Debug for GuardCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        for c in GuardCounter::ALL {
            let n = self.get(c);
            if n != Count::default() {
                map.entry(&c.label(), &(n.packets, n.bytes));
            }
        }
        map.finish()
    }
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Frame builders: Ethernet II with optional VLAN tags, IPv4 (options,
/// fragments), IPv6 (extension headers), TCP and UDP, every checksum valid
/// unless a test breaks it on purpose.
pub mod frame {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    pub const ETH_IPV4: u16 = 0x0800;
    pub const ETH_IPV6: u16 = 0x86dd;
    pub const ETH_ARP: u16 = 0x0806;
    pub const ETH_VLAN: u16 = 0x8100;
    pub const ETH_QINQ: u16 = 0x88a8;
    pub const PROTO_TCP: u8 = 6;
    pub const PROTO_UDP: u8 = 17;
    /// IPv6 extension headers (next-header values).
    pub const EXT_HOP_BY_HOP: u8 = 0;
    pub const EXT_ROUTING: u8 = 43;
    pub const EXT_FRAGMENT: u8 = 44;
    pub const EXT_AUTH: u8 = 51;
    pub const EXT_NO_NEXT: u8 = 59;
    pub const EXT_DEST_OPTS: u8 = 60;

    pub const TCP_SYN: u8 = 0x02;
    pub const TCP_ACK: u8 = 0x10;
    pub const TCP_RST: u8 = 0x04;

    /// Locally administered MACs; on a veth any unicast destination MAC is
    /// accepted by XDP, and the stack takes frames for its own address.
    pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

    /// The 16-bit one's complement sum of `data` (odd length padded with 0),
    /// starting from `initial`, not yet complemented.
    fn sum16(initial: u32, data: &[u8]) -> u32 {
        let mut sum = initial;
        for pair in data.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
        }
        sum
    }

    /// RFC 1071 Internet checksum of `data` plus a running sum.
    pub fn checksum(initial: u32, data: &[u8]) -> u16 {
        let mut sum = sum16(initial, data);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    /// The TCP/UDP pseudo-header sum for `src`→`dst`, `proto`, `len` bytes of L4.
    fn pseudo_header(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
        let mut bytes = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                bytes.extend_from_slice(&s.octets());
                bytes.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&[0, proto]);
                bytes.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                bytes.extend_from_slice(&s.octets());
                bytes.extend_from_slice(&d.octets());
                bytes.extend_from_slice(&(len as u32).to_be_bytes());
                bytes.extend_from_slice(&[0, 0, 0, proto]);
            }
            _ => panic!("pseudo header for mixed families {src} → {dst}"),
        }
        sum16(0, &bytes)
    }

    /// Sets a frame's destination and source MAC addresses (a stack only
    /// takes frames addressed to its interface).
    pub fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) {
        frame[..6].copy_from_slice(&dst);
        frame[6..12].copy_from_slice(&src);
    }

    /// An Ethernet II frame; `tags` are (TPID, VLAN id) pairs, outermost first.
    pub fn ethernet(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(14 + 4 * tags.len() + payload.len());
        f.extend_from_slice(&DST_MAC);
        f.extend_from_slice(&SRC_MAC);
        for (tpid, vid) in tags {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An IPv4 header; `build` appends the payload and fills lengths and checksum.
    #[derive(Clone, Debug)]
    pub struct Ipv4 {
        pub src: Ipv4Addr,
        pub dst: Ipv4Addr,
        pub protocol: u8,
        /// Options, a multiple of 4 bytes (IHL = 5 + len/4).
        pub options: Vec<u8>,
        /// Fragment offset in 8-byte units.
        pub fragment_offset: u16,
        pub more_fragments: bool,
    }

    impl Ipv4 {
        pub fn new(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8) -> Ipv4 {
            Ipv4 {
                src,
                dst,
                protocol,
                options: Vec::new(),
                fragment_offset: 0,
                more_fragments: false,
            }
        }

        pub fn build(&self, payload: &[u8]) -> Vec<u8> {
            assert!(
                self.options.len().is_multiple_of(4) && self.options.len() <= 40,
                "bad IPv4 options"
            );
            let header_len = 20 + self.options.len();
            let mut h = Vec::with_capacity(header_len + payload.len());
            h.push(0x40 | (header_len / 4) as u8);
            h.push(0);
            h.extend_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
            h.extend_from_slice(&0x1234u16.to_be_bytes());
            let flags = if self.more_fragments { 0x2000 } else { 0 };
            h.extend_from_slice(&(flags | (self.fragment_offset & 0x1fff)).to_be_bytes());
            h.push(64);
            h.push(self.protocol);
            h.extend_from_slice(&[0, 0]);
            h.extend_from_slice(&self.src.octets());
            h.extend_from_slice(&self.dst.octets());
            h.extend_from_slice(&self.options);
            let sum = checksum(0, &h);
            h[10..12].copy_from_slice(&sum.to_be_bytes());
            h.extend_from_slice(payload);
            h
        }
    }

    /// An IPv6 header followed by `payload` (which starts with the header
    /// `next_header` names).
    pub fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = Vec::with_capacity(40 + payload.len());
        h.extend_from_slice(&0x6000_0000u32.to_be_bytes());
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.push(next_header);
        h.push(64);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        h
    }

    /// One IPv6 extension header of `kind` (its smallest form: 8 bytes, or
    /// 12 for AH) whose next header is `next`, with `rest` appended. For the
    /// fragment header, `fragment_offset` (8-byte units) goes in.
    pub fn ipv6_ext(kind: u8, next: u8, fragment_offset: u16, rest: &[u8]) -> Vec<u8> {
        let mut h = match kind {
            // Hdr Ext Len = 0: (0 + 1) * 8 bytes, options padded with PadN.
            EXT_HOP_BY_HOP | EXT_DEST_OPTS => vec![next, 0, 1, 4, 0, 0, 0, 0],
            // Type 4 (segment routing would need more); segments left 0.
            EXT_ROUTING => vec![next, 0, 4, 0, 0, 0, 0, 0],
            EXT_FRAGMENT => {
                let mut h = vec![next, 0];
                h.extend_from_slice(&(fragment_offset << 3).to_be_bytes());
                h.extend_from_slice(&0x0bad_cafeu32.to_be_bytes());
                h
            }
            // Payload Len = 1: (1 + 2) * 4 = 12 bytes (SPI, sequence).
            EXT_AUTH => vec![next, 1, 0, 0, 0, 0, 0x10, 0x01, 0, 0, 0, 1],
            _ => panic!("no builder for extension header {kind}"),
        };
        h.extend_from_slice(rest);
        h
    }

    /// A 20-byte TCP header (no options, no payload) with a valid checksum.
    pub fn tcp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut t = Vec::with_capacity(20);
        t.extend_from_slice(&sport.to_be_bytes());
        t.extend_from_slice(&dport.to_be_bytes());
        t.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        let ack = if flags & TCP_ACK != 0 { 1u32 } else { 0 };
        t.extend_from_slice(&ack.to_be_bytes());
        t.push(5 << 4);
        t.push(flags);
        t.extend_from_slice(&64_240u16.to_be_bytes());
        t.extend_from_slice(&[0, 0, 0, 0]);
        let sum = checksum(pseudo_header(src, dst, PROTO_TCP, t.len()), &t);
        t[16..18].copy_from_slice(&sum.to_be_bytes());
        t
    }

    /// A UDP datagram with a valid checksum.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let len = 8 + payload.len();
        let mut u = Vec::with_capacity(len);
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&(len as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(payload);
        let sum = match checksum(pseudo_header(src, dst, PROTO_UDP, len), &u) {
            // 0 means "no checksum" in UDP; all ones is the same value.
            0 => 0xffff,
            s => s,
        };
        u[6..8].copy_from_slice(&sum.to_be_bytes());
        u
    }

    /// Ethernet + IP + L4 for either family, no options or extension headers.
    fn ip_frame(src: IpAddr, dst: IpAddr, protocol: u8, l4: &[u8]) -> Vec<u8> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => ethernet(&[], ETH_IPV4, &Ipv4::new(s, d, protocol).build(l4)),
            (IpAddr::V6(s), IpAddr::V6(d)) => ethernet(&[], ETH_IPV6, &ipv6(s, d, protocol, l4)),
            _ => panic!("mixed families {src} → {dst}"),
        }
    }

    /// A TCP segment with `flags` in a whole frame.
    pub fn tcp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        ip_frame(src, dst, PROTO_TCP, &tcp(src, dst, sport, dport, flags))
    }

    /// A TCP SYN in a whole frame (what a client's first packet looks like).
    pub fn syn_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        tcp_frame(src, dst, sport, dport, TCP_SYN)
    }

    /// A UDP datagram in a whole frame.
    pub fn udp_frame(src: IpAddr, dst: IpAddr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        ip_frame(src, dst, PROTO_UDP, &udp(src, dst, sport, dport, payload))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const S4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
        const D4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

        /// A header with its checksum in place sums to 0xffff (checksum 0).
        #[test]
        fn ipv4_header_checksum_verifies() {
            let mut ip = Ipv4::new(S4, D4, PROTO_TCP);
            ip.options = vec![1, 1, 1, 0];
            let packet = ip.build(&[0xaa; 20]);
            assert_eq!(packet[0], 0x46);
            assert_eq!(u16::from_be_bytes([packet[2], packet[3]]), 44);
            assert_eq!(checksum(0, &packet[..24]), 0);
        }

        /// RFC 1071's worked example: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        #[test]
        fn checksum_matches_rfc_1071_example() {
            assert_eq!(checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        }

        #[test]
        fn tcp_and_udp_checksums_verify_with_the_pseudo_header() {
            for (s, d) in [
                (IpAddr::V4(S4), IpAddr::V4(D4)),
                (
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)),
                ),
            ] {
                let t = tcp(s, d, 40_000, 80, TCP_SYN);
                assert_eq!(t[13], TCP_SYN);
                assert_eq!(checksum(pseudo_header(s, d, PROTO_TCP, t.len()), &t), 0);
                let u = udp(s, d, 5353, 53, b"odd");
                assert_eq!(checksum(pseudo_header(s, d, PROTO_UDP, u.len()), &u), 0);
            }
        }

        #[test]
        fn frames_have_their_layers_where_parsers_look() {
            let f = ethernet(&[(ETH_QINQ, 10), (ETH_VLAN, 20)], ETH_IPV4, &[0x45]);
            assert_eq!(&f[12..14], &[0x88, 0xa8]);
            assert_eq!(&f[16..18], &[0x81, 0x00]);
            assert_eq!(&f[20..22], &[0x08, 0x00]);
            let v6 = ipv6(
                Ipv6Addr::LOCALHOST,
                Ipv6Addr::LOCALHOST,
                EXT_FRAGMENT,
                &ipv6_ext(EXT_FRAGMENT, PROTO_TCP, 3, &[]),
            );
            assert_eq!(u16::from_be_bytes([v6[4], v6[5]]), 8);
            assert_eq!(u16::from_be_bytes([v6[42], v6[43]]) >> 3, 3);
            assert_eq!(ipv6_ext(EXT_AUTH, PROTO_TCP, 0, &[]).len(), (1 + 2) * 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::{is_root, NetnsPair, GATEWAY_V4};
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

    /// A source no host of the pair owns: answers to it go nowhere, so the
    /// gateway's half-open connections stay.
    const SPOOFED: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 66);

    /// The pair with the gateway veth taking XDP frames from its peer (NAPI
    /// on through GRO), the client veth's index and MAC, and a frame's MACs.
    fn prepared() -> (NetnsPair, Link, [u8; 6]) {
        let pair = NetnsPair::new();
        pair.gateway().exec("ethtool", &["-K", &pair.gateway_if, "gro", "on"]);
        let client = link(pair.client(), &pair.client_if).expect("client veth");
        let gateway = link(pair.gateway(), &pair.gateway_if).expect("gateway veth");
        (pair, client, gateway.mac)
    }

    fn send(pair: &NetnsPair, program: &'static str, frame: Vec<u8>, ifindex: u32) -> FloodReport {
        let object = std::fs::read(TRAFFICGEN_OBJECT).expect("the trafficgen object (built with the gateway)");
        pair.client().run(move || {
            let generator = Generator::new(&object, program).expect("load the generator");
            let limit = FloodLimit {
                duration: Duration::from_millis(200),
                rate: Some(500),
            };
            generator.flood(&frame, ifindex, limit).expect("live frames")
        })
    }

    #[test]
    fn generated_udp_frames_reach_a_socket_with_a_valid_checksum() {
        if !is_root() {
            println!("SKIPPED generated_udp_frames_reach_a_socket_with_a_valid_checksum: not root");
            return;
        }
        let (pair, client, gateway_mac) = prepared();
        let socket = pair
            .gateway()
            .run(|| UdpSocket::bind(SocketAddr::from((GATEWAY_V4, 0))).expect("bind in the gateway ns"));
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let port = socket.local_addr().unwrap().port();
        let mut f = frame::udp_frame(SPOOFED.into(), GATEWAY_V4.into(), 40_000, port, b"odd-sized");
        frame::set_macs(&mut f, gateway_mac, client.mac);
        let report = send(&pair, "trafficgen_tx", f, client.ifindex);
        assert!(report.frames >= 50, "{report:?}");
        let mut buf = [0u8; 64];
        let (n, from) = socket
            .recv_from(&mut buf)
            .expect("a datagram: the kernel drops bad checksums");
        assert_eq!(
            (&buf[..n], from),
            (&b"odd-sized"[..], SocketAddr::from((SPOOFED, 40_000)))
        );
    }

    #[test]
    fn generated_syns_open_half_connections_from_many_ports() {
        if !is_root() {
            println!("SKIPPED generated_syns_open_half_connections_from_many_ports: not root");
            return;
        }
        let (pair, client, gateway_mac) = prepared();
        let listener = pair
            .gateway()
            .run(|| std::net::TcpListener::bind(SocketAddr::from((GATEWAY_V4, 0))).expect("bind"));
        let port = listener.local_addr().unwrap().port();
        let mut f = frame::syn_frame(SPOOFED.into(), GATEWAY_V4.into(), 40_000, port);
        frame::set_macs(&mut f, gateway_mac, client.mac);
        send(&pair, "trafficgen_syn", f, client.ifindex);
        // /proc/net/tcp rows: "sl local rem st ...", addresses as hex
        // (little-endian IPv4) with the port; state 03 is SYN_RECV.
        let spoofed = format!("{:08X}", u32::from_le_bytes(SPOOFED.octets()));
        let table = pair
            .gateway()
            .run(|| std::fs::read_to_string("/proc/thread-self/net/tcp").expect("read the namespace's TCP table"));
        let ports: std::collections::HashSet<&str> = table
            .lines()
            .filter_map(|row| {
                let fields: Vec<&str> = row.split_whitespace().collect();
                let (addr, remote_port) = fields.get(2)?.split_once(':')?;
                (addr == spoofed && fields.get(3) == Some(&"03")).then_some(remote_port)
            })
            .collect();
        // Valid checksums get SYN_RECV entries; random ports make them many
        // (the listener's queue caps how many stay).
        assert!(
            ports.len() > 10,
            "half-open connections from {} ports:\n{table}",
            ports.len()
        );
        drop(listener);
    }
}
