//! Tests of YAML loading, validation paths, defaults and snapshot reuse.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::route::RouteAction;
use crate::upstream::LbPolicy;

fn errors_of(yaml: &str) -> Vec<(String, String)> {
    let config = parse_yaml(yaml).expect("yaml parses");
    match Snapshot::build(config, None) {
        Ok(_) => panic!("config unexpectedly valid"),
        Err(errors) => errors.0.into_iter().map(|error| (error.path, error.message)).collect(),
    }
}

fn build(yaml: &str) -> Snapshot {
    Snapshot::build(parse_yaml(yaml).expect("yaml parses"), None).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Asserts the exact set of error paths, and that each message contains its fragment.
fn assert_errors(yaml: &str, expected: &[(&str, &str)]) {
    let errors = errors_of(yaml);
    let paths: Vec<&str> = errors.iter().map(|(path, _)| path.as_str()).collect();
    let expected_paths: Vec<&str> = expected.iter().map(|(path, _)| *path).collect();
    assert_eq!(paths, expected_paths, "errors: {errors:#?}");
    for ((_, message), (path, fragment)) in errors.iter().zip(expected) {
        assert!(message.contains(fragment), "{path}: {message:?} lacks {fragment:?}");
    }
}

const MINIMAL: &str = "
listeners: [{name: http, address: 127.0.0.1:18080}]
hosts:
  - domains: ['*']
    routes: [{direct_response: {body: hi}}]
";

#[test]
fn default_config_validates_and_builds() {
    let snapshot = Snapshot::build(parse_yaml(DEFAULT_CONFIG).unwrap(), None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.listeners.len(), 1);
    assert_eq!(snapshot.listeners[0].name, "http");
    assert_eq!(snapshot.listeners[0].address, "0.0.0.0:8080".parse().unwrap());
    assert_eq!(snapshot.admin_address, "127.0.0.1:9901".parse().unwrap());
    assert_eq!(snapshot.access_log, AccessLogTarget::Stdout);
    let status = snapshot.router.route("localhost:8080", "/", &[]).expect("status route");
    let RouteAction::Direct(direct) = &status.action else {
        panic!("status route is not a direct response")
    };
    let body = std::str::from_utf8(&direct.body).unwrap();
    assert!(
        body.contains(&format!("tollgate {}", env!("CARGO_PKG_VERSION"))),
        "{body}"
    );
    assert!(body.contains("http 0.0.0.0:8080"), "{body}");
    let example = snapshot
        .router
        .route("any.host", "/example/a", &[])
        .expect("example route");
    let RouteAction::Proxy(proxy) = &example.action else {
        panic!("example route does not proxy")
    };
    assert_eq!(&*proxy.cluster.name, "example");
    assert_eq!(proxy.upstream_path("/example/a?b=1"), "/a?b=1");
}

#[test]
fn yaml_maps_onto_the_schema() {
    let config = parse_yaml(
        "
runtime: {workers: 4, io: epoll, drain_timeout: 5s, pin_workers: false}
admin: {address: '127.0.0.1:19901'}
access_log: {path: /var/log/tollgate.log}
http: {request_id_header: X-Trace, forwarded_headers: false}
listeners: [{name: http, address: '[::1]:18080', keepalive_requests: 7}]
hosts:
  - name: api
    domains: [api.example.com, '*.example.com']
    routes:
      - name: r
        match: {regex: '/v[0-9]+/.*', headers: [{name: x-env, exact: beta, invert: true}]}
        proxy: {cluster: c, retry: {max_retries: 0, on_statuses: [503]}}
        max_body_bytes: 1024
clusters:
  - name: c
    lb_policy: CONSISTENT_HASH_NOT
",
    );
    let message = config.unwrap_err().to_string();
    assert!(message.contains("clusters[0].lb_policy"), "{message}");
    assert!(message.contains("consistent_hash"), "{message}");

    let config = parse_yaml(
        "
runtime: {workers: 4, io: IO_DRIVER_IO_URING}
listeners: [{name: http, address: '127.0.0.1:18080'}]
hosts:
  - domains: ['*']
    routes:
      - match: {regex: '/v[0-9]+/.*', headers: [{name: x-env, exact: beta, invert: true}]}
        proxy: {cluster: c, retry: {max_retries: 0, on_statuses: [503]}}
clusters:
  - name: c
    lb_policy: consistent_hash
    hash_header: X-User
    endpoints: ['127.0.0.1:1', {address: '127.0.0.1:2', weight: 3}]
",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let runtime = config.runtime.as_ref().unwrap();
    assert_eq!(runtime.workers, "4");
    assert_eq!(runtime.io, proto::IoDriver::IoUring as i32);
    let route = &config.hosts[0].routes[0];
    let matcher = route.r#match.as_ref().unwrap();
    assert_eq!(matcher.regex, "/v[0-9]+/.*");
    assert!(matcher.headers[0].invert);
    assert_eq!(
        route.proxy.as_ref().unwrap().retry.as_ref().unwrap().max_retries,
        Some(0)
    );
    let cluster = &config.clusters[0];
    assert_eq!(cluster.lb_policy, proto::LbPolicy::ConsistentHash as i32);
    assert_eq!(
        cluster.endpoints,
        vec![
            proto::Endpoint {
                address: "127.0.0.1:1".into(),
                weight: 0
            },
            proto::Endpoint {
                address: "127.0.0.1:2".into(),
                weight: 3
            },
        ]
    );
    let snapshot = Snapshot::build(config, None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(snapshot.runtime.workers, WorkersSetting::Count(4));
    assert_eq!(snapshot.runtime.io, IoDriver::IoUring);
    let cluster = &snapshot.clusters["c"];
    assert_eq!(cluster.settings.lb_policy, LbPolicy::ConsistentHash);
    assert_eq!(cluster.settings.hash_header.as_deref(), Some("x-user"));
    assert_eq!(cluster.specs[0].weight, 1, "weight 0 means the default 1");
    assert_eq!(cluster.specs[1].weight, 3);
}

#[test]
fn every_io_and_lb_name_is_accepted() {
    for (name, value) in [
        ("auto", proto::IoDriver::Auto),
        ("io_uring", proto::IoDriver::IoUring),
        ("epoll", proto::IoDriver::Epoll),
        ("IO_DRIVER_EPOLL", proto::IoDriver::Epoll),
    ] {
        let config = parse_yaml(&format!("runtime: {{io: {name}}}")).unwrap();
        assert_eq!(config.runtime.unwrap().io, value as i32, "{name}");
    }
    for (name, value) in [
        ("round_robin", proto::LbPolicy::RoundRobin),
        ("least_request", proto::LbPolicy::LeastRequest),
        ("consistent_hash", proto::LbPolicy::ConsistentHash),
        ("LB_POLICY_LEAST_REQUEST", proto::LbPolicy::LeastRequest),
    ] {
        let config = parse_yaml(&format!("clusters: [{{name: c, lb_policy: {name}}}]")).unwrap();
        assert_eq!(config.clusters[0].lb_policy, value as i32, "{name}");
    }
    let message = parse_yaml("runtime: {io: Epoll}").unwrap_err().to_string();
    assert!(message.contains("runtime.io: unknown variant `Epoll`"), "{message}");
}

#[test]
fn unknown_fields_and_syntax_errors_name_the_place() {
    let message = parse_yaml("listeners:\n  - name: http\n    adress: 0.0.0.0:80\n")
        .unwrap_err()
        .to_string();
    assert!(message.contains("listeners[0]: unknown field `adress`"), "{message}");
    assert!(message.contains("line 3 column 5"), "{message}");

    let message = parse_yaml("runtime:\n  workers: a: b\n").unwrap_err().to_string();
    assert!(message.contains("line 2 column 13"), "{message}");

    let message = parse_yaml("runtime: {workers: [1]}").unwrap_err().to_string();
    assert!(message.contains("runtime.workers"), "{message}");
}

#[test]
fn load_file_names_the_file() {
    let dir = std::env::temp_dir().join(format!("tollgate-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.yaml");
    std::fs::write(&good, MINIMAL).unwrap();
    assert_eq!(load_file(&good).unwrap().listeners[0].name, "http");
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "runtime: {wokers: 2}\n").unwrap();
    let message = load_file(&bad).unwrap_err().to_string();
    assert!(message.starts_with(&bad.display().to_string()), "{message}");
    assert!(message.contains("unknown field `wokers`"), "{message}");
    let missing = load_file(dir.join("missing.yaml")).unwrap_err().to_string();
    assert!(missing.contains("missing.yaml"), "{missing}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn empty_config_needs_a_listener() {
    assert_errors("# nothing here\n", &[("listeners", "at least one listener")]);
}

#[test]
fn defaults_apply_in_one_place() {
    let snapshot = build(
        "
listeners: [{name: http, address: 127.0.0.1:18080}]
hosts:
  - domains: ['*']
    routes: [{proxy: {cluster: c}}]
clusters: [{name: c, endpoints: ['127.0.0.1:1'], health_check: {}}]
",
    );
    assert_eq!(
        snapshot.runtime,
        RuntimeSettings {
            workers: WorkersSetting::Auto,
            io: IoDriver::Auto,
            drain_timeout: Duration::from_secs(30),
            pin_workers: true,
        }
    );
    assert_eq!(
        snapshot.http,
        HttpSettings {
            request_id_header: "x-request-id".into(),
            forwarded_headers: true,
        }
    );
    assert_eq!(
        snapshot.listeners[0],
        ListenerSettings {
            name: "http".into(),
            address: "127.0.0.1:18080".parse().unwrap(),
            max_request_header_bytes: 65536,
            max_uri_bytes: 8192,
            keepalive_timeout: Duration::from_secs(75),
            keepalive_requests: 10_000,
            header_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            backlog: 32_768,
        }
    );
    let cluster = &snapshot.clusters["c"].settings;
    assert_eq!(cluster.lb_policy, LbPolicy::RoundRobin);
    assert_eq!(cluster.connect_timeout, Duration::from_secs(1));
    assert_eq!(cluster.read_timeout, Duration::from_secs(3));
    assert_eq!(cluster.send_timeout, Duration::from_secs(3));
    assert_eq!(cluster.dns_refresh, Duration::from_secs(30));
    assert_eq!(cluster.keepalive.max_idle, 200);
    assert_eq!(cluster.keepalive.max_requests, 10_000);
    assert_eq!(cluster.keepalive.idle_timeout, Duration::from_secs(100));
    assert_eq!(cluster.outlier.consecutive_failures, 5);
    assert_eq!(cluster.outlier.ejection_time, Duration::from_secs(30));
    let health = cluster.health_check.as_ref().expect("health check on");
    assert_eq!(health.path, "/");
    assert_eq!(health.interval, Duration::from_secs(5));
    assert_eq!(health.timeout, Duration::from_secs(1));
    assert_eq!((health.healthy_threshold, health.unhealthy_threshold), (2, 3));
    let route = snapshot.router.route("h", "/", &[]).unwrap();
    assert_eq!(&*route.name, "0", "an unnamed route is named by its index");
    assert_eq!(&*route.host_name, "*", "an unnamed host is named by its first domain");
    let RouteAction::Proxy(proxy) = &route.action else {
        panic!()
    };
    assert_eq!(proxy.max_retries, 0, "one endpoint leaves nothing to retry on");
    assert_eq!(proxy.read_timeout, Duration::from_secs(3));
}

#[test]
fn top_level_errors_have_exact_paths() {
    assert_errors(
        "
runtime: {workers: 5000, drain_timeout: soon}
admin: {address: 'localhost:9901'}
http: {request_id_header: 'x id'}
listeners:
  - {name: a, address: '127.0.0.1:18080', keepalive_timeout: 0s, max_request_header_bytes: 10}
  - {name: a, address: '127.0.0.1:18080'}
  - {name: '', address: '127.0.0.1:9901'}
  - {name: d}
hosts: [{domains: ['*'], routes: [{direct_response: {}}]}]
",
        &[
            ("runtime.workers", "\"auto\" or a number from 1 to 4096"),
            ("runtime.drain_timeout", "invalid duration \"soon\""),
            ("admin.address", "invalid address \"localhost:9901\""),
            ("http.request_id_header", "invalid header name"),
            ("listeners[0].max_request_header_bytes", "at least 1024"),
            ("listeners[0].keepalive_timeout", "greater than zero"),
            ("listeners[1].name", "duplicate listener name \"a\" (also listeners[0])"),
            ("listeners[1].address", "duplicate listener address 127.0.0.1:18080"),
            ("listeners[2].name", "must not be empty"),
            ("listeners[2].address", "admin address"),
            ("listeners[3].address", "must not be empty"),
        ],
    );
    assert_errors(
        &format!("{MINIMAL}runtime: {{workers: '0'}}"),
        &[("runtime.workers", "from 1 to 4096")],
    );
}

#[test]
fn cluster_errors_have_exact_paths() {
    assert_errors(
        "
listeners: [{name: http, address: 127.0.0.1:18080}]
hosts: [{domains: ['*'], routes: [{proxy: {cluster: a}}]}]
clusters:
  - name: a
    endpoints: ['127.0.0.1', 'host:0', '::1:80', {address: '10.0.0.1:80', weight: 1001}, '10.0.0.2:80', '10.0.0.2:80']
    hash_header: x-user
    connect_timeout: 1 parsec
    health_check: {path: health, interval: 1s, timeout: 2s, expected_statuses: [200, 600]}
    outlier_detection: {ejection_time: 0s}
  - name: a
    lb_policy: consistent_hash
    hash_header: 'bad header'
  - name: ''
    endpoints: ['[::1]:80']
",
        &[
            ("clusters[0].hash_header", "only used with lb_policy consistent_hash"),
            ("clusters[0].connect_timeout", "invalid duration \"1 parsec\""),
            ("clusters[0].health_check.path", "must start with '/'"),
            ("clusters[0].health_check.timeout", "longer than the interval"),
            (
                "clusters[0].health_check.expected_statuses[1]",
                "invalid HTTP status 600",
            ),
            ("clusters[0].outlier_detection.ejection_time", "greater than zero"),
            ("clusters[0].endpoints[0].address", "expected host:port"),
            ("clusters[0].endpoints[1].address", "expected host:port"),
            ("clusters[0].endpoints[2].address", "expected host:port"),
            ("clusters[0].endpoints[3].weight", "at most 1000"),
            (
                "clusters[0].endpoints[5].address",
                "duplicate endpoint \"10.0.0.2:80\" (also endpoints[4])",
            ),
            ("clusters[1].name", "duplicate cluster name \"a\" (also clusters[0])"),
            ("clusters[1].hash_header", "invalid header name \"bad header\""),
            ("clusters[1].endpoints", "at least one endpoint"),
            ("clusters[2].name", "must not be empty"),
        ],
    );
}

#[test]
fn host_and_route_errors_have_exact_paths() {
    assert_errors(
        "
listeners: [{name: http, address: 127.0.0.1:18080}]
clusters: [{name: web, endpoints: ['127.0.0.1:1']}]
hosts:
  - name: one
    domains: ['*', 'A.example.com', '*.example.com', 'a*.example.com', 'bad host']
    routes:
      - {name: r, proxy: {cluster: api}}
      - {name: r, match: {prefix: /a, exact: /b}, direct_response: {}}
      - {match: {regex: '(unclosed'}, direct_response: {status: 600}}
      - {match: {exact: nope}, redirect: {status: 200, scheme: ftp, host: 'a b', path: x}}
      - {match: {headers: [{name: 'x y'}, {name: x, exact: a, regex: b}, {name: y, regex: '['}]}, proxy: {cluster: web}}
      - {proxy: {cluster: web}, redirect: {}}
      - {}
      - {match: {exact: /e}, proxy: {cluster: web, prefix_rewrite: /x, read_timeout: fast, retry: {on_statuses: [99]}}}
      - {proxy: {cluster: web, prefix_rewrite: x, host_rewrite: 'a/b'}}
      - {direct_response: {status_page: true, body: x}}
  - name: two
    domains: ['*', 'a.example.com', '*.EXAMPLE.com']
    routes: []
  - name: one
    domains: []
    routes: [{proxy: {cluster: ''}}]
",
        &[
            ("hosts[0].domains[3]", "invalid wildcard domain \"a*.example.com\""),
            ("hosts[0].domains[4]", "invalid domain \"bad host\""),
            ("hosts[0].routes[0].proxy.cluster", "unknown cluster \"api\""),
            ("hosts[0].routes[1].name", "duplicate route name \"r\" (also routes[0])"),
            (
                "hosts[0].routes[1].match",
                "at most one of prefix, exact, regex may be set; found prefix, exact",
            ),
            ("hosts[0].routes[2].match.regex", "invalid regex"),
            ("hosts[0].routes[2].direct_response.status", "invalid HTTP status 600"),
            ("hosts[0].routes[3].match.exact", "must start with '/'"),
            ("hosts[0].routes[3].redirect.status", "invalid redirect status 200"),
            ("hosts[0].routes[3].redirect.scheme", "invalid scheme \"ftp\""),
            ("hosts[0].routes[3].redirect.host", "invalid host \"a b\""),
            ("hosts[0].routes[3].redirect.path", "must start with '/'"),
            (
                "hosts[0].routes[4].match.headers[0].name",
                "invalid header name \"x y\"",
            ),
            ("hosts[0].routes[4].match.headers[1]", "at most one of exact, regex"),
            ("hosts[0].routes[4].match.headers[2].regex", "invalid regex"),
            ("hosts[0].routes[5]", "only one of proxy, redirect, direct_response"),
            ("hosts[0].routes[6]", "needs one of proxy, redirect, direct_response"),
            (
                "hosts[0].routes[7].proxy.prefix_rewrite",
                "only allowed on routes that match by prefix",
            ),
            ("hosts[0].routes[7].proxy.read_timeout", "invalid duration \"fast\""),
            (
                "hosts[0].routes[7].proxy.retry.on_statuses[0]",
                "invalid HTTP status 99",
            ),
            ("hosts[0].routes[8].proxy.prefix_rewrite", "\"x\" must start with '/'"),
            ("hosts[0].routes[8].proxy.host_rewrite", "invalid host \"a/b\""),
            (
                "hosts[0].routes[9].direct_response.body",
                "not allowed together with status_page",
            ),
            (
                "hosts[1].domains[0]",
                "domain \"*\" is already used by hosts[0].domains[0]",
            ),
            (
                "hosts[1].domains[1]",
                "domain \"a.example.com\" is already used by hosts[0].domains[1]",
            ),
            (
                "hosts[1].domains[2]",
                "domain \"*.example.com\" is already used by hosts[0].domains[2]",
            ),
            ("hosts[1].routes", "at least one route"),
            ("hosts[2].name", "duplicate host name \"one\" (also hosts[0])"),
            ("hosts[2].domains", "at least one domain"),
            ("hosts[2].routes[0].proxy.cluster", "must name a cluster"),
        ],
    );
}

#[test]
fn errors_display_one_per_line() {
    let errors = errors_of(&format!("{MINIMAL}runtime: {{workers: none, drain_timeout: x}}"));
    let config = parse_yaml(&format!("{MINIMAL}runtime: {{workers: none, drain_timeout: x}}")).unwrap();
    let text = validate(&config).unwrap_err().to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), errors.len());
    assert!(
        lines[0].starts_with("runtime.workers: invalid workers \"none\""),
        "{text}"
    );
    assert!(
        lines[1].starts_with("runtime.drain_timeout: invalid duration \"x\""),
        "{text}"
    );
}

#[test]
fn unresolvable_endpoint_is_a_cluster_error() {
    assert_errors(
        "
listeners: [{name: http, address: 127.0.0.1:18080}]
hosts: [{domains: ['*'], routes: [{proxy: {cluster: web}}]}]
clusters: [{name: web, endpoints: ['no-such-host.invalid:80']}]
",
        &[("clusters[0].endpoints", "no-such-host.invalid:80")],
    );
}

const TWO_CLUSTERS: &str = "
listeners: [{name: http, address: 127.0.0.1:18080}]
hosts:
  - {name: a, domains: [a.test], routes: [{proxy: {cluster: a}}]}
  - {name: b, domains: [b.test], routes: [{match: {regex: '/b.*'}, proxy: {cluster: b}}]}
  - {name: s, domains: ['*'], routes: [{direct_response: {status_page: true}}]}
clusters:
  - {name: a, endpoints: ['127.0.0.1:1']}
  - {name: b, endpoints: ['127.0.0.1:2', '127.0.0.1:3']}
";

#[test]
fn unchanged_parts_are_reused_across_builds() {
    let first = build(TWO_CLUSTERS);
    let unchanged = Snapshot::build(parse_yaml(TWO_CLUSTERS).unwrap(), Some(&first)).unwrap();
    assert!(unchanged.generation > first.generation);
    assert!(Arc::ptr_eq(&first.clusters["a"], &unchanged.clusters["a"]));
    assert!(Arc::ptr_eq(&first.clusters["b"], &unchanged.clusters["b"]));
    for (old, new) in first.router.hosts().zip(unchanged.router.hosts()) {
        assert!(Arc::ptr_eq(old, new), "host {} rebuilt", old.name);
    }

    // Mark an endpoint of b down, then change b: the new cluster remembers.
    first.clusters["b"].endpoints().endpoints[1].set_active_healthy(false);
    let changed_b = TWO_CLUSTERS.replace("'127.0.0.1:3']", "'127.0.0.1:3'], connect_timeout: 2s");
    let second = Snapshot::build(parse_yaml(&changed_b).unwrap(), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(&first.clusters["a"], &second.clusters["a"]));
    assert!(!Arc::ptr_eq(&first.clusters["b"], &second.clusters["b"]));
    assert_eq!(second.clusters["b"].settings.connect_timeout, Duration::from_secs(2));
    let endpoints = second.clusters["b"].endpoints();
    assert!(endpoints.endpoints[0].is_active_healthy());
    assert!(!endpoints.endpoints[1].is_active_healthy(), "health carried over");
    let host = |snapshot: &Snapshot, name: &str| Arc::clone(snapshot.router.named(name).unwrap());
    assert!(Arc::ptr_eq(&host(&first, "a"), &host(&second, "a")), "host a untouched");
    assert!(
        !Arc::ptr_eq(&host(&first, "b"), &host(&second, "b")),
        "host b follows its cluster"
    );
    assert!(
        Arc::ptr_eq(&host(&first, "s"), &host(&second, "s")),
        "status page untouched"
    );
    let route = second.router.route("b.test", "/bx", &[]).unwrap();
    let RouteAction::Proxy(proxy) = &route.action else {
        panic!()
    };
    assert!(Arc::ptr_eq(&proxy.cluster, &second.clusters["b"]));

    // A new listener changes the status page, so that host is rebuilt.
    let more_listeners = TWO_CLUSTERS.replace(
        "listeners: [{name: http, address: 127.0.0.1:18080}]",
        "listeners: [{name: http, address: 127.0.0.1:18080}, {name: alt, address: 127.0.0.1:18081}]",
    );
    let third = Snapshot::build(parse_yaml(&more_listeners).unwrap(), Some(&second)).unwrap();
    assert!(!Arc::ptr_eq(&host(&second, "s"), &host(&third, "s")));
    let RouteAction::Direct(page) = &third.router.route("x", "/", &[]).unwrap().action else {
        panic!()
    };
    assert!(std::str::from_utf8(&page.body).unwrap().contains("alt 127.0.0.1:18081"));
}

#[test]
fn a_rejected_config_leaves_no_trace() {
    let first = build(TWO_CLUSTERS);
    let broken = TWO_CLUSTERS.replace("cluster: a}", "cluster: zz}");
    let Err(errors) = Snapshot::build(parse_yaml(&broken).unwrap(), Some(&first)) else {
        panic!("a config with an unknown cluster was accepted")
    };
    assert_eq!(errors.0[0].path, "hosts[0].routes[0].proxy.cluster");
    let next = Snapshot::build(parse_yaml(TWO_CLUSTERS).unwrap(), Some(&first)).unwrap();
    assert!(Arc::ptr_eq(&first.clusters["a"], &next.clusters["a"]));
}

#[test]
fn runtime_settings_alone_ignore_the_rest() {
    let config = parse_yaml("runtime: {workers: 3, io: epoll}").unwrap();
    let runtime = runtime_settings(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (runtime.workers, runtime.io),
        (WorkersSetting::Count(3), IoDriver::Epoll)
    );
    let bad = parse_yaml("runtime: {workers: many}").unwrap();
    assert_eq!(runtime_settings(&bad).unwrap_err().0[0].path, "runtime.workers");
}

/// A fresh directory for one test's module files.
/// A minimal proxy-wasm module (ABI 0.2.1) that accepts any configuration;
/// `variant` changes its bytes, so two variants are two plugin versions.
pub(super) fn test_module(variant: u32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 1)
            (global $variant i32 (i32.const {variant}))
            (func (export "proxy_abi_version_0_2_1"))
            (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
            (func (export "proxy_on_context_create") (param i32 i32))
            (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
            (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1)))"#
    ))
    .expect("the test module assembles")
}

