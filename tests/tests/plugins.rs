//! proxy-wasm plugins end to end: the shipped plugins (built by
//! `cargo xtask plugins` with the public Rust SDK) running in the gateway as
//! WAMR AOT and in the fast interpreter, against real upstreams and a real
//! redis-server; misbehaving plugins under both fail strategies; modules and
//! configs the gateway must refuse; hot update under load; the VM budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate_e2e::client::{request, write_pattern_body};
use tollgate_e2e::plugins::{plugin, Mode};
use tollgate_e2e::{gateway, metrics, pattern_hash, wait, Behaviour, Conn, Fnv, Gateway, Redis, Response, Upstream};

/// One listener, host `all` (every domain) routing to `backend`, and the
/// given `plugins:` section (a YAML flow mapping) and extra clusters.
fn config(up: &Upstream, workers: usize, plugins: &str, extra_clusters: &str) -> String {
    format!(
        r#"
runtime: {{workers: {workers}}}
access_log: {{path: "off"}}
listeners: [{{name: http, address: "127.0.0.1:${{http}}"}}]
hosts:
  - {{name: all, domains: ["*"], routes: [{{name: all, proxy: {{cluster: backend}}}}]}}
clusters:
  - {{name: backend, endpoints: ["{up}"]}}
{extra_clusters}
plugins: {plugins}
"#,
        up = up.endpoint()
    )
}

fn module(name: &str, mode: Mode) -> String {
    plugin(name, mode).display().to_string()
}

fn send(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Response {
    let mut conn = Conn::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.exchange(&request(method, "example.test", path, headers, body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The request headers the echo upstream saw, from its JSON answer.
fn upstream_header(response: &Response, name: &str) -> Option<String> {
    let json = response.json();
    json["headers"].as_array()?.iter().find_map(|pair| {
        let pair = pair.as_array()?;
        (pair[0].as_str()? == name).then(|| pair[1].as_str().unwrap_or_default().to_string())
    })
}

#[test]
fn header_rewrite_and_key_auth_run_in_both_modes() {
    let up = Upstream::start(Behaviour::Echo);
    for mode in Mode::BOTH {
        let plugins = format!(
            r#"{{plugins: [
                {{name: auth, module: "{auth}", configuration: {{keys: [x-api-key], consumers: [{{name: alice, credential: k-alice}}]}}}},
                {{name: rewrite, module: "{rewrite}", order: 5, configuration: {{request: {{set: {{x-env: prod}}, remove: [x-debug]}}, response: {{set: {{cache-control: no-store}}}}}}}}
            ]}}"#,
            auth = module("key-auth", mode),
            rewrite = module("header-rewrite", mode),
        );
        let gw = Gateway::start(&config(&up, 2, &plugins, ""));
        let addr = gw.addr("http");

        let missing = send(addr, "GET", "/a", &[], None);
        assert_eq!(missing.status, 401, "{mode:?}: {}", missing.body_str());
        assert!(missing.body_str().contains("missing API key"), "{}", missing.body_str());
        let wrong = send(addr, "GET", "/a", &[("x-api-key", "nope")], None);
        assert_eq!(wrong.status, 403, "{mode:?}");

        let ok = send(addr, "GET", "/a", &[("x-api-key", "k-alice"), ("x-debug", "1")], None);
        assert_eq!(ok.status, 200, "{mode:?}: {}", ok.body_str());
        assert_eq!(upstream_header(&ok, "x-consumer").as_deref(), Some("alice"));
        assert_eq!(upstream_header(&ok, "x-env").as_deref(), Some("prod"));
        assert_eq!(
            upstream_header(&ok, "x-api-key"),
            None,
            "the key never reaches the upstream"
        );
        assert_eq!(upstream_header(&ok, "x-debug"), None);
        assert_eq!(ok.header("cache-control"), Some("no-store"), "response rewrite");
        let loaded = metrics::sum(&gw.metrics(), "tollgate_plugin_instances", &[("plugin", "rewrite")]);
        assert_eq!(loaded, Some(2.0), "one instance per worker when the budget allows");
        let mode_label = if mode == Mode::Aot { "aot" } else { "interpreter" };
        let text = gw.metrics();
        assert!(
            text.contains(&format!(
                "tollgate_plugin_instances{{plugin=\"auth\",mode=\"{mode_label}\"}} 2"
            )),
            "{text}"
        );
    }
}

#[test]
fn basic_auth_cors_and_body_transform_in_both_modes() {
    let up = Upstream::start(Behaviour::Echo);
    for mode in Mode::BOTH {
        let plugins = format!(
            r#"{{plugins: [
                {{name: cors, module: "{cors}", configuration: {{allow_origins: ["https://app.example"], allow_methods: [GET, POST], allow_headers: [content-type, authorization], max_age: 600}}}},
                {{name: basic, module: "{basic}", configuration: {{consumers: [{{name: bob, credential: "bob:s3cret"}}]}}}},
                {{name: mask, module: "{mask}", configuration: {{direction: request, mask_fields: [password, card.number]}}}}
            ]}}"#,
            cors = module("cors", mode),
            basic = module("basic-auth", mode),
            mask = module("body-transform", mode),
        );
        let gw = Gateway::start(&config(&up, 2, &plugins, ""));
        let addr = gw.addr("http");

        let preflight = send(
            addr,
            "OPTIONS",
            "/api",
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "POST"),
            ],
            None,
        );
        assert_eq!(preflight.status, 204, "{}", preflight.body_str());
        assert_eq!(
            preflight.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        let foreign = send(
            addr,
            "OPTIONS",
            "/api",
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
            None,
        );
        assert_eq!(foreign.status, 403);

        let unauthenticated = send(addr, "GET", "/api", &[("origin", "https://app.example")], None);
        assert_eq!(unauthenticated.status, 401);
        assert_eq!(
            unauthenticated.header("www-authenticate"),
            Some("Basic realm=\"tollgate\"")
        );

        // "bob:s3cret" in base64.
        let auth = ("authorization", "Basic Ym9iOnMzY3JldA==");
        let body = br#"{"user":"bob","password":"hunter2","card":{"number":"4111","cvc":"1"}}"#;
        let posted = send(
            addr,
            "POST",
            "/api",
            &[
                auth,
                ("origin", "https://app.example"),
                ("content-type", "application/json"),
            ],
            Some(body),
        );
        assert_eq!(posted.status, 200, "{}", posted.body_str());
        assert_eq!(
            posted.header("access-control-allow-origin"),
            Some("https://app.example")
        );
        assert_eq!(upstream_header(&posted, "x-consumer").as_deref(), Some("bob"));
        assert_eq!(upstream_header(&posted, "authorization"), None);
        // serde_json writes keys in sorted order.
        let masked = br#"{"card":{"cvc":"1","number":"***"},"password":"***","user":"bob"}"#;
        let mut digest = Fnv::default();
        digest.update(masked);
        let seen = posted.json();
        assert_eq!(seen["body_len"], masked.len(), "{seen}");
        assert_eq!(seen["body_hash"], digest.hex(), "the upstream got the masked body");
        assert_eq!(
            seen["chunked"], false,
            "a rewritten body goes upstream with Content-Length"
        );
    }
}

