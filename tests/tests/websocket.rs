//! `Connection: Upgrade` end to end, over plain TCP and TLS: the gateway forwards the upgrade, relays
//! the 101, then tunnels raw bytes both ways until one side closes.

use std::io::Read;
use std::time::Duration;

use tollgate_e2e::client::Conn;
use tollgate_e2e::{eps, Behaviour, Gateway, Upstream};

fn read_n(c: &mut Conn, n: usize) -> Vec<u8> {
    let mut got = c.take_buffered();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < n {
        let k = c.stream().read(&mut buf).expect("read tunnel");
        assert!(k > 0, "tunnel closed after {} of {n} bytes", got.len());
        got.extend_from_slice(&buf[..k]);
    }
    got
}

#[test]
fn websocket_tunnel() {
    let up = Upstream::start(Behaviour::WebSocket);
    let gw = Gateway::start(
        &r#"
runtime: {workers: 1}
listeners: [{name: http, address: "127.0.0.1:${http}"}]
hosts:
  - {name: all, domains: ["*"], routes: [{name: ws, match: {prefix: "/ws"}, proxy: {cluster: backend, read_timeout: 1s}}]}
clusters:
  - {name: backend, endpoints: UPS}
"#
        .replace("UPS", &eps(&[&up])),
    );
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    c.send(
        b"GET /ws/chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let r = c.read_head().unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    assert!(
        r.header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")),
        "{:?}",
        r.headers
    );
    let seen = &up.seen()[0];
    assert_eq!(
        seen.header("upgrade"),
        Some("websocket"),
        "Upgrade must reach the upstream on an upgrade"
    );
    assert!(seen
        .header("connection")
        .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));

    for msg in [&b"\x81\x05hello"[..], &b"\x82\x03\x00\x01\x02"[..]] {
        c.send(msg).unwrap();
        assert_eq!(read_n(&mut c, msg.len()), msg);
    }
    // A large frame crosses the tunnel intact, in both directions.
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let writer = {
        let mut w = c.stream().try_clone().unwrap();
        let big = big.clone();
        std::thread::spawn(move || std::io::Write::write_all(&mut w, &big).unwrap())
    };
    let echoed = read_n(&mut c, big.len());
    writer.join().unwrap();
    assert!(echoed == big, "1 MB through the tunnel came back different");
    // The tunnel outlives the route's read_timeout: idle WebSockets are normal.
    std::thread::sleep(Duration::from_millis(1500));
    c.send(b"\x81\x02hi").unwrap();
    assert_eq!(read_n(&mut c, 4), b"\x81\x02hi");
    assert_eq!(up.connections(), 1);
}

/// Over TLS the tunnel decrypts and encrypts records itself (the client's
/// TLS session outlives the HTTP exchange), so bytes sent right behind the
/// upgrade request and large frames must come through intact both ways.
#[test]
fn websocket_tunnel_over_tls() {
    use tollgate_e2e::tls::{Ca, TlsClient};
    let ca = Ca::new("tollgate websocket CA");
    let leaf = ca.leaf(&["ws.test"]);
    let up = Upstream::start(Behaviour::WebSocket);
    let gw = Gateway::start(
        &r#"
runtime: {workers: 1}
certificates: [CERT]
listeners: [{name: https, address: "127.0.0.1:${https}", tls: {default_certificate: ws}}]
hosts:
  - {name: all, domains: ["ws.test"], tls: {certificate: ws}, routes: [{name: ws, proxy: {cluster: backend}}]}
clusters:
  - {name: backend, endpoints: UPS}
"#
        .replace("CERT", &leaf.yaml_entry("ws"))
        .replace("UPS", &eps(&[&up])),
    );
    let mut tls = TlsClient::trusting(&ca.pem())
        .connect(gw.addr("https"), "ws.test")
        .expect("TLS handshake");
    let c = &mut tls.conn;
    // The first frame travels in the same write as the upgrade request.
    c.send(b"GET /chat HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05early")
        .unwrap();
    let r = c.read_head().unwrap();
    assert_eq!(r.status, 101, "{r:?}");
    let mut got = c.take_buffered();
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < 7 {
        let k = c.stream().read(&mut buf).expect("read tunnel");
        assert!(k > 0, "tunnel closed early");
        got.extend_from_slice(&buf[..k]);
    }
    assert_eq!(&got[..7], b"\x81\x05early");
    // Larger than one TLS record (16 KiB) and than the tunnel's read buffer.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    c.send(&big).unwrap();
    let mut echoed = got[7..].to_vec();
    while echoed.len() < big.len() {
        let k = c.stream().read(&mut buf).expect("read tunnel");
        assert!(k > 0, "tunnel closed after {} of {} bytes", echoed.len(), big.len());
        echoed.extend_from_slice(&buf[..k]);
    }
    assert!(echoed == big, "300 KB echoed through the TLS tunnel differ");
}
