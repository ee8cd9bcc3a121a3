//! Reload and drain end to end: reloads under load fail no request, a broken
//! config leaves the running one in place, a file change reloads too, and
//! SIGTERM lets in-flight requests finish before a clean exit.

use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_e2e::client::{get, request, Conn};
use tollgate_e2e::{eps, wait, Behaviour, Gateway, Upstream};

fn config(version: &str, ups: &[&Upstream]) -> String {
    r#"
runtime: {workers: 2, drain_timeout: 5s}
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - name: all
    domains: ["*"]
    routes:
      - {name: version, match: {exact: "/version"}, direct_response: {body: "VERSION"}}
      - {name: all, proxy: {cluster: backend}}
clusters:
  - {name: backend, endpoints: UPS}
"#
    .replace("VERSION", version)
    .replace("UPS", &eps(ups))
}

#[test]
fn reload_under_load_fails_no_request() {
    let a = Upstream::start(Behaviour::Echo);
    let b = Upstream::start(Behaviour::Echo);
    let mut gw = Gateway::start(&config("v0", &[&a]));
    let addr = gw.addr("http");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let (stop, ok) = (stop.clone(), ok.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(6);
                let mut failures = Vec::new();
                let mut conn: Option<Conn> = None;
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    i += 1;
                    // Thread 0 keeps connections alive (a closed idle connection is
                    // reopened, as real clients do); thread 1 opens one per request.
                    let result = if t == 0 {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => conn.insert(Conn::connect(addr).expect("connect")),
                        };
                        let path = if i.is_multiple_of(2) { "/version" } else { "/proxy" };
                        let r = c.exchange(&request("GET", "r.test", path, &[], None));
                        if r.as_ref().is_ok_and(|r| !r.keeps_alive()) {
                            conn = None;
                        }
                        r
                    } else {
                        Ok(get(addr, "r.test", "/proxy"))
                    };
                    match result {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.push(format!("status {} {}", r.status, r.body_str())),
                        Err(e) => failures.push(format!("{e}")),
                    }
                }
                failures
            })
        })
        .collect();
    for round in 1..=5u32 {
        std::thread::sleep(Duration::from_millis(400));
        let up = if round.is_multiple_of(2) { &a } else { &b };
        gw.reload(&config(&format!("v{round}"), &[up]));
    }
    let applied = wait::until(Duration::from_secs(5), || {
        get(addr, "r.test", "/version").body_str() == "v5"
    });
    stop.store(true, Ordering::SeqCst);
    let failures: Vec<String> = clients.into_iter().flat_map(|c| c.join().unwrap()).collect();
    assert!(applied, "the 5th reload never applied; stderr:\n{}", gw.stderr());
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::SeqCst) >= 50,
        "load loop did little: {}",
        ok.load(Ordering::SeqCst)
    );
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "reloads switched clusters: a {} b {}",
        a.requests(),
        b.requests()
    );
    assert!(gw.running());
}

#[test]
fn broken_reload_keeps_running_config() {
    let up = Upstream::start(Behaviour::Echo);
    let mut gw = Gateway::start(&config("good", &[&up]));
    let addr = gw.addr("http");
    let broken = config("bad", &[&up]).replace("cluster: backend}", "cluster: missing}");
    gw.reload(&broken);
    assert!(
        wait::until(Duration::from_secs(5), || gw.stderr().contains("missing")),
        "the rejected reload was not logged with its reason; stderr:\n{}",
        gw.stderr()
    );
    assert!(gw.running());
    assert_eq!(get(addr, "r.test", "/version").body_str(), "good");
    assert_eq!(get(addr, "r.test", "/p").status, 200);
    // A good config afterwards still applies.
    gw.reload(&config("fixed", &[&up]));
    assert!(wait::until(Duration::from_secs(5), || get(addr, "r.test", "/version")
        .body_str()
        == "fixed"));
}

#[test]
fn file_change_reloads_without_signal() {
    let up = Upstream::start(Behaviour::Echo);
    let mut gw = Gateway::start(&config("one", &[&up]));
    let addr = gw.addr("http");
    gw.write_config(&config("two", &[&up]));
    assert!(
        wait::until(Duration::from_secs(8), || get(addr, "r.test", "/version").body_str()
            == "two"),
        "a changed config file was not picked up; stderr:\n{}",
        gw.stderr()
    );
}

