//! What the eBPF programs (`ebpf/programs`) and the gateway's loader
//! (`gateway/src/ebpf/`) must agree on: map and program names, map sizes, the
//! layout of every key and value, and the counter indices. Both sides use
//! these definitions; a value written here is never repeated elsewhere.
//!
//! Layout rules: every type is `#[repr(C)]` plain data with explicit padding
//! (the kernel copies bytes; implicit padding would be uninitialised memory
//! in a map key and break lookups).
#![no_std]

/// Program names (the function names in `ebpf/programs`).
pub mod programs {
    /// XDP: blocklist, allowlist, per-source rate limits, counters, optional CPU redirect.
    pub const GUARD: &str = "tollgate_guard";
    /// SK_REUSEPORT: picks the listener of the worker pinned to the receiving CPU.
    pub const STEER: &str = "tollgate_steer";
}

/// Map names (the statics in `ebpf/programs`, which must carry exactly these names).
pub mod maps {
    /// LPM trie `LpmKey` → `u8` (1): sources dropped in the driver. Pinned.
    pub const BLOCKLIST: &str = "BLOCKLIST";
    /// LPM trie `LpmKey` → `u8` (1): sources that bypass the blocklist and rate limits. Pinned.
    pub const ALLOWLIST: &str = "ALLOWLIST";
    /// Array of one `GuardConfig`, rewritten on every config change.
    pub const GUARD_CONFIG: &str = "GUARD_CONFIG";
    /// LRU hash `Addr` → `SourceState`: token buckets and totals per source
    /// (top talkers). Pinned; its size comes from the config.
    pub const SOURCES: &str = "SOURCES";
    /// Per-CPU array indexed by `GuardCounter` → `Count`. Pinned.
    pub const GUARD_COUNTERS: &str = "GUARD_COUNTERS";
    /// CPU map: the CPUs the guard may redirect packets to (`GUARD_CPU_REDIRECT`).
    pub const CPU_MAP: &str = "CPU_MAP";
    /// Array `u32` index → CPU number: the first `GuardConfig::redirect_cpus`
    /// entries are the redirect targets, in worker order.
    pub const REDIRECT_CPUS: &str = "REDIRECT_CPUS";
    /// Hash `ListenerKey` → listener slot (`u32`, below `MAX_LISTENERS`).
    pub const STEER_LISTENERS: &str = "STEER_LISTENERS";
    /// Reuseport socket array, index `steer_index(slot, cpu)` → the listening
    /// socket of the worker pinned to `cpu`.
    pub const STEER_SOCKETS: &str = "STEER_SOCKETS";
    /// Per-CPU array indexed by `SteerCounter` → `u64`. Pinned.
    pub const STEER_COUNTERS: &str = "STEER_COUNTERS";
}

/// CPUs the steering and redirect maps can address (CPU numbers 0..MAX_CPUS).
pub const MAX_CPUS: u32 = 1024;
/// Listeners (address:port pairs) steering can serve at once.
pub const MAX_LISTENERS: u32 = 64;
/// Entries in `STEER_SOCKETS`.
pub const STEER_SOCKETS_ENTRIES: u32 = MAX_CPUS * MAX_LISTENERS;
/// CIDRs each of the blocklist and the allowlist can hold.
pub const LPM_MAX_ENTRIES: u32 = 65_536;
/// Default size of `SOURCES` when the config does not set one.
pub const DEFAULT_TRACKED_SOURCES: u32 = 65_536;

/// The slot in `STEER_SOCKETS` for a listener slot and a CPU.
pub const fn steer_index(slot: u32, cpu: u32) -> u32 {
    slot * MAX_CPUS + cpu
}

/// A source or listener address: IPv6, or IPv4 mapped into `::ffff:0:0/96`
/// (bytes 10 and 11 are 0xff, the IPv4 address is in bytes 12..16). One key
/// type lets one trie hold both families.
pub type Addr = [u8; 16];

/// Prefix bits the IPv4-mapped form adds in front of an IPv4 prefix.
pub const IPV4_MAPPED_PREFIX_BITS: u32 = 96;

/// The IPv4-mapped form of an IPv4 address in network byte order.
pub const fn ipv4_mapped(octets: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// `ip` as the maps hold it (IPv4 mapped into `::ffff:0:0/96`).
pub const fn addr_of(ip: core::net::IpAddr) -> Addr {
    match ip {
        core::net::IpAddr::V4(v4) => ipv4_mapped(v4.octets()),
        core::net::IpAddr::V6(v6) => v6.octets(),
    }
}

/// An address as the maps hold it, back as an IP address (mapped IPv4 as IPv4).
pub const fn ip_of(addr: &Addr) -> core::net::IpAddr {
    let v6 = core::net::Ipv6Addr::from_octets(*addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => core::net::IpAddr::V4(v4),
        None => core::net::IpAddr::V6(v6),
    }
}

/// The trie prefix length of `prefix_len` bits of `ip` (an IPv4 prefix sits
/// below the 96 bits of the mapping).
pub const fn prefix_bits(ip: core::net::IpAddr, prefix_len: u32) -> u32 {
    match ip {
        core::net::IpAddr::V4(_) => IPV4_MAPPED_PREFIX_BITS + prefix_len,
        core::net::IpAddr::V6(_) => prefix_len,
    }
}

/// An LPM trie key as the kernel lays it out: prefix length in bits, then the
/// address. (aya's `Key<Addr>` has this layout; the type here documents it
/// for both sides.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmKey {
    pub prefix_len: u32,
    pub addr: Addr,
}

