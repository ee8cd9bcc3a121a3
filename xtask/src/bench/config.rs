//! `cargo xtask bench config`: how config changes scale with the number of
//! TLS hosts. The measurement runs in-process in the release-built example
//! `gateway/examples/config_bench.rs` (the real `Snapshot` code), once per
//! host count so each RSS reading is its own process's; this module runs it,
//! prints a table and writes target/bench/config.json.
//!
//! Keys are named for the full run (1k and 20k hosts); `--quick` runs 1k and
//! 5k under the same names and says so in `large_hosts`.

use std::fmt::Write as _;

use anyhow::{Context, Result};

use super::Report;
use crate::cmd;

const SMALL: usize = 1_000;
const LARGE: usize = 20_000;
const QUICK_LARGE: usize = 5_000;
/// Changes timed per size; the median counts.
const ROUNDS: usize = 7;
const QUICK_ROUNDS: usize = 5;

/// What the example prints, per host count.
struct Run {
    hosts: usize,
    numbers: serde_json::Map<String, serde_json::Value>,
}

impl Run {
    fn get(&self, key: &str) -> f64 {
        self.numbers
            .get(key)
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(f64::NAN)
    }
}

pub fn run(quick: bool) -> Result<()> {
    let root = cmd::repo_root();
    let cache = root.join("target/bench/tmp/config-certs");
    let large = if quick { QUICK_LARGE } else { LARGE };
    let rounds = if quick { QUICK_ROUNDS } else { ROUNDS };
    cmd::run(cmd::cargo().current_dir(&root).args([
        "build",
        "--release",
        "-p",
        "tollgate",
        "--example",
        "config_bench",
    ]))?;
    let example = root.join("target/release/examples/config_bench");
    let mut runs = Vec::new();
    for hosts in [SMALL, large] {
        eprintln!("bench config: {hosts} hosts");
        let out = cmd::output(
            std::process::Command::new(&example)
                .current_dir(&root)
                .args(["--hosts", &hosts.to_string(), "--rounds", &rounds.to_string()])
                .arg("--cache")
                .arg(&cache),
        )?;
        let numbers = match serde_json::from_str(out.trim()).context("config_bench printed no JSON object")? {
            serde_json::Value::Object(numbers) => numbers,
            other => anyhow::bail!("config_bench printed {other}, not an object"),
        };
        runs.push(Run { hosts, numbers });
    }
    let (small, large_run) = (&runs[0], &runs[1]);
    let mut report = Report::new("config");
    report.number("small_hosts", small.hosts as f64);
    report.number("large_hosts", large_run.hosts as f64);
    report.number("rounds", rounds as f64);
    for (suffix, run) in [("1k", small), ("20k", large_run)] {
        for key in [
            "initial_load_ms",
            "apply_one_ms",
            "apply_hundred_ms",
            "reload_one_ms",
            "reload_hundred_ms",
            "rss_mb",
            "host_lookup_ns",
            "std_hashmap_lookup_ns",
        ] {
            if run.numbers.contains_key(key) {
                report.number(&format!("{key}_{suffix}"), run.get(key));
            }
        }
    }
    let one_ratio = large_run.get("apply_one_ms") / small.get("apply_one_ms");
    report.number("apply_one_ratio_20k_to_1k", one_ratio);
    print!("{}", table(&runs));
    let goals = [
        ("apply_one_ms_20k < 20 ms", large_run.get("apply_one_ms") < 20.0),
        ("apply_one_ms_20k within 2x of apply_one_ms_1k", one_ratio <= 2.0),
        ("initial_load_ms_20k < 5 s", large_run.get("initial_load_ms") < 5_000.0),
    ];
    for (goal, met) in goals {
        println!("goal {goal}: {}", if met { "met" } else { "MISSED" });
    }
    if quick {
        println!("--quick: the *_20k keys hold {QUICK_LARGE} hosts (large_hosts)");
    }
    let path = report.write()?;
    println!("wrote {}", path.display());
    Ok(())
}

fn table(runs: &[Run]) -> String {
    let columns = [
        ("initial_load_ms", "load ms"),
        ("apply_one_ms", "apply 1 ms"),
        ("apply_hundred_ms", "apply 100 ms"),
        ("reload_one_ms", "reload 1 ms"),
        ("reload_hundred_ms", "reload 100 ms"),
        ("rss_mb", "RSS MB"),
        ("host_lookup_ns", "lookup ns"),
        ("std_hashmap_lookup_ns", "std map ns"),
    ];
    let mut out = format!("{:>8}", "hosts");
    for (_, title) in columns {
        let _ = write!(out, " {title:>14}");
    }
    out.push('\n');
    for run in runs {
        let _ = write!(out, "{:>8}", run.hosts);
        for (key, _) in columns {
            let _ = write!(out, " {:>14.2}", run.get(key));
        }
        out.push('\n');
    }
    out
}
