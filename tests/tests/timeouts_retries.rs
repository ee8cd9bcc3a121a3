//! Timeouts and retries end to end: 504 when the upstream is slower than the
//! read timeout, a bounded connect timeout to a blackholed address, retries
//! on connect failure and on configured statuses (idempotent requests only).

use std::time::{Duration, Instant};

use tollgate_e2e::client::{get, raw_request, request};
use tollgate_e2e::ports::closed_port;
use tollgate_e2e::{eps, Behaviour, Blackhole, Gateway, Upstream};

fn config(endpoints: &str, cluster_extra: &str, proxy_extra: &str) -> String {
    r#"
runtime: {workers: 1}
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - {name: all, domains: ["*"], routes: [{name: all, proxy: {cluster: backend PROXY}}]}
clusters:
  - {name: backend, endpoints: UPS, lb_policy: round_robin CLUSTER}
"#
    .replace("UPS", endpoints)
    .replace("CLUSTER", cluster_extra)
    .replace("PROXY", proxy_extra)
}

#[test]
fn read_timeout_gives_504() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_secs(3)));
    let gw = Gateway::start(&config(&eps(&[&up]), "", ", read_timeout: 300ms"));
    let t = Instant::now();
    let r = get(gw.addr("http"), "t.test", "/slow");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{}", r.body_str());
    assert!(took >= Duration::from_millis(250), "504 after only {took:?}");
    assert!(
        took < Duration::from_millis(2000),
        "504 took {took:?} with read_timeout 300ms"
    );
    // A timed-out GET is not retried on the same single endpoint.
    assert_eq!(up.requests(), 1);
}

#[test]
fn cluster_read_timeout_applies_without_route_override() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_secs(3)));
    let gw = Gateway::start(&config(&eps(&[&up]), ", read_timeout: 400ms", ""));
    let t = Instant::now();
    assert_eq!(get(gw.addr("http"), "t.test", "/slow").status, 504);
    assert!(t.elapsed() < Duration::from_millis(2000), "took {:?}", t.elapsed());
}

#[test]
fn connect_timeout_to_blackhole_is_bounded() {
    let hole = Blackhole::new();
    let gw = Gateway::start(&config(
        &format!("[\"{}\"]", hole.addr),
        ", connect_timeout: 300ms, outlier_detection: {consecutive_failures: 0}",
        "",
    ));
    let t = Instant::now();
    let r = get(gw.addr("http"), "t.test", "/");
    let took = t.elapsed();
    assert!(
        [502, 503, 504].contains(&r.status),
        "connect timeout gave {} {}",
        r.status,
        r.body_str()
    );
    assert!(
        took >= Duration::from_millis(250),
        "failed after only {took:?}: was the connect really attempted?"
    );
    assert!(
        took < Duration::from_millis(2500),
        "connect_timeout 300ms took {took:?}"
    );
}

#[test]
fn connect_refused_retries_on_other_endpoint() {
    let up = Upstream::start(Behaviour::Echo);
    let dead = format!("127.0.0.1:{}", closed_port());
    let gw = Gateway::start(&config(
        &format!("[\"{dead}\", \"{}\"]", up.endpoint()),
        ", outlier_detection: {consecutive_failures: 0}",
        "",
    ));
    let a = gw.addr("http");
    for i in 0..6 {
        let r = get(a, "t.test", &format!("/get{i}"));
        assert_eq!(r.status, 200, "GET {i}: {}", r.body_str());
    }
    // Nothing was sent on a refused connection, so even POST is safe to retry.
    for i in 0..6 {
        let r = raw_request(a, &request("POST", "t.test", &format!("/post{i}"), &[], Some(b"data"))).unwrap();
        assert_eq!(r.status, 200, "POST {i}: {}", r.body_str());
    }
    assert_eq!(up.requests(), 12);
}

#[test]
fn retry_on_status_only_for_idempotent_requests() {
    let bad = Upstream::start(Behaviour::Fixed {
        status: 503,
        body: "overloaded".into(),
    });
    let good = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(
        &eps(&[&bad, &good]),
        ", outlier_detection: {consecutive_failures: 0}",
        ", retry: {max_retries: 1, on_statuses: [503]}",
    ));
    let a = gw.addr("http");
    for i in 0..8 {
        let r = get(a, "t.test", &format!("/g{i}"));
        assert_eq!(r.status, 200, "GET {i} was not retried: {}", r.body_str());
    }
    let bad_after_gets = bad.requests();
    assert!(
        bad_after_gets >= 3,
        "round robin should have tried the 503 endpoint: {bad_after_gets}"
    );
    assert_eq!(good.requests(), 8);

    let mut n503 = 0;
    for i in 0..8 {
        let r = raw_request(a, &request("POST", "t.test", &format!("/p{i}"), &[], Some(b"x"))).unwrap();
        match r.status {
            200 => {}
            503 => n503 += 1,
            s => panic!("POST {i}: unexpected {s}"),
        }
    }
    assert!(n503 >= 3, "round robin should have sent POSTs to the 503 endpoint");
    assert_eq!(
        bad.requests() - bad_after_gets,
        n503,
        "a POST answered 503 must not be retried"
    );
    assert_eq!(good.requests(), 8 + 8 - n503);
}

#[test]
fn retries_bounded_by_endpoints() {
    let ups: Vec<Upstream> = (0..2)
        .map(|_| {
            Upstream::start(Behaviour::Fixed {
                status: 503,
                body: "no".into(),
            })
        })
        .collect();
    let gw = Gateway::start(&config(
        &eps(&[&ups[0], &ups[1]]),
        ", outlier_detection: {consecutive_failures: 0}",
        ", retry: {max_retries: 5, on_statuses: [503]}",
    ));
    let r = get(gw.addr("http"), "t.test", "/");
    assert_eq!(r.status, 503, "the last upstream answer is returned");
    let total = ups[0].requests() + ups[1].requests();
    assert_eq!(
        total, 2,
        "max_retries 5 with 2 endpoints must try each once, not {total} times"
    );
}

#[test]
fn request_sent_then_upstream_closed_retries_get_not_post() {
    let closer = Upstream::start(Behaviour::CloseWithoutResponse);
    let good = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(
        &eps(&[&closer, &good]),
        ", outlier_detection: {consecutive_failures: 0}",
        ", retry: {max_retries: 1}",
    ));
    let a = gw.addr("http");
    for i in 0..6 {
        assert_eq!(
            get(a, "t.test", &format!("/g{i}")).status,
            200,
            "GET {i} should be retried"
        );
    }
    let closer_after_gets = closer.requests();
    assert!(closer_after_gets >= 2);
    let mut n502 = 0;
    for i in 0..6 {
        let r = raw_request(a, &request("POST", "t.test", &format!("/p{i}"), &[], Some(b"once"))).unwrap();
        match r.status {
            200 => {}
            502 => n502 += 1,
            s => panic!("POST {i}: {s}"),
        }
    }
    assert!(n502 >= 2, "round robin should have sent POSTs to the closing endpoint");
    assert_eq!(
        closer.requests() - closer_after_gets,
        n502,
        "a sent POST must not be replayed"
    );
    let posts_at_good = good.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(
        posts_at_good,
        6 - n502,
        "a POST the first upstream may have processed reached a second one"
    );
}