/// Fixed-point unit of a token bucket: one token is this much credit, so
/// rates below one token per nanosecond still refill smoothly.
pub const CREDIT_PER_TOKEN: u64 = 1_000_000_000;

/// One token bucket's settings. `rate_per_sec == 0` disables the limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    /// Tokens added per second.
    pub rate_per_sec: u64,
    /// Capacity: burst tokens × `CREDIT_PER_TOKEN`.
    pub burst_credit: u64,
    /// Time to fill from empty, in ns (`burst_credit / rate_per_sec`): the
    /// program clamps elapsed time to it so `elapsed × rate` cannot overflow.
    pub fill_ns: u64,
}

impl Bucket {
    /// A bucket refilling `rate_per_sec` tokens per second up to `burst`
    /// tokens; a rate of 0 is "no limit". The burst is at least one token.
    pub const fn new(rate_per_sec: u64, burst: u64) -> Bucket {
        if rate_per_sec == 0 {
            return Bucket {
                rate_per_sec: 0,
                burst_credit: 0,
                fill_ns: 0,
            };
        }
        let burst = if burst == 0 { 1 } else { burst };
        let burst_credit = burst.saturating_mul(CREDIT_PER_TOKEN);
        Bucket {
            rate_per_sec,
            burst_credit,
            fill_ns: burst_credit / rate_per_sec,
        }
    }

    pub const fn enabled(&self) -> bool {
        self.rate_per_sec != 0
    }
}

/// `GuardConfig::flags`: redirect passed packets to a worker CPU through
/// `CPU_MAP`, chosen by a hash of the flow.
pub const GUARD_CPU_REDIRECT: u32 = 1;

/// The guard's settings: entry 0 of `GUARD_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    pub flags: u32,
    /// Entries of `REDIRECT_CPUS` in use (0 disables the redirect).
    pub redirect_cpus: u32,
    /// New TCP connections (SYN without ACK) per source.
    pub syn: Bucket,
    /// Every packet per source.
    pub packets: Bucket,
}

/// What the guard knows about one source (`SOURCES` value). Several CPUs
/// update one entry without a lock: the buckets are approximate under
/// contention, which costs a few tokens and never a wrong drop of an
/// allowlisted source.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceState {
    pub syn_credit: u64,
    pub syn_at_ns: u64,
    pub packet_credit: u64,
    pub packet_at_ns: u64,
    /// Packets and bytes seen from the source (passed or dropped).
    pub packets: u64,
    pub bytes: u64,
    /// Packets of the source the rate limits dropped.
    pub dropped: u64,
}

/// Indices of `GUARD_COUNTERS`: what happened to a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuardCounter {
    /// Passed to the stack after the checks.
    Passed = 0,
    /// Passed because the source is on the allowlist.
    Allowlisted = 1,
    /// Passed without checks: not IPv4/IPv6 (ARP, LLDP…).
    NotIp = 2,
    /// Passed after a redirect to a worker CPU.
    Redirected = 3,
    /// Dropped: the source is on the blocklist.
    Blocklisted = 4,
    /// Dropped: the source's new-connection (SYN) rate is over its limit.
    SynRate = 5,
    /// Dropped: the source's packet rate is over its limit.
    PacketRate = 6,
    /// Dropped: an IP header shorter than it says, or a bad version/length.
    Malformed = 7,
}

impl GuardCounter {
    pub const ALL: [GuardCounter; 8] = [
        GuardCounter::Passed,
        GuardCounter::Allowlisted,
        GuardCounter::NotIp,
        GuardCounter::Redirected,
        GuardCounter::Blocklisted,
        GuardCounter::SynRate,
        GuardCounter::PacketRate,
        GuardCounter::Malformed,
    ];

    /// The `reason` label on /metrics.
    pub const fn label(self) -> &'static str {
        match self {
            GuardCounter::Passed => "passed",
            GuardCounter::Allowlisted => "allowlisted",
            GuardCounter::NotIp => "not_ip",
            GuardCounter::Redirected => "redirected",
            GuardCounter::Blocklisted => "blocklist",
            GuardCounter::SynRate => "syn_rate",
            GuardCounter::PacketRate => "packet_rate",
            GuardCounter::Malformed => "malformed",
        }
    }

    pub const fn dropped(self) -> bool {
        matches!(
            self,
            GuardCounter::Blocklisted | GuardCounter::SynRate | GuardCounter::PacketRate | GuardCounter::Malformed
        )
    }
}

