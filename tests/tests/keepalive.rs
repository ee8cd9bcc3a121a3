//! Keep-alive on both sides: many requests on one client connection reuse
//! few upstream connections; pipelined requests are answered in order; the
//! per-connection request limit and `Connection: close` end a connection;
//! nginx as the upstream confirms reuse from its own log.

use std::process::Command;
use std::time::Duration;

use tollgate_e2e::client::{raw_exchange, request, Conn};
use tollgate_e2e::{eps, wait, Behaviour, Gateway, Nginx, Upstream};

fn config(endpoints: &str, listener_extra: &str) -> String {
    r#"
runtime: {workers: 1}
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}" EXTRA}]
hosts:
  - {name: all, domains: ["*"], routes: [{name: all, proxy: {cluster: backend}}]}
clusters:
  - {name: backend, endpoints: UPS}
"#
    .replace("UPS", endpoints)
    .replace("EXTRA", listener_extra)
}

#[test]
fn reuse_on_both_sides() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let mut max_conn_request = 0;
    for i in 0..50 {
        let r = c
            .exchange(&request("GET", "ka.test", &format!("/{i}"), &[], None))
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r.keeps_alive(), "response {i} closes the connection: {:?}", r.headers);
        assert_eq!(r.json()["path"], format!("/{i}"));
        max_conn_request = max_conn_request.max(r.json()["conn_request"].as_u64().unwrap());
    }
    assert_eq!(up.requests(), 50);
    assert!(
        up.connections() <= 2,
        "50 requests used {} upstream connections",
        up.connections()
    );
    assert!(
        max_conn_request >= 25,
        "upstream connection reuse peaked at {max_conn_request}"
    );
}

#[test]
fn pipelined_requests_answered_in_order() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let mut all = Vec::new();
    for i in 0..5 {
        let body = format!("body-{i}");
        all.extend(request(
            "POST",
            "ka.test",
            &format!("/p{i}"),
            &[],
            Some(body.as_bytes()),
        ));
    }
    c.send(&all).unwrap();
    for i in 0..5 {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/p{i}"));
        assert_eq!(r.json()["body_len"], format!("body-{i}").len());
    }
}

#[test]
fn keepalive_request_limit_closes_connection() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ", keepalive_requests: 3"));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for i in 0..3 {
        let r = c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.keeps_alive(), i < 2, "response {i}: {:?}", r.headers);
    }
    assert!(
        c.peer_closed_within(Duration::from_secs(3)),
        "connection open after the 3rd request"
    );
}

#[test]
fn client_connection_close_and_http10() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let a = gw.addr("http");
    // raw_exchange reads until EOF: it returns promptly only if the gateway closes.
    let t = std::time::Instant::now();
    let out = raw_exchange(a, &request("GET", "ka.test", "/", &[("Connection", "close")], None));
    assert!(out.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&out));
    let out10 = raw_exchange(a, b"GET /old HTTP/1.0\r\nHost: ka.test\r\n\r\n");
    assert!(out10.starts_with(b"HTTP/1."), "{}", String::from_utf8_lossy(&out10));
    assert!(String::from_utf8_lossy(&out10).contains(" 200 "));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "gateway kept closing connections open"
    );
}

#[test]
fn idle_client_connection_times_out() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ", keepalive_timeout: 300ms"));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    assert_eq!(
        c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap().status,
        200
    );
    assert!(
        c.peer_closed_within(Duration::from_secs(3)),
        "idle connection not closed after keepalive_timeout"
    );
}

