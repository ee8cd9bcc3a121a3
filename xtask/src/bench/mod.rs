//! `cargo xtask bench <name>`: side-by-side benchmarks, Tollgate against a peer
//! started and pinned the same way in the same run, because on a shared
//! machine only the ratio means something. The harness (processes, wrk,
//! report) is shared; each bench is one module and one `Which` variant.

mod config;
mod cpu;
mod procs;
mod proxy;
mod tls;
mod wrk;

use std::fmt::Write as _;
use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cmd;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Which {
    /// HTTP/1.1 reverse proxy vs nginx: keep-alive and one connection per request.
    Proxy,
    /// HTTPS termination vs nginx: full TLS 1.3 handshakes and keep-alive requests.
    Tls,
    /// Config snapshots of 1k and 20k TLS hosts: initial load, applying 1 and 100 changed hosts, RSS.
    Config,
}

pub fn run(which: Which, quick: bool, proxy_cpu_percent: Option<u32>) -> Result<()> {
    match which {
        Which::Proxy => proxy::run(quick, proxy_cpu_percent),
        Which::Tls => tls::run(quick, proxy_cpu_percent),
        Which::Config => config::run(quick),
    }
}

/// Builds the release gateway and returns the binary's path.
fn build_gateway() -> Result<PathBuf> {
    let root = cmd::repo_root();
    cmd::run(
        cmd::cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "tollgate", "--bin", "tollgate"]),
    )?;
    Ok(root.join("target/release/tollgate"))
}

/// One measured (case, side) pair, with how busy the load and proxy CPUs were.
struct Row {
    case: &'static str,
    side: &'static str,
    outcome: wrk::Outcome,
    load_cpu: f64,
    proxy_cpu: f64,
}

/// What a bench prints and writes to target/bench/<name>.json: a table of runs
/// and a flat JSON object of numbers (easy to diff and to check in CI).
struct Report {
    name: &'static str,
    rows: Vec<Row>,
    numbers: serde_json::Map<String, serde_json::Value>,
}

impl Report {
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
