//! Tests of change sets: upserts and deletes of every resource kind, errors
//! for dangling references and taken domains, reuse of unchanged compiled
//! parts, and equivalence with building the same config from scratch;
//! plugins: their route lists, versions, and module files read only when
//! they changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use super::tests::test_module;
use super::{proto, ChangeSet, Settings, Snapshot};
use crate::route::RouteAction;

/// Self-signed ECDSA P-256 (chain, key) PEMs, made once per test binary.
fn pems() -> &'static [(String, String)] {
    static PEMS: OnceLock<Vec<(String, String)>> = OnceLock::new();
    PEMS.get_or_init(|| {
        (0..6)
            .map(|index| {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let params = rcgen::CertificateParams::new(vec![format!("n{index}.test")]).unwrap();
                (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
            })
            .collect()
    })
}

fn certificate(name: &str, pem: usize) -> proto::Certificate {
    let (chain, key) = &pems()[pem];
    proto::Certificate {
        name: name.into(),
        cert_chain_pem: chain.clone(),
        private_key_pem: key.clone(),
        ..Default::default()
    }
}

fn cluster(name: &str, address: &str) -> proto::Cluster {
    proto::Cluster {
        name: name.into(),
        endpoints: vec![proto::Endpoint {
            address: address.into(),
            weight: 0,
        }],
        ..Default::default()
    }
}

