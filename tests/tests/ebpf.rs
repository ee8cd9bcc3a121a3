//! The XDP guard and connection steering end to end, in real network
//! namespaces (`NetnsPair`): the gateway runs in the gateway namespace with the
//! guard on its veth end, clients connect from the client namespace from
//! chosen source addresses. Covered: a blocklisted source dropped and counted
//! while another is served (native and generic mode, IPv4 and IPv6); a SYN
//! flood from one source rate-limited while another source is served;
//! allowlist bypass; blocklist changes on reload without reloading the
//! program; pinned maps surviving a restart; steering (every connection
//! handled by the worker pinned to the CPU that received it) and its control
//! case; CPU-map redirect in native mode; the fallback when BPF is refused;
//! `tollgate check`'s report.
//!
//! Root only (CI runs them as root): `NetnsPair::new` panics with the reason
//! otherwise. Every test uses its own namespaces and its own bpffs pin
//! directory, and removes both.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tollgate_e2e::client::{request, Conn, IO_TIMEOUT};
use tollgate_e2e::gateway::{check, check_in, tollgate_bin};
use tollgate_e2e::metrics;
use tollgate_e2e::netns::{NetnsPair, CLIENT_V4, CLIENT_V6};
use tollgate_e2e::{wait, Gateway, GatewayOptions};

/// How long a connect from a source the guard drops is given before it
/// counts as dropped (a served connect on a veth takes well under 1 ms).
const DROPPED_AFTER: Duration = Duration::from_millis(700);
/// How long a config change or a counter is waited for.
const APPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The pinned maps (file names under `ebpf.pin_path`).
const PINNED: [&str; 5] = ["BLOCKLIST", "ALLOWLIST", "SOURCES", "GUARD_COUNTERS", "STEER_COUNTERS"];

/// A bpffs directory for one test's pinned maps, removed when dropped.
struct PinDir(PathBuf);

impl PinDir {
    fn new(tag: &str) -> PinDir {
        let path = PathBuf::from(format!("/sys/fs/bpf/tge-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        PinDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != io::ErrorKind::NotFound {
                eprintln!("removing {}: {e}", self.0.display());
            }
        }
    }
}

/// A config serving "ok" on the gateway's IPv4 and IPv6 veth addresses with
/// two pinned workers; `ebpf` is the body of the `ebpf:` flow mapping.
fn config(pin: &PinDir, ebpf: &str) -> String {
    r#"
runtime: {workers: 2}
access_log: {path: "off"}
listeners:
  - {name: http, address: "10.200.0.1:${http}"}
  - {name: http6, address: "[fd00:7467::1]:${http6}"}
hosts:
  - {name: all, domains: ["*"], routes: [{name: all, direct_response: {body: "ok"}}]}
ebpf: {pin_path: "PIN", EBPF}
"#
    .replace("PIN", &pin.path().display().to_string())
    .replace("EBPF", ebpf)
}

/// `mode: <mode>, interfaces: [<gateway veth>]`.
fn guard(pair: &NetnsPair, mode: &str) -> String {
    format!("mode: {mode}, interfaces: [{}]", pair.gateway_if)
}

/// A YAML flow list of quoted addresses.
fn list(addrs: &[IpAddr]) -> String {
    let q: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!("[{}]", q.join(", "))
}

fn options(pair: &NetnsPair) -> GatewayOptions {
    GatewayOptions {
        netns: Some(pair.gateway().clone()),
        ..Default::default()
    }
}

fn start(pair: &NetnsPair, yaml: &str) -> Gateway {
    Gateway::start_with(yaml, options(pair))
}

/// GET / from source `src` on the calling thread (which must already be in
/// the client namespace); the body.
fn get_here(src: IpAddr, dst: SocketAddr, connect_timeout: Duration) -> io::Result<String> {
    get_here_port(src, dst, connect_timeout).map(|(_, body)| body)
}

