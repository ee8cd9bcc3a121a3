//! Routing end to end: virtual hosts by exact, wildcard and default name;
//! routes by prefix, exact, regex and header; redirect and direct responses;
//! 404 when nothing matches; forwarded and hop-by-hop header handling.

use std::process::Command;

use tollgate_e2e::client::{get, raw_request, request};
use tollgate_e2e::{eps, Behaviour, Gateway, Upstream};

const CONFIG: &str = r#"
runtime: {workers: 1}
access_log: {path: stdout}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - name: api
    domains: ["api.test", "*.api.test"]
    routes:
      - {name: users, match: {prefix: "/users/"}, proxy: {cluster: users, prefix_rewrite: "/"}}
      - {name: hello, match: {exact: "/hello"}, direct_response: {status: 200, body: "hi"}}
      - {name: items, match: {regex: "/items/[0-9]+"}, direct_response: {status: 200, body: "item"}}
      - name: canary
        match: {prefix: "/hdr", headers: [{name: x-canary, exact: "1"}]}
        direct_response: {body: "canary"}
      - {name: stable, match: {prefix: "/hdr"}, direct_response: {body: "stable"}}
      - {name: old, match: {exact: "/old"}, redirect: {path: "/new", status: 302}}
      - {name: secure, match: {prefix: "/secure"}, redirect: {scheme: https}}
  - name: other
    domains: ["other.test"]
    routes:
      - {name: x, match: {exact: "/x"}, direct_response: {status: 201, body: "x"}}
  - name: fallback
    domains: ["*"]
    routes:
      - {name: any, direct_response: {status: 200, body: "default"}}
clusters:
  - {name: users, endpoints: UPS}
"#;

fn start() -> (Gateway, Upstream) {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&CONFIG.replace("UPS", &eps(&[&up])));
    (gw, up)
}

#[test]
fn hosts_exact_wildcard_and_default() {
    let (gw, up) = start();
    let a = gw.addr("http");
    let r = get(a, "api.test", "/hello");
    assert_eq!((r.status, r.body_str().as_str()), (200, "hi"));
    // Host names match case-insensitively and ignore the port.
    assert_eq!(get(a, "API.Test:8080", "/hello").body_str(), "hi");
    assert_eq!(get(a, "eu.api.test", "/hello").body_str(), "hi");
    assert_eq!(get(a, "a.b.api.test", "/hello").body_str(), "hi");
    // "api.test.evil" is neither api.test nor *.api.test: default host.
    assert_eq!(get(a, "api.test.evil", "/hello").body_str(), "default");
    assert_eq!(get(a, "unknown.test", "/anything").body_str(), "default");
    let r = get(a, "other.test", "/x");
    assert_eq!((r.status, r.body_str().as_str()), (201, "x"));
    assert_eq!(up.requests(), 0, "no route here proxies");
}

#[test]
fn no_matching_route_is_404() {
    let (gw, up) = start();
    let a = gw.addr("http");
    assert_eq!(get(a, "other.test", "/y").status, 404);
    assert_eq!(get(a, "api.test", "/nothing").status, 404);
    // Exact means exact: neither a longer path nor a trailing slash.
    assert_eq!(get(a, "api.test", "/hello/").status, 404);
    assert_eq!(get(a, "api.test", "/hellox").status, 404);
    assert_eq!(up.requests(), 0);
}

#[test]
fn prefix_exact_and_regex_routes() {
    let (gw, up) = start();
    let a = gw.addr("http");
    let r = get(a, "api.test", "/users/42?x=1");
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(
        r.json()["path"],
        "/42?x=1",
        "prefix_rewrite replaces the matched prefix"
    );
    // "/users" lacks the trailing slash of the prefix "/users/".
    assert_eq!(get(a, "api.test", "/users").status, 404);
    assert_eq!(get(a, "api.test", "/items/123").body_str(), "item");
    // The regex is anchored to the whole path.
    assert_eq!(get(a, "api.test", "/items/12a").status, 404);
    assert_eq!(get(a, "api.test", "/x/items/12").status, 404);
    assert_eq!(up.requests(), 1);
}

#[test]
fn header_match_selects_route() {
    let (gw, _up) = start();
    let a = gw.addr("http");
    let with = |v: &str| {
        raw_request(
            a,
            &request(
                "GET",
                "api.test",
                "/hdr",
                &[("X-Canary", v), ("Connection", "close")],
                None,
            ),
        )
        .unwrap()
        .body_str()
    };
    assert_eq!(with("1"), "canary");
    assert_eq!(with("2"), "stable");
    assert_eq!(get(a, "api.test", "/hdr").body_str(), "stable");
}

#[test]
fn redirects() {
    let (gw, _up) = start();
    let a = gw.addr("http");
    let r = get(a, "api.test", "/old?q=1");
    assert_eq!(r.status, 302);
    let loc = r.header("location").expect("Location header");
    assert!(loc.ends_with("api.test/new?q=1"), "Location {loc:?}");
    let r = get(a, "api.test", "/secure/page");
    assert_eq!(r.status, 301, "default redirect status");
    assert_eq!(r.header("location"), Some("https://api.test/secure/page"));
}

