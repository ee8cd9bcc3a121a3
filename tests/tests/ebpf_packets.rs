//! Crafted and malformed frames through the XDP guard (`tollgate_guard`, the
//! object the gateway embeds), run one at a time with BPF_PROG_TEST_RUN: each
//! test loads its own copy with its maps pinned in a private bpffs, fills
//! BLOCKLIST/ALLOWLIST/GUARD_CONFIG with the ebpf/common types, and checks
//! the verdict and that exactly one GUARD_COUNTERS slot counted the frame
//! (one packet, its length in bytes). The expected outcomes are those of the
//! contract in notes/ebpf-interface.md. First, the object as a whole: its
//! maps and pins, both programs through the verifier, and the guard attached
//! to a veth of a harness namespace. Root only (loading BPF programs).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, CpuMap, HashMap};
use aya::programs::{Program, Xdp, XdpMode};
use aya::Ebpf;
use tollgate_e2e::bpf::frame::{self, Ipv4, ETH_ARP, ETH_IPV4, ETH_IPV6, ETH_QINQ, ETH_VLAN, PROTO_TCP, TCP_ACK};
use tollgate_e2e::bpf::{self, GuardCounts, PrivateBpffs, Verdict};
use tollgate_e2e::netns::NetnsPair;
use tollgate_ebpf_common::{
    addr_of, maps, prefix_bits, programs, Addr, Bucket, GuardConfig, GuardCounter, SourceState, GUARD_CPU_REDIRECT,
};

const SRC4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const DST4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 10);
const DST6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);

/// One private copy of the guard: the object loaded, its maps pinned in a
/// bpffs mount of its own (dropped after the object).
struct Guard {
    ebpf: Ebpf,
    pins: PrivateBpffs,
}

impl Guard {
    fn new() -> Guard {
        assert!(
            tollgate_e2e::netns::is_root(),
            "the XDP packet tests load BPF programs and need root (CI runs them as root)"
        );
        let pins = PrivateBpffs::mount().expect("mount a private bpffs");
        let mut ebpf = bpf::load(tollgate::ebpf::object::guard_object(), Some(pins.path()))
            .unwrap_or_else(|e| panic!("loading the guard object: {}", bpf::chain(&e)));
        bpf::xdp(&mut ebpf, programs::GUARD).unwrap_or_else(|e| panic!("{e}"));
        Guard { ebpf, pins }
    }

    fn program(&self) -> &Xdp {
        self.ebpf
            .program(programs::GUARD)
            .expect("guard program")
            .try_into()
            .expect("XDP")
    }

    fn configure(&mut self, config: GuardConfig) {
        let mut map: Array<_, GuardConfig> =
            Array::try_from(self.ebpf.map_mut(maps::GUARD_CONFIG).expect("GUARD_CONFIG")).expect("array");
        map.set(0, config, 0).expect("write GUARD_CONFIG");
    }

    fn list(&mut self, name: &str, addr: IpAddr, prefix_len: u32) {
        let mut trie: LpmTrie<_, Addr, u8> =
            LpmTrie::try_from(self.ebpf.map_mut(name).expect("LPM map")).expect("LPM trie");
        trie.insert(&lpm_key(addr, prefix_len), 1, 0)
            .unwrap_or_else(|e| panic!("insert into {name}: {}", bpf::chain(&e)));
    }

    fn block(&mut self, addr: impl Into<IpAddr>, prefix_len: u32) {
        self.list(maps::BLOCKLIST, addr.into(), prefix_len);
    }

    fn allow(&mut self, addr: impl Into<IpAddr>, prefix_len: u32) {
        self.list(maps::ALLOWLIST, addr.into(), prefix_len);
    }

    fn counts(&self) -> GuardCounts {
        GuardCounts::read(&self.ebpf).unwrap_or_else(|e| panic!("GUARD_COUNTERS: {e}"))
    }