/// `get_here`, also returning the connection's local (client) port.
fn get_here_port(src: IpAddr, dst: SocketAddr, connect_timeout: Duration) -> io::Result<(u16, String)> {
    let s = socket2::Socket::new(socket2::Domain::for_address(dst), socket2::Type::STREAM, None)?;
    s.bind(&SocketAddr::new(src, 0).into())?;
    s.connect_timeout(&dst.into(), connect_timeout)?;
    let s: TcpStream = s.into();
    let port = s.local_addr()?.port();
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut c = Conn::from_stream(s);
    let r = c.exchange(&request("GET", "guard.test", "/", &[("Connection", "close")], None))?;
    Ok((port, r.body_str()))
}

/// GET / from the client namespace, source `src`.
fn get_from(pair: &NetnsPair, src: impl Into<IpAddr>, dst: SocketAddr) -> io::Result<String> {
    let src = src.into();
    pair.client().run(move || get_here(src, dst, IO_TIMEOUT))
}

fn assert_served(pair: &NetnsPair, src: impl Into<IpAddr>, dst: SocketAddr, gw: &Gateway) {
    let src = src.into();
    match get_from(pair, src, dst) {
        Ok(body) => assert_eq!(body, "ok", "from {src}"),
        Err(e) => panic!("{src} → {dst} not served: {e}; stderr:\n{}", gw.stderr()),
    }
}

/// Whether a connect from `src` times out (its SYNs vanish) rather than
/// succeeding or being refused.
fn dropped(pair: &NetnsPair, src: impl Into<IpAddr>, dst: SocketAddr) -> bool {
    match pair.client().connect_from(src.into(), dst, DROPPED_AFTER) {
        Ok(_) => false,
        Err(e) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => true,
        Err(e) => panic!("connect from a dropped source should time out, got: {e}"),
    }
}

/// `tollgate_xdp_packets_total` summed over the samples with `reason`.
fn xdp_packets(gw: &Gateway, reason: &str) -> f64 {
    metrics::sum(&gw.metrics(), "tollgate_xdp_packets_total", &[("reason", reason)]).unwrap_or(0.0)
}

/// `tollgate_ebpf_active{feature}`; panics when the gauge is missing.
fn active(gw: &Gateway, feature: &str) -> f64 {
    let text = gw.metrics();
    metrics::sum(&text, "tollgate_ebpf_active", &[("feature", feature)])
        .unwrap_or_else(|| panic!("no tollgate_ebpf_active{{feature=\"{feature}\"}} in /metrics:\n{text}"))
}

/// Waits until `tollgate_xdp_packets_total{reason}` reaches `at_least`;
/// returns the last value read.
fn wait_xdp(gw: &Gateway, reason: &str, at_least: f64) -> f64 {
    let mut last = 0.0;
    wait::until(APPLY_TIMEOUT, || {
        last = xdp_packets(gw, reason);
        last >= at_least
    });
    last
}

/// The XDP attachment of the gateway's veth end: (mode, program id), mode 1
/// native (driver), 2 generic (skb); None when nothing is attached.
fn xdp_attachment(pair: &NetnsPair) -> Option<(u64, u64)> {
    let out = pair
        .gateway()
        .exec("ip", &["-j", "link", "show", "dev", &pair.gateway_if]);
    let links: serde_json::Value = serde_json::from_str(&out).expect("ip -j output is JSON");
    let xdp = links.get(0)?.get("xdp")?;
    Some((xdp.get("mode")?.as_u64()?, xdp.get("prog")?.get("id")?.as_u64()?))
}

