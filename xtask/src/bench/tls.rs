//! `cargo xtask bench tls`: Tollgate and nginx terminating TLS with the same
//! ECDSA P-256 certificate and proxying to the same nginx upstream (12-byte
//! body). Both proxies get one worker on CPU 1; the upstream and wrk share
//! CPU 0. Two cases: full TLS 1.3 handshakes (`Connection: close`, a new TLS
//! connection, no resumption) and HTTPS keep-alive requests with wrk.
//! Each side runs twice, alternating, and its better run counts.
//!
//! Handshakes are driven by parallel `openssl s_time -new` (a full TLS 1.3
//! handshake per connection, then close), not by wrk with `Connection:
//! close`: wrk keeps its SSL object across reconnects, so it offers the last
//! session and resumes whenever the server issues tickets. Measured here with
//! nginx logging `$ssl_session_reused`: 5,888 of 5,892 requests resumed
//! (TLS 1.3 tickets, nginx defaults). nginx can turn tickets off, Tollgate
//! always issues them, so wrk would compare resumptions with full handshakes.
//! A probe run against an nginx server that logs `$ssl_session_reused`
//! checks on every run that s_time resumes nothing.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tollgate_e2e::cgroup::CpuCgroup;
use tollgate_e2e::tls::Ca;

use super::nginx::{nginx_http_paths, nginx_main, start_nginx, upstream_conf, write, BODY};
use super::procs::{free_port, Procs};
use super::wrk::{self, Load};
use super::{nginx, proxy_cpu_cap, Report, Row, LOAD_CPU, PROXY_CPU};
use crate::cmd;

const ROUNDS: usize = 2;
/// wrk sends the URL's host as SNI and resolves it: localhost is 127.0.0.1
/// here, and a name (unlike an IP) is a valid SNI.
const HOST: &str = "localhost";
pub fn run(quick: bool, proxy_cpu_percent: Option<u32>) -> Result<()> {
    let tollgate = cmd::build_release_gateway()?;
    nginx::require()?;
    let cgroup = proxy_cpu_cap("bench-tls", proxy_cpu_percent)?;
    let procs_file = cgroup.as_ref().map(CpuCgroup::procs_file);
    let mut procs = Procs::new("tls")?;
    let dir = procs.dir().to_path_buf();

    let leaf = Ca::new("tollgate bench CA").leaf(&[HOST]);
    let (cert, key) = leaf.write(&dir, "bench");
    let upstream: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let via_nginx: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let probe: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let via_tollgate: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let admin: SocketAddr = ([127, 0, 0, 1], free_port()?).into();

    start_nginx(
        &mut procs,
        "upstream",
        LOAD_CPU,
        &upstream_conf(&dir, upstream),
        upstream,
        None,
    )?;
    let tls = NginxTls {
        cert: &cert,
        key: &key,
        listen: via_nginx,
        probe,
        upstream,
    };
    start_nginx(
        &mut procs,
        "nginx",
        PROXY_CPU,
        &tls.conf(&dir),
        via_nginx,
        procs_file.as_deref(),
    )?;
    let config = dir.join("tollgate.yaml");
    write(&config, &tollgate_conf(via_tollgate, admin, upstream, &cert, &key))?;
    procs.spawn(
        "tollgate",
        PROXY_CPU,
        &tollgate,
        &["run", "--config", config.to_str().context("non-UTF-8 path")?],
        procs_file.as_deref(),
    )?;
    procs.wait_listening("tollgate", via_tollgate)?;

    let sides = [("nginx", via_nginx), ("tollgate", via_tollgate)];
    for (side, addr) in sides {
        let (ok, out) = curl_get(&dir, addr)?;
        if !ok || !out.ends_with(BODY) {
            bail!(
                "{side} on {addr} did not proxy over TLS: {out}\n{}",
                procs.log_tail(side)
            );
        }
    }
    let reused = probe_session_reuse(&dir, probe)?;
    if reused > 0 {
        bail!(
            "wrk resumed {reused} TLS sessions in the probe run: the handshake case would not measure full handshakes"
        );
    }

    let seconds = if quick { 3 } else { 10 };
    println!(
        "bench tls: handshakes: {HANDSHAKE_CLIENTS} x openssl s_time -new -tls1_3 -time {seconds}; \
         keep-alive: wrk -t1 -c50 -d{seconds}s; load and upstream nginx on CPU {LOAD_CPU}, \
         proxies on CPU {PROXY_CPU}{}, best of {ROUNDS}; the probe run saw no resumed session",
        proxy_cpu_percent.map_or(String::new(), |p| format!(" capped at {p}% (one cgroup for both)"))
    );
    let mut report = Report::new("tls");
    for (case, close, key) in [
        ("handshake", true, "handshakes_per_s"),
        ("keep-alive", false, "https_rps"),
    ] {
        let load = Load {
            connections: 50,
            seconds,
            close,
            cpu: LOAD_CPU,
        };
        let mut best: [Option<Row>; 2] = [None, None];
        for _ in 0..ROUNDS {
            for (i, (side, addr)) in sides.iter().enumerate() {
                let row = measure(&mut procs, case, side, *addr, &load, close)?;
                if best[i].as_ref().is_none_or(|b| row.outcome.rps > b.outcome.rps) {
                    best[i] = Some(row);
                }
            }
        }
        let [Some(nginx), Some(tollgate)] = best else {
            unreachable!("ROUNDS > 0")
        };
        let prefix = if close { "handshake" } else { "https" };
        report.number(&format!("{prefix}_ratio"), tollgate.outcome.rps / nginx.outcome.rps);
        // On two cores the clients' half of each handshake saturates CPU 0 first;
        // work per proxy CPU-second still compares the proxies (or cap them with
        // --proxy-cpu-percent so the rate itself does).
        let per_cpu = |r: &Row| r.outcome.rps * 100.0 / r.proxy_cpu.max(1.0);
        report.number(
            &format!("{prefix}_per_proxy_cpu_ratio"),
            per_cpu(&tollgate) / per_cpu(&nginx),
        );
        for row in [nginx, tollgate] {
            let side = row.side;
            report.number(&format!("{side}_{key}"), row.outcome.rps);
            // s_time gives no distribution: the handshake case reports the mean latency.
            let latency = if close { "mean_ms" } else { "p99_ms" };
            report.number(&format!("{side}_{prefix}_{latency}"), row.outcome.p99_ms);
            report.number(&format!("{side}_{prefix}_errors"), row.outcome.errors as f64);
            report.number(&format!("{side}_{prefix}_proxy_cpu_percent"), row.proxy_cpu);
            report.number(&format!("{side}_{prefix}_load_cpu_percent"), row.load_cpu);
            report.number(&format!("{side}_{prefix}_per_proxy_cpu_s"), per_cpu(&row));
            report.rows.push(row);
        }
    }
    drop(procs);

    print!("{}", report.table());
    let n = &report.numbers;
    println!(
        "ratio (tollgate/nginx): handshakes {}, keep-alive {} (goal: both >= 1.3); per proxy CPU-second: \
         handshakes {}, keep-alive {}; the handshake rows' latency column is the mean, not the p99",
        n["handshake_ratio"], n["https_ratio"], n["handshake_per_proxy_cpu_ratio"], n["https_per_proxy_cpu_ratio"]
    );
    for r in &report.rows {
        // With TLS the client's half of each handshake runs on the load CPU too.
        if let Some(note) = r.load_bound_note(None) {
            println!("{note}");
        }
    }
    report.finish()
}

