//! `cargo xtask bench plugins`: what proxy-wasm plugins cost. One Tollgate
//! worker on CPU 1 proxies small keep-alive requests to the nginx upstream
//! (wrk and the upstream on CPU 0, as in `bench proxy`), once per case, each
//! case its own gateway process so no case pays for another's plugins: no
//! plugin, header-rewrite AOT and interpreted, five plugins AOT, and the
//! CPU-heavy test-cpu-hash AOT and interpreted; nginx proxies the same
//! upstream for reference. Runs alternate over all sides, best of two.
//! Then the VM budget: a gateway with 255 workers and 8 plugins under
//! `vm_budget: 64`, its instance count from /metrics and its RSS, beside the
//! same gateway without plugins, with the default budget and with one
//! instance per worker per plugin. Numbers go to target/bench/plugins.json.

use std::collections::HashMap;
use std::fs;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tollgate_e2e::cgroup::CpuCgroup;

use super::nginx::{nginx_http_paths, nginx_main, proxy_conf, start_nginx, write, BODY};
use super::procs::{free_port, http_get, Procs, Response};
use super::wrk::Load;
use super::{measure_http, nginx, proxy_cpu_cap, Report, Row, LOAD_CPU, PROXY_CPU};
use crate::{cmd, plugins};

const ROUNDS: usize = 2;
/// SHA-256 rounds per request in test-cpu-hash: few enough that the
/// interpreter still serves hundreds of requests a second, enough that the
/// hashing, not the proxying, dominates the AOT case.
const HASH_ROUNDS: u32 = 100;
/// Busy share of the proxy CPU, with no proxy loaded, above which the run is
/// flagged as sharing the CPU with other work.
const FOREIGN_CPU_NOTE: f64 = 10.0;
/// Request headers the upstream copies into `x-seen-<name>` response headers,
/// so the pre-flight sees what the plugins sent upstream.
const ECHOED: [&str; 5] = ["x-bench", "x-bench-1", "x-bench-2", "x-bench-3", "x-hash"];
/// Sent by the pre-flight only: the CORS plugin answers it, wrk sends none.
const ORIGIN: &str = "http://bench.test";

const BUDGET_WORKERS: u32 = 255;
const BUDGET_PLUGINS: usize = 8;
const BUDGET: u32 = 64;
/// Per-instance linear memory cap in the budget scenario (the module needs
/// about 1.1 MiB); with `PER_WORKER_MEMORY_BUDGET` only `vm_budget` binds.
const BUDGET_MAX_MEMORY: &str = "4MiB";
/// Room for `BUDGET_WORKERS` × `BUDGET_PLUGINS` instances at `BUDGET_MAX_MEMORY`.
const PER_WORKER_MEMORY_BUDGET: &str = "8GiB";
const INSTANCES_METRIC: &str = "tollgate_plugin_instances";

/// One throughput case: a gateway process with these plugins on its route,
/// and the response headers that prove they ran (a value, or any).
struct Case {
    name: &'static str,
    plugins: Vec<Value>,
    expect: Vec<(&'static str, Option<&'static str>)>,
}

pub fn run(quick: bool, proxy_cpu_percent: Option<u32>) -> Result<()> {
    let modules = Modules::build()?;
    let tollgate = cmd::build_release_gateway()?;
    nginx::require()?;
    let mut report = Report::new("plugins");
    throughput(&tollgate, &modules, quick, proxy_cpu_percent, &mut report)?;
    budget_scenarios(&tollgate, &modules, &mut report)?;
    // Writes the JSON and fails if a kept run had errors: goals are judged only on clean runs.
    report.finish()?;
    let n = &report.numbers;
    let value = |key: &str| n[key].as_f64().unwrap_or(f64::NAN);
    let goals = [
        (
            "rps_one_aot/rps_none >= 0.9",
            "ratio_one_aot",
            value("ratio_one_aot") >= 0.9,
        ),
        (
            "cpu_plugin_aot_over_interp >= 5",
            "cpu_plugin_aot_over_interp",
            value("cpu_plugin_aot_over_interp") >= 5.0,
        ),
        (
            "budget_instances <= 64",
            "budget_instances",
            value("budget_instances") <= f64::from(BUDGET),
        ),
    ];
    for (goal, key, met) in goals {
        println!("goal {goal} ({}): {}", n[key], if met { "met" } else { "NOT met" });
    }
    Ok(())
}