fn host(name: &str, domains: &[&str], cluster: &str, prefix: &str, certificate: Option<&str>) -> proto::VirtualHost {
    proto::VirtualHost {
        name: name.into(),
        domains: domains.iter().map(|domain| domain.to_string()).collect(),
        routes: vec![proto::Route {
            name: "r".into(),
            r#match: Some(proto::RouteMatch {
                prefix: prefix.into(),
                ..Default::default()
            }),
            proxy: Some(proto::ProxyAction {
                cluster: cluster.into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        tls: certificate.map(|certificate| proto::HostTls {
            certificate: certificate.into(),
            ..Default::default()
        }),
    }
}

fn status_host() -> proto::VirtualHost {
    proto::VirtualHost {
        name: "status".into(),
        domains: vec!["*".into()],
        routes: vec![proto::Route {
            direct_response: Some(proto::DirectResponse {
                status_page: true,
                ..Default::default()
            }),
            ..Default::default()
        }],
        tls: None,
    }
}

fn listener(name: &str, port: u16, tls: bool) -> proto::Listener {
    proto::Listener {
        name: name.into(),
        address: format!("127.0.0.1:{port}"),
        tls: tls.then(|| proto::ListenerTls {
            unknown_sni: proto::UnknownSni::Reject as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Hosts a, b (with certificates ka, kb) and the status page; clusters ca, cb.
fn base() -> proto::Config {
    proto::Config {
        listeners: vec![listener("http", 18080, false), listener("https", 18443, true)],
        hosts: vec![
            host("a", &["a.test"], "ca", "/", Some("ka")),
            host("b", &["b.test", "*.b.test"], "cb", "/", Some("kb")),
            status_host(),
        ],
        clusters: vec![cluster("ca", "127.0.0.1:1"), cluster("cb", "127.0.0.1:2")],
        certificates: vec![certificate("ka", 0), certificate("kb", 1)],
        ..Default::default()
    }
}

fn build(config: proto::Config) -> Snapshot {
    Snapshot::build(config, None).unwrap_or_else(|errors| panic!("{errors}"))
}

fn apply(snapshot: &Snapshot, changes: ChangeSet) -> Snapshot {
    snapshot.apply(changes).unwrap_or_else(|errors| panic!("{errors}"))
}

/// Every error as "path: message".
fn errors(snapshot: &Snapshot, changes: ChangeSet) -> Vec<String> {
    match snapshot.apply(changes) {
        Ok(_) => panic!("expected errors"),
        Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
    }
}

/// "host/route@cluster" for a request, or "-".
fn routed(snapshot: &Snapshot, host: &str, path: &str) -> String {
    let Some(route) = snapshot.router.route(host, path, &[]) else {
        return "-".into();
    };
    match &route.action {
        RouteAction::Proxy(proxy) => format!("{}/{}@{}", route.host_name, route.name, proxy.cluster.name),
        _ => format!("{}/{}", route.host_name, route.name),
    }
}

/// The host and certificate (leaf DER) SNI selects for a name, or None.
fn sni(snapshot: &Snapshot, name: &str) -> Option<(String, Vec<u8>)> {
    let host = snapshot.sni.lookup(name)?;
    Some((host.host.to_string(), host.key.cert[0].to_vec()))
}

fn leaf_der(pem: usize) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pems()[pem].0.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn hosts_are_upserted_and_deleted() {
    let first = build(base());
    let second = apply(
        &first,
        ChangeSet {
            upsert_hosts: vec![
                host("c", &["c.test"], "ca", "/c/", Some("ka")),
                host("a", &["a.test"], "ca", "/v2/", Some("ka")),
            ],
            delete_hosts: vec!["b".into()],
            ..Default::default()
        },
    );
    assert_eq!(routed(&second, "c.test", "/c/x"), "c/r@ca");
    assert_eq!(routed(&second, "a.test", "/v2/x"), "a/r@ca");
    assert_eq!(routed(&second, "a.test", "/x"), "-", "a's old route is gone");
    assert_eq!(
        routed(&second, "b.test", "/"),
        "status/0",
        "b's domains fall to the default host"
    );
    assert_eq!(sni(&second, "c.test").unwrap().0, "c");
    assert_eq!(sni(&second, "b.test"), None);
    assert_eq!(sni(&second, "x.b.test"), None);
    assert!(second.source.hosts.get("b").is_none());
    assert_eq!(second.source.hosts.len(), 3);
    assert!(second.generation > first.generation);
    // The running snapshot is untouched.
    assert_eq!(routed(&first, "b.test", "/"), "b/r@cb");
}

#[test]
fn clusters_are_upserted_and_deleted_and_their_hosts_follow() {
    let first = build(base());
    first.clusters["cb"].endpoints().endpoints[0].set_active_healthy(false);
    let second = apply(
        &first,
        ChangeSet {
            upsert_clusters: vec![cluster("cb", "127.0.0.1:2"), cluster("cc", "127.0.0.1:3")],
            ..Default::default()
        },
    );
    assert!(
        Arc::ptr_eq(&first.clusters["cb"], &second.clusters["cb"]),
        "same message: same cluster"
    );
    assert_eq!(second.clusters.len(), 3);

    let mut changed = cluster("cb", "127.0.0.1:2");
    changed.connect_timeout = "2s".into();
    let third = apply(
        &second,
        ChangeSet {
            upsert_clusters: vec![changed],
            delete_clusters: vec!["cc".into()],
            ..Default::default()
        },
    );
    assert!(!Arc::ptr_eq(&second.clusters["cb"], &third.clusters["cb"]));
    assert!(
        !third.clusters["cb"].endpoints().endpoints[0].is_active_healthy(),
        "health carried over"
    );
    assert!(third.clusters.get("cc").is_none());
    let RouteAction::Proxy(proxy) = &third.router.route("b.test", "/", &[]).unwrap().action else {
        panic!("b proxies")
    };
    assert!(
        Arc::ptr_eq(&proxy.cluster, &third.clusters["cb"]),
        "b now proxies to the new cb"
    );
    assert!(Arc::ptr_eq(
        second.router.named("a").unwrap(),
        third.router.named("a").unwrap()
    ));
    // The std map view (for callers taking a HashMap) agrees.
    assert_eq!(third.clusters.len(), 2);
}

#[test]
fn certificates_are_upserted_and_deleted() {
    let first = build(base());
    let second = apply(
        &first,
        ChangeSet {
            upsert_certificates: vec![certificate("kb", 2), certificate("kx", 3)],
            ..Default::default()
        },
    );
    assert_eq!(sni(&second, "b.test").unwrap(), ("b".into(), leaf_der(2)));
    assert_eq!(sni(&second, "x.b.test").unwrap(), ("b".into(), leaf_der(2)));
    assert_eq!(
        sni(&first, "b.test").unwrap(),
        ("b".into(), leaf_der(1)),
        "old snapshot unchanged"
    );
    assert!(
        Arc::ptr_eq(second.router.named("b").unwrap(), first.router.named("b").unwrap()),
        "a certificate change does not recompile the host's routes"
    );
    assert!(second.listener_tls["https"].server_config(Some("b.test")).is_some());
    // A certificate no host uses may be a listener's default.
    let third = apply(
        &second,
        ChangeSet {
            upsert_certificates: vec![certificate("kx", 4)],
            ..Default::default()
        },
    );
    assert!(!Arc::ptr_eq(
        &second.listener_tls["https"],
        &third.listener_tls["https"]
    ));
    let fourth = apply(
        &third,
        ChangeSet {
            delete_certificates: vec!["kx".into()],
            ..Default::default()
        },
    );
    assert!(fourth.certificates.get("kx").is_none());
    assert!(fourth.source.certificates.get("kx").is_none());
}

#[test]
fn listeners_are_upserted_and_deleted_and_the_status_page_follows() {
    let first = build(base());
    let second = apply(
        &first,
        ChangeSet {
            upsert_listeners: vec![listener("alt", 18081, false)],
            ..Default::default()
        },
    );
    assert_eq!(second.listeners.len(), 3);
    let page = |snapshot: &Snapshot| match &snapshot.router.route("other", "/", &[]).unwrap().action {
        RouteAction::Direct(direct) => String::from_utf8(direct.body.to_vec()).unwrap(),
        _ => panic!("status page"),
    };
    assert!(page(&second).contains("alt 127.0.0.1:18081"));
    assert!(Arc::ptr_eq(
        first.router.named("a").unwrap(),
        second.router.named("a").unwrap()
    ));
    let third = apply(
        &second,
        ChangeSet {
            delete_listeners: vec!["alt".into(), "https".into()],
            ..Default::default()
        },
    );
    assert_eq!(third.listeners.len(), 1);
    assert!(third.listener_tls.is_empty());
    assert!(!page(&third).contains("alt"));
}

#[test]
fn dangling_references_and_taken_domains_are_errors_naming_the_host() {
    let first = build(base());
    let deleted_cluster = errors(
        &first,
        ChangeSet {
            delete_clusters: vec!["cb".into()],
            ..Default::default()
        },
    );
    assert_eq!(deleted_cluster, [r#"clusters["cb"]: cannot delete (used by host "b")"#]);
    let deleted_certificate = errors(
        &first,
        ChangeSet {
            delete_certificates: vec!["ka".into()],
            ..Default::default()
        },
    );
    assert_eq!(
        deleted_certificate,
        [r#"certificates["ka"]: cannot delete (used by host "a")"#]
    );
    let bad_host = errors(
        &first,
        ChangeSet {
            upsert_hosts: vec![
                host("n", &["b.test"], "nope", "/", Some("missing")),
                host("m", &["m.test"], "ca", "/", None),
                host("o", &["m.test"], "ca", "/", None),
            ],
            ..Default::default()
        },
    );
    assert_eq!(
        bad_host,
        [
            r#"hosts["n"].domains[0]: domain "b.test" is already used by host "b""#,
            r#"hosts["n"].routes[0].proxy.cluster: unknown cluster "nope""#,
            r#"hosts["n"].tls.certificate: unknown certificate "missing""#,
            r#"hosts["o"].domains[0]: domain "m.test" is already used by host "m""#,
        ]
    );
    let bad_certificate = errors(
        &first,
        ChangeSet {
            upsert_certificates: vec![proto::Certificate {
                private_key_pem: pems()[0].1.clone(),
                cert_chain_pem: pems()[1].0.clone(),
                ..certificate("ka", 0)
            }],
            ..Default::default()
        },
    );
    assert_eq!(bad_certificate.len(), 1);
    assert!(
        bad_certificate[0].starts_with(r#"certificates["ka"].private_key_pem: key does not match"#)
            && bad_certificate[0].ends_with(r#"(used by host "a")"#),
        "{bad_certificate:?}"
    );
    // Deleting the user with the resource, or moving a domain between two
    // hosts in one change set, is fine.
    let moved = apply(
        &first,
        ChangeSet {
            delete_hosts: vec!["b".into()],
            delete_clusters: vec!["cb".into()],
            upsert_hosts: vec![
                host("a", &["b.test"], "ca", "/", Some("ka")),
                host("z", &["a.test"], "ca", "/", None),
            ],
            ..Default::default()
        },
    );
    assert_eq!(routed(&moved, "b.test", "/"), "a/r@ca");
    assert_eq!(routed(&moved, "a.test", "/"), "z/r@ca");
    assert_eq!(
        sni(&moved, "b.test"),
        Some(("a".into(), leaf_der(0))),
        "a's certificate moved with it"
    );
    assert_eq!(sni(&moved, "a.test"), None, "z has no certificate");
    assert_eq!(sni(&moved, "x.b.test"), None);
}

#[test]
fn unchanged_parts_are_the_previous_snapshots() {
    let first = build(base());
    let second = apply(
        &first,
        ChangeSet {
            upsert_hosts: vec![
                host("a", &["a.test"], "ca", "/v2/", Some("ka")),
                base().hosts[1].clone(),
            ],
            upsert_certificates: vec![certificate("ka", 4), certificate("kb", 1)],
            ..Default::default()
        },
    );
    assert!(!Arc::ptr_eq(
        first.router.named("a").unwrap(),
        second.router.named("a").unwrap()
    ));
    assert!(Arc::ptr_eq(
        first.router.named("b").unwrap(),
        second.router.named("b").unwrap()
    ));
    assert!(Arc::ptr_eq(
        first.router.named("status").unwrap(),
        second.router.named("status").unwrap()
    ));
    assert!(Arc::ptr_eq(&first.clusters["ca"], &second.clusters["ca"]));
    assert!(Arc::ptr_eq(&first.clusters["cb"], &second.clusters["cb"]));
    assert!(!Arc::ptr_eq(&first.certificates["ka"], &second.certificates["ka"]));
    assert!(Arc::ptr_eq(&first.certificates["kb"], &second.certificates["kb"]));
    assert!(Arc::ptr_eq(
        &first.sni.lookup("b.test").unwrap().key,
        &second.sni.lookup("b.test").unwrap().key
    ));
    assert!(Arc::ptr_eq(
        &first.source.hosts.get("b").unwrap().message,
        &second.source.hosts.get("b").unwrap().message
    ));
    // An empty change set changes nothing but the generation.
    let third = apply(&second, ChangeSet::default());
    assert!(Arc::ptr_eq(&second.sni, &third.sni));
    assert!(Arc::ptr_eq(&second.listener_tls["https"], &third.listener_tls["https"]));
}

#[test]
fn applying_changes_answers_like_building_from_scratch() {
    let first = build(base());
    let mut target = base();
    target.hosts[0] = host("a", &["a.test", "*.a.test"], "cc", "/a/", Some("kc"));
    target.hosts.remove(1);
    target.hosts.push(host("d", &["d.test"], "ca", "/", Some("ka")));
    target.clusters[1] = cluster("cc", "127.0.0.1:3");
    target.certificates[1] = certificate("kc", 5);
    target.listeners.push(listener("alt", 18081, false));
    target.http = Some(proto::HttpOptions {
        request_id_header: "x-id".into(),
        forwarded_headers: None,
    });
    let applied = apply(
        &first,
        ChangeSet {
            settings: Some(Settings {
                http: target.http.clone(),
                ..Default::default()
            }),
            upsert_listeners: vec![listener("alt", 18081, false)],
            delete_listeners: Vec::new(),
            upsert_hosts: vec![target.hosts[0].clone(), target.hosts[2].clone()],
            delete_hosts: vec!["b".into()],
            upsert_clusters: vec![target.clusters[1].clone()],
            delete_clusters: vec!["cb".into()],
            upsert_certificates: vec![target.certificates[1].clone()],
            delete_certificates: vec!["kb".into()],
            upsert_plugins: Vec::new(),
            delete_plugins: Vec::new(),
        },
    );
    let reloaded = Snapshot::build(target.clone(), Some(&first)).unwrap_or_else(|errors| panic!("{errors}"));
    let scratch = build(target);
    for snapshot in [&applied, &reloaded] {
        for (name, path) in [
            ("a.test", "/a/x"),
            ("x.a.test", "/a/"),
            ("a.test", "/"),
            ("b.test", "/"),
            ("x.b.test", "/"),
            ("d.test", "/q"),
            ("other", "/"),
        ] {
            assert_eq!(
                routed(snapshot, name, path),
                routed(&scratch, name, path),
                "{name}{path}"
            );
        }
        for name in ["a.test", "x.a.test", "b.test", "x.b.test", "d.test", "other"] {
            assert_eq!(sni(snapshot, name), sni(&scratch, name), "SNI {name}");
            let https = &snapshot.listener_tls["https"];
            assert_eq!(
                https.server_config(Some(name)).is_some(),
                scratch.listener_tls["https"].server_config(Some(name)).is_some()
            );
        }
        assert_eq!(snapshot.listeners, scratch.listeners);
        assert_eq!(snapshot.http, scratch.http);
        assert_eq!(snapshot.source.to_proto(), scratch.source.to_proto());
        let mut clusters: Vec<&String> = snapshot.clusters.iter().map(|(name, _)| name).collect();
        clusters.sort();
        assert_eq!(clusters, ["ca", "cc"]);
    }
    assert_eq!(sni(&applied, "x.a.test").unwrap(), ("a".into(), leaf_der(5)));
}

/// A fresh directory holding one module file for one test.
fn module(test: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tollgate-apply-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plugin.wasm");
    replace(&path, bytes);
    path
}

/// Writes a new file in the place of `path`, as deployments do.
fn replace(path: &Path, bytes: &[u8]) {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, bytes).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

fn plugin(name: &str, module: &Path, hosts: &[&str], routes: &[&str]) -> proto::Plugin {
    proto::Plugin {
        name: name.into(),
        module: module.display().to_string(),
        configuration: b"{}".to_vec(),
        hosts: hosts.iter().map(|host| host.to_string()).collect(),
        routes: routes.iter().map(|route| route.to_string()).collect(),
        ..Default::default()
    }
}

/// The plugin names that run on a route, in order.
fn chain(snapshot: &Snapshot, host: &str, route: &str) -> Vec<String> {
    let plugins = &snapshot.plugin_config;
    plugins.route(host, route).map_or(Vec::new(), |route| {
        route
            .plugins
            .iter()
            .map(|&index| plugins.plugins[index].name.to_string())
            .collect()
    })
}

fn same_hosts(before: &Snapshot, after: &Snapshot) -> bool {
    before.router.hosts().len() == after.router.hosts().len()
        && before.router.hosts().all(|host| {
            after
                .router
                .named(&host.name)
                .is_some_and(|other| Arc::ptr_eq(host, other))
        })
}

#[test]
fn plugins_are_upserted_and_deleted_without_rebuilding_hosts() {
    let path = module("upsert", &test_module(1));
    let first = build(base());
    let mut auth = plugin("auth", &path, &["a"], &[]);
    let second = apply(
        &first,
        ChangeSet {
            upsert_plugins: vec![auth.clone()],
            ..Default::default()
        },
    );
    assert!(same_hosts(&first, &second));
    assert_eq!(chain(&second, "a", "r"), ["auth"]);
    assert!(chain(&second, "b", "r").is_empty());
    let v1 = Arc::clone(&second.plugin_config.plugins[0]);

    // The same message over the same file: the same settings.
    let same = apply(
        &second,
        ChangeSet {
            upsert_plugins: vec![auth.clone()],
            ..Default::default()
        },
    );
    assert!(Arc::ptr_eq(&v1, &same.plugin_config.plugins[0]));

    // A new configuration: a new version over the same module bytes.
    auth.configuration = br#"{"realm":"x"}"#.to_vec();
    let third = apply(
        &second,
        ChangeSet {
            upsert_plugins: vec![auth.clone()],
            ..Default::default()
        },
    );
    let v2 = &third.plugin_config.plugins[0];
    assert_ne!(v1.version, v2.version);
    assert!(
        Arc::ptr_eq(&v1.module, &v2.module),
        "the unchanged file was not read again"
    );
    assert!(same_hosts(&second, &third));

    // A new rule and order: the route lists change, the version does not.
    auth.hosts = vec!["b".into()];
    auth.routes = vec!["status/0".into()];
    let mut cors = plugin("cors", &path, &[], &[]);
    cors.order = 1;
    let fourth = apply(
        &third,
        ChangeSet {
            upsert_plugins: vec![auth.clone(), cors.clone()],
            ..Default::default()
        },
    );
    assert!(same_hosts(&third, &fourth));
    assert_eq!(fourth.plugin_config.plugins[0].version, v2.version);
    assert_eq!(chain(&fourth, "a", "r"), ["cors"]);
    assert_eq!(chain(&fourth, "b", "r"), ["auth", "cors"]);
    assert_eq!(chain(&fourth, "status", "0"), ["auth", "cors"]);
    let mut target = base();
    target.plugins = Some(proto::Plugins {
        plugins: vec![auth, cors],
        ..Default::default()
    });
    let scratch = build(target);
    for (host, route) in [("a", "r"), ("b", "r"), ("status", "0")] {
        assert_eq!(
            chain(&fourth, host, route),
            chain(&scratch, host, route),
            "{host}/{route}"
        );
    }
    assert_eq!(fourth.source.to_proto(), scratch.source.to_proto());

    let fifth = apply(
        &fourth,
        ChangeSet {
            delete_plugins: vec!["auth".into()],
            ..Default::default()
        },
    );
    assert_eq!(chain(&fifth, "b", "r"), ["cors"]);
    assert_eq!(
        errors(
            &fifth,
            ChangeSet {
                delete_plugins: vec!["auth".into()],
                upsert_plugins: vec![plugin("x", &path, &["gone"], &[]), plugin("x", &path, &[], &[])],
                ..Default::default()
            }
        ),
        [
            r#"plugins["auth"]: no such plugin to delete"#,
            r#"plugins["x"].name: upserted twice in one change set"#,
            r#"plugins["x"].hosts[0]: unknown host "gone""#,
        ]
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn host_changes_read_no_module_and_keep_what_plugins_name() {
    let path = module("hosts", &test_module(1));
    let mut config = base();
    config.plugins = Some(proto::Plugins {
        vm_budget: 8,
        plugins: vec![
            plugin("route-only", &path, &[], &["a/r"]),
            plugin("host-only", &path, &["b"], &[]),
            plugin("global", &path, &[], &[]),
        ],
        ..Default::default()
    });
    let first = build(config);
    // Any read of the module would fail from now on.
    std::fs::remove_file(&path).unwrap();
    let second = apply(
        &first,
        ChangeSet {
            upsert_hosts: vec![host("d", &["d.test"], "ca", "/", None)],
            ..Default::default()
        },
    );
    for (old, new) in first
        .plugin_config
        .plugins
        .iter()
        .zip(second.plugin_config.plugins.iter())
    {
        assert!(Arc::ptr_eq(old, new), "{}", old.name);
    }
    assert_eq!(chain(&second, "d", "r"), ["global"]);
    assert_eq!(chain(&second, "a", "r"), ["route-only", "global"]);
    assert_eq!(second.plugin_config.budget.vm_budget, Some(8));

    let mut renamed = host("a", &["a.test"], "ca", "/", Some("ka"));
    renamed.routes[0].name = "s".into();
    assert_eq!(
        errors(
            &second,
            ChangeSet {
                delete_hosts: vec!["b".into()],
                upsert_hosts: vec![renamed],
                ..Default::default()
            }
        ),
        [
            r#"hosts["b"]: cannot delete: plugin "host-only" names host "b""#,
            r#"hosts["a"].routes: plugin "route-only" names route "a/r", which the host no longer has"#,
        ]
    );
    let third = apply(
        &second,
        ChangeSet {
            delete_hosts: vec!["d".into()],
            ..Default::default()
        },
    );
    assert!(chain(&third, "d", "r").is_empty());
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn a_changed_module_file_is_a_new_plugin_version() {
    let path = module("reload", &test_module(1));
    let mut config = base();
    config.plugins = Some(proto::Plugins {
        plugins: vec![plugin("p", &path, &[], &[])],
        ..Default::default()
    });
    let first = build(config.clone());
    let v1 = Arc::clone(&first.plugin_config.plugins[0]);

    // A reload of the same file over the same module: nothing changes.
    let second = Snapshot::build(config.clone(), Some(&first)).unwrap_or_else(|e| panic!("{e}"));
    assert!(Arc::ptr_eq(&v1, &second.plugin_config.plugins[0]));

    // The file rewritten with the same bytes: the same version and bytes.
    replace(&path, &test_module(1));
    let third = Snapshot::build(config.clone(), Some(&second)).unwrap_or_else(|e| panic!("{e}"));
    let same = &third.plugin_config.plugins[0];
    assert_eq!(same.version, v1.version);
    assert!(Arc::ptr_eq(&same.module, &v1.module));

    // New bytes: a new version (hot update); no host is rebuilt.
    replace(&path, &test_module(2));
    let fourth = Snapshot::build(config.clone(), Some(&third)).unwrap_or_else(|e| panic!("{e}"));
    let v2 = &fourth.plugin_config.plugins[0];
    assert_ne!(v2.version, v1.version);
    assert_eq!(v2.module_hash, xxhash_rust::xxh3::xxh3_64(&test_module(2)));
    assert_eq!(&*v2.module, test_module(2).as_slice());
    // The running instances follow the version: kept while it holds, new for new bytes.
    let loaded = |snapshot: &Snapshot| Arc::clone(snapshot.plugins.iter().next().expect("one plugin loaded"));
    assert!(
        Arc::ptr_eq(&loaded(&first), &loaded(&third)),
        "same version, same instances"
    );
    assert!(
        !Arc::ptr_eq(&loaded(&third), &loaded(&fourth)),
        "a new version starts new instances"
    );
    assert!(same_hosts(&third, &fourth));
    assert_eq!(chain(&fourth, "a", "r"), ["p"]);

    // The budget alone: a settings change; the plugin is kept.
    let mut budgeted = config.clone();
    budgeted.plugins.as_mut().unwrap().vm_budget = 4;
    let fifth = Snapshot::build(budgeted, Some(&fourth)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fifth.plugin_config.budget.vm_budget, Some(4));
    assert!(Arc::ptr_eq(&fifth.plugin_config.plugins[0], v2));
    let sixth = apply(
        &fifth,
        ChangeSet {
            settings: Some(Settings {
                plugins: Some(proto::Plugins {
                    vm_memory_budget: "64MiB".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    assert_eq!(
        sixth.plugin_config.budget.vm_budget, None,
        "settings are replaced whole"
    );
    assert_eq!(sixth.plugin_config.budget.vm_memory_budget, 64 << 20);
    assert_eq!(sixth.plugin_config.plugins.len(), 1);
    assert_eq!(
        errors(
            &sixth,
            ChangeSet {
                settings: Some(Settings {
                    plugins: config.plugins.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        ),
        ["settings.plugins.plugins: plugins change through upsert_plugins and delete_plugins"]
    );

    // A module that cannot be read: the running config stays.
    std::fs::remove_file(&path).unwrap();
    let message = Snapshot::build(config, Some(&fourth))
        .err()
        .expect("rejected")
        .to_string();
    assert_eq!(
        message,
        format!(
            "plugins.plugins[0].module: {}: No such file or directory (os error 2)",
            path.display()
        )
    );
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