/// Map id of every pinned map under `pin`, in `PINNED` order.
fn pinned_map_ids(pin: &PinDir) -> Vec<u64> {
    PINNED
        .iter()
        .map(|name| {
            let path = pin.path().join(name);
            let out = Command::new("bpftool")
                .args(["-j", "map", "show", "pinned"])
                .arg(&path)
                .output()
                .expect("running bpftool (cargo xtask setup installs it)");
            assert!(
                out.status.success(),
                "bpftool map show pinned {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("bpftool -j output is JSON");
            v["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("no map id for {}: {v}", path.display()))
        })
        .collect()
}

fn blocklisted_source_dropped_while_others_served(mode: &str, expect_mode: u64) {
    let pair = NetnsPair::new();
    let pin = PinDir::new(&format!("block-{mode}"));
    let blocked = [IpAddr::V4(CLIENT_V4[0]), IpAddr::V6(CLIENT_V6[0])];
    let gw = start(
        &pair,
        &config(&pin, &format!("{}, blocklist: {}", guard(&pair, mode), list(&blocked))),
    );
    let (v4, v6) = (gw.addr("http"), gw.addr("http6"));
    assert_eq!(
        xdp_attachment(&pair).map(|(m, _)| m),
        Some(expect_mode),
        "guard not attached in {mode} mode; stderr:\n{}",
        gw.stderr()
    );
    assert_eq!(active(&gw, "xdp_guard"), 1.0);
    assert_served(&pair, CLIENT_V4[1], v4, &gw);
    assert_served(&pair, CLIENT_V6[1], v6, &gw);
    assert!(dropped(&pair, CLIENT_V4[0], v4), "blocklisted IPv4 source connected");
    assert!(dropped(&pair, CLIENT_V6[0], v6), "blocklisted IPv6 source connected");
    // The blocked sources were still served on other addresses: the drop is
    // per source, not per listener.
    assert_served(&pair, CLIENT_V4[2], v4, &gw);
    let blocked_count = wait_xdp(&gw, "blocklist", 2.0);
    assert!(blocked_count >= 2.0, "two dropped SYNs, counted {blocked_count}");
    let text = gw.metrics();
    let drops = metrics::sum(
        &text,
        "tollgate_xdp_packets_total",
        &[("reason", "blocklist"), ("action", "drop")],
    );
    assert!(
        drops.is_some_and(|d| d >= 2.0),
        "blocklist drops carry action=\"drop\":\n{text}"
    );
    let passed = metrics::sum(&text, "tollgate_xdp_packets_total", &[("action", "pass")]).unwrap_or(0.0);
    assert!(
        passed >= 6.0,
        "three served connections passed at least 6 packets, counted {passed}"
    );
    let bytes = metrics::sum(&text, "tollgate_xdp_bytes_total", &[("reason", "blocklist")]).unwrap_or(0.0);
    assert!(bytes >= 2.0 * 54.0, "dropped bytes counted: {bytes}");
    // Both listeners (an IPv4 and an IPv6 address) are known to the steering
    // program: their keys, read from the listening socket, match the ones
    // the gateway registered, so all three served connections were steered.
    let steer = |result| metrics::sum(&text, "tollgate_steer_connections_total", &[("result", result)]).unwrap_or(0.0);
    assert_eq!(steer("unknown_listener"), 0.0, "a listener key did not match:\n{text}");
    assert!(steer("steered") >= 3.0, "IPv4 and IPv6 connections steered:\n{text}");
}

#[test]
fn blocklisted_source_dropped_native() {
    blocklisted_source_dropped_while_others_served("native", 1);
}

#[test]
fn blocklisted_source_dropped_generic() {
    blocklisted_source_dropped_while_others_served("generic", 2);
}

#[test]
fn syn_flood_from_one_source_is_limited_while_another_is_served() {
    const RATE: u32 = 5;
    const ATTEMPTS: usize = 200;
    let pair = NetnsPair::new();
    let pin = PinDir::new("flood");
    let gw = start(
        &pair,
        &config(
            &pin,
            &format!(
                "{}, rate_limit: {{syn_per_second: {RATE}, syn_burst: {RATE}}}",
                guard(&pair, "auto")
            ),
        ),
    );
    let dst = gw.addr("http");
    let good = CLIENT_V4[1];
    // Four new connections, 200 ms apart: within the limit, during the flood.
    let well_behaved = pair.client().spawn(move || {
        (0..4)
            .map(|i| {
                std::thread::sleep(Duration::from_millis(if i == 0 { 20 } else { 200 }));
                get_here(good.into(), dst, Duration::from_secs(2))
            })
            .collect::<Vec<_>>()
    });
    let bad = IpAddr::V4(CLIENT_V4[0]);
    let (connected, elapsed) = pair.client().run(move || {
        let started = Instant::now();
        let mut socks = Vec::with_capacity(ATTEMPTS);
        // Spread over about a second, so the well-behaved client's requests
        // fall inside the flood.
        while socks.len() < ATTEMPTS && started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(4));
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            s.set_nonblocking(true).expect("nonblocking");
            s.bind(&SocketAddr::new(bad, 0).into()).expect("bind the flood source");
            match s.connect(&dst.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("flood connect: {e}"),
            }
            socks.push(s);
        }
        let elapsed = started.elapsed();
        // Passed SYNs are answered within a millisecond. SYNs retransmitted
        // meanwhile draw on the same bucket, so the bound below still holds.
        std::thread::sleep(Duration::from_millis(500));
        let connected = socks.iter().filter(|s| s.peer_addr().is_ok()).count();
        (connected, elapsed + Duration::from_millis(500))
    });
    let results = well_behaved.join().expect("well-behaved client");
    for (i, r) in results.iter().enumerate() {
        assert!(
            r.as_ref().is_ok_and(|b| b == "ok"),
            "well-behaved request {i} during the flood: {r:?}; stderr:\n{}",
            gw.stderr()
        );
    }
    // The bucket starts full (burst) and refills for as long as SYNs (the
    // retransmitted ones too) are sent; 3 tokens of slack for the buckets'
    // lock-free updates.
    let allowed = RATE as f64 * (1.0 + elapsed.as_secs_f64()) + 3.0;
    assert!(
        connected >= 1 && connected as f64 <= allowed,
        "{connected} of {ATTEMPTS} flood connections got through in {elapsed:?}; a burst of {RATE} at {RATE}/s allows {allowed:.0}"
    );
    let limited = wait_xdp(&gw, "syn_rate", (ATTEMPTS - connected) as f64);
    assert!(
        limited >= (ATTEMPTS - connected) as f64,
        "{} flood SYNs were dropped but syn_rate counts {limited}",
        ATTEMPTS - connected
    );
    println!("flood: {connected} of {ATTEMPTS} connected in {elapsed:?}; syn_rate drops counted: {limited}");
    // The flooder shows up among the top talkers (refreshed at most every 5 s).
    let mut text = String::new();
    let listed = wait::until(Duration::from_secs(8), || {
        text = gw.metrics();
        metrics::samples(&text, "tollgate_xdp_top_source_packets")
            .iter()
            .any(|(labels, v)| {
                *v >= ATTEMPTS as f64
                    && labels
                        .iter()
                        .any(|(k, s)| k == "source" && s.ends_with(&CLIENT_V4[0].to_string()))
            })
    });
    assert!(
        listed,
        "the flooding source is not a top talker with ≥ {ATTEMPTS} packets:\n{text}"
    );
}