#[test]
fn local_rate_limit_counts_across_workers_in_both_modes() {
    let up = Upstream::start(Behaviour::Echo);
    for mode in Mode::BOTH {
        // An hour-long window: the test never straddles a window boundary in practice.
        let plugins = format!(
            r#"{{plugins: [{{name: limit, module: "{m}", configuration: {{key: global, requests: 5, window: 3600}}}}]}}"#,
            m = module("local-rate-limit", mode)
        );
        let gw = Gateway::start(&config(&up, 2, &plugins, ""));
        let addr = gw.addr("http");
        let statuses: Vec<u16> = (0..9).map(|_| send(addr, "GET", "/", &[], None).status).collect();
        assert_eq!(statuses.iter().filter(|&&s| s == 200).count(), 5, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|&&s| s == 429).count(), 4, "{statuses:?}");
        assert_eq!(&statuses[..5], &[200; 5], "the first five pass: {statuses:?}");
        let refused = send(addr, "GET", "/", &[], None);
        assert!(refused.header("retry-after").is_some(), "{:?}", refused.headers);
    }
}

#[test]
fn redis_rate_limit_is_shared_through_a_real_redis_server() {
    let redis = Redis::start(Some("pw"));
    let up = Upstream::start(Behaviour::Echo);
    let plugins = format!(
        r#"{{plugins: [{{name: global-limit, module: "{m}", configuration: {{redis_cluster: redis, password: pw, key: "header:x-user", requests: 3, window_seconds: 3600, key_prefix: e2e}}}}]}}"#,
        m = module("redis-rate-limit", Mode::Aot)
    );
    let clusters = format!("  - {{name: redis, endpoints: [\"{}\"]}}", redis.endpoint());
    // Two gateways with two workers each share one limit through Redis.
    let first = Gateway::start(&config(&up, 2, &plugins, &clusters));
    let second = Gateway::start(&config(&up, 2, &plugins, &clusters));
    let mut statuses = Vec::new();
    for i in 0..8 {
        let gw = if i % 2 == 0 { &first } else { &second };
        statuses.push(send(gw.addr("http"), "GET", "/", &[("x-user", "carol")], None).status);
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429, 429, 429, 429]);
    // Another key has its own count.
    assert_eq!(
        send(first.addr("http"), "GET", "/", &[("x-user", "dave")], None).status,
        200
    );
    let keys = redis.command(Some("pw"), &["DBSIZE"]);
    assert_eq!(keys, "2", "one counter per key lives in redis");
}

