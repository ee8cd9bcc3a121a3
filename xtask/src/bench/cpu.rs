//! Per-CPU busy time from /proc/stat, sampled around a load run. It tells
//! whether the proxy's CPU was the bottleneck (near 100%) or the load side
//! was, in which case the proxy comparison is meaningless.

use std::fs;

use anyhow::{Context, Result};

/// Cumulative (busy, total) jiffies of one CPU.
#[derive(Clone, Copy)]
pub struct Sample {
    busy: u64,
    total: u64,
}

pub fn sample(cpu: u32) -> Result<Sample> {
    let stat = fs::read_to_string("/proc/stat").context("cannot read /proc/stat")?;
    parse(&stat, cpu).with_context(|| format!("no cpu{cpu} line in /proc/stat"))
}

fn parse(stat: &str, cpu: u32) -> Option<Sample> {
    let prefix = format!("cpu{cpu} ");
    let line = stat.lines().find(|l| l.starts_with(&prefix))?;
    let fields: Vec<u64> = line[prefix.len()..]
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...; idle and iowait are not busy.
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3)? + fields.get(4).copied().unwrap_or(0);
    Some(Sample {
        busy: total - idle,
        total,
    })
}

/// Percentage of time the CPU was busy between two samples.
pub fn busy_percent(before: Sample, after: Sample) -> f64 {
    let total = after.total.saturating_sub(before.total);
    if total == 0 {
        return 0.0;
    }
    after.busy.saturating_sub(before.busy) as f64 * 100.0 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_share_between_two_samples() {
        let before = parse("cpu  9 9 9 9\ncpu0 100 0 50 800 50 0 0 0 0 0\ncpu1 1 1 1 1\n", 0).unwrap();
        let after = parse("cpu0 160 0 80 800 60 0 0 0 0 0\n", 0).unwrap();
        assert_eq!(busy_percent(before, after), 90.0);
        assert!(parse("cpu0 1 2 3 4\n", 1).is_none());
    }
}