/// The proxied cases and nginx, alternating, best of `ROUNDS` each.
fn throughput(
    tollgate: &Path,
    modules: &Modules,
    quick: bool,
    proxy_cpu_percent: Option<u32>,
    report: &mut Report,
) -> Result<()> {
    let cgroup = proxy_cpu_cap("bench-plugins", proxy_cpu_percent)?;
    let procs_file = cgroup.as_ref().map(CpuCgroup::procs_file);
    let mut procs = Procs::new("plugins")?;
    let dir = procs.dir().to_path_buf();
    let upstream = start_echo_upstream(&mut procs)?;
    let via_nginx: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let conf = proxy_conf(&dir, via_nginx, upstream);
    start_nginx(&mut procs, "nginx", PROXY_CPU, &conf, via_nginx, procs_file.as_deref())?;
    preflight(&procs, "nginx", via_nginx, &[])?;

    let mut sides = vec![("none", "nginx", via_nginx)];
    let mut hashes = HashMap::new();
    for case in cases(modules)? {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let section = (!case.plugins.is_empty()).then(|| json!({ "plugins": case.plugins }));
        let config = gateway_config(listen, admin, upstream, 1, section);
        let name = format!("tollgate-{}", case.name);
        start_gateway(&mut procs, tollgate, &name, &config, listen, procs_file.as_deref())?;
        let response = preflight(&procs, &name, listen, &case.expect)?;
        if let Some(hash) = response.header("x-seen-hash") {
            hashes.insert(case.name, hash.to_owned());
        }
        sides.push((case.name, "tollgate", listen));
    }
    check_hashes(&hashes)?;

    let seconds = if quick { 3 } else { 10 };
    println!(
        "bench plugins: wrk -t1 -c50 -d{seconds}s keep-alive on CPU {LOAD_CPU}, upstream nginx on CPU {LOAD_CPU}, \
         each proxy one worker on CPU {PROXY_CPU}{}, best of {ROUNDS}; test-cpu-hash at {HASH_ROUNDS} rounds",
        proxy_cpu_percent.map_or(String::new(), |p| format!(" capped at {p}%"))
    );
    let load = Load {
        connections: 50,
        seconds,
        close: false,
        cpu: LOAD_CPU,
    };
    // What CPU 0 can drive at all: a proxied run near it is load-bound.
    let direct = measure_http(&mut procs, "direct", "none", upstream, &load)?;
    let ceiling = direct.outcome.rps;
    report.number("rps_direct", ceiling);
    // Nothing of the bench works on CPU 1 during the direct run: what is busy there
    // belongs to other processes, and every proxied number below shares the CPU with them.
    let foreign = direct.proxy_cpu;
    report.number("foreign_proxy_cpu_percent", foreign);
    report.rows.push(direct);
    let mut best: Vec<Option<Row>> = sides.iter().map(|_| None).collect();
    for _ in 0..ROUNDS {
        for (slot, (case, side, addr)) in best.iter_mut().zip(&sides) {
            let row = measure_http(&mut procs, case, side, *addr, &load)?;
            if slot.as_ref().is_none_or(|b| row.outcome.rps > b.outcome.rps) {
                *slot = Some(row);
            }
        }
    }
    drop(procs);
    for row in best.into_iter().flatten() {
        let key = if row.side == "nginx" { "nginx" } else { row.case };
        report.number(&format!("rps_{key}"), row.outcome.rps);
        report.number(&format!("p99_ms_{key}"), row.outcome.p99_ms);
        report.number(&format!("proxy_cpu_percent_{key}"), row.proxy_cpu);
        report.rows.push(row);
    }
    let rps = |key: &str| report.numbers[&format!("rps_{key}")].as_f64().unwrap_or(f64::NAN);
    let none = rps("none");
    let derived = [
        ("ratio_one_aot", rps("one_aot") / none),
        ("ratio_one_interp", rps("one_interp") / none),
        ("ratio_five_aot", rps("five_aot") / none),
        ("ratio_none_over_nginx", none / rps("nginx")),
        ("cpu_plugin_aot_rps", rps("cpu_aot")),
        ("cpu_plugin_interp_rps", rps("cpu_interp")),
        ("cpu_plugin_aot_over_interp", rps("cpu_aot") / rps("cpu_interp")),
        ("cpu_hash_rounds", f64::from(HASH_ROUNDS)),
    ];
    for (key, value) in derived {
        report.number(key, value);
    }
    print!("{}", report.table());
    if foreign > FOREIGN_CPU_NOTE {
        println!(
            "note: CPU {PROXY_CPU} was {foreign:.0}% busy with other processes while no proxy was loaded: \
             the numbers are noisy, compare ratios of one run only"
        );
    }
    for r in report.rows.iter().filter(|r| r.case != "direct") {
        if let Some(note) = r.load_bound_note(Some(ceiling)) {
            println!("{note}");
        }
    }
    Ok(())
}