#[test]
fn sigterm_drains_in_flight_requests() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(1500)));
    let mut gw = Gateway::start(&config("d", &[&up]));
    let addr = gw.addr("http");
    let mut idle = Conn::connect(addr).unwrap();
    assert_eq!(
        idle.exchange(&request("GET", "r.test", "/version", &[], None))
            .unwrap()
            .status,
        200
    );
    let inflight = std::thread::spawn(move || {
        let mut c = Conn::connect(addr).unwrap();
        c.exchange(&request("GET", "r.test", "/slow", &[], None))
    });
    assert!(
        wait::until(Duration::from_secs(5), || up.in_flight() == 1),
        "request never reached the upstream"
    );
    gw.signal(libc::SIGTERM);
    // Stop accepting: new connections are refused soon after SIGTERM.
    assert!(
        wait::until(Duration::from_secs(2), || TcpStream::connect_timeout(
            &addr,
            Duration::from_millis(100)
        )
        .is_err()),
        "still accepting connections after SIGTERM"
    );
    assert!(
        idle.peer_closed_within(Duration::from_secs(2)),
        "idle keep-alive connection not closed on SIGTERM"
    );
    let r = inflight.join().unwrap().expect("in-flight request answered");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["path"], "/slow");
    let status = gw.wait_exit(Duration::from_secs(5));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after drain: {status}; stderr:\n{}",
        gw.stderr()
    );
}

#[test]
fn drain_timeout_bounds_the_stop() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_secs(20)));
    let yaml = config("d", &[&up])
        .replace("drain_timeout: 5s", "drain_timeout: 500ms")
        .replace(
            "proxy: {cluster: backend}",
            "proxy: {cluster: backend, read_timeout: 30s}",
        );
    let mut gw = Gateway::start(&yaml);
    let addr = gw.addr("http");
    let _inflight = std::thread::spawn(move || {
        let mut c = Conn::connect(addr).unwrap();
        // The answer (or a reset) comes when the drain gives up; either is fine.
        let _ = c.exchange(&request("GET", "r.test", "/slow", &[], None));
    });
    assert!(wait::until(Duration::from_secs(5), || up.in_flight() == 1));
    let t = Instant::now();
    gw.signal(libc::SIGINT);
    gw.wait_exit(Duration::from_secs(5));
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "drain_timeout 500ms, stop took {:?}",
        t.elapsed()
    );
}

#[test]
fn in_flight_request_finishes_on_its_snapshot() {
    let old = Upstream::start(Behaviour::Delay(Duration::from_millis(800)));
    let new = Upstream::start(Behaviour::Echo);
    let mut gw = Gateway::start(&config("old", &[&old]));
    let addr = gw.addr("http");
    let inflight = std::thread::spawn(move || {
        let mut c = Conn::connect(addr).unwrap();
        c.exchange(&request("GET", "r.test", "/started-before-reload", &[], None))
    });
    assert!(wait::until(Duration::from_secs(5), || old.in_flight() == 1));
    gw.reload(&config("new", &[&new]));
    assert!(wait::until(Duration::from_secs(5), || get(addr, "r.test", "/version")
        .body_str()
        == "new"));
    let r = inflight.join().unwrap().expect("in-flight request answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some(old.port().to_string().as_str()));
    assert_eq!(
        get(addr, "r.test", "/after").header("x-upstream"),
        Some(new.port().to_string().as_str())
    );
}

fn listeners_config(names: &[&str]) -> String {
    let listeners: Vec<String> = names
        .iter()
        .map(|name| format!("{{name: {name}, address: \"127.0.0.1:${{{name}}}\"}}"))
        .collect();
    format!(
        r#"
runtime: {{workers: 2}}
access_log: {{path: "off"}}
listeners: [{}]
hosts:
  - name: all
    domains: ["*"]
    routes:
      - {{name: hello, direct_response: {{body: "hello"}}}}
"#,
        listeners.join(", ")
    )
}

#[test]
fn reload_adds_and_removes_listeners_on_every_worker() {
    let mut gw = Gateway::start(&listeners_config(&["first"]));
    let first = gw.addr("first");
    gw.reload(&listeners_config(&["first", "second"]));
    let second = gw.addr("second");
    assert!(
        wait::until(Duration::from_secs(5), || TcpStream::connect(second).is_ok()),
        "the added listener never accepted; stderr:\n{}",
        gw.stderr()
    );
    // Several connections, so both workers' new sockets are exercised.
    for _ in 0..20 {
        assert_eq!(get(second, "l.test", "/").body_str(), "hello");
        assert_eq!(get(first, "l.test", "/").body_str(), "hello");
    }
    gw.reload(&listeners_config(&["second"]));
    assert!(
        wait::until(Duration::from_secs(5), || TcpStream::connect(first).is_err()),
        "the removed listener still accepts; stderr:\n{}",
        gw.stderr()
    );
    for _ in 0..20 {
        assert_eq!(get(second, "l.test", "/").body_str(), "hello");
    }
}
