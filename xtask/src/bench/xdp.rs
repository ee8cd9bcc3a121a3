//! `cargo xtask bench xdp`: what the XDP guard saves over the earliest
//! nftables drop, in a namespace pair (tests' `NetnsPair`: client ns ↔
//! gateway ns over a veth). Root only.
//!
//! Frames come from the live-frames traffic generator (trafficgen, run with
//! BPF_PROG_TEST_RUN on the client veth, thread pinned to CPU 0), all from
//! `FLOOD_SOURCE`, an address no host answers for. The gateway veth's NAPI
//! runs in its own kernel thread (threaded NAPI) pinned to CPU 1, the
//! gateway's CPU, so the receive side is measured apart from the sender. GRO
//! is on for that veth: a veth takes XDP frames from its peer only with NAPI
//! enabled, which an attached XDP program or GRO does.
//!
//! 1. Drop rate: UDP frames flood the gateway veth while (a) Tollgate runs
//!    its guard in native mode with the source in `ebpf.blocklist` (dropped
//!    frames: the delta of its pinned GUARD_COUNTERS `blocklist` slot), and
//!    (b) Tollgate runs with `ebpf.mode: off` and an nftables rule drops the
//!    source in the netdev ingress hook of the same veth, the earliest hook
//!    nftables has (dropped: the rule's counter). Rounds alternate; the best
//!    of each side counts.
//! 2. Legit load under a SYN flood: wrk (`Connection: close`, so every
//!    request is a new connection and a SYN answered) from the client ns
//!    through Tollgate to an nginx upstream in the gateway ns, without a
//!    flood, then under a paced SYN flood (`trafficgen_syn`, random source
//!    ports) from the blocklisted source with the guard and without it.
//!
//! Numbers go to target/bench/xdp.json, with what the generator sent and
//! what the veth delivered for every flood, so a reader sees whether the
//! sender was the limit.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tollgate_e2e::bpf::{self, frame, FloodLimit, FloodReport, GuardCounts};
use tollgate_e2e::netns::{Netns, NetnsPair, GATEWAY_V4};
use tollgate_ebpf_common::GuardCounter;

use super::nginx::{upstream_conf, write, BODY};
use super::procs::{free_port, http_get, Procs};
use super::wrk::{self, Load};
use super::{measure, nginx, Report, LOAD_CPU, PROXY_CPU};
use crate::cmd;

/// The flooding source: in the client's subnet, assigned nowhere, so the
/// gateway's answers to it (SYN-ACKs without the guard) go unanswered.
const FLOOD_SOURCE: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 66);
/// The flood's UDP destination port (discard: nothing listens).
const FLOOD_PORT: u16 = 9;
/// UDP payload making a 60-byte frame: the minimum Ethernet frame (64 bytes
/// on the wire with the FCS), the usual flood size.
const FLOOD_PAYLOAD: [u8; 18] = [0; 18];
/// SYNs per second of the flood the legit load runs under: more than the
/// kernel alone takes in on one CPU here (about 300k/s, the rest overflows
/// the veth ring), well under what the guard drops.
const SYN_FLOOD_PPS: u64 = 600_000;
/// Where the gateway pins its maps in this bench (removed afterwards).
const PIN_PATH: &str = "/sys/fs/bpf/tollgate-bench-xdp";
/// The nftables table of the comparison rule.
const NFT_TABLE: &str = "tollgate_bench";

