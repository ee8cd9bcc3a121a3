//! Request and response bodies end to end: 100 MB streamed up and down
//! without the gateway's memory growing with them, chunked framing in both
//! directions, and `Expect: 100-continue`.

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tollgate_e2e::client::{request, write_pattern_body, Conn};
use tollgate_e2e::{eps, pattern_hash, Behaviour, Fnv, Gateway, Upstream};

const BIG: u64 = 100 * 1024 * 1024;
/// Allowed RSS growth while 100 MB pass through.
const MAX_GROWTH_KIB: u64 = 64 * 1024;

fn config(up: &Upstream) -> String {
    r#"
runtime: {workers: 1}
access_log: {path: "off"}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - {name: all, domains: ["*"], routes: [{name: all, proxy: {cluster: backend, read_timeout: 30s, send_timeout: 30s}}]}
clusters:
  - {name: backend, endpoints: UPS}
"#
    .replace("UPS", &eps(&[up]))
}

/// Samples the gateway's RSS every 50 ms until dropped; reports the peak.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: i32) -> RssWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        RssWatch {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.peak.load(Ordering::SeqCst)
    }
}

fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn upload(chunked: bool) {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up));
    let before = gw.rss_kib();
    let watch = RssWatch::start(gw.pid());
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_string()
    } else {
        format!("Content-Length: {BIG}")
    };
    c.send(format!("POST /upload HTTP/1.1\r\nHost: b.test\r\n{framing}\r\n\r\n").as_bytes())
        .unwrap();
    write_pattern_body(c.stream(), BIG, chunked).unwrap();
    let r = c.read_response().unwrap();
    let peak = watch.finish();
    assert!(peak > 0, "RSS was never sampled");
    assert_eq!(r.status, 200, "{}", r.body_str());
    let j = r.json();
    assert_eq!(j["body_len"], BIG);
    assert_eq!(j["body_hash"], pattern_hash(BIG));
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "RSS grew from {before} KiB to {peak} KiB while streaming 100 MB up"
    );
}

fn download(chunked: bool) {
    let up = Upstream::start(Behaviour::Large { len: BIG, chunked });
    let gw = Gateway::start(&config(&up));
    let before = gw.rss_kib();
    let watch = RssWatch::start(gw.pid());
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(&request("GET", "b.test", "/download", &[], None)).unwrap();
    let mut h = Fnv::default();
    let mut n = 0u64;
    let r = c
        .read_response_with(false, &mut |b| {
            h.update(b);
            n += b.len() as u64;
        })
        .unwrap();
    let peak = watch.finish();
    assert!(peak > 0, "RSS was never sampled");
    assert_eq!(r.status, 200);
    assert_eq!(n, BIG);
    assert_eq!(h.hex(), pattern_hash(BIG));
    if chunked {
        assert!(
            r.header("transfer-encoding").is_some_and(|v| v.contains("chunked")),
            "{:?}",
            r.headers
        );
    } else {
        assert_eq!(r.header("content-length"), Some(BIG.to_string().as_str()));
    }
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "RSS grew from {before} KiB to {peak} KiB while streaming 100 MB down"
    );
    // The connection is still usable after a streamed body.
    up.set_behaviour(Behaviour::Echo);
    assert_eq!(
        c.exchange(&request("GET", "b.test", "/after", &[], None))
            .unwrap()
            .status,
        200
    );
}

#[test]
fn stream_100mb_up_content_length() {
    upload(false);
}

#[test]
fn stream_100mb_down_content_length() {
    download(false);
}

#[test]
fn chunked_upload() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let len = 5_000_000;
    c.send(b"POST /c HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    write_pattern_body(c.stream(), len, true).unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["body_len"], len);
    assert_eq!(r.json()["body_hash"], pattern_hash(len));
    // A second chunked request on the same connection: framing stayed in sync.
    c.send(b"POST /c2 HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.json()["path"], "/c2");
    assert_eq!(r.json()["body_len"], 5);
}

#[test]
fn chunked_download() {
    let len = 5_000_000;
    let up = Upstream::start(Behaviour::Large { len, chunked: true });
    let gw = Gateway::start(&config(&up));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for _ in 0..2 {
        let r = c.exchange(&request("GET", "b.test", "/", &[], None)).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len() as u64, len);
        let mut h = Fnv::default();
        h.update(&r.body);
        assert_eq!(h.hex(), pattern_hash(len));
    }
}

#[test]
fn stream_100mb_chunked_both_ways() {
    upload(true);
    download(true);
}

#[test]
fn expect_100_continue() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(b"PUT /e HTTP/1.1\r\nHost: b.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    // The client must not need to send the body before it hears 100 Continue.
    let interim = c.read_head().unwrap();
    assert_eq!(
        interim.status, 100,
        "expected 100 Continue before the body, got {interim:?}"
    );
    c.send(b"hello world").unwrap();
    let r = c.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["body_len"], 11);
}

#[test]
fn curl_upload_with_expect_continue() {
    let up = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&config(&up));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upload.bin");
    let len = 3_000_000u64;
    let mut f = std::fs::File::create(&file).unwrap();
    write_pattern_body(&mut f, len, false).unwrap();
    drop(f);
    // curl sends `Expect: 100-continue` for bodies this large and waits
    // (up to --expect100-timeout) for the interim response.
    let out = Command::new("curl")
        .args([
            "-sS",
            "-v",
            "--max-time",
            "20",
            "--expect100-timeout",
            "5",
            "-H",
            "Host: b.test",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://{}/curl-upload", gw.addr("http")))
        .output()
        .expect("run curl");
    let verbose = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "curl failed: {verbose}");
    assert!(
        verbose.contains("Expect: 100-continue"),
        "curl did not send Expect: {verbose}"
    );
    assert!(
        verbose.contains("HTTP/1.1 100"),
        "no 100 Continue reached curl: {verbose}"
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON echo");
    assert_eq!(j["body_len"], len);
    assert_eq!(j["body_hash"], pattern_hash(len));
}

#[test]
fn slow_client_does_not_make_the_gateway_buffer() {
    let up = Upstream::start(Behaviour::Large {
        len: BIG,
        chunked: false,
    });
    let gw = Gateway::start(&config(&up));
    let before = gw.rss_kib();
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(&request("GET", "b.test", "/download", &[], None)).unwrap();
    let head = c.read_head().unwrap();
    assert_eq!(head.status, 200);
    // Stop reading: the upstream keeps writing until TCP backpressure
    // reaches it through the gateway, which must not soak up the rest.
    let watch = RssWatch::start(gw.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let peak = watch.finish();
    assert!(peak > 0, "RSS was never sampled");
    assert!(
        peak.saturating_sub(before) < MAX_GROWTH_KIB,
        "RSS grew from {before} KiB to {peak} KiB while the client did not read"
    );
    let mut n = c.take_buffered().len() as u64;
    let mut buf = vec![0u8; 256 * 1024];
    while n < BIG {
        let k = std::io::Read::read(c.stream(), &mut buf).unwrap();
        assert!(k > 0, "body ended at {n}");
        n += k as u64;
    }
    assert_eq!(n, BIG);
}
