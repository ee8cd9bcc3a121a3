//! The object the gateway embeds: the XDP guard (`tollgate_guard`), the
//! SK_REUSEPORT steering program (`tollgate_steer`) and every map both use.
//! Names, sizes and layouts come from `tollgate-ebpf-common`; the map statics
//! carry exactly the names in its `maps` module (the loader finds them by name).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{sk_action, xdp_action, BPF_NOEXIST},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_xdp_get_buff_len},
    macros::{map, sk_reuseport, xdp},
    maps::{lpm_trie::Key, Array, CpuMap, HashMap, LpmTrie, LruHashMap, PerCpuArray, ReusePortSockArray},
    programs::{SkReuseportContext, XdpContext},
};
use tollgate_ebpf::{be16, Frame};
use tollgate_ebpf_common::{
    ipv4_mapped, steer_index, Addr, Bucket, Count, GuardConfig, GuardCounter, ListenerKey, SourceState, SteerCounter,
    AF_INET, AF_INET6, CREDIT_PER_TOKEN, DEFAULT_TRACKED_SOURCES, GUARD_COUNTERS_LEN, GUARD_CPU_REDIRECT,
    LPM_MAX_ENTRIES, MAX_CPUS, MAX_LISTENERS, STEER_COUNTERS_LEN, STEER_SOCKETS_ENTRIES,
};

#[map]
static BLOCKLIST: LpmTrie<Addr, u8> = LpmTrie::pinned(LPM_MAX_ENTRIES, 0);
#[map]
static ALLOWLIST: LpmTrie<Addr, u8> = LpmTrie::pinned(LPM_MAX_ENTRIES, 0);
#[map]
static GUARD_CONFIG: Array<GuardConfig> = Array::with_max_entries(1, 0);
#[map]
static SOURCES: LruHashMap<Addr, SourceState> = LruHashMap::pinned(DEFAULT_TRACKED_SOURCES, 0);
#[map]
static GUARD_COUNTERS: PerCpuArray<Count> = PerCpuArray::pinned(GUARD_COUNTERS_LEN, 0);
#[map]
static CPU_MAP: CpuMap = CpuMap::with_max_entries(MAX_CPUS, 0);
#[map]
static REDIRECT_CPUS: Array<u32> = Array::with_max_entries(MAX_CPUS, 0);
#[map]
static STEER_LISTENERS: HashMap<ListenerKey, u32> = HashMap::with_max_entries(MAX_LISTENERS, 0);
#[map]
static STEER_SOCKETS: ReusePortSockArray = ReusePortSockArray::with_max_entries(STEER_SOCKETS_ENTRIES, 0);
#[map]
static STEER_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(STEER_COUNTERS_LEN, 0);

const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// VLAN tags the guard looks through (802.1Q inside 802.1ad is the deepest
/// stacking seen in practice).
const MAX_VLAN_TAGS: usize = 2;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// The fragment offset bits of the IPv4 flags/offset field.
const IPV4_FRAG_OFFSET: u16 = 0x1fff;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_NONE: u8 = 59;
const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6 extension headers walked before giving up on finding the L4 header
/// (the verifier needs a bound; real traffic rarely has more than two).
const MAX_IPV6_EXT_HEADERS: usize = 6;

/// TCP bytes up to and including the flags byte.
const TCP_FLAGS_END: usize = 14;
const TCP_FLAGS_AT: usize = 13;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The kernel's `-ENOENT`: `bpf_sk_select_reuseport` found no socket at the index.
const ENOENT: i64 = 2;

/// The parts of a packet the guard decides on.
struct Packet {
    src: Addr,
    dst: Addr,
    /// IP protocol of the L4 header (0 when there is none).
    proto: u8,
    /// Source and destination port (TCP/UDP with the header present, else 0).
    ports: [u8; 4],
    /// TCP SYN without ACK: a new connection.
    is_syn: bool,
}

/// What parsing found: an IP packet, something to pass unchecked, or garbage.
enum Parsed {
    Ip(Packet),
    NotIp,
    Malformed,
}

#[xdp]
pub fn tollgate_guard(ctx: XdpContext) -> u32 {
    let frame = Frame::new(ctx.data(), ctx.data_end());
    // The whole frame (fragments included): `data_end - data` would subtract
    // packet pointers, which programs loaded without CAP_PERFMON may not.
    // SAFETY: the helper only reads the context the kernel passed in.
    let bytes = unsafe { bpf_xdp_get_buff_len(ctx.ctx) };
    let (action, counter) = guard(&frame, bytes);
    count_guard(counter, bytes);
    action
}