pub fn run(quick: bool) -> Result<()> {
    ensure!(cmd::is_root(), "bench xdp needs root: namespaces, XDP and nftables");
    nginx::require()?;
    for tool in ["nft", "ethtool", "nsenter", "wrk"] {
        ensure!(
            cmd::succeeds(Command::new("sh").args(["-c", &format!("command -v {tool}")])),
            "{tool} not found: run `cargo xtask setup`"
        );
    }
    let tollgate = cmd::build_release_gateway()?;
    let trafficgen = fs::read(bpf::TRAFFICGEN_OBJECT)
        .with_context(|| format!("cannot read the traffic generator {}", bpf::TRAFFICGEN_OBJECT))?;
    let (rounds, drop_secs, wrk_secs) = if quick { (2, 2, 3) } else { (5, 3, 10) };

    // Declared before every process so the namespaces go after them.
    let pair = NetnsPair::new();
    let _pins = PinDir::fresh(PIN_PATH)?;
    let bench = Bench::new(&pair, tollgate, trafficgen)?;
    let mut procs = Procs::new("xdp")?;
    let upstream: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    start_upstream(&mut procs, bench.gateway(), upstream)?;

    println!(
        "bench xdp: flood source {FLOOD_SOURCE} from the client ns (generator on CPU {LOAD_CPU}), gateway veth \
         NAPI on CPU {PROXY_CPU}; drop runs {drop_secs} s, best of {rounds}; wrk -c50 close {wrk_secs} s \
         under a {SYN_FLOOD_PPS} SYN/s flood"
    );
    let mut report = Report::new("xdp");
    let mut best: [Option<DropRun>; 2] = [None, None];
    // Each round's own ratio too: on a shared machine the best runs of the
    // two sides may come from quieter moments than each other.
    let mut round_ratios = Vec::new();
    for _ in 0..rounds {
        let mut round = [0.0; 2];
        for (i, side) in [Side::Guard, Side::Nft].into_iter().enumerate() {
            let run = bench.drop_run(side, upstream, Duration::from_secs(drop_secs))?;
            println!("  {run}");
            round[i] = run.dropped_pps();
            if best[i].as_ref().is_none_or(|b| run.dropped_pps() > b.dropped_pps()) {
                best[i] = Some(run);
            }
        }
        round_ratios.push(round[0] / round[1]);
    }
    let [Some(xdp), Some(nft)] = best else {
        unreachable!("rounds > 0")
    };
    for (key, run) in [("xdp", &xdp), ("nft", &nft)] {
        report.number(&format!("{key}_drop_pps"), run.dropped_pps());
        report.number(&format!("{key}_sent_pps"), run.flood.pps());
        report.number(&format!("{key}_delivered_pps"), run.delivered_pps());
    }
    report.number("drop_ratio", xdp.dropped_pps() / nft.dropped_pps());
    round_ratios.sort_by(f64::total_cmp);
    report.number("drop_ratio_round_min", round_ratios[0]);
    report.number("drop_ratio_round_median", round_ratios[round_ratios.len() / 2]);
    report.number("drop_ratio_round_max", round_ratios[round_ratios.len() - 1]);
    report.number("syn_flood_pps", SYN_FLOOD_PPS as f64);

    let load = Load {
        connections: 50,
        seconds: wrk_secs,
        close: true,
        cpu: LOAD_CPU,
    };
    let mut floods = Vec::new();
    for (case, side, flood) in [
        ("no flood", Side::Guard, false),
        ("syn flood", Side::Guard, true),
        ("syn flood", Side::Nothing, true),
    ] {
        let (row, flood) = bench.legit_run(case, side, flood, upstream, &load)?;
        let key = match (flood.is_some(), side) {
            (false, _) => "legit_rps_no_flood".to_owned(),
            (true, Side::Guard) => "legit_rps_under_flood_guard".to_owned(),
            (true, _) => "legit_rps_under_flood_noguard".to_owned(),
        };
        report.number(&key, row.outcome.rps);
        report.number(&format!("{key}_errors"), row.outcome.errors as f64);
        if let Some(flood) = flood {
            let suffix = if side == Side::Guard { "guard" } else { "noguard" };
            report.number(&format!("syn_flood_sent_pps_{suffix}"), flood.sent.pps());
            report.number(&format!("syn_flood_delivered_pps_{suffix}"), flood.delivered_pps());
            floods.push((suffix, flood));
        }
        report.rows.push(row);
    }
    drop(procs);

    println!("\ndrop rate (packets per second; sent = generator, delivered = reached the gateway veth):");
    println!(
        "{:<26} {:>12} {:>12} {:>12}",
        "dropper", "dropped/s", "sent/s", "delivered/s"
    );
    for (name, run) in [("xdp guard (native)", &xdp), ("nftables netdev ingress", &nft)] {
        println!(
            "{name:<26} {:>12.0} {:>12.0} {:>12.0}",
            run.dropped_pps(),
            run.flood.pps(),
            run.delivered_pps()
        );
    }
    println!("\nlegit requests (one connection each) from the client ns:");
    print!("{}", report.table());
    for (suffix, flood) in &floods {
        println!(
            "syn flood ({suffix}): sent {:.0}/s, delivered {:.0}/s, {}",
            flood.sent.pps(),
            flood.delivered_pps(),
            flood.effect
        );
    }
    let n = &report.numbers;
    println!(
        "drop_ratio (xdp/nft, best runs) {} (goal >= 3; single rounds {}..{}, median {}); legit rps under flood: \
         guard {}, no guard {}",
        n["drop_ratio"],
        n["drop_ratio_round_min"],
        n["drop_ratio_round_max"],
        n["drop_ratio_round_median"],
        n["legit_rps_under_flood_guard"],
        n["legit_rps_under_flood_noguard"]
    );
    for (name, run) in [("xdp guard", &xdp), ("nftables", &nft)] {
        if run.delivered_pps() < 0.9 * run.flood.pps() {
            println!("note: {name}: the veth ring overflowed, so the receive CPU was the limit");
        } else {
            println!(
                "note: {name}: everything sent was delivered: the sender was the limit, the drop rate a lower bound"
            );
        }
    }
    let path = report.write()?;
    println!("wrote {}", path.display());
    let baseline = &report.rows[0];
    if baseline.outcome.errors > 0 || baseline.outcome.requests == 0 {
        bail!(
            "legit load without a flood failed ({} requests, {} errors): the numbers mean nothing",
            baseline.outcome.requests,
            baseline.outcome.errors
        );
    }
    Ok(())
}