    /// Runs the guard on `frame`: its verdict, and the one counter that
    /// counted it (the test fails unless exactly one slot moved, by one
    /// packet and the frame's length in bytes).
    fn run(&self, frame: &[u8]) -> (Verdict, GuardCounter) {
        let before = self.counts();
        let verdict = bpf::run_once(self.program(), frame).expect("BPF_PROG_TEST_RUN");
        let delta = self.counts().since(&before);
        let moved: Vec<GuardCounter> = GuardCounter::ALL
            .into_iter()
            .filter(|c| delta.get(*c).packets != 0 || delta.get(*c).bytes != 0)
            .collect();
        assert_eq!(moved.len(), 1, "one counter per frame, got {delta:?} for {frame:02x?}");
        let count = delta.get(moved[0]);
        assert_eq!(
            (count.packets, count.bytes),
            (1, frame.len() as u64),
            "{:?} counted {count:?} for a {}-byte frame",
            moved[0],
            frame.len()
        );
        (verdict, moved[0])
    }

    /// Asserts the outcome of `frame`: dropped or passed as the counter says.
    #[track_caller]
    fn expect(&self, frame: &[u8], counter: GuardCounter) {
        let verdict = if counter.dropped() {
            Verdict::Drop
        } else {
            Verdict::Pass
        };
        assert_eq!(self.run(frame), (verdict, counter), "frame {frame:02x?}");
    }

    fn source(&self, addr: IpAddr) -> Option<SourceState> {
        let map: HashMap<_, Addr, SourceState> =
            HashMap::try_from(self.ebpf.map(maps::SOURCES).expect("SOURCES")).expect("hash map");
        map.get(&addr_of(addr), 0).ok()
    }
}

fn lpm_key(addr: IpAddr, prefix_len: u32) -> Key<Addr> {
    Key::new(prefix_bits(addr, prefix_len), addr_of(addr))
}

/// SYNs limited to a burst of `burst` (refilling one per second, nothing
/// within a test), no packet limit.
fn syn_limit(burst: u64) -> GuardConfig {
    GuardConfig {
        syn: Bucket::new(1, burst),
        ..GuardConfig::default()
    }
}

fn syn4() -> Vec<u8> {
    frame::syn_frame(SRC4.into(), DST4.into(), 40_000, 443)
}

fn tcp4(flags: u8) -> Vec<u8> {
    frame::tcp(SRC4.into(), DST4.into(), 40_000, 443, flags)
}

fn tcp6(flags: u8) -> Vec<u8> {
    frame::tcp(SRC6.into(), DST6.into(), 40_000, 443, flags)
}

/// Ethernet + IPv4 (as built by `ip`) around `payload`.
fn v4_frame(ip: &Ipv4, payload: &[u8]) -> Vec<u8> {
    frame::ethernet(&[], ETH_IPV4, &ip.build(payload))
}

/// Ethernet + IPv6 whose first next-header is `next` around `payload`.
fn v6_frame(next: u8, payload: &[u8]) -> Vec<u8> {
    frame::ethernet(&[], ETH_IPV6, &frame::ipv6(SRC6, DST6, next, payload))
}

/// An IPv6 frame whose header chain is `kinds` (in order) and then `l4` (TCP).
fn v6_chain(kinds: &[u8], l4: &[u8]) -> Vec<u8> {
    let mut payload = l4.to_vec();
    let mut next = PROTO_TCP;
    for kind in kinds.iter().rev() {
        payload = frame::ipv6_ext(*kind, next, 0, &payload);
        next = *kind;
    }
    v6_frame(next, &payload)
}

/// Sends `syn` twice under a SYN burst of 1: the second is dropped only if
/// the guard found the TCP header (and so the SYN flag).
#[track_caller]
fn assert_l4_found(syn: &[u8]) {
    let mut guard = Guard::new();
    guard.configure(syn_limit(1));
    guard.expect(syn, GuardCounter::Passed);
    guard.expect(syn, GuardCounter::SynRate);
}

/// The opposite: without an L4 header to read, SYN limits never apply.
#[track_caller]
fn assert_no_l4(frame: &[u8]) {
    let mut guard = Guard::new();
    guard.configure(syn_limit(1));
    guard.expect(frame, GuardCounter::Passed);
    guard.expect(frame, GuardCounter::Passed);
}

/// Every map of the object, and whether it pins it by name.
const MAPS: [(&str, bool); 10] = [
    (maps::BLOCKLIST, true),
    (maps::ALLOWLIST, true),
    (maps::GUARD_CONFIG, false),
    (maps::SOURCES, true),
    (maps::GUARD_COUNTERS, true),
    (maps::CPU_MAP, false),
    (maps::REDIRECT_CPUS, false),
    (maps::STEER_LISTENERS, false),
    (maps::STEER_SOCKETS, false),
    (maps::STEER_COUNTERS, true),
];

