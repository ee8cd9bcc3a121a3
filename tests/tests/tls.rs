//! TLS termination end to end, with certificates made at test time: SNI
//! (exact, wildcard, default, unknown with either policy), TLS 1.2 and 1.3 and
//! min_version, resumption across connections and workers, mTLS, HSTS,
//! X-Forwarded-Proto, the HTTP→HTTPS redirect, curl as a real client, a reload
//! that swaps one host's certificate, and certificate errors from `tollgate check`.

use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use tollgate_e2e::client::{get, request, Response};
use tollgate_e2e::gateway::check;
use tollgate_e2e::tls::{
    yaml_str, Ca, HandshakeKind, KeyKind, Leaf, LeafSpec, ProtocolVersion, SessionStore, TlsClient, Versions,
};
use tollgate_e2e::{eps, wait, Behaviour, Gateway, Upstream};

/// Certificates from one CA: `a.test`, `*.w.test` and the listener default.
#[derive(Clone)]
struct Pki {
    ca: Rc<Ca>,
    a: Leaf,
    wild: Leaf,
    fallback: Leaf,
}

impl Pki {
    fn new() -> Pki {
        let ca = Ca::new("tollgate test CA");
        Pki {
            a: ca.leaf(&["a.test"]),
            wild: ca.leaf(&["*.w.test"]),
            fallback: ca.leaf(&["default.test"]),
            ca: Rc::new(ca),
        }
    }

    fn client(&self) -> TlsClient {
        TlsClient::trusting(&self.ca.pem())
    }
}

/// Two workers; a TLS listener (`https`) and a plain one (`http`); hosts
/// a.test (HSTS), *.w.test, r.test (redirect to https) and a catch-all.
/// `listener_tls` and `extra` are spliced into the listener's `tls` and the
/// end of the host list.
fn config(pki: &Pki, up: &Upstream, listener_tls: &str, extra_hosts: &str) -> String {
    format!(
        r#"
runtime: {{workers: 2}}
access_log: {{path: "off"}}
certificates:
  - {a}
  - {wild}
  - {fallback}
listeners:
  - {{name: https, address: "127.0.0.1:${{https}}", tls: {{default_certificate: fallback{listener_tls}}}}}
  - {{name: http, address: "127.0.0.1:${{http}}"}}
hosts:
  - name: a
    domains: ["a.test"]
    tls: {{certificate: a, hsts: {{max_age: 1h, include_subdomains: true}}}}
    routes: [{{name: r, proxy: {{cluster: up}}}}]
  - name: wild
    domains: ["*.w.test"]
    tls: {{certificate: wild}}
    routes: [{{name: r, proxy: {{cluster: up}}}}]
  - name: redirect
    domains: ["r.test"]
    routes: [{{name: r, redirect: {{scheme: https, port: ${{https}}}}}}]
{extra_hosts}
  - name: other
    domains: ["*"]
    routes: [{{name: r, direct_response: {{body: "catch-all"}}}}]
clusters:
  - {{name: up, endpoints: {ups}}}
"#,
        a = pki.a.yaml_entry("a"),
        wild = pki.wild.yaml_entry("wild"),
        fallback = pki.fallback.yaml_entry("fallback"),
        ups = eps(&[up]),
    )
}

fn start(pki: &Pki, up: &Upstream, listener_tls: &str) -> Gateway {
    Gateway::start(&config(pki, up, listener_tls, ""))
}

