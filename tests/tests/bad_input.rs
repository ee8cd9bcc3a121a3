//! Bad input end to end, with raw bytes: every malformed request gets its
//! status and a short body and never reaches the upstream; upstream failures
//! map to 502, 503 and 504.

use std::time::Duration;

use tollgate_e2e::client::{raw_request, Response};
use tollgate_e2e::{eps, metrics, wait, Behaviour, Gateway, Upstream};

fn config(up: &Upstream, cluster_extra: &str) -> String {
    r#"
runtime: {workers: 1}
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}", max_uri_bytes: 1024}]
hosts:
  - name: all
    domains: ["*"]
    routes:
      - {name: small, match: {prefix: "/small"}, proxy: {cluster: backend}, max_body_bytes: 1000}
      - {name: all, proxy: {cluster: backend, read_timeout: 300ms}}
clusters:
  - {name: backend, endpoints: UPS, outlier_detection: {consecutive_failures: 0} CLUSTER}
"#
    .replace("UPS", &eps(&[up]))
    .replace("CLUSTER", cluster_extra)
}

/// Sends `bytes`, expects `status` with a short body, and checks that the
/// upstream saw nothing.
fn rejects(gw: &Gateway, up: &Upstream, bytes: &[u8], status: u16) -> Response {
    let before = up.requests();
    let r = raw_request(gw.addr("http"), bytes)
        .unwrap_or_else(|e| panic!("no response to {:?}: {e}", String::from_utf8_lossy(bytes)));
    assert_eq!(
        r.status,
        status,
        "for {:?}: {}",
        String::from_utf8_lossy(bytes),
        r.body_str()
    );
    assert!(
        r.body.len() < 512,
        "error body should be short, got {} bytes",
        r.body.len()
    );
    // Give a wrongly forwarded request time to arrive before checking.
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        up.requests(),
        before,
        "{:?} reached the upstream",
        String::from_utf8_lossy(bytes)
    );
    r
}

fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up, ""));
    (gw, up)
}

#[test]
fn syntax_errors_400() {
    let (gw, up) = setup();
    for bytes in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\nHost: a\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let r = rejects(&gw, &up, bytes, 400);
        assert!(!r.keeps_alive(), "a 400 must close the connection: {:?}", r.headers);
    }
    let rejected = metrics::sum(&gw.metrics(), "tollgate_downstream_errors_total", &[("status", "400")]);
    assert_eq!(rejected, Some(5.0), "each rejected request is counted");
    // The gateway is still healthy afterwards.
    assert_eq!(tollgate_e2e::client::get(gw.addr("http"), "a", "/").status, 200);
    assert_eq!(up.requests(), 1);
}

#[test]
fn conflicting_framing_400() {
    let (gw, up) = setup();
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    );
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    );
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    );
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        400,
    );
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello",
        400,
    );
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        400,
    );
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        400,
    );
}

#[test]
fn invalid_chunk_size_400() {
    let (gw, up) = setup();
    let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        "zz\r\nhello\r\n0\r\n\r\n",
        "-5\r\nhello\r\n0\r\n\r\n",
        "fffffffffffffffffff\r\nx\r\n0\r\n\r\n",
    ] {
        rejects(&gw, &up, format!("{head}{body}").as_bytes(), 400);
    }
}

#[test]
fn obs_fold_400() {
    let (gw, up) = setup();
    rejects(
        &gw,
        &up,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        400,
    );
    rejects(
        &gw,
        &up,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n\ttwo\r\n\r\n",
        400,
    );
}

