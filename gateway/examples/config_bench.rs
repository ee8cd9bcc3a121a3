//! Config-scale measurement run by `cargo xtask bench config`: builds a config
//! of N TLS hosts (each with its own ECDSA P-256 certificate, route and
//! cluster with a literal IP endpoint, so no DNS) through the real
//! `Snapshot` code and times the initial load, changes of 1 and 100 hosts
//! (route and certificate) applied as a `ChangeSet` (what the admin API
//! calls) and as a file reload (`Snapshot::build` with the previous
//! snapshot: a diff of the whole parsed file, then the same apply), and
//! reads VmRSS with every certificate loaded. Prints one JSON object.
//!
//! Usage: `config_bench --hosts N --cache DIR [--rounds R]`. Generated PEMs
//! are cached in DIR, so reruns skip key generation.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use tollgate::config::proto;
use tollgate::config::{ChangeSet, Snapshot};

/// Hosts changed by the larger change.
const HUNDRED: usize = 100;

struct Args {
    hosts: usize,
    cache: PathBuf,
    rounds: usize,
}

fn parse_args() -> Result<Args> {
    let mut hosts = None;
    let mut cache = None;
    let mut rounds = 7;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--hosts" => hosts = Some(value()?.parse().context("--hosts")?),
            "--cache" => cache = Some(PathBuf::from(value()?)),
            "--rounds" => rounds = value()?.parse().context("--rounds")?,
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(Args {
        hosts: hosts.context("--hosts is required")?,
        cache: cache.context("--cache is required")?,
        rounds,
    })
}

/// `count` (certificate PEM, key PEM) pairs, self-signed for
/// `h<i>.bench.test`, read from `cache` when an earlier run made them.
fn certificates(cache: &Path, prefix: &str, count: usize) -> Result<Vec<(String, String)>> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    let file = cache.join(format!("{prefix}-{count}.json"));
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Ok(pairs) = serde_json::from_str::<Vec<(String, String)>>(&text) {
            if pairs.len() == count {
                return Ok(pairs);
            }
        }
    }
    let pairs = (0..count)
        .map(|index| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let params = rcgen::CertificateParams::new(vec![format!("h{index}.bench.test")])?;
            let certificate = params.self_signed(&key)?;
            Ok((certificate.pem(), key.serialize_pem()))
        })
        .collect::<Result<Vec<_>, rcgen::Error>>()?;
    let temporary = file.with_extension("tmp");
    std::fs::write(&temporary, serde_json::to_string(&pairs)?)?;
    std::fs::rename(&temporary, &file)?;
    Ok(pairs)
}

fn host(index: usize, prefix: &str, certificate: &str) -> proto::VirtualHost {
    proto::VirtualHost {
        name: format!("h{index}"),
        domains: vec![format!("h{index}.bench.test")],
        routes: vec![proto::Route {
            name: "main".into(),
            r#match: Some(proto::RouteMatch {
                prefix: prefix.into(),
                ..Default::default()
            }),
            proxy: Some(proto::ProxyAction {
                cluster: format!("c{index}"),
                ..Default::default()
            }),
            ..Default::default()
        }],
        tls: Some(proto::HostTls {
            certificate: certificate.into(),
            ..Default::default()
        }),
    }
}

fn certificate(name: String, (chain, key): &(String, String)) -> proto::Certificate {
    proto::Certificate {
        name,
        cert_chain_pem: chain.clone(),
        private_key_pem: key.clone(),
        ..Default::default()
    }
}

fn config(pems: &[(String, String)]) -> proto::Config {
    let count = pems.len();
    proto::Config {
        admin: Some(proto::Admin {
            address: "127.0.0.1:9901".into(),
        }),
        access_log: Some(proto::AccessLog { path: "off".into() }),
        listeners: vec![proto::Listener {
            name: "https".into(),
            address: "127.0.0.1:8443".into(),
            tls: Some(proto::ListenerTls {
                unknown_sni: proto::UnknownSni::Reject as i32,
                ..Default::default()
            }),
            ..Default::default()
        }],
        hosts: (0..count).map(|i| host(i, "/", &format!("cert{i}"))).collect(),
        clusters: (0..count)
            .map(|i| proto::Cluster {
                name: format!("c{i}"),
                endpoints: vec![proto::Endpoint {
                    address: format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 0xff, i & 0xff),
                    weight: 0,
                }],
                ..Default::default()
            })
            .collect(),
        certificates: pems
            .iter()
            .enumerate()
            .map(|(i, pem)| certificate(format!("cert{i}"), pem))
            .collect(),
        ..Default::default()
    }
}

/// The changed resources: `changed` hosts get a new route prefix and a new
/// certificate (same name, other PEM).
fn changed(
    changed: &[usize],
    round: usize,
    spare: &[(String, String)],
) -> (Vec<proto::VirtualHost>, Vec<proto::Certificate>) {
    changed
        .iter()
        .enumerate()
        .map(|(position, &index)| {
            let name = format!("cert{index}");
            let certificate = certificate(name.clone(), &spare[(round + position) % spare.len()]);
            (host(index, &format!("/v{round}/"), &name), certificate)
        })
        .unzip()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb / 1024.0)
}