/// What drops (or does not drop) the flood source in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// Tollgate's XDP guard, native mode, the source blocklisted.
    Guard,
    /// Tollgate with eBPF off and an nftables netdev-ingress drop rule.
    Nft,
    /// Tollgate with eBPF off, nothing else.
    Nothing,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Guard => "guard",
            Side::Nft => "nft",
            Side::Nothing => "no guard",
        }
    }
}

/// One drop-rate run.
struct DropRun {
    side: Side,
    flood: FloodReport,
    dropped: u64,
    delivered: u64,
}

impl DropRun {
    fn dropped_pps(&self) -> f64 {
        self.dropped as f64 / self.flood.elapsed.as_secs_f64()
    }

    fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.flood.elapsed.as_secs_f64()
    }
}

impl std::fmt::Display for DropRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<6} dropped {:>10.0}/s  sent {:>10.0}/s  delivered {:>10.0}/s",
            self.side.name(),
            self.dropped_pps(),
            self.flood.pps(),
            self.delivered_pps()
        )
    }
}

/// A SYN flood that ran beside a legit load.
struct FloodDuringLoad {
    sent: FloodReport,
    delivered: u64,
    /// What the flood did on the gateway side, for the reader.
    effect: String,
}

impl FloodDuringLoad {
    fn delivered_pps(&self) -> f64 {
        self.delivered as f64 / self.sent.elapsed.as_secs_f64()
    }
}

/// The namespace pair with its receive side prepared, and what every run needs.
struct Bench<'a> {
    pair: &'a NetnsPair,
    tollgate: PathBuf,
    trafficgen: Vec<u8>,
    client: bpf::Link,
    gateway_mac: [u8; 6],
}