/// The plugin files `cargo xtask plugins` builds, by package name.
struct Modules(HashMap<String, plugins::Plugin>);

impl Modules {
    fn build() -> Result<Self> {
        Ok(Modules(
            plugins::build()?.into_iter().map(|p| (p.name.clone(), p)).collect(),
        ))
    }

    fn path(&self, package: &str, aot: bool) -> Result<&Path> {
        let plugin = self
            .0
            .get(package)
            .with_context(|| format!("`cargo xtask plugins` built no plugin {package}"))?;
        Ok(if aot { &plugin.aot } else { &plugin.wasm })
    }
}

fn plugin(name: &str, module: &Path, configuration: Value) -> Value {
    json!({"name": name, "module": module, "configuration": configuration})
}

/// header-rewrite setting `x-bench<suffix>` on the request and
/// `x-bench-resp<suffix>` on the response.
fn header_rewrite(modules: &Modules, name: &str, suffix: &str, aot: bool) -> Result<Value> {
    let configuration = json!({
        "request": {"set": {format!("x-bench{suffix}"): "1"}},
        "response": {"set": {format!("x-bench-resp{suffix}"): "1"}},
    });
    Ok(plugin(name, modules.path("header-rewrite", aot)?, configuration))
}

fn cpu_hash(modules: &Modules, aot: bool) -> Result<Value> {
    let mut entry = plugin(
        "cpu-hash",
        modules.path("test-cpu-hash", aot)?,
        json!({ "rounds": HASH_ROUNDS }),
    );
    // Room for a busy shared machine: a watchdog kill would show as errors, not as a number.
    entry["max_call_time"] = json!("1s");
    Ok(entry)
}

fn cases(modules: &Modules) -> Result<Vec<Case>> {
    let one = [("x-seen-bench", Some("1")), ("x-bench-resp", Some("1"))];
    let five = vec![
        header_rewrite(modules, "rewrite-1", "-1", true)?,
        header_rewrite(modules, "rewrite-2", "-2", true)?,
        header_rewrite(modules, "rewrite-3", "-3", true)?,
        plugin("cors", modules.path("cors", true)?, json!({"allow_origins": ["*"]})),
        plugin(
            "rate-limit",
            modules.path("local-rate-limit", true)?,
            json!({"key": "global", "requests": 100_000_000, "window": 60}),
        ),
    ];
    let mut five_expect = vec![
        ("access-control-allow-origin", Some(ORIGIN)),
        ("x-ratelimit-limit", Some("100000000")),
    ];
    for (seen, resp) in [
        ("x-seen-bench-1", "x-bench-resp-1"),
        ("x-seen-bench-2", "x-bench-resp-2"),
        ("x-seen-bench-3", "x-bench-resp-3"),
    ] {
        five_expect.extend([(seen, Some("1")), (resp, Some("1"))]);
    }
    Ok(vec![
        Case {
            name: "none",
            plugins: Vec::new(),
            expect: Vec::new(),
        },
        Case {
            name: "one_aot",
            plugins: vec![header_rewrite(modules, "rewrite", "", true)?],
            expect: one.to_vec(),
        },
        Case {
            name: "one_interp",
            plugins: vec![header_rewrite(modules, "rewrite", "", false)?],
            expect: one.to_vec(),
        },
        Case {
            name: "five_aot",
            plugins: five,
            expect: five_expect,
        },
        Case {
            name: "cpu_aot",
            plugins: vec![cpu_hash(modules, true)?],
            expect: vec![("x-seen-hash", None)],
        },
        Case {
            name: "cpu_interp",
            plugins: vec![cpu_hash(modules, false)?],
            expect: vec![("x-seen-hash", None)],
        },
    ])
}

