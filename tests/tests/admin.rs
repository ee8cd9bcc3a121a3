//! The admin listener and the access log end to end: /healthz, /readyz,
//! /metrics names and values after known traffic, and the JSON access-log
//! line fields.

use std::time::Duration;

use tollgate_e2e::client::{raw_request, request};
use tollgate_e2e::{eps, metrics, wait, Behaviour, Gateway, Upstream};

fn config(up: &Upstream, log: &str) -> String {
    r#"
runtime: {workers: 1}
access_log: {path: LOG}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - name: api
    domains: ["api.test"]
    routes:
      - {name: hello, match: {exact: "/hello"}, direct_response: {status: 200, body: "hi"}}
      - {name: users, match: {prefix: "/users"}, proxy: {cluster: users}}
clusters:
  - {name: users, endpoints: UPS}
"#
    .replace("UPS", &eps(&[up]))
    .replace("LOG", log)
}

#[test]
fn health_and_readiness() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up, "\"off\""));
    assert_eq!(gw.admin_get("/healthz").0, 200);
    assert_eq!(gw.admin_get("/readyz").0, 200);
    assert_eq!(gw.admin_get("/no-such-page").0, 404);
}

#[test]
fn metrics_count_requests_by_route_and_class() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up, "\"off\""));
    let a = gw.addr("http");
    for _ in 0..3 {
        assert_eq!(tollgate_e2e::client::get(a, "api.test", "/hello").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(tollgate_e2e::client::get(a, "api.test", "/users/1").status, 200);
    }
    assert_eq!(tollgate_e2e::client::get(a, "api.test", "/missing").status, 404);
    let text = gw.metrics();
    let count = |route: &str, class: &str| {
        metrics::sum(
            &text,
            "tollgate_requests_total",
            &[("host", "api"), ("route", route), ("class", class)],
        )
    };
    assert_eq!(count("hello", "2xx"), Some(3.0), "{text}");
    assert_eq!(count("users", "2xx"), Some(2.0), "{text}");
    assert_eq!(
        metrics::sum(&text, "tollgate_worker_requests_total", &[]),
        Some(6.0),
        "{text}"
    );
    assert_eq!(
        metrics::sum(
            &text,
            "tollgate_upstream_connections_opened_total",
            &[("cluster", "users")]
        ),
        Some(1.0),
        "two proxied requests on fresh client connections share one pooled upstream connection:\n{text}"
    );
    assert_eq!(
        metrics::sum(
            &text,
            "tollgate_upstream_connections_reused_total",
            &[("cluster", "users")]
        ),
        Some(1.0)
    );
    let upstream_count = metrics::sum(&text, "tollgate_upstream_response_seconds_count", &[]);
    assert!(
        upstream_count.is_some_and(|c| c >= 2.0),
        "upstream latency histogram:\n{text}"
    );
    assert!(text.contains("tollgate_upstream_response_seconds_bucket"), "{text}");
    assert!(
        metrics::sum(&text, "tollgate_active_connections", &[]).is_some(),
        "active connections gauge:\n{text}"
    );
    // The idle gauge is refreshed by the workers' housekeeping, not per request.
    let pooled = || metrics::sum(&gw.metrics(), "tollgate_upstream_pool_idle", &[]);
    assert!(
        wait::until(Duration::from_secs(5), || pooled() == Some(1.0)),
        "pool idle gauge: {:?}",
        pooled()
    );
    // A request no route matched has no route label: it may be counted by
    // status among the requests rejected before routing, or by class; once.
    let not_found = metrics::sum(&text, "tollgate_downstream_errors_total", &[("status", "404")]).unwrap_or(0.0)
        + metrics::sum(&text, "tollgate_requests_total", &[("class", "4xx")]).unwrap_or(0.0);
    assert_eq!(not_found, 1.0, "the 404 is counted once by status:\n{text}");
}

#[test]
fn active_connections_gauge_follows_open_connections() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up, "\"off\""));
    let active = || metrics::sum(&gw.metrics(), "tollgate_active_connections", &[]).unwrap_or(-1.0);
    let conns: Vec<_> = (0..3)
        .map(|_| {
            let mut c = tollgate_e2e::Conn::connect(gw.addr("http")).unwrap();
            assert_eq!(
                c.exchange(&request("GET", "api.test", "/hello", &[], None))
                    .unwrap()
                    .status,
                200
            );
            c
        })
        .collect();
    assert!(
        wait::until(Duration::from_secs(3), || active() == 3.0),
        "gauge {} with 3 open",
        active()
    );
    drop(conns);
    assert!(
        wait::until(Duration::from_secs(3), || active() == 0.0),
        "gauge {} after closing",
        active()
    );
}

#[test]
fn access_log_json_fields() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up, "stdout"));
    let req = request(
        "POST",
        "api.test",
        "/users/7?q=1",
        &[("X-Request-Id", "req-42")],
        Some(b"12345"),
    );
    let r = raw_request(gw.addr("http"), &req).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        wait::until(Duration::from_secs(3), || !gw.access_log().is_empty()),
        "no JSON line on stdout"
    );
    let line = gw.access_log().into_iter().next().unwrap();
    for field in [
        "time",
        "client",
        "host",
        "method",
        "path",
        "status",
        "bytes",
        "upstream",
        "upstream_time_ms",
        "total_time_ms",
        "request_id",
    ] {
        assert!(line.get(field).is_some(), "access log line lacks {field:?}: {line}");
    }
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "api.test");
    assert!(line["path"].as_str().unwrap().starts_with("/users/7"), "{line}");
    assert_eq!(line["status"], 200);
    assert_eq!(line["request_id"], "req-42");
    assert_eq!(line["upstream"], up.endpoint());
    assert!(line["client"].as_str().unwrap().starts_with("127.0.0.1"), "{line}");
    assert!(
        line["bytes"].as_u64().is_some_and(|b| b as usize >= r.body.len()),
        "{line}"
    );
}

#[test]
fn access_log_to_file() {
    let up = Upstream::start(Behaviour::Echo);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&config(&up, &format!("\"{}\"", path.display())));
    assert_eq!(
        tollgate_e2e::client::get(gw.addr("http"), "api.test", "/hello").status,
        200
    );
    let read = || std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        wait::until(Duration::from_secs(3), || read().lines().count() == 1),
        "file: {:?}",
        read()
    );
    let line: serde_json::Value = serde_json::from_str(read().lines().next().unwrap()).unwrap();
    assert_eq!(line["path"], "/hello");
    assert!(gw.access_log().is_empty(), "access log went to stdout too");
}