#[test]
fn nginx_upstream_sees_reused_connections() {
    let n = Nginx::start("server { listen 127.0.0.1:{{port}}; root {{dir}}/html; }");
    std::fs::write(n.dir().join("html/index.html"), "static from nginx\n").unwrap();
    let gw = Gateway::start(&config(&format!("[\"{}\"]", n.endpoint()), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for _ in 0..20 {
        let r = c
            .exchange(&request("GET", "ka.test", "/index.html", &[], None))
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body_str(), "static from nginx\n");
    }
    assert!(
        wait::until(Duration::from_secs(5), || n.access_entries().len() == 20),
        "{}",
        n.read("access.log")
    );
    let entries = n.access_entries();
    let conns: std::collections::HashSet<u64> = entries.iter().map(|e| e.0).collect();
    let max_reuse = entries.iter().map(|e| e.1).max().unwrap();
    assert!(
        conns.len() <= 2,
        "nginx saw {} connections for 20 requests",
        conns.len()
    );
    assert!(max_reuse >= 10, "nginx $connection_requests peaked at {max_reuse}");
}

#[test]
fn curl_reuses_its_connection() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let urls: Vec<String> = (0..5).map(|i| format!("http://{}/c{i}", gw.addr("http"))).collect();
    let out = Command::new("curl")
        .args(["-sS", "-v", "--max-time", "10", "-H", "Host: ka.test"])
        .args(&urls)
        .output()
        .expect("run curl");
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {verbose}");
    assert_eq!(verbose.matches("< HTTP/1.1 200").count(), 5, "{verbose}");
    let reused = verbose.matches("Re-using existing connection").count() + verbose.matches("Reusing existing").count();
    assert_eq!(reused, 4, "curl opened new connections: {verbose}");
    assert_eq!(up.requests(), 5);
    assert_eq!(up.connections(), 1, "the gateway reused one upstream connection");
}

#[test]
fn stale_pooled_upstream_connection_is_not_a_failure() {
    let up = Upstream::start(Behaviour::Echo);
    // The upstream drops idle connections after 100 ms, long before the
    // gateway's pool would: the next request must not be sent into a dead one.
    up.set_idle_close(Duration::from_millis(100));
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let a = gw.addr("http");
    let mut c = Conn::connect(a).unwrap();
    for i in 0..3 {
        let r = c
            .exchange(&request("GET", "ka.test", &format!("/g{i}"), &[], None))
            .unwrap();
        assert_eq!(r.status, 200, "GET {i}: {}", r.body_str());
        std::thread::sleep(Duration::from_millis(300));
        let r = c
            .exchange(&request("POST", "ka.test", &format!("/p{i}"), &[], Some(b"data")))
            .unwrap();
        assert_eq!(
            r.status,
            200,
            "POST {i} after the pooled connection closed: {}",
            r.body_str()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(up.requests(), 6);
}

#[test]
fn upstream_connection_close_is_honoured() {
    let up = Upstream::start(Behaviour::Echo);
    up.set_close_each(true);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for i in 0..10 {
        let r = c
            .exchange(&request("GET", "ka.test", &format!("/{i}"), &[], None))
            .unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.body_str());
        assert!(
            r.keeps_alive(),
            "the upstream's Connection: close is hop-by-hop; the client connection stays"
        );
    }
    assert_eq!(
        up.connections(),
        10,
        "a connection the upstream closed must not be reused"
    );
}

#[test]
fn head_and_bodiless_responses_keep_framing() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(&request("HEAD", "ka.test", "/h", &[], None)).unwrap();
    let r = c.read_response_with(true, &mut |_| {}).unwrap();
    assert_eq!(r.status, 200);
    // If the gateway waited for (or sent) a HEAD body, this exchange breaks.
    let r = c
        .exchange(&request("GET", "ka.test", "/after-head", &[], None))
        .unwrap();
    assert_eq!(r.json()["path"], "/after-head");
    up.set_behaviour(Behaviour::NoBody { status: 204 });
    let r = c.exchange(&request("DELETE", "ka.test", "/x", &[], None)).unwrap();
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    up.set_behaviour(Behaviour::NoBody { status: 304 });
    let r = c
        .exchange(&request(
            "GET",
            "ka.test",
            "/cached",
            &[("If-None-Match", "\"v1\"")],
            None,
        ))
        .unwrap();
    assert_eq!(r.status, 304);
    up.set_behaviour(Behaviour::Echo);
    let r = c.exchange(&request("GET", "ka.test", "/after-304", &[], None)).unwrap();
    assert_eq!(r.json()["path"], "/after-304");
}