/// The value of request header `name` the echo upstream saw, from its JSON answer.
fn echoed_header(r: &Response, name: &str) -> Option<String> {
    r.json()["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0].as_str() == Some(name))
        .and_then(|h| h[1].as_str().map(str::to_string))
}

#[test]
fn sni_picks_exact_wildcard_and_default_certificates() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    let addr = gw.addr("https");

    let (h, r) = pki.client().get(addr, "a.test", "/exact").unwrap();
    assert_eq!(h.peer_der, pki.a.der, "a.test gets its own certificate");
    assert_eq!(h.peer_names, ["a.test"]);
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["path"], "/exact");

    let (h, r) = pki.client().get(addr, "x.w.test", "/wild").unwrap();
    assert_eq!(h.peer_der, pki.wild.der, "x.w.test gets the wildcard certificate");
    assert_eq!(r.status, 200);

    // A name no host claims, and no SNI at all: the listener's default certificate.
    let any = TlsClient::insecure();
    let (h, r) = any.get(addr, "unknown.test", "/").unwrap();
    assert_eq!(h.peer_der, pki.fallback.der, "unknown SNI gets the default certificate");
    assert_eq!(r.body_str(), "catch-all");
    let (h, _) = pki.client().without_sni().get(addr, "default.test", "/").unwrap();
    assert_eq!(h.peer_der, pki.fallback.der, "no SNI gets the default certificate");
    // A wildcard certificate covers one label only (RFC 6125), so SNI does not
    // pick it for a.b.w.test; routing's `*.w.test` matches any depth, so the
    // request itself still reaches the wild host's upstream.
    let (h, r) = any.get(addr, "a.b.w.test", "/").unwrap();
    assert_eq!(
        h.peer_der, pki.fallback.der,
        "*.w.test's certificate must not be served for a.b.w.test"
    );
    assert_eq!(r.status, 200);
    assert_eq!(up.requests(), 3);
}

#[test]
fn unknown_sni_is_refused_under_the_reject_policy() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, ", unknown_sni: reject");
    let addr = gw.addr("https");
    let err = TlsClient::insecure()
        .connect(addr, "unknown.test")
        .err()
        .expect("the handshake for an unknown name must fail");
    assert!(
        // rustls spells the alert "UnrecognisedName".
        err.to_string().to_ascii_lowercase().contains("unrecognised"),
        "expected an unrecognized_name alert, got: {err}"
    );
    // Known names still work on the same listener.
    let (h, r) = pki.client().get(addr, "y.w.test", "/").unwrap();
    assert_eq!(h.peer_der, pki.wild.der);
    assert_eq!(r.status, 200);
    assert_eq!(up.requests(), 1);
}

#[test]
fn tls12_and_tls13_negotiate_and_min_version_refuses_12() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    for (offer, want) in [
        (Versions::Tls12, ProtocolVersion::TLSv1_2),
        (Versions::Tls13, ProtocolVersion::TLSv1_3),
        (Versions::Both, ProtocolVersion::TLSv1_3),
    ] {
        let (h, r) = pki
            .client()
            .versions(offer)
            .get(gw.addr("https"), "a.test", "/")
            .unwrap();
        assert_eq!(h.version, want, "offering {offer:?}");
        assert_eq!(h.alpn.as_deref(), Some("http/1.1"), "ALPN with {offer:?}");
        assert_eq!(r.status, 200);
    }
    // h2 is not selected before HTTP/2 exists; a client offering only h2 gets
    // the no_application_protocol alert (RFC 7301 3.2).
    let (h, _) = pki
        .client()
        .alpn(&["h2", "http/1.1"])
        .get(gw.addr("https"), "a.test", "/")
        .unwrap();
    assert_eq!(h.alpn.as_deref(), Some("http/1.1"), "h2 must not be selected");
    let err = pki.client().alpn(&["h2"]).connect(gw.addr("https"), "a.test").err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("NoApplicationProtocol")),
        "an h2-only client: {err:?}"
    );
    // No ALPN at all is plain HTTP/1.1.
    let (h, r) = pki.client().alpn(&[]).get(gw.addr("https"), "a.test", "/").unwrap();
    assert_eq!((h.alpn, r.status), (None, 200));
    drop(gw);

    let gw = start(&pki, &up, ", min_version: \"1.3\"");
    let refused = pki
        .client()
        .versions(Versions::Tls12)
        .connect(gw.addr("https"), "a.test");
    assert!(
        refused.is_err(),
        "a TLS 1.2-only client must be refused under min_version 1.3"
    );
    let (h, _) = pki.client().get(gw.addr("https"), "a.test", "/").unwrap();
    assert_eq!(h.version, ProtocolVersion::TLSv1_3);
}

