//! `cargo xtask bench <name>`: side-by-side benchmarks, Tollgate against a peer
//! started and pinned the same way in the same run, because on a shared
//! machine only the ratio means something. The harness (processes, wrk,
//! report) is shared; each bench is one module and one `Which` variant.

mod config;
mod cpu;
mod nginx;
mod plugins;
mod procs;
mod proxy;
mod tls;
mod wrk;
mod xdp;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cmd;
use procs::Procs;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// HTTP/1.1 reverse proxy vs nginx: keep-alive and one connection per request.
    Proxy,
    /// HTTPS termination vs nginx: full TLS 1.3 handshakes and keep-alive requests.
    Tls,
    /// Config snapshots of 1k and 20k TLS hosts: initial load, applying 1 and 100 changed hosts, RSS.
    Config,
    /// proxy-wasm plugins on one worker (none, header-rewrite AOT/interpreter, five AOT, CPU-heavy AOT vs
    /// interpreter) and the VM budget at 255 workers: instances and RSS.
    Plugins,
    /// XDP guard vs an nftables netdev-ingress rule dropping a flood (packets/s), and legit requests under a
    /// SYN flood with and without the guard, in a namespace pair (root).
    Xdp,
}

pub fn run(which: Which, quick: bool, proxy_cpu_percent: Option<u32>) -> Result<()> {
    match which {
        Which::Proxy => proxy::run(quick, proxy_cpu_percent),
        Which::Tls => tls::run(quick, proxy_cpu_percent),
        Which::Config => config::run(quick),
        Which::Plugins => plugins::run(quick, proxy_cpu_percent),
        Which::Xdp => {
            anyhow::ensure!(
                proxy_cpu_percent.is_none(),
                "bench xdp measures packet rates on whole CPUs: --proxy-cpu-percent does not apply"
            );
            xdp::run(quick)
        }
    }
}

/// Where every bench runs the proxy under test; the load side (wrk, the upstream) runs on `LOAD_CPU`.
const PROXY_CPU: u32 = 1;
const LOAD_CPU: u32 = 0;

/// cgroup CPU period when the proxies are capped: short, so throttling adds
/// at most a few milliseconds to any request.
const QUOTA_PERIOD_US: u64 = 10_000;

/// With `--proxy-cpu-percent`, a cgroup that caps both proxies the same way
/// so they, not the load side, are the bottleneck. Declare it before the
/// processes so it is removed after they are killed.
fn proxy_cpu_cap(name: &str, percent: Option<u32>) -> Result<Option<tollgate_e2e::cgroup::CpuCgroup>> {
    percent
        .map(|percent| {
            tollgate_e2e::cgroup::CpuCgroup::create(name, u64::from(percent) * QUOTA_PERIOD_US / 100, QUOTA_PERIOD_US)
                .map_err(|e| anyhow::anyhow!("cannot cap the proxies' CPU: {e}"))
        })
        .transpose()
}

/// One measured (case, side) pair, with how busy the load and proxy CPUs were.
struct Row {
    case: &'static str,
    side: &'static str,
    outcome: wrk::Outcome,
    load_cpu: f64,
    proxy_cpu: f64,
}

/// One load run (`run` drives it and returns its outcome), with the busy share of both CPUs over the run.
/// Fails when a bench process has exited meanwhile.
fn measure(
    procs: &mut Procs,
    case: &'static str,
    side: &'static str,
    run: impl FnOnce() -> Result<wrk::Outcome>,
) -> Result<Row> {
    let before = (cpu::sample(LOAD_CPU)?, cpu::sample(PROXY_CPU)?);
    let outcome = run().with_context(|| format!("{side}, {case}"))?;
    let after = (cpu::sample(LOAD_CPU)?, cpu::sample(PROXY_CPU)?);
    procs.check_running()?;
    Ok(Row {
        case,
        side,
        outcome,
        load_cpu: cpu::busy_percent(before.0, after.0),
        proxy_cpu: cpu::busy_percent(before.1, after.1),
    })
}

/// One wrk run against `http://<addr>/`.
fn measure_http(
    procs: &mut Procs,
    case: &'static str,
    side: &'static str,
    addr: std::net::SocketAddr,
    load: &wrk::Load,
) -> Result<Row> {
    measure(procs, case, side, || wrk::run(&format!("http://{addr}/"), load))
}