impl<'a> Bench<'a> {
    fn new(pair: &'a NetnsPair, tollgate: PathBuf, trafficgen: Vec<u8>) -> Result<Bench<'a>> {
        let gw = pair.gateway();
        ns_run(gw, "ethtool", &["-K", &pair.gateway_if, "gro", "on"])?;
        // `ip netns exec` mounts a sysfs of the namespace, where the veth's
        // `threaded` switch is (the host's /sys shows only its own devices).
        cmd::run(Command::new("ip").args([
            "netns",
            "exec",
            gw.name(),
            "sh",
            "-c",
            &format!("echo 1 > /sys/class/net/{}/threaded", pair.gateway_if),
        ]))?;
        // wrk opens thousands of connections a second for ten seconds: with
        // the default 28k ephemeral ports and no TIME_WAIT reuse the client
        // runs out of ports, and the run measures that.
        ns_run(
            pair.client(),
            "sysctl",
            &[
                "-qw",
                "net.ipv4.ip_local_port_range=1024 65535",
                "net.ipv4.tcp_tw_reuse=1",
            ],
        )?;
        let client = bpf::link(pair.client(), &pair.client_if)?;
        let gateway_mac = bpf::link(gw, &pair.gateway_if)?.mac;
        let bench = Bench {
            pair,
            tollgate,
            trafficgen,
            client,
            gateway_mac,
        };
        bench.pin_receive_threads()?;
        Ok(bench)
    }

    fn gateway(&self) -> &Netns {
        self.pair.gateway()
    }

    /// Pins the gateway veth's NAPI threads to the gateway's CPU (checked
    /// before every flood: the kernel makes new ones if NAPI is rebuilt).
    fn pin_receive_threads(&self) -> Result<()> {
        // Thread names are "napi/<dev>-<id>", cut to 15 bytes. Only the
        // gateway veth has threaded NAPI, so a cut name is still unique.
        let name = format!("napi/{}", self.pair.gateway_if);
        let prefix = &name[..name.len().min(15)];
        let mut pinned = 0;
        for entry in fs::read_dir("/proc")?.flatten() {
            let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            if comm.starts_with(prefix) {
                let pid = entry.file_name().to_string_lossy().into_owned();
                cmd::output(Command::new("taskset").args(["-pc", &PROXY_CPU.to_string(), &pid]))?;
                pinned += 1;
            }
        }
        ensure!(
            pinned > 0,
            "no NAPI thread for {} although threaded NAPI is on",
            self.pair.gateway_if
        );
        Ok(())
    }

    /// A frame from the flood source to the gateway, addressed to its veth.
    fn frame(&self, syn_port: Option<u16>) -> Vec<u8> {
        let mut f = match syn_port {
            Some(port) => frame::syn_frame(FLOOD_SOURCE.into(), GATEWAY_V4.into(), 40_000, port),
            None => frame::udp_frame(
                FLOOD_SOURCE.into(),
                GATEWAY_V4.into(),
                40_000,
                FLOOD_PORT,
                &FLOOD_PAYLOAD,
            ),
        };
        frame::set_macs(&mut f, self.gateway_mac, self.client.mac);
        f
    }

    /// Floods from the client ns on a thread pinned to the load CPU.
    fn flood(
        &self,
        program: &'static str,
        frame: Vec<u8>,
        limit: FloodLimit,
    ) -> thread::JoinHandle<Result<FloodReport>> {
        let object = self.trafficgen.clone();
        let ifindex = self.client.ifindex;
        self.pair.client().spawn(move || {
            bpf::pin_current_thread(LOAD_CPU as usize)?;
            let generator = bpf::Generator::new(&object, program).context("trafficgen")?;
            Ok(generator.flood(&frame, ifindex, limit)?)
        })
    }

    /// Frames the client veth handed to the gateway veth so far.
    fn delivered(&self) -> Result<u64> {
        let stats = ns_output(self.pair.client(), "ethtool", &["-S", &self.pair.client_if])?;
        Ok(xdp_xmit_total(&stats))
    }

    /// Starts Tollgate in the gateway ns on `listen`, the eBPF section for `side`.
    fn start_tollgate(&self, side: Side, listen: SocketAddr, upstream: SocketAddr) -> Result<Procs> {
        let mut procs = Procs::new(&format!("xdp-{}", side.name().replace(' ', "-")))?;
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let ebpf = match side {
            Side::Guard => format!(
                "{{mode: native, interfaces: [{}], pin_path: \"{PIN_PATH}\", blocklist: [\"{FLOOD_SOURCE}/32\"], \
                 steering: false}}",
                self.pair.gateway_if
            ),
            Side::Nft | Side::Nothing => "{mode: off}".to_owned(),
        };
        let config = procs.dir().join("tollgate.yaml");
        write(
            &config,
            &format!(
                "runtime: {{workers: 1}}\n\
                 admin: {{address: \"{admin}\"}}\n\
                 access_log: {{path: \"off\"}}\n\
                 ebpf: {ebpf}\n\
                 listeners: [{{name: http, address: \"{listen}\"}}]\n\
                 hosts: [{{name: all, domains: [\"*\"], routes: [{{name: all, match: {{prefix: \"/\"}}, proxy: {{cluster: up}}}}]}}]\n\
                 clusters: [{{name: up, endpoints: [\"{upstream}\"]}}]\n"
            ),
        )?;
        let config = config.to_str().context("non-UTF-8 path")?;
        let tollgate = self.tollgate.to_str().context("non-UTF-8 path")?;
        spawn_in(
            &mut procs,
            self.gateway(),
            "tollgate",
            PROXY_CPU,
            &[tollgate, "run", "--config", config],
        )?;
        self.gateway().run(|| procs.wait_listening("tollgate", listen))?;
        if side == Side::Guard {
            self.wait_native_xdp(&procs)?;
        }
        let response = self.pair.client().run(|| http_get(listen, "/", &[]))?;
        if response.status != 200 || response.body != BODY {
            bail!(
                "tollgate on {listen} answered {} {:?}, not 200 {BODY:?}\n{}",
                response.status,
                response.body,
                procs.log_tail("tollgate")
            );
        }
        Ok(procs)
    }

    /// Waits until the guard is attached to the gateway veth in driver mode.
    fn wait_native_xdp(&self, procs: &Procs) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let link = ns_output(
                self.gateway(),
                "ip",
                &["-d", "link", "show", "dev", &self.pair.gateway_if],
            )?;
            if link.contains("prog/xdp ") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the guard is not attached to {} in native mode after 10 s:\n{link}\n{}",
                    self.pair.gateway_if,
                    procs.log_tail("tollgate")
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn drop_run(&self, side: Side, upstream: SocketAddr, duration: Duration) -> Result<DropRun> {
        let listen = SocketAddr::from((GATEWAY_V4, free_port()?));
        let mut procs = self.start_tollgate(side, listen, upstream)?;
        let nft = (side == Side::Nft)
            .then(|| NftRule::add(self.gateway(), &self.pair.gateway_if))
            .transpose()?;
        self.pin_receive_threads()?;
        let dropped_before = self.dropped(side, nft.as_ref())?;
        let delivered_before = self.delivered()?;
        let flood = self
            .flood(bpf_program::TX, self.frame(None), FloodLimit { duration, rate: None })
            .join()
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??;
        // The receive thread may still be draining the veth ring.
        thread::sleep(Duration::from_millis(100));
        let dropped = self.dropped(side, nft.as_ref())? - dropped_before;
        let delivered = self.delivered()? - delivered_before;
        procs.check_running()?;
        Ok(DropRun {
            side,
            flood,
            dropped,
            delivered,
        })
    }

    /// Frames dropped so far for the flood source by `side`'s dropper.
    fn dropped(&self, side: Side, nft: Option<&NftRule>) -> Result<u64> {
        match (side, nft) {
            (Side::Guard, _) => Ok(guard_counts()?.get(GuardCounter::Blocklisted).packets),
            (Side::Nft, Some(rule)) => rule.packets(),
            _ => bail!("no dropper for {}", side.name()),
        }
    }

    /// wrk through Tollgate (`side` decides the guard), with or without a SYN flood beside it.
    fn legit_run(
        &self,
        case: &'static str,
        side: Side,
        flood: bool,
        upstream: SocketAddr,
        load: &Load,
    ) -> Result<(super::Row, Option<FloodDuringLoad>)> {
        let listen = SocketAddr::from((GATEWAY_V4, free_port()?));
        let mut procs = self.start_tollgate(side, listen, upstream)?;
        self.pin_receive_threads()?;
        let url = format!("http://{listen}/");
        let side_name = side.name();
        let mut sent = None;
        let counts_before = (side == Side::Guard).then(guard_counts).transpose()?;
        let tcp_before = tcp_ext(self.gateway())?;
        let delivered_before = self.delivered()?;
        let row = measure(&mut procs, case, side_name, || {
            let handle = flood.then(|| {
                let limit = FloodLimit {
                    // Starts first and ends after wrk: wrk never runs without it.
                    duration: Duration::from_secs(u64::from(load.seconds) + 1),
                    rate: Some(SYN_FLOOD_PPS),
                };
                self.flood(bpf_program::SYN, self.frame(Some(listen.port())), limit)
            });
            if handle.is_some() {
                thread::sleep(Duration::from_millis(300));
            }
            let outcome = self.pair.client().run(|| wrk::run(&url, load));
            if let Some(handle) = handle {
                sent = Some(
                    handle
                        .join()
                        .map_err(|_| anyhow::anyhow!("the flood thread panicked"))??,
                );
            }
            outcome
        })?;
        let delivered = self.delivered()? - delivered_before;
        let flood = match sent {
            None => None,
            Some(sent) => {
                let tcp = tcp_ext(self.gateway())?;
                let cookies = tcp.0 - tcp_before.0;
                let overflows = tcp.1 - tcp_before.1;
                let effect = match counts_before {
                    Some(before) => format!(
                        "guard dropped {} (blocklist), SYN cookies sent {cookies}",
                        guard_counts()?.since(&before).get(GuardCounter::Blocklisted).packets
                    ),
                    None => format!("SYN cookies sent {cookies}, listen overflows {overflows}"),
                };
                Some(FloodDuringLoad {
                    sent,
                    delivered,
                    effect,
                })
            }
        };
        Ok((row, flood))
    }
}

/// Program names in the trafficgen object.
mod bpf_program {
    pub const TX: &str = "trafficgen_tx";
    pub const SYN: &str = "trafficgen_syn";
}

fn guard_counts() -> Result<GuardCounts> {
    GuardCounts::read_pinned(Path::new(PIN_PATH)).map_err(anyhow::Error::msg)
}

/// (SyncookiesSent, ListenOverflows) of the namespace's TCP.
fn tcp_ext(ns: &Netns) -> Result<(u64, u64)> {
    let netstat = ns.run(|| fs::read_to_string("/proc/thread-self/net/netstat"))?;
    Ok((
        tcp_ext_field(&netstat, "SyncookiesSent")?,
        tcp_ext_field(&netstat, "ListenOverflows")?,
    ))
}

/// A `TcpExt` counter of /proc/net/netstat (a line of names, then one of values).
fn tcp_ext_field(netstat: &str, name: &str) -> Result<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        bail!("no TcpExt lines in /proc/net/netstat");
    };
    let at = names
        .split_whitespace()
        .position(|n| n == name)
        .with_context(|| format!("no {name} in TcpExt"))?;
    values
        .split_whitespace()
        .nth(at)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("bad {name} value in TcpExt"))
}