/// One load run against `addr` (full handshakes with s_time, or wrk over
/// `https://localhost:<port>/`), with the busy share of both CPUs.
fn measure(
    procs: &mut Procs,
    case: &'static str,
    side: &'static str,
    addr: SocketAddr,
    load: &Load,
    handshakes: bool,
) -> Result<Row> {
    super::measure(procs, case, side, || {
        if handshakes {
            s_time(addr, load.seconds)
        } else {
            wrk::run(&format!("https://{HOST}:{}/", addr.port()), load)
        }
    })
}

/// One request with curl (verifying nothing: the CA is not the point here);
/// (success, headers and body).
fn curl_get(dir: &Path, addr: SocketAddr) -> Result<(bool, String)> {
    let mut curl = std::process::Command::new("curl");
    curl.args(["-sS", "-k", "--max-time", "5", "--resolve"])
        .arg(format!("{HOST}:{}:127.0.0.1", addr.port()))
        .arg(format!("https://{HOST}:{}/", addr.port()))
        .current_dir(dir);
    let out = curl
        .output()
        .with_context(|| format!("cannot run `{}`", cmd::display(&curl)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Concurrent `openssl s_time` processes in the handshake case: enough to
/// keep one proxy CPU busy while each waits for its own handshake.
const HANDSHAKE_CLIENTS: usize = 8;

/// `HANDSHAKE_CLIENTS` parallel `openssl s_time -new -tls1_3` runs on the load
/// CPU; handshakes per second over the wall time of the whole run. s_time
/// sends no SNI (both proxies serve their default certificate) and no request
/// without `-www`, whose HTTP/1.0 request lacks a Host header.
fn s_time(addr: SocketAddr, seconds: u32) -> Result<wrk::Outcome> {
    let start = std::time::Instant::now();
    let children = (0..HANDSHAKE_CLIENTS)
        .map(|_| {
            let mut c = super::procs::pinned(LOAD_CPU, Path::new("openssl"));
            c.args(["s_time", "-new", "-tls1_3", "-connect", &addr.to_string()])
                .arg("-time")
                .arg(seconds.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            super::procs::die_with_parent(&mut c);
            c.spawn().with_context(|| format!("cannot run `{}`", cmd::display(&c)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut connections = 0;
    let mut errors = 0;
    for child in children {
        let out = child.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        match parse_s_time(&text) {
            Some(n) if out.status.success() => connections += n,
            _ => {
                errors += 1;
                eprintln!(
                    "s_time against {addr} failed ({}): {text}{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(wrk::Outcome {
        rps: connections as f64 / elapsed,
        // s_time reports no latency distribution; the mean is what it has.
        p99_ms: HANDSHAKE_CLIENTS as f64 * elapsed * 1000.0 / (connections.max(1) as f64),
        requests: connections,
        errors,
    })
}

/// The connection count from s_time's "N connections in T real seconds" line.
fn parse_s_time(report: &str) -> Option<u64> {
    report
        .lines()
        .find(|l| l.contains(" connections in ") && l.contains("real seconds"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Runs s_time for a second against the nginx probe server (same TLS
/// settings, plus a log of `$ssl_session_reused`, and `-www /` so each
/// connection logs a request) and returns how many came on a resumed session.
fn probe_session_reuse(dir: &Path, probe: SocketAddr) -> Result<usize> {
    let mut c = super::procs::pinned(LOAD_CPU, Path::new("openssl"));
    c.args([
        "s_time",
        "-new",
        "-tls1_3",
        "-time",
        "1",
        "-www",
        "/",
        "-connect",
        &probe.to_string(),
    ]);
    let out = cmd::output(&mut c).context("probe run")?;
    if parse_s_time(&out).unwrap_or(0) == 0 {
        bail!("the probe run made no connection: {out}");
    }
    let log = dir.join("probe.log");
    let text = std::fs::read_to_string(&log).with_context(|| format!("cannot read {}", log.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    // nginx writes "r" for a reused session and "." for a full handshake.
    if lines.is_empty() {
        bail!("the probe run logged no requests in {}", log.display());
    }
    Ok(lines.iter().filter(|l| l.trim() == "r").count())
}

/// nginx as a TLS-terminating reverse proxy, tuned like Tollgate's defaults
/// (pooled upstream connections), with no session cache and no tickets so no
/// handshake can be abbreviated. `probe` is a second server with the same TLS
/// settings that logs whether each session was reused.
struct NginxTls<'a> {
    cert: &'a Path,
    key: &'a Path,
    listen: SocketAddr,
    probe: SocketAddr,
    upstream: SocketAddr,
}

impl NginxTls<'_> {
    fn conf(&self, dir: &Path) -> String {
        let d = dir.display();
        let ssl = format!(
            "ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
             ssl_session_cache off;\n    ssl_session_tickets off;\n",
            self.cert.display(),
            self.key.display()
        );
        let location = "location / {\n      proxy_pass http://up;\n      proxy_http_version 1.1;\n      \
                        proxy_set_header Connection \"\";\n    }\n";
        format!(
            "{main}http {{\n  access_log off;\n{paths}  keepalive_requests 10000;\n  keepalive_timeout 75s;\n  \
             log_format reused '$ssl_session_reused';\n  \
             upstream up {{ server {upstream}; keepalive 200; keepalive_requests 10000; keepalive_timeout 100s; }}\n  \
             server {{\n    listen {listen} ssl;\n    {ssl}    {location}  }}\n  \
             server {{\n    listen {probe} ssl;\n    access_log {d}/probe.log reused;\n    {ssl}    {location}  }}\n}}\n",
            main = nginx_main(dir, "nginx"),
            paths = nginx_http_paths(dir, "nginx"),
            upstream = self.upstream,
            listen = self.listen,
            probe = self.probe,
        )
    }
}

fn tollgate_conf(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr, cert: &Path, key: &Path) -> String {
    format!(
        "runtime: {{workers: 1}}\n\
         admin: {{address: \"{admin}\"}}\n\
         access_log: {{path: \"off\"}}\n\
         certificates: [{{name: bench, cert_chain_file: \"{cert}\", private_key_file: \"{key}\"}}]\n\
         listeners: [{{name: https, address: \"{listen}\", tls: {{default_certificate: bench}}}}]\n\
         hosts: [{{name: all, domains: [\"*\"], tls: {{certificate: bench}}, \
         routes: [{{name: all, match: {{prefix: \"/\"}}, proxy: {{cluster: up}}}}]}}]\n\
         clusters: [{{name: up, endpoints: [\"{upstream}\"]}}]\n",
        cert = cert.display(),
        key = key.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_conf_disables_session_reuse_and_logs_it_on_the_probe() {
        let tls = NginxTls {
            cert: Path::new("/c.pem"),
            key: Path::new("/k.pem"),
            listen: "127.0.0.1:1".parse().unwrap(),
            probe: "127.0.0.1:2".parse().unwrap(),
            upstream: "127.0.0.1:3".parse().unwrap(),
        };
        let conf = tls.conf(Path::new("/d"));
        assert_eq!(conf.matches("ssl_session_cache off;").count(), 2);
        assert_eq!(conf.matches("ssl_session_tickets off;").count(), 2);
        assert!(conf.contains("listen 127.0.0.1:1 ssl;"));
        assert!(conf.contains("access_log /d/probe.log reused;"));
    }

    #[test]
    fn reads_the_s_time_connection_count() {
        let report = "Collecting connection statistics for 2 seconds\n*****\n\n\
                      1947 connections in 0.72s; 2704.17 connections/user sec, bytes read 0\n\
                      1947 connections in 3 real seconds, 0 bytes read per connection\n";
        assert_eq!(parse_s_time(report), Some(1947));
        assert_eq!(parse_s_time("ERROR\n"), None);
    }
}