/// Two hosts: `open.test` runs the plugin failing open, `closed.test` the
/// same module failing closed.
fn misbehaving_config(up: &Upstream, module: &str, configuration: &str) -> String {
    format!(
        r#"
runtime: {{workers: 2}}
access_log: {{path: "off"}}
listeners: [{{name: http, address: "127.0.0.1:${{http}}"}}]
hosts:
  - {{name: open, domains: [open.test], routes: [{{name: r, proxy: {{cluster: backend}}}}]}}
  - {{name: closed, domains: [closed.test], routes: [{{name: r, proxy: {{cluster: backend}}}}]}}
clusters:
  - {{name: backend, endpoints: ["{up}"]}}
plugins:
  plugins:
    - {{name: bad-open, module: "{module}", configuration: {configuration}, hosts: [open], fail_strategy: fail_open, max_memory: 16MiB, max_call_time: 50ms}}
    - {{name: bad-closed, module: "{module}", configuration: {configuration}, hosts: [closed], fail_strategy: fail_closed, max_memory: 16MiB, max_call_time: 50ms}}
"#,
        up = up.endpoint()
    )
}

fn on_host(addr: SocketAddr, host: &str, headers: &[(&str, &str)]) -> Response {
    let mut conn = Conn::connect(addr).expect("connect");
    conn.exchange(&request("GET", host, "/", headers, None))
        .unwrap_or_else(|e| panic!("GET on {host}: {e}"))
}