/// AOT and interpreter must compute the same digest, and it must look like one.
fn check_hashes(hashes: &HashMap<&str, String>) -> Result<()> {
    let (Some(aot), Some(interp)) = (hashes.get("cpu_aot"), hashes.get("cpu_interp")) else {
        bail!("the cpu cases sent no x-hash upstream: {hashes:?}");
    };
    if aot != interp || aot.len() != 64 || !aot.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("test-cpu-hash digests disagree or are malformed: AOT {aot:?}, interpreter {interp:?}");
    }
    Ok(())
}

/// A gateway config (JSON is YAML) with one listener, one catch-all route to
/// `upstream`, and the given `plugins` section.
fn gateway_config(
    listen: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    workers: u32,
    plugins: Option<Value>,
) -> Value {
    let mut config = json!({
        // One worker is pinned inside the CPU 1 mask; 255 workers on two CPUs cannot be.
        "runtime": {"workers": workers.to_string(), "pin_workers": workers == 1},
        "admin": {"address": admin.to_string()},
        "access_log": {"path": "off"},
        "listeners": [{"name": "http", "address": listen.to_string()}],
        "hosts": [{"name": "all", "domains": ["*"], "routes": [
            {"name": "all", "match": {"prefix": "/"}, "proxy": {"cluster": "up"}}
        ]}],
        "clusters": [{"name": "up", "endpoints": [upstream.to_string()]}],
    });
    if let Some(plugins) = plugins {
        config["plugins"] = plugins;
    }
    config
}

fn start_gateway(
    procs: &mut Procs,
    tollgate: &Path,
    name: &str,
    config: &Value,
    listen: SocketAddr,
    cgroup: Option<&Path>,
) -> Result<()> {
    let path = procs.dir().join(format!("{name}.yaml"));
    write(&path, &serde_json::to_string_pretty(config)?)?;
    let arg = path.to_str().context("non-UTF-8 path")?;
    procs.spawn(name, PROXY_CPU, tollgate, &["run", "--config", arg], cgroup)?;
    procs.wait_listening(name, listen)
}

