//! The eBPF loader (gateway/src/ebpf) against the kernel, root only: in the
//! gateway namespace of a harness `NetnsPair`, it loads the embedded object,
//! attaches the guard in native mode to the pair's veth, fills the lists,
//! registers a listener for steering and sees a connection steered; a reload
//! moves the guard to generic mode, onto a second interface (`lo`) and off
//! again, and rewrites the lists with the same program ids; the pinned maps
//! (in a private bpffs) are read back through their pins at every step,
//! survive the stop, and one that no longer fits the config is recreated.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::path::Path;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Map, MapData, MapInfo, PerCpuArray};
use tollgate::config::{Cidr, EbpfMode, EbpfSettings};
use tollgate::ebpf::{object::guard_object, Ebpf, WorkerCpus};
use tollgate::listener::BoundListener;
use tollgate_e2e::bpf::PrivateBpffs;
use tollgate_e2e::netns::{Netns, NetnsPair};
use tollgate_ebpf_common::{ip_of, maps, prefix_bits, SteerCounter};

/// The second interface the guard is moved onto: the namespace's own
/// loopback, which takes XDP in generic mode.
const SECOND_IF: &str = "lo";

/// How the kernel reports XDP on `dev` in `netns`: "xdp" (native),
/// "xdpgeneric", or None.
fn xdp_on(netns: &Netns, dev: &str) -> Option<String> {
    let shown = netns.exec("ip", &["-o", "link", "show", "dev", dev]);
    shown
        .split_whitespace()
        .find(|word| word.starts_with("xdp"))
        .map(str::to_owned)
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|text| text.parse().unwrap()).collect()
}

/// The prefixes a pinned trie holds, read through its pin.
fn pinned_list(dir: &Path, name: &str) -> BTreeSet<String> {
    let data = MapData::from_pin(dir.join(name)).unwrap_or_else(|e| panic!("opening the pinned {name}: {e}"));
    let trie: LpmTrie<MapData, [u8; 16], u8> = LpmTrie::try_from(Map::LpmTrie(data)).expect("an LPM trie");
    trie.keys()
        .map(|key| {
            let key = key.expect("reading a key");
            let ip = ip_of(&key.data());
            let mapping = prefix_bits(ip, 0);
            format!("{ip}/{}", key.prefix_len() - mapping)
        })
        .collect()
}

fn set(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Connections the pinned STEER_COUNTERS say were steered, over all CPUs.
fn steered(dir: &Path) -> u64 {
    let data = MapData::from_pin(dir.join(maps::STEER_COUNTERS)).expect("opening STEER_COUNTERS");
    let counters: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data)).expect("a per-CPU array");
    counters
        .get(&(SteerCounter::Steered as u32), 0)
        .expect("reading STEER_COUNTERS")
        .iter()
        .sum()
}

/// `workers` reuseport sockets on one loopback port.
fn listener_sockets(workers: usize) -> BoundListener {
    let first = tollgate::listener::bind_reuseport("127.0.0.1:0".parse().unwrap(), 128).expect("binding");
    let address = first.local_addr().unwrap();
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(tollgate::listener::bind_reuseport(address, 128).expect("binding the group"));
    }
    BoundListener {
        name: "http".into(),
        address,
        sockets,
    }
}

#[test]
fn loader_attaches_syncs_reloads_and_keeps_pins() {
    // Declared first, dropped last: after the pins and everything in it.
    let pair = NetnsPair::new();
    let pins = PrivateBpffs::mount().expect("mounting a private bpffs");
    // A directory below the mount: the loader creates it, as it does its
    // configured pin_path.
    let pin_dir = pins.path().join("tollgate");
    pair.gateway().run(|| body(pair.gateway(), &pair.gateway_if, &pin_dir));
}