#[test]
fn allowlisted_source_bypasses_blocklist_and_rate_limit() {
    let pair = NetnsPair::new();
    let pin = PinDir::new("allow");
    let gw = start(
        &pair,
        &config(
            &pin,
            &format!(
                "{}, blocklist: [\"10.200.0.0/24\"], allowlist: [\"{}\"], rate_limit: {{syn_per_second: 1, syn_burst: 1}}",
                guard(&pair, "auto"),
                CLIENT_V4[1]
            ),
        ),
    );
    let dst = gw.addr("http");
    assert!(
        dropped(&pair, CLIENT_V4[0], dst),
        "a source in the blocked /24 connected"
    );
    // Ten connections at once: over the 1/s SYN limit, but allowlisted.
    for i in 0..10 {
        match get_from(&pair, CLIENT_V4[1], dst) {
            Ok(body) => assert_eq!(body, "ok"),
            Err(e) => panic!("allowlisted connection {i}: {e}; stderr:\n{}", gw.stderr()),
        }
    }
    assert!(
        wait_xdp(&gw, "allowlisted", 30.0) >= 30.0,
        "10 connections of ≥ 3 packets each"
    );
    assert!(xdp_packets(&gw, "blocklist") >= 1.0);
    assert_eq!(
        xdp_packets(&gw, "syn_rate"),
        0.0,
        "an allowlisted source was rate-limited"
    );
}

