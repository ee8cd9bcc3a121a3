//! Running wrk and reading its report: requests/s, the p99 of the `--latency`
//! distribution, and every kind of error it counts.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cmd;

/// One load run's shape.
pub struct Load {
    pub connections: u32,
    pub seconds: u32,
    /// Send `Connection: close`: one TCP connection per request.
    pub close: bool,
    /// The CPU wrk is pinned to.
    pub cpu: u32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Outcome {
    pub rps: f64,
    pub p99_ms: f64,
    pub requests: u64,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

pub fn run(url: &str, load: &Load) -> Result<Outcome> {
    let mut wrk = Command::new("taskset");
    wrk.args(["-c", &load.cpu.to_string(), "wrk", "-t1", "--latency"])
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds));
    if load.close {
        wrk.args(["-H", "Connection: close"]);
    }
    wrk.arg(url);
    super::procs::die_with_parent(&mut wrk);
    let out = cmd::output(&mut wrk)?;
    parse(&out).with_context(|| format!("cannot read the report of `{}`:\n{out}", cmd::display(&wrk)))
}

pub fn parse(report: &str) -> Result<Outcome> {
    let mut rps = None;
    let mut p99_ms = None;
    let mut requests = None;
    let mut errors = 0;
    for line in report.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().with_context(|| format!("bad line {line:?}"))?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99_ms = Some(duration_ms(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v.trim().parse::<u64>().with_context(|| format!("bad line {line:?}"))?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            for part in v.split(',') {
                let n = part
                    .split_whitespace()
                    .nth(1)
                    .with_context(|| format!("bad line {line:?}"))?;
                errors += n.parse::<u64>().with_context(|| format!("bad line {line:?}"))?;
            }
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = Some(n.parse::<u64>().with_context(|| format!("bad line {line:?}"))?);
        }
    }
    match (rps, p99_ms, requests) {
        (Some(rps), Some(p99_ms), Some(requests)) => Ok(Outcome {
            rps,
            p99_ms,
            requests,
            errors,
        }),
        _ => bail!("no Requests/sec, 99% or request count line (was --latency given?)"),
    }
}

/// wrk's time format: a number and one of us, ms, s, m, h.
fn duration_ms(text: &str) -> Result<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().with_context(|| format!("bad duration {text:?}"))?;
    let scale = match unit {
        "us" => 0.001,
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        _ => bail!("unknown time unit in {text:?}"),
    };
    Ok(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLEAN: &str = "Running 1s test @ http://127.0.0.1:18999/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   160.09us  145.90us   3.80ms   98.16%
    Req/Sec   176.13k     4.98k  182.05k    70.00%
  Latency Distribution
     50%  136.00us
     75%  146.00us
     90%  227.00us
     99%  384.00us
  175237 requests in 1.00s, 26.74MB read
Requests/sec: 175091.50
Transfer/sec:     26.72MB
";

    const ERRORS: &str = "Running 10s test @ http://127.0.0.1:8080/
  1 threads and 50 connections
  Latency Distribution
     50%    1.57ms
     75%    2.01ms
     90%    2.34ms
     99%    1.20s
  18609 requests in 10.01s, 2.75MB read
  Socket errors: connect 3, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 40
Requests/sec:   1860.84
Transfer/sec:      2.74MB
";

    #[test]
    fn reads_a_clean_report() {
        let o = parse(CLEAN).unwrap();
        assert_eq!(
            o,
            Outcome {
                rps: 175091.5,
                p99_ms: 0.384,
                requests: 175237,
                errors: 0
            }
        );
    }

    #[test]
    fn counts_socket_errors_and_bad_statuses() {
        let o = parse(ERRORS).unwrap();
        assert_eq!(o.errors, 3 + 2 + 1 + 40);
        assert_eq!(o.p99_ms, 1200.0);
        assert_eq!(o.requests, 18609);
    }

    #[test]
    fn converts_every_unit() {
        assert_eq!(duration_ms("250.00us").unwrap(), 0.25);
        assert_eq!(duration_ms("3.75ms").unwrap(), 3.75);
        assert_eq!(duration_ms("2.00m").unwrap(), 120_000.0);
        assert!(duration_ms("3.75xs").is_err());
    }

    #[test]
    fn rejects_a_report_without_latency_distribution() {
        let without: String = CLEAN
            .lines()
            .filter(|l| !l.contains("99%"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(parse(&without).is_err());
    }
}