/// Frames a veth passed to its peer as XDP frames: the sum of its
/// `tx_queue_<n>_xdp_xmit` in `ethtool -S` (not the `_errors` ones).
fn xdp_xmit_total(stats: &str) -> u64 {
    stats
        .lines()
        .filter_map(|l| l.trim().split_once(": "))
        .filter(|(k, _)| k.starts_with("tx_queue_") && k.ends_with("_xdp_xmit"))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// The packet count of the one counter in `nft -j list table` output.
fn nft_counter(json: &str) -> Result<u64> {
    let value: serde_json::Value = serde_json::from_str(json).context("nft -j output")?;
    let counters: Vec<u64> = value["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| item["rule"]["expr"].as_array())
        .flatten()
        .filter_map(|expr| expr["counter"]["packets"].as_u64())
        .collect();
    ensure!(counters.len() == 1, "expected one counter in {json}");
    Ok(counters[0])
}

/// The nftables comparison: a netdev-family table whose ingress chain on the
/// gateway veth drops the flood source, with a counter. Deleted on drop.
struct NftRule<'a> {
    ns: &'a Netns,
}

impl<'a> NftRule<'a> {
    fn add(ns: &'a Netns, dev: &str) -> Result<NftRule<'a>> {
        let rules = format!(
            "table netdev {NFT_TABLE} {{\n  chain ingress {{\n    type filter hook ingress device \"{dev}\" \
             priority -500; policy accept;\n    ip saddr {FLOOD_SOURCE} counter drop\n  }}\n}}\n"
        );
        let mut child = ns
            .command("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("cannot run nft")?;
        std::io::Write::write_all(child.stdin.as_mut().context("nft stdin")?, rules.as_bytes())?;
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "nft -f: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(NftRule { ns })
    }

    fn packets(&self) -> Result<u64> {
        nft_counter(&ns_output(
            self.ns,
            "nft",
            &["-j", "list", "table", "netdev", NFT_TABLE],
        )?)
    }
}

impl Drop for NftRule<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .command("nft")
            .args(["delete", "table", "netdev", NFT_TABLE])
            .output();
    }
}

/// The bench's pin directory: emptied before (a previous run's pins would
/// carry its counters and lists) and removed after.
struct PinDir(PathBuf);

impl PinDir {
    fn fresh(path: &str) -> Result<PinDir> {
        let dir = PinDir(PathBuf::from(path));
        dir.remove()?;
        Ok(dir)
    }

    fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.0) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", self.0.display()))
            }
            _ => Ok(()),
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            eprintln!("{e:#}");
        }
    }
}