#[test]
fn close_delimited_upstream_body_reaches_client() {
    let up = Upstream::start(Behaviour::CloseDelimited {
        body: "read until close ".repeat(1000),
    });
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let r = c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "read until close ".repeat(1000));
    if r.keeps_alive() {
        // Re-framed (chunked) for the client: the connection must still work.
        up.set_behaviour(Behaviour::Echo);
        assert_eq!(
            c.exchange(&request("GET", "ka.test", "/next", &[], None))
                .unwrap()
                .status,
            200
        );
    }
}

#[test]
fn chunked_trailers_then_pipelined_request() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(
        b"POST /t HTTP/1.1\r\nHost: ka.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          4;name=value\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: yes\r\n\r\n\
          GET /second HTTP/1.1\r\nHost: ka.test\r\n\r\n",
    )
    .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["body_len"], 9);
    let r = c.read_response().unwrap();
    assert_eq!(r.json()["path"], "/second");
}

#[test]
fn many_concurrent_connections() {
    let up = Upstream::start(Behaviour::Delay(Duration::from_millis(50)));
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let a = gw.addr("http");
    let threads: Vec<_> = (0..100)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = Conn::connect(a).unwrap();
                for j in 0..3 {
                    let r = c
                        .exchange(&request("GET", "ka.test", &format!("/{i}/{j}"), &[], None))
                        .unwrap();
                    assert_eq!(r.status, 200);
                    assert_eq!(r.json()["path"], format!("/{i}/{j}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(up.requests(), 300);
}

#[test]
fn aborted_request_body_poisons_only_its_upstream_connection() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&eps(&[&up]), ""));
    let a = gw.addr("http");
    // A chunked body whose second chunk size is invalid, sent after the head
    // has already been forwarded.
    let mut c = Conn::connect(a).unwrap();
    c.send(b"POST /bad HTTP/1.1\r\nHost: ka.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    c.send(b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: ka.test\r\n\r\n")
        .unwrap();
    match c.read_response() {
        Ok(r) => assert!(r.status == 400 || r.status == 502, "got {}", r.status),
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "hung: {e}"),
    }
    // A client that vanishes mid-body.
    let mut c2 = Conn::connect(a).unwrap();
    c2.send(b"POST /gone HTTP/1.1\r\nHost: ka.test\r\nContent-Length: 100000\r\n\r\npartial")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(c2);
    std::thread::sleep(Duration::from_millis(200));
    // The gateway must not reuse either half-written upstream connection.
    let mut c3 = Conn::connect(a).unwrap();
    for i in 0..5 {
        let r = c3
            .exchange(&request("GET", "ka.test", &format!("/ok{i}"), &[], None))
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.body_str());
        assert_eq!(r.json()["path"], format!("/ok{i}"));
    }
    let paths: Vec<String> = up.seen().iter().map(|s| s.path.clone()).collect();
    assert!(
        !paths.iter().any(|p| p == "/smuggled"),
        "bytes after a broken body reached the upstream: {paths:?}"
    );
}

fn pooled_config(up: &Upstream, pool: &str) -> String {
    config(&eps(&[up]), "").replace(
        "{name: backend, endpoints: ",
        &format!("{{name: backend, keepalive: {pool}, endpoints: "),
    )
}

#[test]
fn upstream_pool_limits() {
    // max_requests: an upstream connection carries at most 3 requests.
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pooled_config(&up, "{max_requests: 3}"));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for _ in 0..9 {
        assert_eq!(
            c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap().status,
            200
        );
    }
    assert_eq!(up.connections(), 3, "9 requests, 3 per upstream connection");

    // max_idle: 0 keeps nothing: every request opens a connection.
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pooled_config(&up, "{max_idle: 0}"));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for _ in 0..4 {
        assert_eq!(
            c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap().status,
            200
        );
    }
    assert_eq!(up.connections(), 4);

    // idle_timeout: a pooled connection idle longer than 200 ms is closed by the gateway.
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&pooled_config(&up, "{idle_timeout: 200ms}"));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    assert_eq!(
        c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap().status,
        200
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        c.exchange(&request("GET", "ka.test", "/", &[], None)).unwrap().status,
        200
    );
    assert_eq!(
        up.connections(),
        2,
        "the idle pooled connection should have been dropped"
    );
}