fn guard(frame: &Frame, frame_bytes: u64) -> (u32, GuardCounter) {
    let packet = match parse(frame) {
        Parsed::Ip(packet) => packet,
        Parsed::NotIp => return (xdp_action::XDP_PASS, GuardCounter::NotIp),
        Parsed::Malformed => return (xdp_action::XDP_DROP, GuardCounter::Malformed),
    };
    let key = Key::new(128, packet.src);
    if ALLOWLIST.get(&key).is_some() {
        return (xdp_action::XDP_PASS, GuardCounter::Allowlisted);
    }
    if BLOCKLIST.get(&key).is_some() {
        return (xdp_action::XDP_DROP, GuardCounter::Blocklisted);
    }
    let config = GUARD_CONFIG.get(0).copied().unwrap_or_default();
    if let Some(limited) = rate_limit(&config, &packet, frame_bytes) {
        return (xdp_action::XDP_DROP, limited);
    }
    if config.flags & GUARD_CPU_REDIRECT != 0 && config.redirect_cpus > 0 {
        if let Some(action) = redirect(&config, &packet) {
            return (action, GuardCounter::Redirected);
        }
    }
    (xdp_action::XDP_PASS, GuardCounter::Passed)
}

fn parse(frame: &Frame) -> Parsed {
    let Some(eth) = frame.read::<ETH_HLEN>(0) else {
        return Parsed::Malformed;
    };
    let mut ethertype = be16([eth[12], eth[13]]);
    let mut l3 = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // The tag's last two bytes are the encapsulated ethertype.
        let Some(tag) = frame.read::<VLAN_HLEN>(l3) else {
            return Parsed::Malformed;
        };
        ethertype = be16([tag[2], tag[3]]);
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => parse_ipv4(frame, l3),
        ETH_P_IPV6 => parse_ipv6(frame, l3),
        _ => Parsed::NotIp,
    }
}

fn parse_ipv4(frame: &Frame, l3: usize) -> Parsed {
    let Some(ip) = frame.read::<IPV4_HLEN>(l3) else {
        return Parsed::Malformed;
    };
    let version = ip[0] >> 4;
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    let total_len = usize::from(be16([ip[2], ip[3]]));
    if version != 4 || hlen < IPV4_HLEN || total_len < hlen || !frame.has(l3, hlen) {
        return Parsed::Malformed;
    }
    let src = ipv4_mapped([ip[12], ip[13], ip[14], ip[15]]);
    let dst = ipv4_mapped([ip[16], ip[17], ip[18], ip[19]]);
    // Only the first fragment carries the L4 header.
    let l4 = if be16([ip[6], ip[7]]) & IPV4_FRAG_OFFSET == 0 {
        Some(l3 + hlen)
    } else {
        None
    };
    with_l4(frame, src, dst, ip[9], l4)
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, l3: usize) -> Parsed {
    let Some(ip) = frame.read::<IPV6_HLEN>(l3) else {
        return Parsed::Malformed;
    };
    if ip[0] >> 4 != 6 {
        return Parsed::Malformed;
    }
    let mut src = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&ip[24..40]);
    let mut next = ip[6];
    let mut at = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        let len = match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                let Some(ext) = frame.read::<2>(at) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                (usize::from(ext[1]) + 1) * 8
            }
            IPPROTO_AH => {
                let Some(ext) = frame.read::<2>(at) else {
                    return Parsed::Malformed;
                };
                next = ext[0];
                (usize::from(ext[1]) + 2) * 4
            }
            IPPROTO_FRAGMENT => {
                let Some(ext) = frame.read::<8>(at) else {
                    return Parsed::Malformed;
                };
                // Only the first fragment (offset 0) carries the L4 header.
                if be16([ext[2], ext[3]]) >> 3 != 0 {
                    return with_l4(frame, src, dst, ext[0], None);
                }
                next = ext[0];
                8
            }
            IPPROTO_NONE => return with_l4(frame, src, dst, next, None),
            proto => return with_l4(frame, src, dst, proto, Some(at)),
        };
        if !frame.has(at, len) {
            return Parsed::Malformed;
        }
        at += len;
    }
    match next {
        // A longer chain than the guard walks: judged on addresses and rate alone.
        IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT | IPPROTO_NONE => {
            with_l4(frame, src, dst, next, None)
        }
        // The chain ended with the last header walked: the L4 header follows it.
        proto => with_l4(frame, src, dst, proto, Some(at)),
    }
}