/// The embedded object loads with aya, creates every map (pinning the
/// pinned ones by name, and only those), both programs pass the verifier
/// (the guard in `Guard::new`), and the guard attaches to a veth in native
/// and in generic mode.
#[test]
fn the_object_has_every_map_and_both_programs_verify_and_the_guard_attaches() {
    // Declared first, dropped last.
    let pair = NetnsPair::new();
    let mut guard = Guard::new();
    for (name, pinned) in MAPS {
        assert!(guard.ebpf.map(name).is_some(), "map {name} is missing from the object");
        assert_eq!(guard.pins.path().join(name).exists(), pinned, "pinning of map {name}");
    }
    let Some(Program::SkReuseport(steer)) = guard.ebpf.program_mut(programs::STEER) else {
        panic!("the object has no SK_REUSEPORT program {}", programs::STEER);
    };
    steer
        .load()
        .unwrap_or_else(|e| panic!("the steering program fails the verifier: {}", bpf::chain(&e)));
    let Some(Program::Xdp(program)) = guard.ebpf.program_mut(programs::GUARD) else {
        panic!("the object has no XDP program {}", programs::GUARD);
    };
    pair.gateway().run(|| {
        for mode in [XdpMode::Driver, XdpMode::Skb] {
            let link = program
                .attach(&pair.gateway_if, mode)
                .unwrap_or_else(|e| panic!("attaching the guard in {mode:?} mode: {}", bpf::chain(&e)));
            program.detach(link).expect("detaching the guard");
        }
    });
}

/// The guard's "shorter than an Ethernet header" branch cannot be run here:
/// BPF_PROG_TEST_RUN refuses XDP input under 14 bytes (kernel 6.18 also
/// behind metadata), and an Ethernet device never delivers such a frame
/// (AF_PACKET refuses to send one). The verifier proves that branch reads
/// nothing out of bounds; this checks the boundary the kernel allows.
#[test]
fn a_bare_ethernet_header_is_malformed_ip_or_passes_as_non_ip() {
    let guard = Guard::new();
    let whole = syn4();
    guard.expect(&whole[..bpf::MIN_FRAME], GuardCounter::Malformed);
    guard.expect(&frame::ethernet(&[], ETH_ARP, &[]), GuardCounter::NotIp);
    assert!(bpf::run_once(guard.program(), &whole[..bpf::MIN_FRAME - 1]).is_err());
}

#[test]
fn non_ip_frames_pass_unchecked() {
    let mut guard = Guard::new();
    guard.configure(GuardConfig {
        packets: Bucket::new(1, 1),
        ..GuardConfig::default()
    });
    let arp = frame::ethernet(&[], ETH_ARP, &[0u8; 28]);
    for _ in 0..3 {
        guard.expect(&arp, GuardCounter::NotIp);
    }
}

#[test]
fn vlan_and_qinq_tags_are_looked_through_up_to_two() {
    let mut guard = Guard::new();
    guard.block(SRC4, 32);
    let ip = Ipv4::new(SRC4, DST4, PROTO_TCP).build(&tcp4(frame::TCP_SYN));
    guard.expect(
        &frame::ethernet(&[(ETH_VLAN, 7)], ETH_IPV4, &ip),
        GuardCounter::Blocklisted,
    );
    guard.expect(
        &frame::ethernet(&[(ETH_QINQ, 7), (ETH_VLAN, 8)], ETH_IPV4, &ip),
        GuardCounter::Blocklisted,
    );
    let ip6 = frame::ipv6(SRC6, DST6, PROTO_TCP, &tcp6(frame::TCP_SYN));
    guard.block(SRC6, 128);
    guard.expect(
        &frame::ethernet(&[(ETH_QINQ, 7), (ETH_VLAN, 8)], ETH_IPV6, &ip6),
        GuardCounter::Blocklisted,
    );
    // A third tag is deeper than the guard looks: not IP as far as it knows.
    guard.expect(
        &frame::ethernet(&[(ETH_QINQ, 7), (ETH_VLAN, 8), (ETH_VLAN, 9)], ETH_IPV4, &ip),
        GuardCounter::NotIp,
    );
    // A frame that ends inside a tag is a truncated header.
    let tagged = frame::ethernet(&[(ETH_VLAN, 7)], ETH_IPV4, &ip);
    guard.expect(&tagged[..16], GuardCounter::Malformed);
}