#[test]
fn forwarded_headers_request_id_and_hop_by_hop_removal() {
    let (gw, up) = start();
    let a = gw.addr("http");
    let req = request(
        "GET",
        "api.test",
        "/users/me",
        &[
            ("Connection", "X-Hop, keep-alive"),
            ("X-Hop", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("X-End-To-End", "kept"),
            ("X-Forwarded-For", "10.1.2.3"),
        ],
        None,
    );
    let r = raw_request(a, &req).unwrap();
    assert_eq!(r.status, 200);
    let seen = &up.seen()[0];
    for hop in ["x-hop", "keep-alive", "proxy-connection", "te"] {
        assert!(
            seen.header(hop).is_none(),
            "hop-by-hop {hop} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.header("x-end-to-end"), Some("kept"));
    assert_eq!(seen.header("x-forwarded-for"), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("api.test"));
    let id = seen.header("x-request-id").expect("a generated request id");
    assert!(!id.is_empty());

    // A request id sent by the client is kept; generated ones differ.
    let req = request("GET", "api.test", "/users/me", &[("X-Request-Id", "abc-123")], None);
    raw_request(a, &req).unwrap();
    raw_request(a, &request("GET", "api.test", "/users/me", &[], None)).unwrap();
    let seen = up.seen();
    assert_eq!(seen[1].header("x-request-id"), Some("abc-123"));
    assert_ne!(seen[2].header("x-request-id"), Some(id));
}

#[test]
fn curl_as_a_real_client() {
    let (gw, up) = start();
    let url = format!("http://{}/users/curl", gw.addr("http"));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-H",
            "Host: api.test",
            "-w",
            "\n%{http_code}",
            &url,
        ])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').expect("curl output");
    assert_eq!(code, "200", "curl: {text} {}", String::from_utf8_lossy(&out.stderr));
    let j: serde_json::Value = serde_json::from_str(body).expect("JSON echo");
    assert_eq!(j["path"], "/curl");
    assert!(up.seen()[0].header("user-agent").unwrap_or("").starts_with("curl/"));
}

#[test]
fn weights_host_rewrite_dns_names_and_content_type() {
    let heavy = Upstream::start(Behaviour::Echo);
    let light = Upstream::start(Behaviour::Echo);
    let named = Upstream::start(Behaviour::Echo);
    let yaml = r#"
runtime: {workers: 1}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - name: all
    domains: ["*"]
    routes:
      - {name: w, match: {prefix: "/w"}, proxy: {cluster: weighted, host_rewrite: "backend.internal"}}
      - {name: n, match: {prefix: "/n"}, proxy: {cluster: named}}
      - name: j
        match: {exact: "/json"}
        direct_response: {status: 418, body: "{\"ok\":true}", content_type: "application/json"}
clusters:
  - name: weighted
    endpoints: [{address: "HEAVY", weight: 3}, {address: "LIGHT", weight: 1}]
  - {name: named, endpoints: ["localhost:NAMED_PORT"]}
"#
    .replace("HEAVY", &heavy.endpoint())
    .replace("LIGHT", &light.endpoint())
    .replace("NAMED_PORT", &named.port().to_string());
    let gw = Gateway::start(&yaml);
    let a = gw.addr("http");
    let mut c = tollgate_e2e::Conn::connect(a).unwrap();
    for _ in 0..40 {
        assert_eq!(
            c.exchange(&request("GET", "w.test", "/w", &[], None)).unwrap().status,
            200
        );
    }
    assert_eq!(
        (heavy.requests(), light.requests()),
        (30, 10),
        "weights 3:1 over 40 requests"
    );
    assert_eq!(heavy.seen()[0].header("host"), Some("backend.internal"));
    assert_eq!(heavy.seen()[0].header("x-forwarded-host"), Some("w.test"));
    let r = get(a, "n.test", "/n/x");
    assert_eq!(r.status, 200, "a DNS-named endpoint: {}", r.body_str());
    assert_eq!(named.requests(), 1);
    let r = get(a, "j.test", "/json");
    assert_eq!(r.status, 418);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.body_str(), "{\"ok\":true}");
}

#[test]
fn errors_keep_the_connection_usable() {
    let (gw, _up) = start();
    let mut c = tollgate_e2e::Conn::connect(gw.addr("http")).unwrap();
    let r = c
        .exchange(&request("GET", "other.test", "/missing", &[], None))
        .unwrap();
    assert_eq!(r.status, 404);
    assert!(r.keeps_alive(), "a 404 need not close the connection");
    let r = c.exchange(&request("GET", "api.test", "/hello", &[], None)).unwrap();
    assert_eq!(r.body_str(), "hi");
    let r = c.exchange(&request("GET", "api.test", "/old", &[], None)).unwrap();
    assert_eq!(r.status, 302);
    let r = c
        .exchange(&request("GET", "api.test", "/users/after", &[], None))
        .unwrap();
    assert_eq!(r.json()["path"], "/after");
}

/// RFC 9110 §7.6.3: a gateway adds Via to requests it forwards (after any
/// the client sent); §6.6.1: a forwarded response without Date gets one.
#[test]
fn via_is_added_and_a_missing_date_is_supplied() {
    let (gw, up) = start();
    let a = gw.addr("http");
    let r = raw_request(
        a,
        &request("GET", "api.test", "/users/me", &[("Via", "1.0 corp-proxy")], None),
    )
    .unwrap();
    assert_eq!(r.status, 200);
    let seen = &up.seen()[0];
    let via: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("via"))
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(via, ["1.0 corp-proxy", "1.1 tollgate"], "{:?}", seen.headers);
    let date = r
        .header("date")
        .expect("the echo upstream sends no Date; the gateway must add one");
    assert!(
        httpdate::parse_http_date(date).is_ok(),
        "Date is not an HTTP-date: {date}"
    );
    assert_eq!(
        r.headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("date"))
            .count(),
        1
    );
}