impl Row {
    /// A note when this run may measure the load side rather than the proxy: on two cores wrk and the upstream
    /// share CPU 0 and can saturate first, and a ratio between two load-bound runs compares the load side with
    /// itself. `ceiling` is the rate of wrk straight to the upstream, when the bench measured it.
    fn load_bound_note(&self, ceiling: Option<f64>) -> Option<String> {
        let near_ceiling = ceiling.is_some_and(|c| self.outcome.rps >= 0.9 * c);
        let load_saturated = self.load_cpu >= 95.0 && self.proxy_cpu < 90.0;
        if !(near_ceiling || load_saturated) {
            return None;
        }
        let share = ceiling.map_or(String::new(), |c| {
            format!("{:.0}% of the direct ceiling, ", self.outcome.rps * 100.0 / c)
        });
        Some(format!(
            "note: {} {}: {share}load CPU {:.0}%, proxy CPU {:.0}%: the load side may be the limit",
            self.side, self.case, self.load_cpu, self.proxy_cpu
        ))
    }
}

/// What a bench prints and writes to target/bench/<name>.json: a table of runs
/// and a flat JSON object of numbers (easy to diff and to check in CI).
struct Report {
    name: &'static str,
    rows: Vec<Row>,
    numbers: serde_json::Map<String, serde_json::Value>,
}

impl Report {
    /// Writes the JSON, then fails when a kept run had errors or completed
    /// nothing (a crashed side must not read as a number).
    fn finish(&self) -> Result<()> {
        let path = self.write()?;
        println!("wrote {}", path.display());
        let failures: Vec<String> = self
            .rows
            .iter()
            .filter(|r| r.outcome.errors > 0 || r.outcome.requests == 0)
            .map(|r| {
                format!(
                    "{} {}: {} requests, {} errors",
                    r.side, r.case, r.outcome.requests, r.outcome.errors
                )
            })
            .collect();
        if !failures.is_empty() {
            anyhow::bail!(
                "the best runs had errors, so the numbers are not comparable: {}",
                failures.join("; ")
            );
        }
        Ok(())
    }

    fn new(name: &'static str) -> Self {
        Report {
            name,
            rows: Vec::new(),
            numbers: serde_json::Map::new(),
        }
    }

    fn number(&mut self, key: &str, value: f64) {
        // Three decimals: enough for ratios and milliseconds, stable to read.
        let rounded = (value * 1000.0).round() / 1000.0;
        self.numbers.insert(key.to_owned(), serde_json::json!(rounded));
    }

    fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:<10} {:>12} {:>10} {:>8} {:>10} {:>10}\n",
            "case", "proxy", "requests/s", "p99 ms", "errors", "load CPU%", "proxy CPU%"
        );
        for r in &self.rows {
            let o = &r.outcome;
            let _ = writeln!(
                out,
                "{:<12} {:<10} {:>12.0} {:>10.2} {:>8} {:>10.0} {:>10.0}",
                r.case, r.side, o.rps, o.p99_ms, o.errors, r.load_cpu, r.proxy_cpu
            );
        }
        out
    }

    fn write(&self) -> Result<PathBuf> {
        let dir = cmd::repo_root().join("target/bench");
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}.json", self.name));
        let json = serde_json::to_string_pretty(&self.numbers)? + "\n";
        fs::write(&path, json).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(rps: f64, load_cpu: f64, proxy_cpu: f64) -> Row {
        Row {
            case: "keep-alive",
            side: "tollgate",
            outcome: wrk::Outcome {
                rps,
                p99_ms: 1.0,
                requests: 1000,
                errors: 0,
            },
            load_cpu,
            proxy_cpu,
        }
    }

    #[test]
    fn load_bound_runs_are_noted_near_the_ceiling_or_with_the_load_cpu_saturated() {
        assert_eq!(row(50_000.0, 60.0, 99.0).load_bound_note(Some(100_000.0)), None);
        assert_eq!(row(50_000.0, 60.0, 99.0).load_bound_note(None), None);
        assert_eq!(
            row(95_000.0, 60.0, 99.0).load_bound_note(Some(100_000.0)).as_deref(),
            Some(
                "note: tollgate keep-alive: 95% of the direct ceiling, load CPU 60%, proxy CPU 99%: \
                 the load side may be the limit"
            )
        );
        assert_eq!(
            row(50_000.0, 97.0, 80.0).load_bound_note(None).as_deref(),
            Some("note: tollgate keep-alive: load CPU 97%, proxy CPU 80%: the load side may be the limit")
        );
    }

    #[test]
    fn numbers_are_rounded_and_flat() {
        let mut report = Report::new("unit");
        report.number("ratio", 1.234_567);
        report.number("tollgate_rps", 31_000.0);
        assert_eq!(
            serde_json::Value::Object(report.numbers).to_string(),
            r#"{"ratio":1.235,"tollgate_rps":31000.0}"#
        );
    }
}