#[test]
fn sessions_resume_across_connections_and_workers() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    for versions in [Versions::Tls13, Versions::Tls12] {
        let store = SessionStore::new();
        let client = pki.client().versions(versions).sessions(&store);
        // Each handshake is a new TCP connection; with two workers behind
        // SO_REUSEPORT, eight of them land on both (all on one: p = 2^-7).
        let kinds: Vec<HandshakeKind> = (0..8)
            .map(|i| {
                let (h, r) = client
                    .get(gw.addr("https"), "a.test", "/")
                    .unwrap_or_else(|e| panic!("{versions:?} connection {i}: {e}"));
                assert_eq!(r.status, 200);
                h.kind
            })
            .collect();
        assert_eq!(kinds[0], HandshakeKind::Full, "{versions:?}");
        assert!(
            kinds[1..].iter().all(|k| *k == HandshakeKind::Resumed),
            "{versions:?}: every later connection must resume, got {kinds:?}"
        );
    }
}

#[test]
fn mtls_requires_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    let clients = Ca::new("client CA");
    let strangers = Ca::new("another CA");
    let up = Upstream::start(Behaviour::Echo);
    let m = pki.ca.leaf(&["m.test", "o.test"]);
    let hosts = format!(
        r#"  - name: mtls
    domains: ["m.test"]
    tls: {{certificate: m, client_ca_pem: {ca}}}
    routes: [{{name: r, proxy: {{cluster: up}}}}]
  - name: optional
    domains: ["o.test"]
    tls: {{certificate: m, client_ca_pem: {ca}, client_certificate_optional: true}}
    routes: [{{name: r, proxy: {{cluster: up}}}}]"#,
        ca = yaml_str(&clients.pem())
    );
    let yaml = config(&pki, &up, "", &hosts).replace(
        "certificates:\n",
        &format!("certificates:\n  - {}\n", m.yaml_entry("m")),
    );
    let gw = Gateway::start(&yaml);
    let addr = gw.addr("https");
    let good = clients.client_cert("alice");
    let bad = strangers.client_cert("mallory");
    for versions in [Versions::Tls13, Versions::Tls12] {
        let c = pki.client().versions(versions);
        let (_, r) = c.clone().client_cert(&good).get(addr, "m.test", "/").unwrap();
        assert_eq!(r.status, 200, "{versions:?}: a client CA certificate is accepted");
        // TLS 1.3 reports a refused client certificate after the client's
        // Finished, so the failure may show on the request rather than the handshake.
        assert!(
            c.get(addr, "m.test", "/").is_err(),
            "{versions:?}: no client certificate must be refused"
        );
        assert!(
            c.clone().client_cert(&bad).get(addr, "m.test", "/").is_err(),
            "{versions:?}: a certificate from another CA must be refused"
        );
        // Optional: none is fine, a valid one is fine, an invalid one is still refused.
        assert_eq!(c.get(addr, "o.test", "/").unwrap().1.status, 200);
        assert_eq!(
            c.clone().client_cert(&good).get(addr, "o.test", "/").unwrap().1.status,
            200
        );
        assert!(c.clone().client_cert(&bad).get(addr, "o.test", "/").is_err());
        // Hosts without a client CA do not ask for one.
        assert_eq!(c.get(addr, "a.test", "/").unwrap().1.status, 200);
    }
    assert_eq!(up.requests(), 8);
}

#[test]
fn hsts_only_over_tls_and_only_where_configured() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    let (_, r) = pki.client().get(gw.addr("https"), "a.test", "/").unwrap();
    let hsts = r.header("strict-transport-security").unwrap_or_default().to_string();
    assert!(
        hsts.starts_with("max-age=3600") && hsts.contains("includeSubDomains") && !hsts.contains("preload"),
        "a.test over TLS: Strict-Transport-Security {hsts:?}"
    );
    let (_, r) = pki.client().get(gw.addr("https"), "x.w.test", "/").unwrap();
    assert_eq!(r.header("strict-transport-security"), None, "no hsts configured");
    // RFC 6797 7.2: never over plain HTTP.
    let r = get(gw.addr("http"), "a.test", "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), None, "HSTS over plain HTTP");
}