/// Starts `words` as bench process `name` inside `ns`, pinned to `cpu`:
/// `taskset -c <cpu> nsenter --net=<ns> -- <words>`, started from this
/// (long-lived) thread, since a child dies with the thread that forked it
/// (PR_SET_PDEATHSIG) and a thread inside the namespace would end first.
fn spawn_in(procs: &mut Procs, ns: &Netns, name: &str, cpu: u32, words: &[&str]) -> Result<()> {
    let nsenter = ns.nsenter_words();
    let mut args: Vec<&str> = nsenter[1..].iter().map(String::as_str).collect();
    args.extend_from_slice(words);
    procs.spawn(name, cpu, Path::new(&nsenter[0]), &args, None)
}

/// The bench's nginx upstream (`upstream_conf`, pinned to the load CPU) on
/// `addr` in `ns`, started from this thread for the reason `spawn_in` gives.
fn start_upstream(procs: &mut Procs, ns: &Netns, addr: SocketAddr) -> Result<()> {
    let conf = upstream_conf(procs.dir(), addr);
    nginx::spawn_nginx(procs, "upstream", LOAD_CPU, &conf, &ns.nsenter_words(), None)?;
    ns.run(|| procs.wait_listening("upstream", addr))
}

fn ns_output(ns: &Netns, program: &str, args: &[&str]) -> Result<String> {
    cmd::output(ns.command(program).args(args))
}

