//! The command line end to end: `tollgate --version`, `tollgate check`
//! printing every error with its field path, and `run` refusing a bad config.

use std::process::Command;
use std::time::Duration;

use tollgate_e2e::gateway::{check, tollgate_bin};
use tollgate_e2e::{Gateway, GatewayOptions};

const BAD: &str = r#"
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - name: api
    domains: ["api.test"]
    routes:
      - {name: a, proxy: {cluster: nope}}
      - {name: b, match: {regex: "("}, direct_response: {body: x}}
clusters:
  - {name: c, endpoints: ["127.0.0.1:1"], lb_policy: fastest}
"#;

#[test]
fn version() {
    let out = Command::new(tollgate_bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("tollgate "), "{text}");
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
}

#[test]
fn check_accepts_a_good_config() {
    let (code, text) = check(
        "listeners: [{name: http, address: \"127.0.0.1:8080\"}]\n\
         hosts: [{name: a, domains: [\"*\"], routes: [{name: r, direct_response: {body: ok}}]}]\n",
    );
    assert_eq!(code, Some(0), "{text}");
}

#[test]
fn check_reports_errors_with_paths() {
    let (code, text) = check(&BAD.replace("${http}", "8080"));
    assert_ne!(code, Some(0), "a broken config passed: {text}");
    assert!(text.contains("lb_policy"), "enum error names its field: {text}");
    // The enum error may stop YAML decoding; fix it and every semantic error
    // must be reported at once, each with its path.
    let (code, text) = check(&BAD.replace("${http}", "8080").replace("fastest", "round_robin"));
    assert_ne!(code, Some(0));
    assert!(text.contains("hosts[0].routes[0]") && text.contains("nope"), "{text}");
    assert!(
        text.contains("hosts[0].routes[1]"),
        "every error, not just the first: {text}"
    );
}

#[test]
fn run_refuses_a_bad_config() {
    let mut gw = Gateway::spawn(&BAD.replace("fastest", "round_robin"), &GatewayOptions::default());
    let status = gw.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(gw.stderr().contains("nope"), "{}", gw.stderr());
}