fn module_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-config-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Hosts "api" (routes "v1", "v2") and "web" (route "0"), and `plugins`.
fn plugin_config(plugins: &str) -> String {
    format!(
        "
listeners: [{{name: http, address: 127.0.0.1:18080}}]
hosts:
  - name: api
    domains: [api.test]
    routes:
      - {{name: v1, match: {{prefix: /v1/}}, direct_response: {{body: one}}, max_buffered_body_bytes: 4096}}
      - {{name: v2, direct_response: {{body: two}}}}
  - name: web
    domains: ['*']
    routes: [{{direct_response: {{body: web}}}}]
plugins:
{plugins}
"
    )
}

#[test]
fn plugin_configuration_is_a_verbatim_string_or_json() {
    let config = parse_yaml(
        "
plugins:
  vm_budget: 16
  vm_memory_budget: 512MiB
  plugins:
    - name: mapped
      configuration:
        keys: [a, b]
        limit: 10
        nested: {on: true, 'null': ~}
      vm_configuration: [1, two]
      fail_strategy: fail_open
      max_memory: 65536
    - name: verbatim
      configuration: '{\"keys\": [\"a\"]}'
      vm_configuration: |
        plain: text
      fail_strategy: FAIL_STRATEGY_FAIL_CLOSED
      max_memory: 1 GiB
    - name: bare
      configuration:
      vm_configuration: 42
",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let section = config.plugins.unwrap();
    assert_eq!(section.vm_budget, 16);
    assert_eq!(section.vm_memory_budget, "512MiB");
    let [mapped, verbatim, bare] = &section.plugins[..] else {
        panic!("three plugins")
    };
    assert_eq!(
        std::str::from_utf8(&mapped.configuration).unwrap(),
        r#"{"keys":["a","b"],"limit":10,"nested":{"on":true,"null":null}}"#,
        "a mapping becomes its JSON text, in the file's key order"
    );
    assert_eq!(mapped.vm_configuration, br#"[1,"two"]"#);
    assert_eq!(mapped.fail_strategy, proto::FailStrategy::FailOpen as i32);
    assert_eq!(mapped.max_memory, "65536", "a number is a size in bytes");
    assert_eq!(verbatim.configuration, br#"{"keys": ["a"]}"#);
    assert_eq!(verbatim.vm_configuration, b"plain: text\n");
    assert_eq!(verbatim.fail_strategy, proto::FailStrategy::FailClosed as i32);
    assert_eq!(verbatim.max_memory, "1 GiB");
    assert!(bare.configuration.is_empty());
    assert_eq!(bare.vm_configuration, b"42");

    let message = parse_yaml("plugins: {plugins: [{name: a, fail_strategy: open}]}")
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(
            "plugins.plugins[0].fail_strategy: unknown variant `open`, expected `fail_closed` or `fail_open`"
        ),
        "{message}"
    );
    let message = parse_yaml("plugins: {plugins: [{name: a, max_memory: [1]}]}")
        .unwrap_err()
        .to_string();
    assert!(message.contains("plugins.plugins[0].max_memory"), "{message}");
}

#[test]
fn plugin_defaults_apply_in_one_place() {
    let dir = module_dir("defaults");
    let module = dir.join("auth.wasm");
    let bytes = test_module(1);
    std::fs::write(&module, &bytes).unwrap();
    let snapshot = build(&plugin_config(&format!(
        "  plugins: [{{name: auth, module: {}, configuration: {{realm: x}}}}]",
        module.display()
    )));
    let plugins = &snapshot.plugin_config;
    assert_eq!(
        plugins.budget,
        PluginBudget {
            vm_budget: None,
            vm_memory_budget: 1 << 30
        }
    );
    assert_eq!(
        plugins.budget.instances(2, 8),
        16,
        "one per worker per plugin on small machines"
    );
    assert_eq!(plugins.budget.instances(255, 8), 64, "never 2,040 on a big one");
    assert_eq!(plugins.plugins.len(), 1);
    let auth = &plugins.plugins[0];
    assert_eq!(&*auth.name, "auth");
    assert_eq!(auth.module_path, module);
    assert_eq!(auth.module_kind, ModuleKind::Wasm);
    assert_eq!(&*auth.module, bytes.as_slice());
    assert_eq!(auth.module_hash, xxhash_rust::xxh3::xxh3_64(&bytes));
    assert_eq!(&*auth.configuration, br#"{"realm":"x"}"#);
    assert!(auth.vm_configuration.is_empty());
    assert_eq!(auth.root_id, "");
    assert_eq!(auth.order, 0);
    assert_eq!(auth.fail_strategy, FailStrategy::FailClosed);
    assert_eq!(auth.max_memory_bytes, 32 << 20);
    assert_eq!(auth.max_call_time, Duration::from_millis(100));
    assert!(auth.rule.is_all());
    let debug = format!("{auth:?}");
    assert!(debug.contains(&format!("module_bytes: {}", bytes.len())), "{debug}");
    assert!(
        !debug.contains("0, 97, 115, 109"),
        "the module's bytes are not printed: {debug}"
    );
    // No hosts, no routes: every route, with its buffer limit.
    for (host, route, buffered) in [("api", "v1", 4096), ("api", "v2", 1 << 20), ("web", "0", 1 << 20)] {
        let route = plugins.route(host, route).unwrap_or_else(|| panic!("{host}/{route}"));
        assert_eq!(&*route.plugins, &[0]);
        assert_eq!(route.max_buffered_body_bytes, buffered);
    }
    assert!(plugins.route("api", "v3").is_none());
    assert!(
        build(MINIMAL).plugin_config.route("*", "0").is_none(),
        "no plugins, no lists"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plugins_run_in_order_where_their_rules_say() {
    let dir = module_dir("order");
    let aot = dir.join("a.aot");
    // Loading goes by the file's magic, so a wasm module named .aot runs in the
    // interpreter; the config only reads the extension.
    std::fs::write(&aot, test_module(2)).unwrap();
    let wasm = dir.join("w.wasm");
    std::fs::write(&wasm, test_module(3)).unwrap();
    let (aot, wasm) = (aot.display(), wasm.display());
    let snapshot = build(&plugin_config(&format!(
        "
  vm_budget: 4
  plugins:
    - {{name: late, module: {aot}, order: 5, hosts: [web]}}
    - {{name: first, module: {wasm}, order: -1, routes: [api/v2]}}
    - {{name: tie-a, module: {wasm}, max_memory: 100000, max_call_time: 2s, root_id: r}}
    - {{name: off, module: /nonexistent/off.wasm, enabled: false}}
    - {{name: tie-b, module: {aot}, hosts: [web], routes: [api/v1], vm_configuration: verbatim}}
"
    )));
    let plugins = &snapshot.plugin_config;
    let names: Vec<&str> = plugins.plugins.iter().map(|plugin| &*plugin.name).collect();
    assert_eq!(
        names,
        ["first", "tie-a", "tie-b", "late"],
        "by order, ties in list order, the disabled one left out (its module never read)"
    );
    let chain = |host: &str, route: &str| -> Vec<&str> {
        plugins.route(host, route).map_or(Vec::new(), |route| {
            route
                .plugins
                .iter()
                .map(|&index| &*plugins.plugins[index].name)
                .collect()
        })
    };
    assert_eq!(chain("api", "v1"), ["tie-a", "tie-b"]);
    assert_eq!(chain("api", "v2"), ["first", "tie-a"]);
    assert_eq!(chain("web", "0"), ["tie-a", "tie-b", "late"]);
    let tie_a = plugins.get("tie-a").unwrap();
    assert_eq!(tie_a.max_memory_bytes, 65536, "rounded down to whole 64 KiB pages");
    assert_eq!(tie_a.max_call_time, Duration::from_secs(2));
    assert_eq!(tie_a.root_id, "r");
    let tie_b = plugins.get("tie-b").unwrap();
    assert_eq!(tie_b.module_kind, ModuleKind::Aot);
    assert_eq!(&*tie_b.vm_configuration, b"verbatim");
    assert_eq!(
        tie_b.rule,
        MatchRule {
            hosts: vec!["web".into()],
            routes: vec![("api".into(), "v1".into())],
        }
    );
    assert_eq!(plugins.budget.vm_budget, Some(4));
    assert_eq!(plugins.budget.instances(255, 4), 4);
    assert_ne!(tie_a.version, plugins.get("first").unwrap().version, "different limits");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn plugin_errors_have_exact_paths() {
    let dir = module_dir("errors");
    let module = dir.join("ok.wasm");
    std::fs::write(&module, test_module(1)).unwrap();
    let ok = module.display();
    let missing = dir.join("missing.aot");
    let missing = missing.display();
    assert_errors(
        &plugin_config(&format!(
            "
  vm_budget: 1
  vm_memory_budget: 1MB
  plugins:
    - {{name: a, module: {ok}, hosts: [nope], routes: [api/v9, web, ghost/0]}}
    - {{name: a, module: {ok}}}
    - {{name: Bad.Name, module: ''}}
    - {{name: c, module: {ok}.so}}
    - {{name: d, module: {missing}}}
    - {{name: e, module: {dir}, max_memory: 1000, max_call_time: 20s}}
    - {{name: f, module: {ok}, max_memory: 5 GiB, max_call_time: soon}}
    - {{name: g, module: {ok}, max_memory: 32MB, max_call_time: 500us}}
    - {{name: h, module: {ok}, environment: {{'A=B': x, '': y}}}}
",
            dir = dir.display()
        )),
        &[
            ("plugins.plugins[0].hosts[0]", "unknown host \"nope\""),
            ("plugins.plugins[0].routes[0]", "host \"api\" has no route \"v9\""),
            ("plugins.plugins[0].routes[1]", "expected \"host/route\""),
            ("plugins.plugins[0].routes[2]", "unknown host \"ghost\""),
            (
                "plugins.plugins[1].name",
                "duplicate plugin name \"a\" (also plugins.plugins[0])",
            ),
            ("plugins.plugins[2].name", "invalid plugin name \"Bad.Name\""),
            ("plugins.plugins[2].module", "must name a .aot or .wasm file"),
            ("plugins.plugins[3].module", "ok.wasm.so: expected a .aot file"),
            (
                "plugins.plugins[4].module",
                &format!("{missing}: No such file or directory"),
            ),
            ("plugins.plugins[5].module", "expected a .aot file"),
            ("plugins.plugins[5].max_memory", "1000 B is below one 64 KiB wasm page"),
            ("plugins.plugins[5].max_call_time", "20s is out of range: 1ms to 10s"),
            (
                "plugins.plugins[6].max_memory",
                "5 GiB is more than a wasm32 memory can hold",
            ),
            ("plugins.plugins[6].max_call_time", "invalid duration \"soon\""),
            ("plugins.plugins[7].max_memory", "invalid size \"32MB\""),
            ("plugins.plugins[7].max_call_time", "500us is out of range"),
            ("plugins.plugins[8].environment", "invalid variable name \"\""),
            ("plugins.plugins[8].environment", "invalid variable name \"A=B\""),
            ("plugins.vm_memory_budget", "invalid size \"1MB\""),
        ],
    );
    // The budget must hold one instance of each enabled plugin.
    let budget = |vm_budget: u32, memory: &str| {
        plugin_config(&format!(
            "
  vm_budget: {vm_budget}
  vm_memory_budget: {memory}
  plugins:
    - {{name: a, module: {ok}}}
    - {{name: b, module: {ok}, max_memory: 8MiB}}
    - {{name: off, module: {ok}, enabled: false, max_memory: 1GiB}}
"
        ))
    };
    assert_errors(
        &budget(1, "39MiB"),
        &[
            ("plugins.vm_budget", "1 is below the 2 enabled plugins"),
            (
                "plugins.vm_memory_budget",
                "39 MiB is below one instance of each enabled plugin at its max_memory (40 MiB)",
            ),
        ],
    );
    assert_eq!(build(&budget(2, "40MiB")).plugin_config.plugins.len(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn ebpf_defaults_apply_when_the_section_is_absent() {
    let snapshot = build(MINIMAL);
    let ebpf = &snapshot.ebpf;
    assert_eq!(ebpf.mode, EbpfMode::Auto);
    assert!(ebpf.interfaces.is_empty());
    assert_eq!(ebpf.pin_path, std::path::Path::new(defaults::EBPF_PIN_PATH));
    assert!(ebpf.blocklist.is_empty() && ebpf.allowlist.is_empty());
    assert_eq!(ebpf.rate_limit, EbpfRateLimits::default());
    assert_eq!(ebpf.tracked_sources, tollgate_ebpf_common::DEFAULT_TRACKED_SOURCES);
    assert!(ebpf.steering);
    assert!(!ebpf.cpu_redirect);
    assert_eq!(*ebpf, EbpfSettings::default());
}

#[test]
fn ebpf_section_maps_onto_settings() {
    let snapshot = build(&format!(
        "{MINIMAL}
ebpf:
  mode: generic
  interfaces: [veth0, eth1]
  pin_path: /sys/fs/bpf/tollgate-test
  blocklist: ['203.0.113.0/24', '198.51.100.7', '2001:db8::/32', '::/0']
  allowlist: ['2001:db8::1', 10.0.0.0/8]
  rate_limit: {{syn_per_second: 100, packets_per_second: 5000, packets_burst: 20000}}
  tracked_sources: 1024
  steering: false
  cpu_redirect: true
"
    ));
    let ebpf = &snapshot.ebpf;
    assert_eq!(ebpf.mode, EbpfMode::Generic);
    assert_eq!(ebpf.interfaces, ["veth0", "eth1"]);
    assert_eq!(ebpf.pin_path, std::path::Path::new("/sys/fs/bpf/tollgate-test"));
    let shown: Vec<String> = ebpf.blocklist.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32", "::/0"]);
    let shown: Vec<String> = ebpf.allowlist.iter().map(ToString::to_string).collect();
    assert_eq!(shown, ["2001:db8::1/128", "10.0.0.0/8"]);
    assert_eq!(
        ebpf.rate_limit,
        EbpfRateLimits {
            syn_per_second: 100,
            syn_burst: 100,
            packets_per_second: 5000,
            packets_burst: 20000,
        },
        "an unset burst is one second's worth"
    );
    assert_eq!(ebpf.tracked_sources, 1024);
    assert!(!ebpf.steering);
    assert!(ebpf.cpu_redirect);
    for (name, mode) in [
        ("auto", EbpfMode::Auto),
        ("native", EbpfMode::Native),
        ("EBPF_MODE_OFF", EbpfMode::Off),
    ] {
        assert_eq!(build(&format!("{MINIMAL}\nebpf: {{mode: {name}}}\n")).ebpf.mode, mode);
    }
}

#[test]
fn ebpf_errors_have_exact_paths() {
    assert_errors(
        &format!(
            "{MINIMAL}
ebpf:
  interfaces: [eth0, '', eth0, a-very-long-interface-name, 'et h0']
  pin_path: relative/dir
  blocklist: ['192.0.2.0/24', 10.0.0.1/8, 10.0.0.0/33, not-an-ip, '2001:db8::/129', '192.0.2.0/24', '']
  allowlist: [10.0.0.0/x]
  rate_limit: {{syn_burst: 10, packets_per_second: 10, packets_burst: 5}}
  tracked_sources: 99999999
"
        ),
        &[
            ("ebpf.interfaces[1]", "must be 1 to 15 bytes"),
            (
                "ebpf.interfaces[2]",
                "duplicate interface \"eth0\" (also ebpf.interfaces[0])",
            ),
            ("ebpf.interfaces[3]", "must be 1 to 15 bytes"),
            ("ebpf.interfaces[4]", "must not hold"),
            ("ebpf.pin_path", "must be an absolute path"),
            (
                "ebpf.blocklist[1]",
                "\"10.0.0.1/8\" is not a CIDR: host bits are set past /8 (the network is 10.0.0.0/8)",
            ),
            (
                "ebpf.blocklist[2]",
                "\"10.0.0.0/33\" is not a CIDR: prefix length \"33\" must be a number from 0 to 32",
            ),
            ("ebpf.blocklist[3]", "\"not-an-ip\" is not a CIDR"),
            ("ebpf.blocklist[4]", "from 0 to 128"),
            (
                "ebpf.blocklist[5]",
                "duplicate entry 192.0.2.0/24 (also ebpf.blocklist[0])",
            ),
            ("ebpf.blocklist[6]", "is not a CIDR"),
            ("ebpf.allowlist[0]", "prefix length \"x\""),
            ("ebpf.rate_limit.syn_burst", "set without syn_per_second"),
            ("ebpf.tracked_sources", "at most 4194304"),
        ],
    );
    let unknown = parse_yaml(&format!("{MINIMAL}\nebpf: {{mode: turbo}}\n"))
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("ebpf.mode") && unknown.contains("unknown variant `turbo`"),
        "{unknown}"
    );
}

#[test]
fn ebpf_changes_reach_the_snapshot_on_reload() {
    let first = build(MINIMAL);
    let changed = format!("{MINIMAL}\nebpf: {{blocklist: [192.0.2.1], interfaces: [lo]}}\n");
    let second = Snapshot::build(parse_yaml(&changed).unwrap(), Some(&first)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.ebpf.interfaces, ["lo"]);
    assert_eq!(second.ebpf.blocklist[0].to_string(), "192.0.2.1/32");
    assert_eq!(
        second.source.to_proto().ebpf.map(|section| section.blocklist),
        Some(vec!["192.0.2.1".to_string()]),
        "the running source holds the section"
    );
    let back = Snapshot::build(parse_yaml(MINIMAL).unwrap(), Some(&second)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back.ebpf, EbpfSettings::default());
    let broken = format!("{MINIMAL}\nebpf: {{allowlist: ['10.0.0.0/33']}}\n");
    let Err(errors) = Snapshot::build(parse_yaml(&broken).unwrap(), Some(&second)) else {
        panic!("an invalid CIDR is rejected on reload too");
    };
    assert_eq!(errors.0[0].path, "ebpf.allowlist[0]");
}

#[test]
fn cidr_masks_and_prints_both_families() {
    let cases = [
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("255.255.255.255", "255.255.255.255/32"),
        ("fe80::/10", "fe80::/10"),
        ("::ffff:192.0.2.0/120", "::ffff:192.0.2.0/120"),
    ];
    for (text, shown) in cases {
        assert_eq!(text.parse::<Cidr>().unwrap().to_string(), shown);
    }
    assert!("fe80::1/10".parse::<Cidr>().is_err(), "host bits past /10");
    assert!("192.0.2.0/-1".parse::<Cidr>().is_err());
    assert!("192.0.2.0/".parse::<Cidr>().is_err());
}