#[test]
fn nul_cr_lf_in_header_values_400() {
    let (gw, up) = setup();
    rejects(&gw, &up, b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\x00b\r\n\r\n", 400);
    rejects(&gw, &up, b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\rb\r\n\r\n", 400);
    rejects(&gw, &up, b"GET / HTTP/1.1\r\nHost: a\r\nX-Bad: a\nb\r\n\r\n", 400);
}

#[test]
fn uri_too_long_414() {
    let (gw, up) = setup();
    let path = format!("/{}", "a".repeat(2000));
    rejects(
        &gw,
        &up,
        format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
        414,
    );
    // Just under the limit still passes.
    let ok = format!("/{}", "a".repeat(1000));
    let r = raw_request(
        gw.addr("http"),
        format!("GET {ok} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn headers_too_large_431() {
    let (gw, up) = setup();
    let big = "b".repeat(70 * 1024);
    rejects(
        &gw,
        &up,
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes(),
        431,
    );
    let many: String = (0..2000).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(30))).collect();
    rejects(
        &gw,
        &up,
        format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes(),
        431,
    );
}

#[test]
fn body_over_route_limit_413() {
    let (gw, up) = setup();
    let body = vec![b'x'; 2000];
    let mut req = b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 2000\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    rejects(&gw, &up, &req, 413);
    // At the limit it passes.
    let mut req = b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n".to_vec();
    req.extend_from_slice(&body[..1000]);
    assert_eq!(raw_request(gw.addr("http"), &req).unwrap().status, 200);
}

#[test]
fn upstream_close_without_response_502() {
    let up = Upstream::start(Behaviour::CloseWithoutResponse);
    let gw = Gateway::start(&config(&up, ""));
    let r = raw_request(gw.addr("http"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(r.body.len() < 512);
}

#[test]
fn upstream_garbage_502() {
    let up = Upstream::start(Behaviour::Garbage);
    let gw = Gateway::start(&config(&up, ""));
    let r = raw_request(gw.addr("http"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 502, "{}", r.body_str());
    assert!(
        !r.body_str().contains("SSH-2.0"),
        "upstream garbage leaked to the client"
    );
}

#[test]
fn no_healthy_endpoint_503() {
    let up = Upstream::start(Behaviour::Echo);
    up.set_health(500);
    let gw = Gateway::start(&config(
        &up,
        ", health_check: {path: /health, interval: 100ms, timeout: 80ms, healthy_threshold: 1, unhealthy_threshold: 1}",
    ));
    let ep = up.endpoint();
    assert!(
        wait::until(Duration::from_secs(5), || {
            metrics::sum(&gw.metrics(), "tollgate_endpoint_healthy", &[("endpoint", &ep)]) == Some(0.0)
        }),
        "endpoint never marked unhealthy:\n{}",
        gw.metrics()
    );
    let r = raw_request(gw.addr("http"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 503, "{}", r.body_str());
    assert_eq!(up.requests(), 0, "no request may go to an unhealthy endpoint");
}

#[test]
fn upstream_timeout_504() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_secs(3)));
    let gw = Gateway::start(&config(&up, ""));
    let r = raw_request(gw.addr("http"), b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(r.status, 504, "{}", r.body_str());
}

#[test]
fn missing_host_and_space_before_colon_400() {
    let (gw, up) = setup();
    rejects(&gw, &up, b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", 400);
    rejects(&gw, &up, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400);
    rejects(
        &gw,
        &up,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc",
        400,
    );
}

#[test]
fn slow_request_head_is_cut_off() {
    let up = Upstream::start(Behaviour::Echo);
    let gw =
        Gateway::start(&config(&up, "").replace("max_uri_bytes: 1024", "max_uri_bytes: 1024, header_timeout: 300ms"));
    let mut c = tollgate_e2e::Conn::connect(gw.addr("http")).unwrap();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ").unwrap();
    let t = std::time::Instant::now();
    // Either a 408 then close, or a plain close: both free the connection.
    match c.read_response() {
        Ok(r) => assert_eq!(r.status, 408, "{}", r.body_str()),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "never cut off: {e}"),
    }
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "header_timeout 300ms, cut off after {:?}",
        t.elapsed()
    );
    assert_eq!(up.requests(), 0);
}

#[test]
fn body_limit_with_expect_and_chunked_413() {
    let (gw, up) = setup();
    // With Expect: 100-continue the client has not sent the body yet: the
    // gateway answers 413 from the head alone.
    let mut c = tollgate_e2e::Conn::connect(gw.addr("http")).unwrap();
    c.send(b"POST /small HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413, "{}", r.body_str());
    assert_eq!(up.requests(), 0);
    // A chunked body has no length up front; going over the limit still ends in 413.
    let mut req = b"POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"1f4\r\n");
        req.extend_from_slice(&[b'y'; 500]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let r = raw_request(gw.addr("http"), &req).unwrap();
    assert_eq!(r.status, 413, "{}", r.body_str());
}

#[test]
fn large_headers_under_the_limit_pass_intact() {
    let (gw, up) = setup();
    let big = "v".repeat(60 * 1024);
    let many: String = (0..100).map(|i| format!("X-Many-{i}: value-{i}\r\n")).collect();
    let req = format!("GET /big HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n{many}\r\n");
    let r = raw_request(gw.addr("http"), req.as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    let seen = &up.seen()[0];
    assert_eq!(seen.header("x-big").map(str::len), Some(big.len()));
    let order: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.starts_with("x-many-"))
        .map(|(_, v)| v.as_str())
        .collect();
    let want: Vec<String> = (0..100).map(|i| format!("value-{i}")).collect();
    assert_eq!(order, want, "headers forwarded in order");
}
