//! Health end to end: active checks eject an endpoint whose health status
//! fails and restore it when it recovers (seen in traffic and in
//! tollgate_endpoint_healthy); passive ejection after consecutive failures,
//! and return after the ejection time.

use std::time::Duration;

use tollgate_e2e::client::get;
use tollgate_e2e::{metrics, one_cluster_config, wait, Behaviour, Gateway, Upstream};

fn healthy(gw: &Gateway, up: &Upstream) -> Option<f64> {
    let ep = up.endpoint();
    metrics::sum(
        &gw.metrics(),
        "tollgate_endpoint_healthy",
        &[("cluster", "backend"), ("endpoint", &ep)],
    )
}

#[test]
fn active_checks_eject_and_restore() {
    let a = Upstream::start(Behaviour::Echo);
    let b = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&one_cluster_config(
        &[&a, &b],
        ", health_check: {path: /health, interval: 100ms, timeout: 80ms, healthy_threshold: 1, unhealthy_threshold: 2}, \
         outlier_detection: {consecutive_failures: 0}",
    ));
    let addr = gw.addr("http");
    assert!(
        wait::until(Duration::from_secs(5), || a.health_probes() >= 2
            && b.health_probes() >= 2),
        "no probes"
    );
    assert!(
        wait::until(Duration::from_secs(5), || healthy(&gw, &a) == Some(1.0)),
        "{}",
        gw.metrics()
    );

    a.set_health(503);
    assert!(
        wait::until(Duration::from_secs(5), || healthy(&gw, &a) == Some(0.0)),
        "endpoint not marked unhealthy:\n{}",
        gw.metrics()
    );
    assert_eq!(healthy(&gw, &b), Some(1.0));
    let before = a.requests();
    let b_before = b.requests();
    for _ in 0..10 {
        assert_eq!(get(addr, "h.test", "/").status, 200);
    }
    assert_eq!(a.requests(), before, "an unhealthy endpoint got traffic");
    assert_eq!(b.requests(), b_before + 10);

    a.set_health(200);
    assert!(
        wait::until(Duration::from_secs(5), || healthy(&gw, &a) == Some(1.0)),
        "endpoint not restored:\n{}",
        gw.metrics()
    );
    for _ in 0..10 {
        assert_eq!(get(addr, "h.test", "/").status, 200);
    }
    assert!(
        a.requests() >= before + 4,
        "restored endpoint got {} of 10",
        a.requests() - before
    );
}

#[test]
fn passive_ejection_and_return() {
    let bad = Upstream::start(Behaviour::CloseWithoutResponse);
    let good = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&one_cluster_config(
        &[&bad, &good],
        ", outlier_detection: {consecutive_failures: 3, ejection_time: 2s}",
    ));
    let addr = gw.addr("http");
    for i in 0..20 {
        // GETs that fail on `bad` are retried on `good` (default 1 retry).
        let r = get(addr, "p.test", &format!("/{i}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.body_str());
    }
    let failures = bad.requests();
    assert!(
        (3..=4).contains(&failures),
        "ejection after 3 consecutive failures, yet the bad endpoint saw {failures} requests"
    );
    bad.set_behaviour(Behaviour::Echo);
    std::thread::sleep(Duration::from_millis(2300));
    for _ in 0..10 {
        assert_eq!(get(addr, "p.test", "/").status, 200);
    }
    assert!(bad.requests() > failures, "endpoint not back after ejection_time");
}