#[test]
fn upstream_sees_x_forwarded_proto_https() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    let (_, r) = pki.client().get(gw.addr("https"), "a.test", "/p").unwrap();
    assert_eq!(echoed_header(&r, "x-forwarded-proto").as_deref(), Some("https"));
    assert_eq!(echoed_header(&r, "x-forwarded-host").as_deref(), Some("a.test"));
    let r = get(gw.addr("http"), "a.test", "/p");
    assert_eq!(echoed_header(&r, "x-forwarded-proto").as_deref(), Some("http"));
    // A client cannot claim https over plain HTTP.
    let mut c = tollgate_e2e::Conn::connect(gw.addr("http")).unwrap();
    let r = c
        .exchange(&request("GET", "a.test", "/p", &[("X-Forwarded-Proto", "https")], None))
        .unwrap();
    assert_eq!(echoed_header(&r, "x-forwarded-proto").as_deref(), Some("http"));
}

#[test]
fn plain_http_redirects_to_https() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    let r = get(gw.addr("http"), "r.test", "/some/path?q=1");
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location"),
        Some(format!("https://r.test:{}/some/path?q=1", gw.port("https")).as_str())
    );
    assert_eq!(up.requests(), 0);
}

/// curl (OpenSSL) against the gateway: `--resolve` sends the real SNI.
fn curl(pki_ca: &str, host: &str, port: u16, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pki_ca).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .arg("--resolve")
        .arg(format!("{host}:{port}:127.0.0.1"))
        .args(extra)
        .arg(format!("https://{host}:{port}/curl"))
        .current_dir(dir.path())
        .output()
        .expect("run curl (apt install curl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn curl_gets_through_with_either_version_and_sees_hsts() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let gw = start(&pki, &up, "");
    let port = gw.port("https");
    for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
        let (ok, text) = curl(&pki.ca.pem(), "a.test", port, version);
        assert!(ok, "curl {version:?}: {text}");
        assert!(text.starts_with("HTTP/1.1 200"), "curl {version:?}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("strict-transport-security: max-age=3600"),
            "{text}"
        );
        assert!(text.contains("\"path\":\"/curl\""), "{text}");
    }
    let (ok, text) = curl(&pki.ca.pem(), "x.w.test", port, &[]);
    assert!(ok && text.starts_with("HTTP/1.1 200"), "wildcard via curl: {text}");
    // curl checks the name: the default certificate does not cover an unknown host.
    let (ok, text) = curl(&pki.ca.pem(), "unknown.test", port, &[]);
    assert!(!ok, "curl accepted default.test's certificate for unknown.test: {text}");
}

#[test]
fn curl_with_a_client_certificate_passes_mtls() {
    let pki = Pki::new();
    let clients = Ca::new("client CA");
    let up = Upstream::start(Behaviour::Echo);
    let hosts = format!(
        "  - name: mtls\n    domains: [\"m.w.test\"]\n    tls: {{certificate: wild, client_ca_pem: {}}}\n    \
         routes: [{{name: r, proxy: {{cluster: up}}}}]",
        yaml_str(&clients.pem())
    );
    let gw = Gateway::start(&config(&pki, &up, "", &hosts));
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = clients.client_cert("curl").write(dir.path(), "client");
    let port = gw.port("https");
    let args = ["--cert", cert.to_str().unwrap(), "--key", key.to_str().unwrap()];
    let (ok, text) = curl(&pki.ca.pem(), "m.w.test", port, &args);
    assert!(
        ok && text.starts_with("HTTP/1.1 200"),
        "curl with a client certificate: {text}"
    );
    let (ok, text) = curl(&pki.ca.pem(), "m.w.test", port, &[]);
    assert!(
        !ok || !text.contains("HTTP/1.1 200"),
        "curl without a client certificate got through: {text}"
    );
    assert_eq!(up.requests(), 1);
}