#[test]
fn broken_ipv4_headers_are_dropped_as_malformed() {
    let guard = Guard::new();
    let good = syn4();
    guard.expect(&good, GuardCounter::Passed);
    // Fewer than 20 bytes of IPv4 header.
    for cut in [14, 15, 20, 33] {
        guard.expect(&good[..cut], GuardCounter::Malformed);
    }
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut bad = good.clone();
        f(&mut bad);
        bad
    };
    // Version 6 in an IPv4 ethertype.
    guard.expect(&with(&|b| b[14] = 0x65), GuardCounter::Malformed);
    // IHL below 5.
    for ihl in [0u8, 4] {
        guard.expect(&with(&|b| b[14] = 0x40 | ihl), GuardCounter::Malformed);
    }
    // IHL 15 (60 bytes) in a frame holding 20 + 20.
    let short = frame::ethernet(&[], ETH_IPV4, &Ipv4::new(SRC4, DST4, PROTO_TCP).build(&[0u8; 8]));
    let mut ihl_past_end = short.clone();
    ihl_past_end[14] = 0x4f;
    guard.expect(&ihl_past_end, GuardCounter::Malformed);
    // Total length smaller than the header.
    guard.expect(
        &with(&|b| b[16..18].copy_from_slice(&19u16.to_be_bytes())),
        GuardCounter::Malformed,
    );
}

#[test]
fn ipv4_options_are_skipped_to_find_the_tcp_header() {
    let mut ip = Ipv4::new(SRC4, DST4, PROTO_TCP);
    // Router alert (4 bytes), then NOP padding: IHL 7.
    ip.options = vec![0x94, 0x04, 0, 0, 1, 1, 1, 0];
    assert_l4_found(&v4_frame(&ip, &tcp4(frame::TCP_SYN)));
    // The same header with an ACK: not a new connection, never SYN-limited.
    let mut guard = Guard::new();
    guard.configure(syn_limit(1));
    let ack = v4_frame(&ip, &tcp4(frame::TCP_SYN | TCP_ACK));
    for _ in 0..3 {
        guard.expect(&ack, GuardCounter::Passed);
    }
}

#[test]
fn ipv4_fragments_carry_tcp_only_in_the_first() {
    let mut first = Ipv4::new(SRC4, DST4, PROTO_TCP);
    first.more_fragments = true;
    assert_l4_found(&v4_frame(&first, &tcp4(frame::TCP_SYN)));
    // A non-first fragment: its payload is not a TCP header, even when it
    // looks like a truncated one (4 bytes) or like a SYN.
    let mut later = Ipv4::new(SRC4, DST4, PROTO_TCP);
    later.fragment_offset = 185;
    assert_no_l4(&v4_frame(&later, &tcp4(frame::TCP_SYN)));
    assert_no_l4(&v4_frame(&later, &[0x9c, 0x40, 0x01, 0xbb]));
    // Address rules still apply to it.
    let mut guard = Guard::new();
    guard.block(SRC4, 32);
    guard.expect(&v4_frame(&later, &[0u8; 8]), GuardCounter::Blocklisted);
}

#[test]
fn truncated_tcp_headers_are_dropped_as_malformed() {
    let guard = Guard::new();
    let ip = Ipv4::new(SRC4, DST4, PROTO_TCP);
    let tcp = tcp4(frame::TCP_SYN);
    for len in [0, 4, 13] {
        guard.expect(&v4_frame(&ip, &tcp[..len]), GuardCounter::Malformed);
    }
    // 14 bytes hold everything up to the flags: enough.
    guard.expect(&v4_frame(&ip, &tcp[..14]), GuardCounter::Passed);
    let tcp6 = tcp6(frame::TCP_SYN);
    guard.expect(&v6_frame(PROTO_TCP, &tcp6[..13]), GuardCounter::Malformed);
    guard.expect(&v6_chain(&[frame::EXT_DEST_OPTS], &tcp6[..10]), GuardCounter::Malformed);
}

#[test]
fn broken_ipv6_headers_are_dropped_as_malformed() {
    let guard = Guard::new();
    let good = v6_frame(PROTO_TCP, &tcp6(frame::TCP_SYN));
    guard.expect(&good, GuardCounter::Passed);
    for cut in [14, 20, 53] {
        guard.expect(&good[..cut], GuardCounter::Malformed);
    }
    let mut version4 = good.clone();
    version4[14] = 0x40;
    guard.expect(&version4, GuardCounter::Malformed);
}

