//! Load balancing end to end: round robin spreads evenly, least-request
//! avoids a busy endpoint, consistent hash pins a header value or a client IP
//! to one endpoint.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::time::{Duration, Instant};

use tollgate_e2e::client::{request, Conn};
use tollgate_e2e::{connect_from, one_cluster_config, Behaviour, Gateway, Upstream};

fn upstream_of(r: &tollgate_e2e::Response) -> String {
    assert_eq!(r.status, 200, "{}", r.body_str());
    r.header("x-upstream").expect("x-upstream header").to_string()
}

#[test]
fn round_robin_spreads_evenly() {
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::start(Behaviour::Echo)).collect();
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gw = Gateway::start(&one_cluster_config(&refs, ", lb_policy: round_robin"));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    for _ in 0..30 {
        let r = c.exchange(&request("GET", "rr.test", "/", &[], None)).unwrap();
        upstream_of(&r);
    }
    let counts: Vec<usize> = ups.iter().map(Upstream::requests).collect();
    assert_eq!(counts, vec![10, 10, 10], "one worker, 30 requests, 3 endpoints");
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let slow = Upstream::start(Behaviour::Delay(Duration::from_millis(500)));
    let fast = Upstream::start(Behaviour::Echo);
    let gw = Gateway::start(&one_cluster_config(&[&slow, &fast], ", lb_policy: least_request"));
    let addr = gw.addr("http");
    // Four clients in closed loops for 1.5 s. Round robin would send each
    // client to the slow endpoint every other request (slow ≈ fast); least
    // request sees the slow one busy and sends nearly everything to the other.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::connect(addr).unwrap();
                let end = Instant::now() + Duration::from_millis(1500);
                while Instant::now() < end {
                    let r = c.exchange(&request("GET", "lr.test", "/", &[], None)).unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let (s, f) = (slow.requests(), fast.requests());
    assert!(f >= 20, "fast endpoint served only {f}");
    assert!(
        f >= 5 * s,
        "least request should avoid the busy endpoint: slow {s}, fast {f}"
    );
}

#[test]
fn consistent_hash_by_header_sticks() {
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::start(Behaviour::Echo)).collect();
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gw = Gateway::start(&one_cluster_config(
        &refs,
        ", lb_policy: consistent_hash, hash_header: x-user",
    ));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let mut owner: HashMap<String, String> = HashMap::new();
    for round in 0..4 {
        for k in 0..24 {
            let key = format!("user-{k}");
            let r = c
                .exchange(&request("GET", "ch.test", "/", &[("X-User", &key)], None))
                .unwrap();
            let up = upstream_of(&r);
            let first = owner.entry(key.clone()).or_insert_with(|| up.clone());
            assert_eq!(*first, up, "key {key} moved in round {round}");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "24 keys all hashed to one endpoint: {owner:?}");
}

#[test]
fn consistent_hash_by_client_ip_sticks() {
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::start(Behaviour::Echo)).collect();
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gw = Gateway::start(&one_cluster_config(&refs, ", lb_policy: consistent_hash"));
    let addr = gw.addr("http");
    let mut owner: HashMap<u8, String> = HashMap::new();
    for round in 0..3 {
        for ip in 1..=16u8 {
            // A new connection each time: the source port changes, the IP does not.
            let s = connect_from([127, 0, 0, ip], addr).unwrap();
            let mut c = Conn::from_stream(s);
            c.stream()
                .write_all(&request("GET", "ip.test", "/", &[("Connection", "close")], None))
                .unwrap();
            let up = upstream_of(&c.read_response().unwrap());
            let first = owner.entry(ip).or_insert_with(|| up.clone());
            assert_eq!(*first, up, "client 127.0.0.{ip} moved in round {round}");
        }
    }
    let used: HashSet<&String> = owner.values().collect();
    assert!(used.len() >= 2, "16 client IPs all hashed to one endpoint: {owner:?}");
    let seen = ups
        .iter()
        .flat_map(|u| u.seen())
        .find(|s| s.header("x-forwarded-for") == Some("127.0.0.7"));
    assert!(seen.is_some(), "X-Forwarded-For carries the real client IP");
}

#[test]
fn consistent_hash_moves_only_the_keys_of_an_ejected_endpoint() {
    let ups: Vec<Upstream> = (0..3).map(|_| Upstream::start(Behaviour::Echo)).collect();
    let refs: Vec<&Upstream> = ups.iter().collect();
    let gw = Gateway::start(&one_cluster_config(
        &refs,
        ", lb_policy: consistent_hash, hash_header: x-user, \
         health_check: {path: /health, interval: 100ms, timeout: 80ms, healthy_threshold: 1, unhealthy_threshold: 1}",
    ));
    let mut c = Conn::connect(gw.addr("http")).unwrap();
    let owners = |c: &mut Conn| -> HashMap<String, String> {
        (0..30)
            .map(|k| {
                let key = format!("key-{k}");
                let r = c
                    .exchange(&request("GET", "ch.test", "/", &[("X-User", &key)], None))
                    .unwrap();
                (key, upstream_of(&r))
            })
            .collect()
    };
    let before = owners(&mut c);
    let victim = ups[0].port().to_string();
    assert!(
        before.values().any(|u| *u == victim),
        "no key on the first endpoint: {before:?}"
    );
    ups[0].set_health(503);
    let ep = ups[0].endpoint();
    let ejected =
        || tollgate_e2e::metrics::sum(&gw.metrics(), "tollgate_endpoint_healthy", &[("endpoint", &ep)]) == Some(0.0);
    assert!(
        tollgate_e2e::wait::until(Duration::from_secs(5), ejected),
        "endpoint not ejected"
    );
    let during = owners(&mut c);
    for (key, owner) in &before {
        if *owner == victim {
            assert_ne!(during[key], victim, "{key} still goes to the unhealthy endpoint");
        } else {
            assert_eq!(&during[key], owner, "{key} moved although its endpoint stayed healthy");
        }
    }
    ups[0].set_health(200);
    let healthy =
        || tollgate_e2e::metrics::sum(&gw.metrics(), "tollgate_endpoint_healthy", &[("endpoint", &ep)]) == Some(1.0);
    assert!(
        tollgate_e2e::wait::until(Duration::from_secs(5), healthy),
        "endpoint not restored"
    );
    assert_eq!(
        owners(&mut c),
        before,
        "keys return to their endpoint after it recovers"
    );
}
