//! Worker sizing and I/O driver end to end: `workers: auto` follows a cgroup
//! CPU quota and the affinity mask (taskset), an explicit number overrides,
//! and the epoll driver serves (checked by the kind of the process's file
//! descriptors: an io_uring instance is an `anon_inode:[io_uring]` fd).
//!
//! The gateway logs its decision at start; these tests look for `workers=N`
//! in its stderr (the tracing field of that line).

use std::time::Duration;

use tollgate_e2e::cgroup::CpuCgroup;
use tollgate_e2e::client::get;
use tollgate_e2e::{wait, Gateway, GatewayOptions};

fn config(runtime: &str) -> String {
    r#"
runtime: RUNTIME
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - {name: all, domains: ["*"], routes: [{name: all, direct_response: {body: "ok"}}]}
"#
    .replace("RUNTIME", runtime)
}

fn cpus_allowed() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Waits for the start-up decision line and returns stderr.
fn decision(gw: &Gateway) -> String {
    wait::until(Duration::from_secs(3), || gw.stderr().contains("workers="));
    gw.stderr()
}

fn assert_workers(gw: &Gateway, n: usize) {
    let log = decision(gw);
    assert!(
        log.contains(&format!("workers={n}")),
        "expected workers={n} in the start-up log:\n{log}"
    );
    assert!(
        !log.contains(&format!("workers={}", n + 1)),
        "more than {n} workers:\n{log}"
    );
    assert_eq!(get(gw.addr("http"), "w.test", "/").body_str(), "ok");
}

#[test]
fn auto_workers_follow_cgroup_quota() {
    let cg = match CpuCgroup::create("quota", 50_000, 100_000) {
        Ok(cg) => cg,
        Err(why) => {
            println!("SKIPPED auto_workers_follow_cgroup_quota: {why}");
            return;
        }
    };
    let opts = GatewayOptions {
        cgroup_procs: Some(cg.procs_file()),
        ..Default::default()
    };
    let mut gw = Gateway::start_with(&config("{workers: auto}"), opts);
    // Half a CPU of quota rounds up to one worker, whatever the host has.
    assert_workers(&gw, 1);
    let procs = std::fs::read_to_string(cg.procs_file()).unwrap();
    assert!(
        procs.lines().any(|p| p.trim() == gw.pid().to_string()),
        "gateway not in the cgroup: {procs}"
    );
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(10));
}

#[test]
fn auto_workers_follow_quota_of_two_cpus() {
    if cpus_allowed() < 2 {
        println!("SKIPPED auto_workers_follow_quota_of_two_cpus: fewer than 2 CPUs");
        return;
    }
    let cg = match CpuCgroup::create("quota2", 150_000, 100_000) {
        Ok(cg) => cg,
        Err(why) => {
            println!("SKIPPED auto_workers_follow_quota_of_two_cpus: {why}");
            return;
        }
    };
    let opts = GatewayOptions {
        cgroup_procs: Some(cg.procs_file()),
        ..Default::default()
    };
    let mut gw = Gateway::start_with(&config("{workers: auto}"), opts);
    // 1.5 CPUs rounds up to 2; the 2-CPU affinity mask allows 2.
    assert_workers(&gw, 2);
    gw.signal(libc::SIGTERM);
    gw.wait_exit(Duration::from_secs(10));
}

#[test]
fn auto_workers_follow_affinity_mask() {
    let opts = GatewayOptions {
        wrapper: vec!["taskset".into(), "-c".into(), "0".into()],
        ..Default::default()
    };
    let gw = Gateway::start_with(&config("{workers: auto}"), opts);
    assert_workers(&gw, 1);
}

#[test]
fn explicit_workers_override_the_affinity_mask() {
    let opts = GatewayOptions {
        wrapper: vec!["taskset".into(), "-c".into(), "0".into()],
        ..Default::default()
    };
    let gw = Gateway::start_with(&config("{workers: 2}"), opts);
    assert_workers(&gw, 2);
}

#[test]
fn auto_without_limits_uses_all_allowed_cpus() {
    let gw = Gateway::start(&config("{workers: auto}"));
    let log = decision(&gw);
    // The test process may itself run under a quota; only check the upper bound.
    let n = cpus_allowed();
    assert!(
        (1..=n).any(|k| log.contains(&format!("workers={k}"))),
        "workers=1..={n} expected in:\n{log}"
    );
}

#[test]
fn epoll_driver_serves() {
    let gw = Gateway::start(&config("{workers: 1, io: epoll}"));
    for _ in 0..20 {
        assert_eq!(get(gw.addr("http"), "w.test", "/").body_str(), "ok");
    }
    let fds = gw.fd_targets();
    assert!(
        !fds.iter().any(|f| f.contains("io_uring")),
        "io: epoll, yet an io_uring fd is open: {fds:?}"
    );
    assert!(fds.iter().any(|f| f.contains("eventpoll")), "no epoll fd: {fds:?}");
}

#[test]
fn io_uring_driver_serves() {
    let gw = Gateway::start(&config("{workers: 1, io: io_uring}"));
    for _ in 0..20 {
        assert_eq!(get(gw.addr("http"), "w.test", "/").body_str(), "ok");
    }
    let fds = gw.fd_targets();
    assert!(
        fds.iter().any(|f| f.contains("io_uring")),
        "io: io_uring, yet no io_uring fd is open: {fds:?}"
    );
}