/// Every IPv6 extension header kind the guard walks.
const EXT_KINDS: [u8; 5] = [
    frame::EXT_HOP_BY_HOP,
    frame::EXT_ROUTING,
    frame::EXT_DEST_OPTS,
    frame::EXT_FRAGMENT,
    frame::EXT_AUTH,
];

#[test]
fn every_ipv6_extension_header_kind_is_walked_to_the_tcp_header() {
    let syn = tcp6(frame::TCP_SYN);
    for kind in EXT_KINDS {
        assert_l4_found(&v6_chain(&[kind], &syn));
    }
    assert_l4_found(&v6_chain(
        &[
            frame::EXT_HOP_BY_HOP,
            frame::EXT_DEST_OPTS,
            frame::EXT_ROUTING,
            frame::EXT_FRAGMENT,
            frame::EXT_AUTH,
        ],
        &syn,
    ));
}

#[test]
fn ipv6_without_an_l4_header_is_judged_on_addresses_and_rate_alone() {
    let syn = tcp6(frame::TCP_SYN);
    // "No next header".
    assert_no_l4(&v6_frame(frame::EXT_NO_NEXT, &syn));
    // A non-first fragment.
    assert_no_l4(&v6_frame(
        frame::EXT_FRAGMENT,
        &frame::ipv6_ext(frame::EXT_FRAGMENT, PROTO_TCP, 185, &syn),
    ));
    let mut guard = Guard::new();
    guard.block(SRC6, 64);
    guard.expect(&v6_frame(frame::EXT_NO_NEXT, &[]), GuardCounter::Blocklisted);
}

/// The contract walks at most 6 extension headers: a TCP header after the
/// sixth is still found, one after a seventh is not looked for.
#[test]
fn ipv6_chains_are_walked_six_headers_deep_and_no_further() {
    let syn = tcp6(frame::TCP_SYN);
    let six = [
        frame::EXT_HOP_BY_HOP,
        frame::EXT_DEST_OPTS,
        frame::EXT_ROUTING,
        frame::EXT_ROUTING,
        frame::EXT_AUTH,
        frame::EXT_DEST_OPTS,
    ];
    assert_l4_found(&v6_chain(&six, &syn));
    let mut seven = six.to_vec();
    seven.push(frame::EXT_DEST_OPTS);
    assert_no_l4(&v6_chain(&seven, &syn));
}

#[test]
fn truncated_ipv6_extension_headers_are_dropped_as_malformed() {
    let guard = Guard::new();
    let syn = tcp6(frame::TCP_SYN);
    for kind in EXT_KINDS {
        let whole = v6_chain(&[kind], &syn);
        // Cut inside the extension header (it starts at byte 54).
        for cut in [55, 58] {
            guard.expect(&whole[..cut], GuardCounter::Malformed);
        }
    }
    // A header whose length field says 16 bytes when 8 are there.
    let mut long = frame::ipv6_ext(frame::EXT_DEST_OPTS, frame::EXT_NO_NEXT, 0, &[]);
    long[1] = 1;
    guard.expect(&v6_frame(frame::EXT_DEST_OPTS, &long), GuardCounter::Malformed);
}

#[test]
fn blocklisted_sources_are_dropped_and_others_pass() {
    let mut guard = Guard::new();
    guard.block(Ipv4Addr::new(192, 0, 2, 0), 24);
    guard.block(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0), 48);
    guard.expect(&syn4(), GuardCounter::Blocklisted);
    guard.expect(
        &frame::udp_frame(SRC4.into(), DST4.into(), 5353, 53, b"q"),
        GuardCounter::Blocklisted,
    );
    guard.expect(
        &frame::syn_frame(SRC6.into(), DST6.into(), 40_000, 443),
        GuardCounter::Blocklisted,
    );
    guard.expect(
        &frame::syn_frame(Ipv4Addr::new(192, 0, 3, 1).into(), DST4.into(), 40_000, 443),
        GuardCounter::Passed,
    );
    guard.expect(
        &frame::syn_frame(
            Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 10).into(),
            DST6.into(),
            40_000,
            443,
        ),
        GuardCounter::Passed,
    );
    // Dropped by address before any per-source state is kept.
    assert_eq!(guard.source(SRC4.into()), None);
}