#[test]
fn blocklist_changes_apply_at_run_time_without_reloading_the_program() {
    let pair = NetnsPair::new();
    let pin = PinDir::new("reload");
    let yaml = |blocked: &[IpAddr]| config(&pin, &format!("{}, blocklist: {}", guard(&pair, "auto"), list(blocked)));
    let other = IpAddr::V4(CLIENT_V4[2]);
    let mut gw = start(&pair, &yaml(&[other]));
    let dst = gw.addr("http");
    let prog = xdp_attachment(&pair).expect("guard attached").1;
    // An established keep-alive connection from a source that stays allowed.
    let mut established = Conn::from_stream(pair.connect(CLIENT_V4[1], dst).expect("connect"));
    let get = request("GET", "guard.test", "/", &[], None);
    assert_eq!(established.exchange(&get).expect("first request").body_str(), "ok");
    assert_served(&pair, CLIENT_V4[0], dst, &gw);

    gw.reload(&yaml(&[other, IpAddr::V4(CLIENT_V4[0])]));
    assert!(
        wait::until(APPLY_TIMEOUT, || dropped(&pair, CLIENT_V4[0], dst)),
        "the newly blocklisted source still connects; stderr:\n{}",
        gw.stderr()
    );
    assert_eq!(
        established
            .exchange(&get)
            .expect("request on the established connection")
            .body_str(),
        "ok"
    );
    assert_served(&pair, CLIENT_V4[1], dst, &gw);
    assert!(dropped(&pair, other, dst), "an entry kept across the reload was lost");

    // Removing it from the config removes it from the map.
    gw.reload(&yaml(&[other]));
    assert!(
        wait::until(APPLY_TIMEOUT, || {
            let src = IpAddr::V4(CLIENT_V4[0]);
            pair.client()
                .run(move || get_here(src, dst, Duration::from_secs(2)))
                .is_ok()
        }),
        "the source removed from the blocklist is still dropped; stderr:\n{}",
        gw.stderr()
    );
    assert_eq!(
        xdp_attachment(&pair).map(|(_, id)| id),
        Some(prog),
        "reload replaced the XDP program"
    );
    assert_eq!(established.exchange(&get).expect("third request").body_str(), "ok");
}

#[test]
fn pinned_maps_survive_a_restart() {
    let pair = NetnsPair::new();
    let pin = PinDir::new("restart");
    let yaml = config(
        &pin,
        &format!("{}, blocklist: [\"{}\"]", guard(&pair, "auto"), CLIENT_V4[0]),
    );
    let mut first = start(&pair, &yaml);
    assert!(dropped(&pair, CLIENT_V4[0], first.addr("http")));
    assert_served(&pair, CLIENT_V4[1], first.addr("http"), &first);
    let before = wait_xdp(&first, "blocklist", 1.0);
    assert!(before >= 1.0, "no blocklist drop counted");
    let ids = pinned_map_ids(&pin);

    first.signal(libc::SIGTERM);
    let status = first.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status}; stderr:\n{}", first.stderr());
    assert_eq!(
        xdp_attachment(&pair),
        None,
        "XDP still attached after the gateway stopped"
    );
    assert_eq!(pinned_map_ids(&pin), ids, "maps changed while no gateway ran");
    drop(first);

    let second = start(&pair, &yaml);
    assert_eq!(pinned_map_ids(&pin), ids, "the restarted gateway made new maps");
    let resumed = xdp_packets(&second, "blocklist");
    assert!(
        resumed >= before,
        "counters restarted: {resumed} after the restart, {before} before"
    );
    assert!(dropped(&pair, CLIENT_V4[0], second.addr("http")));
    assert!(wait_xdp(&second, "blocklist", before + 1.0) >= before + 1.0);
    assert_served(&pair, CLIENT_V4[1], second.addr("http"), &second);
}