/// Checks that `addr` really proxies, with its plugins: 200, the upstream's
/// body, and every expected response header. Plugin instances may still be
/// starting when the listener opens, so it retries for a few seconds; it
/// fails with the last answer and the process's log.
fn preflight(
    procs: &Procs,
    name: &str,
    addr: SocketAddr,
    expect: &[(&'static str, Option<&'static str>)],
) -> Result<Response> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let problem = match http_get(addr, "/", &[("origin", ORIGIN)]) {
            Ok(response) => match problem(&response, expect) {
                None => return Ok(response),
                Some(problem) => problem,
            },
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() > deadline {
            bail!("{name} on {addr}: {problem}\n{}", procs.log_tail(name));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The 255-worker gateway four ways: without plugins (the baseline RSS),
/// with 8 plugins under `vm_budget: 64`, under the default budget, and with
/// one instance per worker per plugin (what a VM per worker would cost).
fn budget_scenarios(tollgate: &Path, modules: &Modules, report: &mut Report) -> Result<()> {
    let mut procs = Procs::new("plugins-budget")?;
    let upstream = start_echo_upstream(&mut procs)?;
    let eight = (1..=BUDGET_PLUGINS)
        .map(|i| {
            let mut entry = header_rewrite(modules, &format!("rewrite-{i}"), &format!("-{i}"), true)?;
            entry["max_memory"] = json!(BUDGET_MAX_MEMORY);
            Ok(entry)
        })
        .collect::<Result<Vec<Value>>>()?;
    let expect = [("x-bench-resp-1", Some("1")), ("x-bench-resp-8", Some("1"))];
    println!(
        "budget: {BUDGET_WORKERS} workers (unpinned), {BUDGET_PLUGINS} header-rewrite plugins AOT, \
         max_memory {BUDGET_MAX_MEMORY} each"
    );
    let per_worker = BUDGET_WORKERS * BUDGET_PLUGINS as u32;
    let scenarios: [(&str, Option<u32>); 4] = [
        ("budget_none", None),
        ("budget", Some(BUDGET)),
        ("budget_default", Some(0)),
        ("budget_per_worker", Some(per_worker)),
    ];
    for (prefix, vm_budget) in scenarios {
        let listen: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let section =
            vm_budget.map(|b| json!({"vm_budget": b, "vm_memory_budget": PER_WORKER_MEMORY_BUDGET, "plugins": eight}));
        let config = gateway_config(listen, admin, upstream, BUDGET_WORKERS, section);
        let name = format!("tollgate-{prefix}");
        start_gateway(&mut procs, tollgate, &name, &config, listen, None)?;
        let expect: &[_] = if vm_budget.is_some() { &expect } else { &[] };
        preflight(&procs, &name, listen, expect)?;
        let instances = match vm_budget {
            Some(_) => {
                // The admin listener opens after every worker has started.
                procs.wait_listening(&name, admin)?;
                Some(settled_instances(&mut procs, &name, admin)?)
            }
            None => None,
        };
        let rss = rss_mb(procs.pid(&name)?)?;
        let label = vm_budget.map_or("none".to_owned(), |b| b.to_string());
        println!(
            "  vm_budget {label:>4}: {}, RSS {rss:.1} MB",
            instances.map_or("no plugins".to_owned(), |n| format!("{n} plugin instances"))
        );
        if let Some(instances) = instances {
            report.number(&format!("{prefix}_instances"), instances as f64);
        }
        report.number(&format!("{prefix}_rss_mb"), rss);
    }
    report.number("budget_workers", f64::from(BUDGET_WORKERS));
    report.number("budget_plugins", BUDGET_PLUGINS as f64);
    report.number("budget_vm_budget", f64::from(BUDGET));
    Ok(())
}

/// The sum of `tollgate_plugin_instances` once it has stopped changing
/// (instances start in the background): the same non-zero value for 2 s.
fn settled_instances(procs: &mut Procs, name: &str, admin: SocketAddr) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = None;
    let mut since = Instant::now();
    loop {
        procs.check_running()?;
        let response = http_get(admin, "/metrics", &[]).with_context(|| format!("{name} admin on {admin}"))?;
        if response.status != 200 {
            bail!("{name}: GET /metrics answered {}", response.status);
        }
        let sum = metric_sum(&response.body, INSTANCES_METRIC);
        if sum != last {
            last = sum;
            since = Instant::now();
        } else if let Some(n) = sum.filter(|&n| n > 0 && since.elapsed() >= Duration::from_secs(2)) {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!(
                "{name}: {INSTANCES_METRIC} did not settle on a non-zero sum within 60 s (last: {last:?})\n{}",
                procs.log_tail(name)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The sum of every sample of the gauge `name` in Prometheus text, or None
/// when it has no samples. `name_suffix` families do not count.
fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *sum.get_or_insert(0) += value as u64;
    }
    sum
}

fn rss_mb(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    vm_rss_kib(&status)
        .map(|kib| kib as f64 / 1024.0)
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// `VmRSS:   12345 kB` → 12345.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut parts = line.split_whitespace();
    let kib = parts.next()?.parse().ok()?;
    (parts.next() == Some("kB")).then_some(kib)
}

/// Why `response` is not the proxied upstream answer with `expect`ed headers.
fn problem(response: &Response, expect: &[(&str, Option<&str>)]) -> Option<String> {
    if response.status != 200 || response.body != BODY {
        return Some(format!(
            "answered {} {:?}, not 200 {BODY:?}",
            response.status, response.body
        ));
    }
    let missing: Vec<String> = expect
        .iter()
        .filter(|(name, value)| match (response.header(name), value) {
            (Some(got), Some(want)) => got != *want,
            (got, None) => got.is_none(),
            (None, Some(_)) => true,
        })
        .map(|(name, value)| format!("{name}: {}", value.unwrap_or("<any>")))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "response lacks {} (the plugins did not run); headers: {:?}",
            missing.join(", "),
            response.headers
        )
    })
}

/// Starts the echoing upstream on the load CPU; returns its address.
fn start_echo_upstream(procs: &mut Procs) -> Result<SocketAddr> {
    let upstream: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let conf = echo_upstream_conf(procs.dir(), upstream);
    start_nginx(procs, "upstream", LOAD_CPU, &conf, upstream, None)?;
    Ok(upstream)
}