#[test]
fn an_allowlisted_source_inside_a_blocklisted_cidr_passes_without_limits() {
    let mut guard = Guard::new();
    guard.configure(GuardConfig {
        syn: Bucket::new(1, 1),
        packets: Bucket::new(1, 1),
        ..GuardConfig::default()
    });
    guard.block(Ipv4Addr::new(192, 0, 2, 0), 24);
    guard.allow(SRC4, 32);
    for _ in 0..3 {
        guard.expect(&syn4(), GuardCounter::Allowlisted);
    }
    guard.expect(
        &frame::syn_frame(Ipv4Addr::new(192, 0, 2, 11).into(), DST4.into(), 40_000, 443),
        GuardCounter::Blocklisted,
    );
    assert_eq!(guard.source(SRC4.into()), None, "allowlisted sources are not tracked");
}

#[test]
fn the_syn_after_the_burst_is_dropped_and_other_packets_and_sources_are_not() {
    let mut guard = Guard::new();
    let burst = 3;
    guard.configure(syn_limit(burst));
    for _ in 0..burst {
        guard.expect(&syn4(), GuardCounter::Passed);
    }
    guard.expect(&syn4(), GuardCounter::SynRate);
    let ack = frame::tcp_frame(SRC4.into(), DST4.into(), 40_000, 443, TCP_ACK);
    guard.expect(&ack, GuardCounter::Passed);
    let other = frame::syn_frame(Ipv4Addr::new(192, 0, 2, 99).into(), DST4.into(), 40_000, 443);
    guard.expect(&other, GuardCounter::Passed);
    let state = guard.source(SRC4.into()).expect("the source is tracked");
    assert_eq!((state.packets, state.dropped), (burst + 2, 1), "{state:?}");
    assert_eq!(state.bytes, (burst + 1) * syn4().len() as u64 + ack.len() as u64);
}

#[test]
fn the_packet_after_the_packet_burst_is_dropped() {
    let mut guard = Guard::new();
    let burst = 5;
    guard.configure(GuardConfig {
        packets: Bucket::new(1, burst),
        ..GuardConfig::default()
    });
    let udp = frame::udp_frame(SRC6.into(), DST6.into(), 5353, 53, b"query");
    for _ in 0..burst {
        guard.expect(&udp, GuardCounter::Passed);
    }
    guard.expect(&udp, GuardCounter::PacketRate);
    guard.expect(&udp, GuardCounter::PacketRate);
    let state = guard.source(SRC6.into()).expect("the source is tracked");
    assert_eq!((state.packets, state.dropped), (burst + 2, 2), "{state:?}");
}

#[test]
fn a_source_refills_its_syn_bucket_at_its_rate() {
    let mut guard = Guard::new();
    // 20 per second, burst 1: one new token every 50 ms.
    guard.configure(GuardConfig {
        syn: Bucket::new(20, 1),
        ..GuardConfig::default()
    });
    guard.expect(&syn4(), GuardCounter::Passed);
    guard.expect(&syn4(), GuardCounter::SynRate);
    std::thread::sleep(std::time::Duration::from_millis(120));
    guard.expect(&syn4(), GuardCounter::Passed);
}

#[test]
fn passed_packets_go_to_a_redirect_cpu_when_the_redirect_is_on() {
    let mut guard = Guard::new();
    guard.configure(GuardConfig {
        flags: GUARD_CPU_REDIRECT,
        redirect_cpus: 1,
        ..GuardConfig::default()
    });
    // REDIRECT_CPUS[0] is CPU 0, whose CPU_MAP entry is still empty: the
    // redirect fails and the packet passes here.
    guard.expect(&syn4(), GuardCounter::Passed);
    let mut cpus: CpuMap<_> = CpuMap::try_from(guard.ebpf.map_mut(maps::CPU_MAP).expect("CPU_MAP")).expect("CPU map");
    cpus.set(0, 256, None, 0).expect("CPU_MAP[0]");
    assert_eq!(guard.run(&syn4()), (Verdict::Redirect, GuardCounter::Redirected));
    // Dropping still comes first.
    guard.block(SRC4, 32);
    guard.expect(&syn4(), GuardCounter::Blocklisted);
}
