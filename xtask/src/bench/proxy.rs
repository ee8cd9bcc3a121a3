//! `cargo xtask bench proxy`: Tollgate and nginx as HTTP/1.1 reverse proxies
//! to the same nginx upstream (12-byte body). Both proxies get one worker on
//! CPU 1; the upstream and wrk share CPU 0, so the proxy is the bottleneck.
//! Keep-alive first, then `Connection: close` (a new client connection per
//! request). Each side runs twice, alternating, and its better run counts.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use tollgate_e2e::cgroup::CpuCgroup;

use super::nginx::{proxy_conf, start_nginx, upstream_conf, write, BODY};
use super::procs::{free_port, http_get, Procs};
use super::wrk::Load;
use super::{measure_http, nginx, proxy_cpu_cap, Report, Row, LOAD_CPU, PROXY_CPU};
use crate::cmd;

const ROUNDS: usize = 2;

pub fn run(quick: bool, proxy_cpu_percent: Option<u32>) -> Result<()> {
    let tollgate = cmd::build_release_gateway()?;
    nginx::require()?;

    // Declared before the processes so it is removed after they are killed.
    let cgroup = proxy_cpu_cap("bench", proxy_cpu_percent)?;
    let procs_file = cgroup.as_ref().map(CpuCgroup::procs_file);
    let mut procs = Procs::new("proxy")?;
    let dir = procs.dir().to_path_buf();
    let upstream: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let via_nginx: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
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
    let conf = proxy_conf(&dir, via_nginx, upstream);
    start_nginx(&mut procs, "nginx", PROXY_CPU, &conf, via_nginx, procs_file.as_deref())?;
    let config = dir.join("tollgate.yaml");
    write(&config, &tollgate_conf(via_tollgate, admin, upstream))?;
    let config_arg = config.to_str().context("non-UTF-8 path")?;
    procs.spawn(
        "tollgate",
        PROXY_CPU,
        &tollgate,
        &["run", "--config", config_arg],
        procs_file.as_deref(),
    )?;
    procs.wait_listening("tollgate", via_tollgate)?;

    let sides = [("nginx", via_nginx), ("tollgate", via_tollgate)];
    for (side, addr) in sides {
        let response = http_get(addr, "/", &[]).with_context(|| format!("{side} on {addr}"))?;
        if response.status != 200 || response.body != BODY {
            bail!(
                "{side} on {addr} answered {} {:?}, not 200 {BODY:?}\n{}",
                response.status,
                response.body,
                procs.log_tail(side)
            );
        }
    }

    let seconds = if quick { 3 } else { 10 };
    println!(
        "bench proxy: wrk -t1 -c50 -d{seconds}s on CPU {LOAD_CPU}, upstream nginx on CPU {LOAD_CPU}, \
         proxies on CPU {PROXY_CPU}{}, best of {ROUNDS}; \"direct\" is wrk straight to the upstream",
        proxy_cpu_percent.map_or(String::new(), |p| format!(" capped at {p}% (one cgroup for both)"))
    );
    let mut report = Report::new("proxy");
    for (case, close, prefix) in [("keep-alive", false, ""), ("close", true, "close_")] {
        let load = Load {
            connections: 50,
            seconds,
            close,
            cpu: LOAD_CPU,
        };
        // wrk straight to the upstream: what CPU 0 can drive at all. A proxied run near
        // this ceiling is load-bound and its ratio says nothing about the proxies.
        let direct = measure_http(&mut procs, case, "direct", upstream, &load)?;
        report.number(&format!("direct_{prefix}rps"), direct.outcome.rps);
        report.rows.push(direct);
        let mut best: [Option<Row>; 2] = [None, None];
        for _ in 0..ROUNDS {
            for (i, (side, addr)) in sides.iter().enumerate() {
                let row = measure_http(&mut procs, case, side, *addr, &load)?;
                if best[i].as_ref().is_none_or(|b| row.outcome.rps > b.outcome.rps) {
                    best[i] = Some(row);
                }
            }
        }
        let [Some(nginx), Some(tollgate)] = best else {
            unreachable!("ROUNDS > 0")
        };
        let ratio = tollgate.outcome.rps / nginx.outcome.rps;
        for row in [nginx, tollgate] {
            let side = row.side;
            report.number(&format!("{side}_{prefix}rps"), row.outcome.rps);
            report.number(&format!("{side}_{prefix}p99_ms"), row.outcome.p99_ms);
            report.number(&format!("{side}_{prefix}errors"), row.outcome.errors as f64);
            report.number(&format!("{side}_{prefix}proxy_cpu_percent"), row.proxy_cpu);
            report.number(&format!("{side}_{prefix}load_cpu_percent"), row.load_cpu);
            report.rows.push(row);
        }
        report.number(if close { "close_ratio" } else { "ratio" }, ratio);
    }
    drop(procs);

    print!("{}", report.table());
    let n = &report.numbers;
    println!(
        "ratio (tollgate/nginx): keep-alive {}, close {}",
        n["ratio"], n["close_ratio"]
    );
    for r in report.rows.iter().filter(|r| r.side != "direct") {
        let ceiling = report
            .rows
            .iter()
            .find(|d| d.side == "direct" && d.case == r.case)
            .map_or(f64::INFINITY, |d| d.outcome.rps);
        if let Some(note) = r.load_bound_note(Some(ceiling)) {
            println!("{note}");
        }
    }
    report.finish()
}

fn tollgate_conf(listen: SocketAddr, admin: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "runtime: {{workers: 1}}\n\
         admin: {{address: \"{admin}\"}}\n\
         access_log: {{path: \"off\"}}\n\
         listeners: [{{name: http, address: \"{listen}\"}}]\n\
         hosts: [{{name: all, domains: [\"*\"], routes: [{{name: all, match: {{prefix: \"/\"}}, proxy: {{cluster: up}}}}]}}]\n\
         clusters: [{{name: up, endpoints: [\"{upstream}\"]}}]\n"
    )
}