/// Pins the calling thread to `cpu`.
fn pin_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, zeroed is an empty set; CPU_SET and
    // sched_setaffinity(0 = this thread) only read and write that set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity({cpu}): {}", io::Error::last_os_error());
    }
}

/// One connection of the steering tests, from the access log.
#[derive(Debug)]
struct Accepted {
    /// The CPU the client thread was pinned to: its packets, the SYN
    /// included, are received on that CPU.
    sent_on: i64,
    worker: i64,
    worker_cpu: i64,
    /// SO_INCOMING_CPU when the line was written.
    incoming_cpu: i64,
}

/// Opens `per_cpu` connections from a client thread pinned to CPU 0 and as
/// many from one pinned to CPU 1, at the same time, and returns what the
/// access log says about each.
fn connections_by_cpu(pair: &NetnsPair, gw: &Gateway, per_cpu: usize) -> Vec<Accepted> {
    let dst = gw.addr("http");
    let src = IpAddr::V4(CLIENT_V4[3]);
    // Resolve the neighbours (ARP, both ways) first: a SYN that waits for an
    // ARP reply leaves on the CPU that receives the reply, not the sender's.
    let (warm_up, _) = pair
        .client()
        .run(move || get_here_port(src, dst, IO_TIMEOUT))
        .expect("warm-up request");
    let clients: Vec<_> = [0i64, 1]
        .into_iter()
        .map(|cpu| {
            pair.client().spawn(move || {
                pin_thread(cpu as usize);
                (0..per_cpu)
                    .map(|_| get_here_port(src, dst, IO_TIMEOUT))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut cpu_of_port = std::collections::HashMap::new();
    for (cpu, c) in (0i64..).zip(clients) {
        for r in c.join().expect("client thread") {
            let (port, body) = r.expect("request");
            assert_eq!(body, "ok");
            cpu_of_port.insert(port, cpu);
        }
    }
    let prefix = format!("{src}:");
    let ours = || {
        gw.access_log()
            .into_iter()
            .filter(|l| {
                l["client"]
                    .as_str()
                    .is_some_and(|c| c.starts_with(&prefix) && !c.ends_with(&format!(":{warm_up}")))
            })
            .collect::<Vec<_>>()
    };
    wait::until(APPLY_TIMEOUT, || ours().len() >= 2 * per_cpu);
    let lines = ours();
    assert_eq!(lines.len(), 2 * per_cpu, "access-log lines of our connections");
    lines
        .iter()
        .map(|l| {
            let field = |k: &str| {
                l[k].as_i64()
                    .unwrap_or_else(|| panic!("access-log line without a numeric {k}: {l}"))
            };
            let client: SocketAddr = l["client"].as_str().unwrap().parse().expect("client address");
            Accepted {
                sent_on: *cpu_of_port
                    .get(&client.port())
                    .unwrap_or_else(|| panic!("access-log line of an unknown connection: {l}")),
                worker: field("worker"),
                worker_cpu: field("worker_cpu"),
                incoming_cpu: field("incoming_cpu"),
            }
        })
        .collect()
}

/// Steering with the guard attached in generic mode. A veth has one receive
/// queue, and in native mode its packets are processed by that queue's NAPI
/// poll, which runs on whichever CPU scheduled it first: under load from two
/// CPUs, one flow's packets are received on both. A NIC's RSS keeps a flow
/// on one queue and CPU; generic mode gives the same here, since each packet
/// is received on the CPU that sent it.
fn steering_config(pair: &NetnsPair, pin: &PinDir, steering: bool) -> String {
    config(pin, &format!("{}, steering: {steering}", guard(pair, "generic")))
        .replace("access_log: {path: \"off\"}", "access_log: {path: stdout}")
}

fn two_cpus() -> bool {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n < 2 {
        println!("SKIPPED: steering needs 2 CPUs, this process may use {n}");
    }
    n >= 2
}

#[test]
fn steering_hands_each_connection_to_the_worker_on_its_cpu() {
    if !two_cpus() {
        return;
    }
    let pair = NetnsPair::new();
    let pin = PinDir::new("steer");
    let gw = start(&pair, &steering_config(&pair, &pin, true));
    assert_eq!(active(&gw, "steering"), 1.0, "stderr:\n{}", gw.stderr());
    let lines = connections_by_cpu(&pair, &gw, 20);
    for a in &lines {
        assert!(
            a.worker_cpu == a.sent_on && a.incoming_cpu == a.worker_cpu,
            "worker {} on CPU {} got a connection sent on CPU {} (SO_INCOMING_CPU {}): {lines:?}",
            a.worker,
            a.worker_cpu,
            a.sent_on,
            a.incoming_cpu
        );
    }
    let mut workers: Vec<i64> = lines.iter().map(|a| a.worker).collect();
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), 2, "both workers take connections: {lines:?}");
    let text = gw.metrics();
    let steered = metrics::sum(&text, "tollgate_steer_connections_total", &[("result", "steered")]).unwrap_or(0.0);
    assert!(steered >= 40.0, "40 connections steered, counted {steered}:\n{text}");
}

#[test]
fn without_steering_some_connection_lands_on_another_cpu() {
    if !two_cpus() {
        return;
    }
    let pair = NetnsPair::new();
    let pin = PinDir::new("nosteer");
    let gw = start(&pair, &steering_config(&pair, &pin, false));
    assert_eq!(active(&gw, "steering"), 0.0);
    let lines = connections_by_cpu(&pair, &gw, 20);
    // The kernel's hash of the addresses and ports picks either worker
    // whatever the CPU: all 40 matching by chance has probability 2^-40.
    // (SO_INCOMING_CPU cannot show this: once a worker on the other CPU
    // answers, the client's ACKs are sent, and received, on that CPU.)
    assert!(
        lines.iter().any(|a| a.worker_cpu != a.sent_on),
        "kernel balancing matched every CPU; is steering really off? {lines:?}"
    );
}

/// `setpriv` removing the capabilities BPF needs from the bounding set, so
/// the gateway (root, but without them) is refused by the kernel.
fn without_bpf_caps() -> Vec<String> {
    ["setpriv", "--bounding-set", "-bpf,-net_admin,-sys_admin,-perfmon"]
        .map(String::from)
        .to_vec()
}

#[test]
fn without_bpf_privileges_the_gateway_serves_and_says_why() {
    let pair = NetnsPair::new();
    let pin = PinDir::new("fallback");
    let yaml = config(
        &pin,
        &format!("{}, blocklist: [\"{}\"]", guard(&pair, "auto"), CLIENT_V4[0]),
    );
    let gw = Gateway::start_with(
        &yaml,
        GatewayOptions {
            wrapper: without_bpf_caps(),
            ..options(&pair)
        },
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("CapBnd in /proc/<pid>/status");
    // CAP_NET_ADMIN 12, CAP_SYS_ADMIN 21, CAP_PERFMON 38, CAP_BPF 39.
    for cap in [12, 21, 38, 39] {
        assert_eq!(bounding & (1 << cap), 0, "capability {cap} kept: {bounding:x}");
    }
    assert_served(&pair, CLIENT_V4[1], gw.addr("http"), &gw);
    // No guard: even the blocklisted source is served.
    assert_served(&pair, CLIENT_V4[0], gw.addr("http"), &gw);
    assert_eq!(xdp_attachment(&pair), None);
    assert_eq!(active(&gw, "xdp_guard"), 0.0);
    assert_eq!(active(&gw, "steering"), 0.0);
    let stderr = gw.stderr();
    let reasons: Vec<&str> = stderr.lines().filter(|l| l.contains("ebpf unavailable")).collect();
    assert_eq!(reasons.len(), 1, "one line with the reason expected:\n{stderr}");
    assert!(
        reasons[0].contains("without the XDP guard"),
        "the line says what the gateway does instead: {}",
        reasons[0]
    );
}

#[test]
fn check_reports_the_ebpf_features() {
    let pair = NetnsPair::new();
    let pin = PinDir::new("check");
    let yaml = config(&pin, &guard(&pair, "auto"))
        .replace("${http6}", "8081")
        .replace("${http}", "8080");
    let (code, text) = check_in(Some(pair.gateway()), &yaml);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("xdp guard on {}", pair.gateway_if)) && text.contains("steering on"),
        "check names the active features: {text}"
    );
    assert_eq!(xdp_attachment(&pair), None, "check attached the guard");

    let off = yaml.replace("mode: auto", "mode: off");
    let (code, text) = check_in(Some(pair.gateway()), &off);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("ebpf: off"), "{text}");

    // Refused by the kernel: still a valid config, with the reason.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = pair
        .gateway()
        .command("setpriv")
        .args(&without_bpf_caps()[1..])
        .arg(tollgate_bin())
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("running setpriv tollgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("ebpf: off ("),
        "check gives the reason BPF is off: {text}"
    );
}

#[test]
fn check_rejects_an_invalid_cidr_with_its_path() {
    let pin = PinDir::new("cidr");
    let yaml = config(&pin, "mode: auto, blocklist: [\"10.0.0.0/8\", \"10.0.0.0/33\"]")
        .replace("${http6}", "8081")
        .replace("${http}", "8080");
    let (code, text) = check(&yaml);
    assert_ne!(code, Some(0), "an invalid CIDR passed: {text}");
    assert!(
        text.contains("ebpf.blocklist[1]") && text.contains("10.0.0.0/33"),
        "the error names the field and the value: {text}"
    );
}

#[test]
fn cpu_redirect_serves_through_the_cpu_map() {
    let pair = NetnsPair::new();
    let pin = PinDir::new("redirect");
    let gw = start(
        &pair,
        &config(&pin, &format!("{}, cpu_redirect: true", guard(&pair, "native"))),
    );
    let dst = gw.addr("http");
    // Requests with a body: TCP segments carrying data must keep valid
    // checksums through the CPU map (see NetnsPair: tx checksum offload off).
    let body = vec![b'x'; 64 * 1024];
    for i in 0..10 {
        let r = pair.client().run(|| -> io::Result<u16> {
            let s = pair.connect(CLIENT_V4[i % 2], dst)?;
            let mut c = Conn::from_stream(s);
            let req = request("POST", "guard.test", "/", &[("Connection", "close")], Some(&body));
            Ok(c.exchange(&req)?.status)
        });
        match r {
            Ok(status) => assert_eq!(status, 200),
            Err(e) => panic!("request {i} through the CPU redirect: {e}; stderr:\n{}", gw.stderr()),
        }
    }
    // At least SYN, ACK, body, FIN and ACK per connection (a frame may carry
    // several segments' worth of body).
    let redirected = wait_xdp(&gw, "redirected", 50.0);
    assert!(
        redirected >= 50.0,
        "10 connections went through the CPU map, counted {redirected} redirected packets"
    );
    assert_eq!(xdp_packets(&gw, "passed"), 0.0, "packets passed without the redirect");
}