fn ms(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// How a change reaches the snapshot.
#[derive(Clone, Copy)]
enum Via {
    /// `Snapshot::apply` with a change set of the changed resources.
    ChangeSet,
    /// `Snapshot::build` of the whole edited config with the previous snapshot.
    Reload,
}

/// Times `rounds` changes of `size` hosts, each applied to `base` (spread
/// over the config so no two rounds touch the same hosts); the median.
/// Building the input (change set or edited config) is not timed.
fn change_ms(
    base: &Snapshot,
    config: &proto::Config,
    size: usize,
    rounds: usize,
    spare: &[(String, String)],
    via: Via,
) -> f64 {
    let count = config.hosts.len();
    let samples = (0..rounds)
        .map(|round| {
            let hosts: Vec<usize> = (0..size).map(|k| (round * 7919 + k * (count / size)) % count).collect();
            let (upsert_hosts, upsert_certificates) = changed(&hosts, round + 1, spare);
            let (start, snapshot) = match via {
                Via::ChangeSet => {
                    let changes = ChangeSet {
                        upsert_hosts,
                        upsert_certificates,
                        ..Default::default()
                    };
                    let start = Instant::now();
                    (start, base.apply(changes))
                }
                Via::Reload => {
                    // The file as edited: the whole config, these resources replaced.
                    let mut next = config.clone();
                    for ((&index, host), certificate) in hosts.iter().zip(upsert_hosts).zip(upsert_certificates) {
                        next.hosts[index] = host;
                        next.certificates[index] = certificate;
                    }
                    let start = Instant::now();
                    (start, Snapshot::build(next, Some(base)))
                }
            };
            let snapshot = snapshot.unwrap_or_else(|errors| panic!("{errors}"));
            let elapsed = ms(start);
            drop(snapshot);
            elapsed
        })
        .collect();
    median(samples)
}

/// Nanoseconds per `Router::host` lookup of existing names (the request
/// path's cost of the persistent maps), and per lookup of the same names in
/// a std `HashMap` for reference.
fn lookup_ns(base: &Snapshot, count: usize) -> (f64, f64) {
    const LOOKUPS: usize = 1_000_000;
    // A fixed stride through the hosts, so lookups miss the CPU caches as
    // they would with real traffic spread over many hosts.
    let names: Vec<String> = (0..4096)
        .map(|k| format!("h{}.bench.test", (k * 7919) % count))
        .collect();
    let std_map: std::collections::HashMap<String, usize> =
        (0..count).map(|i| (format!("h{i}.bench.test"), i)).collect();
    let start = Instant::now();
    let mut found = 0usize;
    for k in 0..LOOKUPS {
        found += usize::from(base.router.host(&names[k % names.len()]).is_some());
    }
    let router_ns = start.elapsed().as_secs_f64() * 1e9 / LOOKUPS as f64;
    let start = Instant::now();
    for k in 0..LOOKUPS {
        found += usize::from(std_map.contains_key(names[k % names.len()].as_str()));
    }
    let std_ns = start.elapsed().as_secs_f64() * 1e9 / LOOKUPS as f64;
    assert_eq!(found, 2 * LOOKUPS, "every name is a host");
    (router_ns, std_ns)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let start = Instant::now();
    let pems = certificates(&args.cache, "certs", args.hosts)?;
    let spare = certificates(&args.cache, "spare", HUNDRED + args.rounds)?;
    let generate_ms = ms(start);
    let config = config(&pems);
    drop(pems);
    let rss_before_mb = rss_mb()?;

    let start = Instant::now();
    let base = Snapshot::build(config.clone(), None).unwrap_or_else(|errors| panic!("{errors}"));
    let initial_load_ms = ms(start);
    let rss_loaded_mb = rss_mb()?;

    let hundred = HUNDRED.min(args.hosts);
    let apply_one_ms = change_ms(&base, &config, 1, args.rounds, &spare, Via::ChangeSet);
    let apply_hundred_ms = change_ms(&base, &config, hundred, args.rounds, &spare, Via::ChangeSet);
    let reload_one_ms = change_ms(&base, &config, 1, args.rounds, &spare, Via::Reload);
    let reload_hundred_ms = change_ms(&base, &config, hundred, args.rounds, &spare, Via::Reload);

    let (host_lookup_ns, std_lookup_ns) = lookup_ns(&base, args.hosts);
    let report = serde_json::json!({
        "host_lookup_ns": host_lookup_ns,
        "std_hashmap_lookup_ns": std_lookup_ns,
        "hosts": args.hosts,
        "rounds": args.rounds,
        "generate_ms": generate_ms,
        "initial_load_ms": initial_load_ms,
        "apply_one_ms": apply_one_ms,
        "apply_hundred_ms": apply_hundred_ms,
        "reload_one_ms": reload_one_ms,
        "reload_hundred_ms": reload_hundred_ms,
        "rss_mb": rss_loaded_mb,
        "rss_before_load_mb": rss_before_mb,
    });
    println!("{report}");
    Ok(())
}