/// The packet with its L4 facts, read from the header at `l4` when there is one.
#[inline(always)]
fn with_l4(frame: &Frame, src: Addr, dst: Addr, proto: u8, l4: Option<usize>) -> Parsed {
    let mut packet = Packet {
        src,
        dst,
        proto,
        ports: [0; 4],
        is_syn: false,
    };
    let Some(at) = l4 else {
        return Parsed::Ip(packet);
    };
    if proto == IPPROTO_TCP {
        let Some(tcp) = frame.read::<TCP_FLAGS_END>(at) else {
            return Parsed::Malformed;
        };
        packet.ports = [tcp[0], tcp[1], tcp[2], tcp[3]];
        let flags = tcp[TCP_FLAGS_AT];
        packet.is_syn = flags & TCP_SYN != 0 && flags & TCP_ACK == 0;
    } else if proto == IPPROTO_UDP {
        // A short UDP header only costs the flow hash its ports.
        if let Some(ports) = frame.read::<4>(at) {
            packet.ports = ports;
        }
    }
    Parsed::Ip(packet)
}

/// Updates the source's totals and buckets; the reason to drop when a limit
/// is exceeded.
#[inline(always)]
fn rate_limit(config: &GuardConfig, packet: &Packet, frame_bytes: u64) -> Option<GuardCounter> {
    // SAFETY: the helper has no arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let state = source_state(config, &packet.src, now)?;
    // SAFETY: `state` points at a live SOURCES value (see `source_state`); other
    // CPUs may update it at the same time, which makes the totals and buckets
    // approximate, never out of bounds.
    let state = unsafe { &mut *state };
    state.packets += 1;
    state.bytes += frame_bytes;
    if config.packets.enabled() && !take(&config.packets, &mut state.packet_credit, &mut state.packet_at_ns, now) {
        state.dropped += 1;
        return Some(GuardCounter::PacketRate);
    }
    if packet.is_syn && config.syn.enabled() && !take(&config.syn, &mut state.syn_credit, &mut state.syn_at_ns, now) {
        state.dropped += 1;
        return Some(GuardCounter::SynRate);
    }
    None
}

/// The SOURCES entry for `src`, created with full buckets when missing.
/// `None` only if the entry vanished between insert and lookup (LRU eviction
/// under pressure): the packet then goes unlimited rather than dropped.
#[inline(always)]
fn source_state(config: &GuardConfig, src: &Addr, now: u64) -> Option<*mut SourceState> {
    if let Some(state) = SOURCES.get_ptr_mut(src) {
        return Some(state);
    }
    let fresh = SourceState {
        syn_credit: config.syn.burst_credit,
        syn_at_ns: now,
        packet_credit: config.packets.burst_credit,
        packet_at_ns: now,
        packets: 0,
        bytes: 0,
        dropped: 0,
    };
    // Another CPU may insert the same source first: NOEXIST keeps its entry.
    let _ = SOURCES.insert(src, fresh, u64::from(BPF_NOEXIST));
    SOURCES.get_ptr_mut(src)
}

/// Refills a token bucket for the time since it was last seen and takes one
/// token; false when there is none to take.
#[inline(always)]
fn take(bucket: &Bucket, credit: &mut u64, at_ns: &mut u64, now: u64) -> bool {
    // Clamped to the fill time, so `elapsed * rate` stays within burst_credit.
    let elapsed = now.saturating_sub(*at_ns).min(bucket.fill_ns);
    if now > *at_ns {
        *at_ns = now;
    }
    let refilled = credit
        .saturating_add(elapsed * bucket.rate_per_sec)
        .min(bucket.burst_credit);
    if refilled < CREDIT_PER_TOKEN {
        *credit = refilled;
        return false;
    }
    *credit = refilled - CREDIT_PER_TOKEN;
    true
}

/// Sends the packet to the CPU its flow hashes to; `None` (pass here) when
/// that CPU has no CPU_MAP entry.
#[inline(always)]
fn redirect(config: &GuardConfig, packet: &Packet) -> Option<u32> {
    let index = flow_hash(packet) % config.redirect_cpus.min(MAX_CPUS);
    let cpu = *REDIRECT_CPUS.get(index)?;
    CPU_MAP.redirect(cpu, u64::from(xdp_action::XDP_PASS)).ok()
}