/// Entries of `GUARD_COUNTERS`.
pub const GUARD_COUNTERS_LEN: u32 = GuardCounter::ALL.len() as u32;

/// A `GUARD_COUNTERS` value (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The total of per-CPU values (counters wrap, as the kernel's do).
impl core::iter::Sum for Count {
    fn sum<I: Iterator<Item = Count>>(counts: I) -> Count {
        counts.fold(Count::default(), |sum, count| Count {
            packets: sum.packets.wrapping_add(count.packets),
            bytes: sum.bytes.wrapping_add(count.bytes),
        })
    }
}

/// A listener as the steering program sees it: the listening socket's family
/// (`AF_INET` 2 or `AF_INET6` 10), local port (host byte order) and bound
/// address (`Addr`; all zeros or `ipv4_mapped([0; 4])` for a wildcard).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub family: u32,
    pub port: u32,
    pub addr: Addr,
}

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;

/// Indices of `STEER_COUNTERS`: how a new connection found its listener.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteerCounter {
    /// Given to the worker pinned to the CPU that received the SYN.
    Steered = 0,
    /// No worker on that CPU: the kernel's hash chose.
    NoWorker = 1,
    /// The listening socket is not registered: the kernel's hash chose.
    UnknownListener = 2,
    /// The kernel refused the selection (socket gone): its hash chose.
    SelectFailed = 3,
}

impl SteerCounter {
    pub const ALL: [SteerCounter; 4] = [
        SteerCounter::Steered,
        SteerCounter::NoWorker,
        SteerCounter::UnknownListener,
        SteerCounter::SelectFailed,
    ];

    /// The `result` label on /metrics.
    pub const fn label(self) -> &'static str {
        match self {
            SteerCounter::Steered => "steered",
            SteerCounter::NoWorker => "no_worker",
            SteerCounter::UnknownListener => "unknown_listener",
            SteerCounter::SelectFailed => "select_failed",
        }
    }
}

/// Entries of `STEER_COUNTERS`.
pub const STEER_COUNTERS_LEN: u32 = SteerCounter::ALL.len() as u32;

// SAFETY: each type is `#[repr(C)]`, `Copy`, holds only integers and byte
// arrays (every bit pattern is a valid value) and has no implicit padding
// (`layouts_have_no_implicit_padding` pins each size), so aya may copy it as
// bytes in either direction.
#[cfg(feature = "aya")]
mod pod {
    unsafe impl aya::Pod for super::Count {}
    unsafe impl aya::Pod for super::GuardConfig {}
    unsafe impl aya::Pod for super::ListenerKey {}
    unsafe impl aya::Pod for super::SourceState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_are_dense_and_in_order() {
        for (i, c) in GuardCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
        for (i, c) in SteerCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<LpmKey>(), 20);
        assert_eq!(size_of::<Bucket>(), 24);
        assert_eq!(size_of::<GuardConfig>(), 8 + 2 * 24);
        assert_eq!(size_of::<SourceState>(), 7 * 8);
        assert_eq!(size_of::<ListenerKey>(), 24);
        assert_eq!(size_of::<Count>(), 16);
    }

    #[test]
    fn bucket_fill_time_and_disabled_limit() {
        let b = Bucket::new(100, 50);
        assert_eq!(b.burst_credit, 50 * CREDIT_PER_TOKEN);
        assert_eq!(b.fill_ns, 500_000_000);
        assert!(!Bucket::new(0, 10).enabled());
        assert_eq!(Bucket::new(10, 0).burst_credit, CREDIT_PER_TOKEN);
    }

    #[test]
    fn addresses_map_both_ways_with_ipv4_inside_the_mapping() {
        use core::net::IpAddr;
        let v4: IpAddr = "198.51.100.7".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(addr_of(v4), ipv4_mapped([198, 51, 100, 7]));
        assert_eq!(ip_of(&addr_of(v4)), v4);
        assert_eq!(ip_of(&addr_of(v6)), v6);
        assert_eq!(prefix_bits(v4, 24), 120);
        assert_eq!(prefix_bits(v6, 32), 32);
    }

    #[test]
    fn counts_sum_field_by_field() {
        let per_cpu = [
            Count { packets: 1, bytes: 60 },
            Count {
                packets: 2,
                bytes: 1500,
            },
        ];
        assert_eq!(
            per_cpu.into_iter().sum::<Count>(),
            Count {
                packets: 3,
                bytes: 1560
            }
        );
    }

    #[test]
    fn steer_index_stays_inside_the_socket_array() {
        assert_eq!(steer_index(MAX_LISTENERS - 1, MAX_CPUS - 1), STEER_SOCKETS_ENTRIES - 1);
    }
}