/// The shared 12-byte upstream, plus `x-seen-*` response headers echoing
/// what the plugins sent upstream (nginx adds none when the request lacks one).
fn echo_upstream_conf(dir: &Path, listen: SocketAddr) -> String {
    let echoes: String = ECHOED
        .iter()
        .map(|name| {
            let seen = name.trim_start_matches("x-");
            format!(" add_header x-seen-{seen} $http_{};", name.replace('-', "_"))
        })
        .collect();
    format!(
        "{main}http {{\n  access_log off;\n{paths}  keepalive_requests 10000;\n  server {{\n    listen {listen};\n    \
         location / {{ default_type text/plain;{echoes} return 200 \"hello world\\n\"; }}\n  }}\n}}\n",
        main = nginx_main(dir, "upstream"),
        paths = nginx_http_paths(dir, "upstream"),
    )
}

#[cfg(test)]
mod tests {
    use super::super::procs::parse_response;
    use super::*;

    #[test]
    fn instances_are_summed_over_plugins_and_only_that_family() {
        let text = "# HELP tollgate_plugin_instances Ready instances of each plugin in the running config.\n\
                    # TYPE tollgate_plugin_instances gauge\n\
                    tollgate_plugin_instances{plugin=\"rewrite-1\",mode=\"aot\"} 8\n\
                    tollgate_plugin_instances{plugin=\"rewrite-2\",mode=\"aot\"} 7\n\
                    tollgate_plugin_instances_total 1000\n\
                    tollgate_plugin_memory_bytes{plugin=\"rewrite-1\"} 1114112\n";
        assert_eq!(metric_sum(text, INSTANCES_METRIC), Some(15));
        assert_eq!(metric_sum("tollgate_plugin_instances 3\n", INSTANCES_METRIC), Some(3));
        assert_eq!(
            metric_sum("# TYPE tollgate_plugin_instances gauge\n", INSTANCES_METRIC),
            None
        );
        assert_eq!(
            metric_sum("tollgate_plugin_instances{plugin=\"a\"} x\n", INSTANCES_METRIC),
            None
        );
    }

    #[test]
    fn rss_is_read_in_kib() {
        let status = "Name:\ttollgate\nVmPeak:\t  900000 kB\nVmRSS:\t   51200 kB\nThreads:\t257\n";
        assert_eq!(vm_rss_kib(status), Some(51_200));
        assert_eq!(vm_rss_kib("Name:\ttollgate\n"), None);
        assert_eq!(vm_rss_kib("VmRSS:\t 12 MB\n"), None);
    }

    #[test]
    fn preflight_rejects_errors_and_missing_plugin_headers() {
        let ok = parse_response(
            "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Bench-Resp: 1\r\nx-seen-bench: 1\r\n\r\nhello world\n",
        )
        .unwrap();
        assert_eq!(
            problem(&ok, &[("x-seen-bench", Some("1")), ("x-bench-resp", None)]),
            None
        );
        let wrong = problem(&ok, &[("x-bench-resp", Some("2"))]).unwrap();
        assert!(wrong.contains("x-bench-resp: 2"), "{wrong}");
        assert!(problem(&ok, &[("x-ratelimit-limit", None)]).is_some());
        let failed = parse_response("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(problem(&failed, &[]).unwrap().contains("503"));
    }

    #[test]
    fn hashes_must_agree_and_be_sha256_hex() {
        let digest = "c92be413ea21492513ee90c94ae42bcc8f66585b703f914cc6c927cfa7011d87".to_owned();
        let mut hashes = HashMap::from([("cpu_aot", digest.clone()), ("cpu_interp", digest)]);
        assert!(check_hashes(&hashes).is_ok());
        hashes.insert(
            "cpu_interp",
            "a4642996bf86d3e8fb6dea212c8c2b45eab92e1a27f4bb367c14c704385a7354".into(),
        );
        assert!(check_hashes(&hashes).is_err());
        hashes.insert("cpu_aot", "a4642996".into());
        hashes.insert("cpu_interp", "a4642996".into());
        assert!(check_hashes(&hashes).is_err());
        hashes.remove("cpu_aot");
        assert!(check_hashes(&hashes).is_err());
    }

    #[test]
    fn upstream_echoes_what_plugins_send() {
        let conf = echo_upstream_conf(Path::new("/tmp/b"), ([127, 0, 0, 1], 8080).into());
        assert!(conf.contains("add_header x-seen-bench-2 $http_x_bench_2;"), "{conf}");
        assert!(conf.contains("add_header x-seen-hash $http_x_hash;"), "{conf}");
    }
}
