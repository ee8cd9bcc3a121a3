//! Garbage on the TLS port: plain HTTP, a truncated ClientHello (closed, and
//! left hanging), a ClientHello claiming over 64 KiB spread over garbage
//! records, random bytes, and silence. Each closes only its own connection,
//! within the handshake timeout, while a good keep-alive TLS connection on the
//! same worker keeps serving and nothing reaches the upstream.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use tollgate_e2e::client;
use tollgate_e2e::tls::{Ca, TlsClient};
use tollgate_e2e::{eps, Behaviour, Gateway, Upstream};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// Scheduling slack on a loaded two-core machine.
const SLACK: Duration = Duration::from_millis(1500);

/// A TLS record header: content type, legacy version 3.1, length.
fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![content_type, 3, 1];
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Deterministic noise (xorshift), so a failure replays the same bytes.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// The start of a real ClientHello: handshake type 1 with a 3-byte length,
/// legacy version, 32 random bytes, then nothing more.
fn truncated_client_hello() -> Vec<u8> {
    let mut hs = vec![1, 0, 0, 200, 3, 3];
    hs.extend_from_slice(&noise(32, 7));
    record(22, &hs)
}

/// A handshake message announcing 1 MiB, spread over 16 KiB records of noise
/// until more than 64 KiB was sent.
fn oversized_client_hello() -> Vec<u8> {
    let mut out = Vec::new();
    let mut first = vec![1, 0x10, 0, 0];
    first.extend_from_slice(&noise(16 * 1024 - 4, 1));
    out.extend(record(22, &first));
    for i in 0..5 {
        out.extend(record(22, &noise(16 * 1024, 100 + i)));
    }
    out
}

/// Sends `bytes` (then half-closes when `close`), and returns how long the
/// gateway took to close the connection and what it sent before.
fn send_and_time_close(addr: SocketAddr, bytes: &[u8], close: bool) -> (Duration, Vec<u8>) {
    let mut s = client::connect(addr).expect("connect");
    s.set_read_timeout(Some(HANDSHAKE_TIMEOUT + SLACK + Duration::from_secs(3)))
        .unwrap();
    let start = Instant::now();
    // The gateway may close before reading everything; a failed write is fine.
    let _ = s.write_all(bytes);
    if close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close after {:?} ({e}); got {got:?}", start.elapsed()),
        }
    }
    (start.elapsed(), got)
}

#[test]
fn tls_garbage_closes_only_its_connection_within_the_handshake_timeout() {
    let ca = Ca::new("root");
    let leaf = ca.leaf(&["a.test"]);
    let up = Upstream::start(Behaviour::Echo);
    // One worker: the bad connections share it with the good one.
    let gw = Gateway::start(&format!(
        r#"
runtime: {{workers: 1}}
access_log: {{path: "off"}}
certificates: [{cert}]
listeners:
  - {{name: https, address: "127.0.0.1:${{https}}", tls: {{default_certificate: a, handshake_timeout: 1s}}}}
hosts: [{{name: a, domains: ["a.test"], tls: {{certificate: a}}, routes: [{{name: r, proxy: {{cluster: up}}}}]}}]
clusters: [{{name: up, endpoints: {ups}}}]
"#,
        cert = leaf.yaml_entry("a"),
        ups = eps(&[&up])
    ));
    let addr = gw.addr("https");
    let mut good = TlsClient::trusting(&ca.pem()).connect(addr, "a.test").unwrap();
    assert_eq!(good.get("a.test", "/0").unwrap().status, 200);

    let cases: [(&str, Vec<u8>, bool); 7] = [
        ("plain HTTP", client::request("GET", "a.test", "/", &[], None), false),
        ("truncated ClientHello, then close", truncated_client_hello(), true),
        ("truncated ClientHello, left open", truncated_client_hello(), false),
        ("ClientHello over 64 KiB", oversized_client_hello(), false),
        ("random bytes", noise(4096, 42), false),
        ("an alert record before any hello", record(21, &[2, 40]), false),
        ("nothing at all", Vec::new(), false),
    ];
    for (i, (what, bytes, close)) in cases.iter().enumerate() {
        let (took, got) = send_and_time_close(addr, bytes, *close);
        assert!(
            took <= HANDSHAKE_TIMEOUT + SLACK,
            "{what}: closed after {took:?}, handshake timeout is {HANDSHAKE_TIMEOUT:?}"
        );
        assert!(
            !got.starts_with(b"HTTP/1.1 2"),
            "{what}: answered like a good request: {:?}",
            String::from_utf8_lossy(&got)
        );
        // Anything sent back is TLS (an alert) or a plain-HTTP error, never a hang.
        if let Some(first) = got.first() {
            assert!(
                *first == 21 || got.starts_with(b"HTTP/1."),
                "{what}: unexpected reply {got:?}"
            );
        }
        let r = good
            .get("a.test", &format!("/{}", i + 1))
            .unwrap_or_else(|e| panic!("the good connection broke after {what}: {e}"));
        assert_eq!(r.status, 200, "after {what}");
    }
    assert_eq!(
        up.requests(),
        cases.len() + 1,
        "only the good requests reached the upstream"
    );
    // A new good handshake still works too.
    let (_, r) = TlsClient::trusting(&ca.pem()).get(addr, "a.test", "/last").unwrap();
    assert_eq!(r.status, 200);
}

#[test]
fn many_hanging_handshakes_are_all_timed_out() {
    let ca = Ca::new("root");
    let leaf = ca.leaf(&["a.test"]);
    let gw = Gateway::start(&format!(
        "runtime: {{workers: 2}}\naccess_log: {{path: \"off\"}}\ncertificates: [{}]\n\
         listeners: [{{name: https, address: \"127.0.0.1:${{https}}\", \
         tls: {{default_certificate: a, handshake_timeout: 1s}}}}]\n\
         hosts: [{{name: a, domains: [\"a.test\"], tls: {{certificate: a}}, \
         routes: [{{name: r, direct_response: {{body: ok}}}}]}}]\n",
        leaf.yaml_entry("a")
    ));
    let addr = gw.addr("https");
    // 50 connections that stall mid-ClientHello, all at once.
    let mut stalled: Vec<_> = (0..50)
        .map(|_| {
            let mut s = client::connect(addr).unwrap();
            s.write_all(&truncated_client_hello()).unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let (_, r) = TlsClient::trusting(&ca.pem()).get(addr, "a.test", "/").unwrap();
    assert_eq!(r.body_str(), "ok", "stalled handshakes must not block a good one");
    for s in &mut stalled {
        s.set_read_timeout(Some(HANDSHAKE_TIMEOUT + SLACK + Duration::from_secs(2)))
            .unwrap();
        let mut buf = [0u8; 256];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a stalled handshake was not closed after {:?}: {e}", start.elapsed()),
            }
        }
    }
    assert!(
        start.elapsed() <= HANDSHAKE_TIMEOUT + SLACK,
        "closing 50 stalled handshakes took {:?}",
        start.elapsed()
    );
}