fn ns_run(ns: &Netns, program: &str, args: &[&str]) -> Result<()> {
    cmd::run(ns.command(program).args(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rule_counter_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "netdev", "name": "tollgate_bench", "handle": 1}}, {"chain": {"family": "netdev", "table": "tollgate_bench", "name": "ingress", "handle": 1, "type": "filter", "hook": "ingress", "prio": -500, "policy": "accept"}}, {"rule": {"family": "netdev", "table": "tollgate_bench", "chain": "ingress", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "10.200.0.66"}}, {"counter": {"packets": 4242, "bytes": 195132}}, {"drop": null}]}}]}"#;
        assert_eq!(nft_counter(json).unwrap(), 4242);
        assert!(nft_counter(r#"{"nftables": []}"#).is_err());
    }

    #[test]
    fn sums_xdp_xmit_over_queues_without_the_errors() {
        let stats = "NIC statistics:\n     peer_ifindex: 2\n     rx_queue_0_xdp_packets: 7\n     \
                     tx_queue_0_xdp_xmit: 100\n     tx_queue_0_xdp_xmit_errors: 5\n     tx_queue_1_xdp_xmit: 20\n";
        assert_eq!(xdp_xmit_total(stats), 120);
    }

    #[test]
    fn reads_tcp_ext_counters_by_name() {
        let netstat = "TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows\nTcpExt: 17 3 2\n\
                       IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(tcp_ext_field(netstat, "SyncookiesSent").unwrap(), 17);
        assert_eq!(tcp_ext_field(netstat, "ListenOverflows").unwrap(), 2);
        assert!(tcp_ext_field(netstat, "Nope").is_err());
    }
}