#[test]
fn misbehaving_plugins_fail_by_strategy_and_heal() {
    let up = Upstream::start(Behaviour::Echo);
    // (plugin, configuration, fault kind, request headers that arm it)
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        ("test-trap", r#"{on: request_headers}"#, "trap", &[]),
        (
            "test-loop",
            r#"{on: request_headers, header: x-loop}"#,
            "timeout",
            &[("x-loop", "1")],
        ),
        ("test-alloc", r#"{header: x-alloc}"#, "memory", &[("x-alloc", "1")]),
        ("test-unknown-import", r#"{}"#, "trap", &[]),
    ];
    for mode in Mode::BOTH {
        for (name, configuration, kind, arm) in cases {
            let gw = Gateway::start(&misbehaving_config(&up, &module(name, mode), configuration));
            let addr = gw.addr("http");
            // A keep-alive connection through the plugin-free default path stays up throughout.
            let mut bystander = Conn::connect(addr).expect("connect");
            let started = Instant::now();
            let closed = on_host(addr, "closed.test", arm);
            assert_eq!(closed.status, 503, "{name} {mode:?} fail_closed: {}", closed.body_str());
            assert!(
                closed.body_str().contains("bad-closed"),
                "names the plugin: {}",
                closed.body_str()
            );
            let open = on_host(addr, "open.test", arm);
            assert_eq!(open.status, 200, "{name} {mode:?} fail_open: {}", open.body_str());
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{name} {mode:?}: the watchdog bounds a runaway call"
            );
            let text = gw.metrics();
            for plugin in ["bad-open", "bad-closed"] {
                let faults = metrics::sum(
                    &text,
                    "tollgate_plugin_faults_total",
                    &[("plugin", plugin), ("kind", kind)],
                );
                assert!(
                    faults >= Some(1.0),
                    "{name} {mode:?}: {plugin} {kind} faults: {faults:?}\n{text}"
                );
            }
            // The faulted instances are recreated in the background.
            assert!(
                wait::until(Duration::from_secs(5), || {
                    let text = gw.metrics();
                    metrics::sum(&text, "tollgate_plugin_restarts_total", &[("plugin", "bad-closed")]) >= Some(1.0)
                        && metrics::sum(&text, "tollgate_plugin_instances", &[("plugin", "bad-closed")]) == Some(2.0)
                }),
                "the instances are recreated"
            );
            if !arm.is_empty() {
                // Unarmed requests run through the recreated instance normally.
                assert_eq!(on_host(addr, "closed.test", &[]).status, 200, "{name} {mode:?}");
            }
            let reply = bystander
                .exchange(&request("GET", "open.test", "/", &[], None))
                .expect("the unrelated keep-alive connection still works");
            assert!(reply.status == 200 || reply.status == 503, "{}", reply.status);
            assert!(
                gw.stderr().contains(name) || gw.stderr().contains("faulted"),
                "the fault is logged"
            );
        }
    }
}

#[test]
fn unimplemented_host_calls_return_an_error_status() {
    let up = Upstream::start(Behaviour::Echo);
    let plugins = format!(
        r#"{{plugins: [{{name: grpc, module: "{m}", configuration: {{call_unknown: false}}}}]}}"#,
        m = module("test-unknown-import", Mode::Aot)
    );
    let gw = Gateway::start(&config(&up, 1, &plugins, ""));
    let response = send(gw.addr("http"), "GET", "/", &[], None);
    assert_eq!(response.status, 200);
    let status = response.header("x-grpc-status").expect("the plugin reports the status");
    assert_ne!(status, "0", "gRPC is not implemented: the call must not report Ok");
}

/// `tollgate check` refuses the config and names the plugin and the reason.
fn assert_refused(yaml: &str, plugin_name: &str, reason: &str) {
    let port = tollgate_e2e::ports::free_port().to_string();
    let (code, text) = gateway::check(&yaml.replace("${http}", &port));
    assert_ne!(code, Some(0), "accepted: {text}");
    assert!(text.contains(plugin_name), "names the plugin {plugin_name}: {text}");
    assert!(text.contains(reason), "says {reason:?}: {text}");
}

#[test]
fn bad_modules_and_rejected_configs_are_refused() {
    let up = Upstream::start(Behaviour::Echo);
    let dir = tempfile::tempdir().expect("temp dir");
    let one = |name: &str, path: &str, configuration: &str| {
        config(
            &up,
            1,
            &format!(r#"{{plugins: [{{name: {name}, module: "{path}", configuration: {configuration}}}]}}"#),
            "",
        )
    };

    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"this is not wasm at all").unwrap();
    assert_refused(
        &one("junk", &garbage.display().to_string(), "{}"),
        "junk",
        "not a wasm or AOT file",
    );

    // A valid module that is not a proxy-wasm plugin: (module (func (export "f"))).
    let bare = dir.path().join("bare.wasm");
    std::fs::write(
        &bare,
        [
            0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00,
            0x07, 0x05, 0x01, 0x01, b'f', 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,
        ],
    )
    .unwrap();
    assert_refused(
        &one("bare", &bare.display().to_string(), "{}"),
        "bare",
        "proxy_abi_version",
    );

    // An AOT file from another WAMR AOT format version.
    let mut aot = std::fs::read(plugin("header-rewrite", Mode::Aot)).unwrap();
    assert_eq!(&aot[..4], b"\0aot");
    aot[4] = aot[4].wrapping_add(1);
    let stale = dir.path().join("stale.aot");
    std::fs::write(&stale, aot).unwrap();
    assert_refused(&one("stale", &stale.display().to_string(), "{}"), "stale", "version");

    // AOT files of the right format version that this tree's tollgate-aotc did
    // not stamp: one from another WAMR release (its stamp says so) and one
    // from a compiler that writes no stamp (the section is not there).
    /// `bytes` with the one occurrence of `from` replaced by `to` (same length).
    fn replaced(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        assert_eq!(from.len(), to.len());
        let at: Vec<usize> = (0..=bytes.len() - from.len())
            .filter(|&i| &bytes[i..i + from.len()] == from)
            .collect();
        assert_eq!(at.len(), 1, "{:?} occurs once", String::from_utf8_lossy(from));
        let mut out = bytes.to_vec();
        out[at[0]..at[0] + to.len()].copy_from_slice(to);
        out
    }
    let aot = std::fs::read(plugin("header-rewrite", Mode::Aot)).unwrap();
    let refusal = "AOT file not built by tollgate-aotc for WAMR 2.4.3 with Tollgate's options (";
    let release = dir.path().join("release.aot");
    std::fs::write(
        &release,
        replaced(&aot, b"tollgate-aotc WAMR 2.4.3 ", b"tollgate-aotc WAMR 2.4.2 "),
    )
    .unwrap();
    let release = one("release", &release.display().to_string(), "{}");
    assert_refused(&release, "release", refusal);
    assert_refused(
        &release,
        "release",
        r#"its stamp is "tollgate-aotc WAMR 2.4.2 patches:"#,
    );
    assert_refused(&release, "release", "recompile it with tollgate-aotc");
    let unstamped = dir.path().join("unstamped.aot");
    std::fs::write(
        &unstamped,
        replaced(&aot, b"tollgate-aot-stamp\0", b"tollgate-aot-stamq\0"),
    )
    .unwrap();
    let unstamped = one("unstamped", &unstamped.display().to_string(), "{}");
    assert_refused(
        &unstamped,
        "unstamped",
        &format!("{refusal}it has no stamp, this gateway expects stamp"),
    );

    // The plugin rejects its configuration in on_configure.
    let key_auth = module("key-auth", Mode::Aot);
    assert_refused(&one("auth", &key_auth, r#"{keys: []}"#), "auth", "configuration");
    // A plugin that traps in on_configure.
    let trap = module("test-trap", Mode::Interpreter);
    assert_refused(&one("trapper", &trap, r#"{on: configure}"#), "trapper", "configur");
}

#[test]
fn a_refused_plugin_change_keeps_the_running_config() {
    let up = Upstream::start(Behaviour::Echo);
    let rewrite = module("header-rewrite", Mode::Aot);
    let with = |configuration: &str| {
        config(
            &up,
            2,
            &format!(r#"{{plugins: [{{name: rw, module: "{rewrite}", configuration: {configuration}}}]}}"#),
            "",
        )
    };
    let mut gw = Gateway::start(&with(r#"{response: {set: {x-version: v1}}}"#));
    let addr = gw.addr("http");
    assert_eq!(send(addr, "GET", "/", &[], None).header("x-version"), Some("v1"));
    // header-rewrite refuses a pseudo-header.
    gw.reload(&with(r#"{response: {set: {":status": "500"}}}"#));
    assert!(
        wait::until(Duration::from_secs(5), || gw.stderr().contains("plugins[\"rw\"]")),
        "the refusal is logged: {}",
        gw.stderr()
    );
    let after = send(addr, "GET", "/", &[], None);
    assert_eq!(after.status, 200);
    assert_eq!(after.header("x-version"), Some("v1"), "the running plugin stays");
}

#[test]
fn hot_update_under_load_drops_nothing() {
    let up = Upstream::start(Behaviour::Echo);
    let rewrite = module("header-rewrite", Mode::Aot);
    let with = |version: &str| {
        config(
            &up,
            2,
            &format!(
                r#"{{plugins: [{{name: rw, module: "{rewrite}", configuration: {{response: {{set: {{x-version: {version}}}}}}}}}]}}"#
            ),
            "",
        )
    };
    let mut gw = Gateway::start(&with("v1"));
    let addr = gw.addr("http");
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let seen_v2 = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, failures, seen_v2) = (stop.clone(), failures.clone(), seen_v2.clone());
            std::thread::spawn(move || {
                let mut conn = Conn::connect(addr).expect("connect");
                let mut sent = 0;
                // Bounded: at most 2,000 requests or until told to stop.
                while sent < 2000 && !stop.load(Ordering::Relaxed) {
                    sent += 1;
                    match conn.exchange(&request("GET", "example.test", "/", &[], None)) {
                        Ok(r) if r.status == 200 => {
                            if r.header("x-version") == Some("v2") {
                                seen_v2.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        _ => {
                            failures.fetch_add(1, Ordering::Relaxed);
                            conn = Conn::connect(addr).expect("reconnect");
                        }
                    }
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    gw.reload(&with("v2"));
    assert!(
        wait::until(Duration::from_secs(10), || { seen_v2.load(Ordering::Relaxed) > 20 }),
        "responses carry v2"
    );
    stop.store(true, Ordering::Relaxed);
    let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(sent > 100, "the load loop ran: {sent}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed over {sent}");
}

#[test]
fn vm_budget_bounds_instances_with_64_workers() {
    let up = Upstream::start(Behaviour::Echo);
    let rewrite = module("header-rewrite", Mode::Aot);
    let list: Vec<String> = (0..8)
        .map(|i| {
            format!(r#"{{name: rw{i}, module: "{rewrite}", configuration: {{request: {{set: {{x-p{i}: "1"}}}}}}}}"#)
        })
        .collect();
    let plugins = format!("{{vm_budget: 16, plugins: [{}]}}", list.join(", "));
    let gw =
        Gateway::start(&config(&up, 64, &plugins, "").replace("{workers: 64}", "{workers: 64, pin_workers: false}"));
    let text = gw.metrics();
    let total: f64 = metrics::samples(&text, "tollgate_plugin_instances")
        .iter()
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 16.0, "{text}");
    for i in 0..8 {
        let plugin = format!("rw{i}");
        assert_eq!(
            metrics::sum(&text, "tollgate_plugin_instances", &[("plugin", &plugin)]),
            Some(2.0)
        );
    }
    assert!(gw.stderr().contains("vm_budget 16"), "startup logs the arithmetic");
    // Requests from many connections (spread over workers) all see every plugin.
    for _ in 0..20 {
        let response = send(gw.addr("http"), "GET", "/", &[], None);
        assert_eq!(response.status, 200);
        for i in 0..8 {
            assert_eq!(upstream_header(&response, &format!("x-p{i}")).as_deref(), Some("1"));
        }
    }
}

#[test]
fn probe_exercises_the_host_abi() {
    let up = Upstream::start(Behaviour::Echo);
    let callout = Upstream::start(Behaviour::Fixed {
        status: 200,
        body: "callout body".into(),
    });
    for mode in Mode::BOTH {
        let plugins = format!(
            r#"{{plugins: [{{name: probe, module: "{m}", configuration: {{tick_ms: 20}}, environment: {{TOLLGATE_PROBE: from-config}}}}]}}"#,
            m = module("test-probe", mode)
        );
        let clusters = format!("  - {{name: side, endpoints: [\"{}\"]}}", callout.endpoint());
        let gw = Gateway::start(&config(&up, 2, &plugins, &clusters));
        let addr = gw.addr("http");

        let r = send(addr, "GET", "/p?q=1", &[], None);
        assert_eq!(r.status, 200, "{mode:?}: {}", r.body_str());
        assert_eq!(upstream_header(&r, "x-probe-path").as_deref(), Some("/p?q=1"));
        assert_eq!(upstream_header(&r, "x-probe-method").as_deref(), Some("GET"));
        assert_eq!(upstream_header(&r, "x-probe-host").as_deref(), Some("example.test"));
        assert_eq!(upstream_header(&r, "x-probe-scheme").as_deref(), Some("http"));
        assert_eq!(upstream_header(&r, "x-probe-protocol").as_deref(), Some("HTTP/1.1"));
        assert_eq!(upstream_header(&r, "x-probe-route").as_deref(), Some("all"));
        assert_eq!(upstream_header(&r, "x-probe-cluster").as_deref(), Some("backend"));
        assert_eq!(upstream_header(&r, "x-probe-plugin").as_deref(), Some("probe"));
        assert_eq!(upstream_header(&r, "x-probe-tls-version").as_deref(), Some("-"));
        let source = upstream_header(&r, "x-probe-source").unwrap();
        assert!(source.starts_with("127.0.0.1:"), "{source}");
        assert_eq!(upstream_header(&r, "x-probe-destination"), Some(addr.to_string()));
        assert_eq!(
            upstream_header(&r, "x-probe-id"),
            upstream_header(&r, "x-request-id"),
            "request.id is the request id"
        );
        assert_eq!(r.header("x-probe-response"), Some("1"));

        // Shared data is counted over both workers' instances.
        let hits: Vec<u64> = (0..6)
            .map(|_| {
                send(addr, "GET", "/", &[], None)
                    .header("x-probe-hits")
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert!(hits.windows(2).all(|w| w[1] > w[0]), "{hits:?}");

        let denied = send(addr, "GET", "/", &[("x-probe-deny", "418")], None);
        assert_eq!(denied.status, 418);
        assert_eq!(denied.header("x-probe"), Some("denied"));
        assert_eq!(denied.body_str(), "denied by probe");

        let called = send(addr, "GET", "/", &[("x-probe-call", "side")], None);
        assert_eq!(called.status, 200, "{}", called.body_str());
        assert_eq!(upstream_header(&called, "x-probe-call-status").as_deref(), Some("200"));
        assert_eq!(
            upstream_header(&called, "x-probe-call-body-bytes").as_deref(),
            Some("12")
        );
        let unknown = send(addr, "GET", "/", &[("x-probe-call", "nowhere")], None);
        assert_eq!(unknown.status, 502, "an http_call to an unknown cluster is refused");

        let echoed = send(addr, "POST", "/", &[("x-probe-echo-body", "1")], Some(b"hello, world"));
        assert_eq!(echoed.status, 200);
        let mut digest = Fnv::default();
        digest.update(b"HELLO, WORLD");
        assert_eq!(
            echoed.json()["body_hash"],
            digest.hex(),
            "the upstream got the rewritten body"
        );

        // Ticks and queue notifications arrive from the housekeeping thread.
        assert!(
            wait::until(Duration::from_secs(5), || {
                let r = send(addr, "GET", "/", &[], None);
                let number = |name: &str| r.header(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                number("x-probe-ticks") >= 3 && number("x-probe-dequeued") >= 5
            }),
            "ticks and queue deliveries"
        );
        let text = gw.metrics();
        let requests = metrics::sum(&text, "tollgate_wasm_probe_requests_total", &[]).unwrap_or(0.0);
        assert!(requests >= 10.0, "plugin-defined counter: {requests}\n{text}");
        assert!(text.contains("tollgate_wasm_probe_body_bytes_bucket"), "{text}");
        assert!(
            gw.stderr().contains("env TOLLGATE_PROBE=from-config"),
            "WASI stdout reaches the log: {}",
            gw.stderr()
        );
    }
}

#[test]
fn large_bodies_stream_through_plugins_and_buffering_is_bounded() {
    let up = Upstream::start(Behaviour::Echo);
    let plugins = format!(
        r#"{{plugins: [
            {{name: rw, module: "{rw}", configuration: {{request: {{set: {{x-seen: "1"}}}}}}}},
            {{name: probe, module: "{probe}", configuration: {{tick_ms: 0}}}}
        ]}}"#,
        rw = module("header-rewrite", Mode::Aot),
        probe = module("test-probe", Mode::Aot),
    );
    let gw = Gateway::start(&config(&up, 1, &plugins, ""));
    let len: u64 = 5_000_000;
    for chunked in [false, true] {
        // Five times the default max_buffered_body_bytes: it streams through the body callbacks.
        let mut c = Conn::connect(gw.addr("http")).unwrap();
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {len}")
        };
        c.send(format!("POST /up HTTP/1.1\r\nHost: b.test\r\n{framing}\r\n\r\n").as_bytes())
            .unwrap();
        write_pattern_body(c.stream(), len, chunked).unwrap();
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "chunked={chunked}: {}", r.body_str());
        let seen = r.json();
        assert_eq!(seen["body_len"], len, "chunked={chunked}");
        assert_eq!(seen["body_hash"], pattern_hash(len), "chunked={chunked}");
        assert_eq!(upstream_header(&r, "x-seen").as_deref(), Some("1"));
        // The connection stays usable after a streamed body.
        let again = c.exchange(&request("GET", "b.test", "/again", &[], None)).unwrap();
        assert_eq!(again.status, 200);
    }
    // A plugin that buffers the whole body (test-probe's echo) is bounded by max_buffered_body_bytes.
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(
        format!("POST /up HTTP/1.1\r\nHost: b.test\r\nx-probe-echo-body: 1\r\nContent-Length: {len}\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let _ = write_pattern_body(c.stream(), len, false);
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 413, "{}", r.body_str());
}

#[test]
fn response_bodies_are_rewritten_and_reframed() {
    let up = Upstream::start(Behaviour::Echo);
    for mode in Mode::BOTH {
        let plugins = format!(
            r#"{{plugins: [{{name: mask, module: "{m}", configuration: {{direction: response, mask_fields: [path, method]}}}}]}}"#,
            m = module("body-transform", mode)
        );
        let gw = Gateway::start(&config(&up, 1, &plugins, ""));
        let mut conn = Conn::connect(gw.addr("http")).unwrap();
        for _ in 0..2 {
            let r = conn
                .exchange(&request("GET", "example.test", "/secret-path", &[], None))
                .unwrap();
            assert_eq!(r.status, 200, "{mode:?}");
            let json = r.json();
            assert_eq!(json["path"], "***", "{mode:?}: {json}");
            assert_eq!(json["method"], "***");
            assert!(!r.body_str().contains("secret-path"));
            assert_eq!(
                r.header("transfer-encoding"),
                Some("chunked"),
                "the plugin dropped Content-Length"
            );
            assert!(r.keeps_alive(), "the connection carries the next request");
        }
    }
}

#[test]
fn redis_connections_are_reused_and_survive_the_server_closing_them() {
    // Redis closes connections idle for a second: the gateway must notice and reconnect.
    let redis = Redis::start_with(None, &["--timeout", "1"]);
    let up = Upstream::start(Behaviour::Echo);
    let plugins = format!(
        r#"{{plugins: [{{name: limit, module: "{m}", configuration: {{redis_cluster: redis, key: global, requests: 100, window_seconds: 3600, fail_open_on_redis_error: false}}}}]}}"#,
        m = module("redis-rate-limit", Mode::Aot)
    );
    let clusters = format!("  - {{name: redis, endpoints: [\"{}\"]}}", redis.endpoint());
    let gw = Gateway::start(&config(&up, 1, &plugins, &clusters));
    let addr = gw.addr("http");
    let connections_so_far = || -> u64 {
        redis
            .command(None, &["INFO", "stats"])
            .lines()
            .find_map(|line| line.strip_prefix("total_connections_received:"))
            .and_then(|n| n.trim().parse().ok())
            .expect("redis reports its connection count")
    };
    let before = connections_so_far();
    for _ in 0..5 {
        assert_eq!(send(addr, "GET", "/", &[], None).status, 200);
    }
    // The second INFO is one more connection.
    let gateway_connections = connections_so_far() - before - 1;
    assert_eq!(gateway_connections, 1, "one connection carries the five calls");
    std::thread::sleep(Duration::from_millis(2500));
    // fail_open_on_redis_error is off: a failed call would answer 503.
    assert_eq!(
        send(addr, "GET", "/", &[], None).status,
        200,
        "reconnects after redis closed the idle connection"
    );
}

#[test]
fn request_trailers_reach_the_plugins() {
    let up = Upstream::start(Behaviour::Echo);
    for mode in Mode::BOTH {
        let plugins = format!(
            r#"{{plugins: [{{name: probe, module: "{m}", configuration: {{tick_ms: 0}}}}]}}"#,
            m = module("test-probe", mode)
        );
        let gw = Gateway::start(&config(&up, 1, &plugins, ""));
        let mut conn = Conn::connect(gw.addr("http")).unwrap();
        conn.send(
            b"POST /t HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Tag: a\r\n\r\n",
        )
        .unwrap();
        let r = conn.read_response().unwrap();
        assert_eq!(r.status, 200, "{mode:?}: {}", r.body_str());
        assert_eq!(upstream_header(&r, "x-probe-trailers").as_deref(), Some("x-sum,x-tag"));
        assert_eq!(r.json()["body_len"], 5);
        // The framing stayed in sync: the connection serves the next request.
        let next = conn.exchange(&request("GET", "b.test", "/n", &[], None)).unwrap();
        assert_eq!(next.status, 200);
    }
}

#[test]
fn plugins_also_run_on_direct_responses_and_redirects() {
    for mode in Mode::BOTH {
        let yaml = format!(
            r#"
runtime: {{workers: 1}}
access_log: {{path: "off"}}
listeners: [{{name: http, address: "127.0.0.1:${{http}}"}}]
hosts:
  - name: site
    domains: ["*"]
    routes:
      - {{name: old, match: {{prefix: /old}}, redirect: {{path: /new}}}}
      - {{name: page, direct_response: {{status: 200, body: "hello page", content_type: text/plain}}}}
plugins:
  plugins:
    - {{name: auth, module: "{auth}", configuration: {{keys: [x-api-key], consumers: [{{name: alice, credential: k}}]}}}}
    - {{name: rewrite, module: "{rewrite}", configuration: {{response: {{set: {{x-served-by: plugin}}}}}}}}
"#,
            auth = module("key-auth", mode),
            rewrite = module("header-rewrite", mode),
        );
        let gw = Gateway::start(&yaml);
        let addr = gw.addr("http");
        assert_eq!(send(addr, "GET", "/", &[], None).status, 401, "{mode:?}");
        let page = send(addr, "GET", "/", &[("x-api-key", "k")], None);
        assert_eq!(page.status, 200);
        assert_eq!(page.body_str(), "hello page");
        assert_eq!(page.header("x-served-by"), Some("plugin"));
        assert_eq!(page.header("content-length"), Some("10"));
        let moved = send(addr, "GET", "/old", &[("x-api-key", "k")], None);
        assert_eq!(moved.status, 301, "{}", moved.body_str());
        assert!(
            moved.header("location").is_some_and(|l| l.ends_with("/new")),
            "{:?}",
            moved.headers
        );
        assert_eq!(moved.header("x-served-by"), Some("plugin"));
    }
}