#[test]
fn certificates_from_files_rsa_keys_and_intermediate_chains() {
    let root = Ca::new("root");
    let inter = root.intermediate("intermediate");
    let rsa = inter.issue(
        &["rsa.test"],
        LeafSpec {
            key: KeyKind::Rsa2048,
            ..LeafSpec::default()
        },
    );
    let ec = inter.leaf(&["ec.test"]);
    let dir = tempfile::tempdir().unwrap();
    let (rsa_cert, rsa_key) = rsa.write(dir.path(), "rsa");
    let (ec_cert, ec_key) = ec.write(dir.path(), "ec");
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&format!(
        r#"
runtime: {{workers: 1}}
access_log: {{path: "off"}}
certificates:
  - {{name: rsa, cert_chain_file: "{}", private_key_file: "{}"}}
  - {{name: ec, cert_chain_file: "{}", private_key_file: "{}"}}
listeners: [{{name: https, address: "127.0.0.1:${{https}}", tls: {{default_certificate: ec}}}}]
hosts:
  - {{name: rsa, domains: ["rsa.test"], tls: {{certificate: rsa}}, routes: [{{name: r, proxy: {{cluster: up}}}}]}}
  - {{name: ec, domains: ["ec.test"], tls: {{certificate: ec}}, routes: [{{name: r, proxy: {{cluster: up}}}}]}}
clusters: [{{name: up, endpoints: {}}}]
"#,
        rsa_cert.display(),
        rsa_key.display(),
        ec_cert.display(),
        ec_key.display(),
        eps(&[&up])
    ));
    // The client trusts only the root: the intermediate must come from the server.
    let client = TlsClient::trusting(&root.pem());
    for (name, leaf) in [("rsa.test", &rsa), ("ec.test", &ec)] {
        for versions in [Versions::Tls12, Versions::Tls13] {
            let (h, r) = client
                .clone()
                .versions(versions)
                .get(gw.addr("https"), name, "/")
                .unwrap_or_else(|e| panic!("{name} {versions:?}: {e}"));
            assert_eq!(h.peer_der, leaf.der);
            assert_eq!(r.status, 200);
        }
    }
}

#[test]
fn reload_swapping_one_certificate_keeps_other_hosts_connections_and_sessions() {
    let pki = Pki::new();
    let up = Upstream::start(Behaviour::Echo);
    let mut gw = start(&pki, &up, "");
    let addr = gw.addr("https");

    // An established keep-alive connection and a stored session for the host that stays.
    let mut kept = pki.client().connect(addr, "x.w.test").unwrap();
    assert_eq!(kept.get("x.w.test", "/before").unwrap().status, 200);
    let store = SessionStore::new();
    let resuming = pki.client().sessions(&store);
    assert_eq!(resuming.get(addr, "x.w.test", "/").unwrap().0.kind, HandshakeKind::Full);
    let old_a = pki.client().get(addr, "a.test", "/").unwrap().0;
    assert_eq!(old_a.peer_der, pki.a.der);

    let new_a = pki.ca.leaf(&["a.test"]);
    let swapped = Pki {
        a: new_a.clone(),
        ..pki.clone()
    };
    gw.reload(&config(&swapped, &up, "", ""));
    let applied = wait::until(Duration::from_secs(5), || {
        pki.client()
            .get(addr, "a.test", "/")
            .is_ok_and(|(h, _)| h.peer_der == new_a.der)
    });
    assert!(
        applied,
        "a.test still serves its old certificate; stderr:\n{}",
        gw.stderr()
    );

    for i in 0..3 {
        let r = kept
            .get("x.w.test", &format!("/after/{i}"))
            .unwrap_or_else(|e| panic!("the kept connection to x.w.test broke after the reload: {e}"));
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/after/{i}"));
    }
    let (h, r) = resuming.get(addr, "x.w.test", "/").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        h.kind,
        HandshakeKind::Resumed,
        "a session to the unchanged host must still resume after the reload"
    );
    assert_eq!(h.peer_der, pki.wild.der);
}

fn check_config(certificates: &[String], host_cert: &str) -> String {
    format!(
        "listeners: [{{name: https, address: \"127.0.0.1:8443\", tls: {{default_certificate: good}}}}]\n\
         certificates:\n{}\
         hosts: [{{name: h, domains: [\"h.test\"], tls: {{certificate: {host_cert}}}, \
         routes: [{{name: r, direct_response: {{body: ok}}}}]}}]\n",
        certificates.iter().map(|c| format!("  - {c}\n")).collect::<String>()
    )
}