fn body(netns: &Netns, veth: &str, pin_dir: &Path) {
    let cpus: Vec<usize> = (0..std::thread::available_parallelism().map_or(1, usize::from).min(4)).collect();
    let mut settings = EbpfSettings {
        mode: EbpfMode::Native,
        interfaces: vec![veth.into()],
        pin_path: pin_dir.to_path_buf(),
        blocklist: cidrs(&["192.0.2.0/24", "2001:db8::/32"]),
        allowlist: cidrs(&["198.51.100.7"]),
        ..EbpfSettings::default()
    };
    let listeners = [listener_sockets(cpus.len())];
    let workers = WorkerCpus {
        cpus: cpus.clone(),
        pinned: true,
    };
    let mut ebpf = Ebpf::start(guard_object(), &settings, workers.clone(), &listeners).expect("eBPF starts as root");

    // Native on the veth, lists as configured, steering on.
    assert_eq!(ebpf.attached(), vec![(veth.to_string(), "native")]);
    assert_eq!(xdp_on(netns, veth).as_deref(), Some("xdp"), "native XDP per the kernel");
    assert_eq!(xdp_on(netns, SECOND_IF), None);
    assert_eq!(
        pinned_list(pin_dir, maps::BLOCKLIST),
        set(&["192.0.2.0/24", "2001:db8::/32"])
    );
    assert_eq!(pinned_list(pin_dir, maps::ALLOWLIST), set(&["198.51.100.7/32"]));
    assert_eq!(ebpf.steering(), Ok(()));
    let ids = ebpf.program_ids();
    assert!(ids.0.is_some() && ids.1.is_some(), "both programs loaded: {ids:?}");

    // A connection to the registered listener is steered by the program.
    // connect() returns after the handshake, so the SYN's selection is counted by then.
    let before = steered(pin_dir);
    let mut connections = Vec::new();
    while steered(pin_dir) == before {
        assert!(connections.len() < 50, "50 connections, none steered");
        connections.push(TcpStream::connect(listeners[0].address).expect("connecting to the listener"));
    }
    let metrics = tollgate::ebpf::metrics();
    assert!(metrics.guard_active && metrics.steering_active, "{metrics:?}");
    let steer = metrics.steer.expect("steering counters are read");
    assert!(steer[SteerCounter::Steered as usize].1 > before, "{steer:?}");

    // Reload: generic mode, other lists, rate limits; the programs stay.
    settings.mode = EbpfMode::Generic;
    settings.blocklist = cidrs(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.9"]);
    settings.allowlist = Vec::new();
    settings.rate_limit.syn_per_second = 50;
    settings.rate_limit.syn_burst = 50;
    ebpf.apply(&settings);
    assert_eq!(ebpf.attached(), vec![(veth.to_string(), "generic")]);
    assert_eq!(xdp_on(netns, veth).as_deref(), Some("xdpgeneric"));
    assert_eq!(
        pinned_list(pin_dir, maps::BLOCKLIST),
        set(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.9/32"])
    );
    assert!(pinned_list(pin_dir, maps::ALLOWLIST).is_empty());
    assert_eq!(ebpf.program_ids(), ids, "a reload keeps the loaded programs");

    // Another interface, then none: attach and detach follow the config.
    settings.interfaces = vec![veth.into(), SECOND_IF.into()];
    ebpf.apply(&settings);
    assert_eq!(xdp_on(netns, SECOND_IF).as_deref(), Some("xdpgeneric"));
    settings.interfaces.clear();
    ebpf.apply(&settings);
    assert_eq!((xdp_on(netns, veth), xdp_on(netns, SECOND_IF)), (None, None));
    assert!(!tollgate::ebpf::metrics().guard_active);
    settings.interfaces = vec![veth.into()];
    ebpf.apply(&settings);
    assert_eq!(xdp_on(netns, veth).as_deref(), Some("xdpgeneric"));

    // Stop: detached, programs gone, pins kept.
    ebpf.stop();
    assert_eq!(xdp_on(netns, veth), None, "stop detaches the guard");
    assert!(
        tollgate::ebpf::metrics().steer.is_none(),
        "the scraper let go of the maps"
    );
    for name in [
        maps::BLOCKLIST,
        maps::ALLOWLIST,
        maps::SOURCES,
        maps::GUARD_COUNTERS,
        maps::STEER_COUNTERS,
    ] {
        assert!(pin_dir.join(name).exists(), "{name} stays pinned");
    }
    assert_eq!(
        pinned_list(pin_dir, maps::BLOCKLIST),
        set(&["10.0.0.0/8", "2001:db8::/32", "203.0.113.9/32"]),
        "the pinned blocklist outlives the process's programs"
    );

    // A restart with another tracked_sources finds SOURCES of the old size:
    // it is unpinned and created again; the counters are reused.
    let counters_id = MapInfo::from_pin(pin_dir.join(maps::GUARD_COUNTERS)).unwrap().id();
    settings.tracked_sources = 1024;
    let listeners = [listener_sockets(cpus.len())];
    let again = Ebpf::start(guard_object(), &settings, workers, &listeners).expect("eBPF starts again");
    let sources = MapInfo::from_pin(pin_dir.join(maps::SOURCES)).expect("SOURCES pinned again");
    assert_eq!(sources.max_entries(), 1024);
    assert_eq!(
        MapInfo::from_pin(pin_dir.join(maps::GUARD_COUNTERS)).unwrap().id(),
        counters_id,
        "a compatible pin is reused"
    );
    assert_ne!(again.program_ids(), ids, "starting again loads new programs");
    again.stop();
    drop(connections);
}