/// A hash of the flow (addresses, ports, protocol) that keeps a connection's
/// packets on one CPU.
#[inline(always)]
fn flow_hash(packet: &Packet) -> u32 {
    let mut hash: u32 = 0x9e37_79b9 ^ u32::from(packet.proto);
    for word in 0..4 {
        let at = word * 4;
        let src = u32::from_ne_bytes([
            packet.src[at],
            packet.src[at + 1],
            packet.src[at + 2],
            packet.src[at + 3],
        ]);
        let dst = u32::from_ne_bytes([
            packet.dst[at],
            packet.dst[at + 1],
            packet.dst[at + 2],
            packet.dst[at + 3],
        ]);
        hash = mix(hash, src ^ dst);
    }
    mix(hash, u32::from_ne_bytes(packet.ports))
}

/// One round of a multiply-xorshift mix (murmur3's finaliser constants).
#[inline(always)]
fn mix(hash: u32, value: u32) -> u32 {
    let h = (hash ^ value).wrapping_mul(0xcc9e_2d51);
    let h = h ^ (h >> 15);
    h.wrapping_mul(0x1b87_3593)
}

#[inline(always)]
fn count_guard(counter: GuardCounter, bytes: u64) {
    if let Some(slot) = GUARD_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU array value of this CPU: nothing else writes it
        // while this program runs (XDP runs with preemption disabled).
        let slot = unsafe { &mut *slot };
        slot.packets += 1;
        slot.bytes += bytes;
    }
}

#[sk_reuseport]
pub fn tollgate_steer(ctx: SkReuseportContext) -> u32 {
    count_steer(steer(&ctx));
    sk_action::SK_PASS
}

fn steer(ctx: &SkReuseportContext) -> SteerCounter {
    let key = listener_key(ctx);
    // SAFETY: the value is a plain u32 that userspace replaces whole.
    let Some(&slot) = (unsafe { STEER_LISTENERS.get(key) }) else {
        return SteerCounter::UnknownListener;
    };
    // SAFETY: the helper has no arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // Out-of-range values would alias another listener's sockets.
    if slot >= MAX_LISTENERS || cpu >= MAX_CPUS {
        return SteerCounter::NoWorker;
    }
    match STEER_SOCKETS.select_reuseport(ctx, steer_index(slot, cpu)) {
        Ok(()) => SteerCounter::Steered,
        Err(err) if err == -ENOENT => SteerCounter::NoWorker,
        Err(_) => SteerCounter::SelectFailed,
    }
}

/// The listener the connection arrived for: family, port and bound address of
/// the group's socket (`ctx->sk`, readable since Linux 5.14).
#[inline(always)]
fn listener_key(ctx: &SkReuseportContext) -> ListenerKey {
    let sk = ctx.sk().sock;
    // SAFETY: `ctx->sk` is a PTR_TO_SOCKET the kernel guarantees non-null for
    // SK_REUSEPORT programs. Each field is read with its own 4-byte load at a
    // constant offset, all of them before looking at the family: the verifier
    // allows only `u32` reads of `bpf_sock` fields and no pointer arithmetic
    // on it, and LLVM turns reads chosen by a branch into one read at a
    // computed offset (volatile keeps them separate and unmerged).
    let (family, port, ip4, ip6) = unsafe {
        (
            core::ptr::read_volatile(&(*sk).family),
            core::ptr::read_volatile(&(*sk).src_port),
            core::ptr::read_volatile(&(*sk).src_ip4),
            [
                core::ptr::read_volatile(&(*sk).src_ip6[0]),
                core::ptr::read_volatile(&(*sk).src_ip6[1]),
                core::ptr::read_volatile(&(*sk).src_ip6[2]),
                core::ptr::read_volatile(&(*sk).src_ip6[3]),
            ],
        )
    };
    let addr = match family {
        AF_INET => ipv4_mapped(ip4.to_ne_bytes()),
        AF_INET6 => {
            let [a, b, c, d] = ip6[0].to_ne_bytes();
            let [e, f, g, h] = ip6[1].to_ne_bytes();
            let [i, j, k, l] = ip6[2].to_ne_bytes();
            let [m, n, o, p] = ip6[3].to_ne_bytes();
            [a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p]
        }
        _ => [0; 16],
    };
    ListenerKey { family, port, addr }
}

#[inline(always)]
fn count_steer(counter: SteerCounter) {
    if let Some(slot) = STEER_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: this CPU's own per-CPU array value (see `count_guard`).
        unsafe { *slot += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that can loop forever.
    loop {}
}