#[test]
fn check_reports_each_certificate_error_with_its_field_path() {
    let ca = Ca::new("root");
    let good = ca.leaf(&["h.test"]);
    let other = ca.leaf(&["h.test"]);
    let expired = ca.issue(
        &["old.test"],
        LeafSpec {
            expired: true,
            ..LeafSpec::default()
        },
    );
    let (code, text) = check(&check_config(&[good.yaml_entry("good")], "good"));
    assert_eq!(code, Some(0), "a good TLS config: {text}");

    let garbled = good.chain_pem.replace("MII", "M!I");
    let certs = [
        good.yaml_entry("good"),
        format!(
            "{{name: garbled, cert_chain_pem: {}, private_key_pem: {}}}",
            yaml_str(&garbled),
            yaml_str(&good.key_pem)
        ),
        format!(
            "{{name: mismatched, cert_chain_pem: {}, private_key_pem: {}}}",
            yaml_str(&good.chain_pem),
            yaml_str(&other.key_pem)
        ),
        format!(
            "{{name: old, cert_chain_pem: {}, private_key_pem: {}, refuse_expired: true}}",
            yaml_str(&expired.chain_pem),
            yaml_str(&expired.key_pem)
        ),
    ];
    let (code, text) = check(&check_config(&certs, "nope"));
    assert_ne!(code, Some(0), "a broken TLS config passed: {text}");
    let lower = text.to_ascii_lowercase();
    for (path, why) in [
        ("certificates[1].cert_chain_pem", "pem"),
        ("certificates[2].private_key_pem", "match"),
        ("certificates[3]", "expired"),
        ("hosts[0].tls.certificate", "nope"),
    ] {
        let line = lower.lines().find(|l| l.contains(path));
        assert!(
            line.is_some_and(|l| l.contains(why)),
            "every error, with its path {path:?} and why ({why:?}): {text}"
        );
    }

    // Expired without refuse_expired: accepted (with a warning at run time).
    let certs = [
        good.yaml_entry("good"),
        format!(
            "{{name: old, cert_chain_pem: {}, private_key_pem: {}}}",
            yaml_str(&expired.chain_pem),
            yaml_str(&expired.key_pem)
        ),
    ];
    let (code, text) = check(&check_config(&certs, "old"));
    assert_eq!(code, Some(0), "an expired certificate is served unless refused: {text}");
}

#[test]
fn expired_certificate_is_served_with_a_warning() {
    let ca = Ca::new("root");
    let expired = ca.issue(
        &["old.test"],
        LeafSpec {
            expired: true,
            ..LeafSpec::default()
        },
    );
    let gw = Gateway::start(&format!(
        "runtime: {{workers: 1}}\naccess_log: {{path: \"off\"}}\ncertificates: [{}]\n\
         listeners: [{{name: https, address: \"127.0.0.1:${{https}}\", tls: {{default_certificate: old}}}}]\n\
         hosts: [{{name: h, domains: [\"old.test\"], tls: {{certificate: old}}, \
         routes: [{{name: r, direct_response: {{body: ok}}}}]}}]\n",
        expired.yaml_entry("old")
    ));
    let (h, r) = TlsClient::insecure().get(gw.addr("https"), "old.test", "/").unwrap();
    assert_eq!(h.peer_der, expired.der);
    assert_eq!(r.body_str(), "ok");
    assert!(
        gw.stderr().to_ascii_lowercase().contains("expired"),
        "a warning names the expired certificate: {}",
        gw.stderr()
    );
    // A verifying client refuses it: the warning is the operator's only notice.
    assert!(TlsClient::trusting(&ca.pem())
        .connect(gw.addr("https"), "old.test")
        .is_err());
}

#[test]
fn duplicate_domains_across_hosts_are_reported() {
    let ca = Ca::new("root");
    let good = ca.leaf(&["h.test"]);
    let yaml = format!(
        "listeners: [{{name: https, address: \"127.0.0.1:8443\", tls: {{default_certificate: good}}}}]\n\
         certificates: [{}]\n\
         hosts:\n  - {{name: one, domains: [\"h.test\"], tls: {{certificate: good}}, routes: [{{name: r, direct_response: {{body: a}}}}]}}\n  \
         - {{name: two, domains: [\"H.test\"], tls: {{certificate: good}}, routes: [{{name: r, direct_response: {{body: b}}}}]}}\n",
        good.yaml_entry("good")
    );
    let (code, text) = check(&yaml);
    assert_ne!(code, Some(0), "two hosts claim h.test: {text}");
    assert!(
        text.contains("hosts[1].domains[0]") && text.to_ascii_lowercase().contains("h.test"),
        "{text}"
    );
}
