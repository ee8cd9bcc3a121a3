//! A cluster's shared state: its resolved endpoints and their health, swapped
//! atomically when DNS answers change. Workers only read it.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;

use super::{ClusterSettings, EndpointSpec, LbPolicy};

/// Virtual nodes per unit of weight on the consistent-hash ring.
const RING_POINTS_PER_WEIGHT: u32 = 160;

pub struct Cluster {
    pub name: Arc<str>,
    pub settings: ClusterSettings,
    pub specs: Vec<EndpointSpec>,
    /// Held here so the request path never looks stats up by name.
    pub stats: Arc<crate::metrics::ClusterStats>,
    endpoints: ArcSwap<EndpointSet>,
    /// Whether any endpoint is a name; fixed at build, read every DNS tick.
    uses_dns: bool,
}

/// The endpoints of a cluster at one moment, with the hash ring built over them.
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Sorted (point, endpoint index); empty unless the policy is consistent hash.
    ring: Vec<(u64, usize)>,
}

pub struct Endpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Set by active health checks; true until a check says otherwise.
    active_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    /// Milliseconds on the process clock until which the endpoint is ejected.
    ejected_until_ms: AtomicU64,
}

fn process_clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Endpoint {
    pub fn new(addr: SocketAddr, weight: u32) -> Endpoint {
        Endpoint {
            addr,
            weight,
            active_healthy: AtomicBool::new(true),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// Healthy by active checks and not passively ejected.
    pub fn is_available(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
            && self.ejected_until_ms.load(Ordering::Relaxed) <= process_clock_ms()
    }

    pub fn is_active_healthy(&self) -> bool {
        self.active_healthy.load(Ordering::Relaxed)
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > process_clock_ms()
    }

    pub fn set_active_healthy(&self, healthy: bool) {
        self.active_healthy.store(healthy, Ordering::Relaxed);
    }

    /// Records a successful exchange: resets the passive failure streak.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed exchange; ejects the endpoint when the streak reaches
    /// the cluster's threshold and `may_eject` (another endpoint can take the
    /// traffic). Returns true when this call ejected it.
    pub fn record_failure(&self, settings: &ClusterSettings, may_eject: bool) -> bool {
        let threshold = settings.outlier.consecutive_failures;
        let streak = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold == 0 || streak < threshold || !may_eject {
            return false;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let until = process_clock_ms() + settings.outlier.ejection_time.as_millis() as u64;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
        true
    }

    fn carry_health_from(&self, previous: &Endpoint) {
        self.set_active_healthy(previous.is_active_healthy());
        let until = previous.ejected_until_ms.load(Ordering::Relaxed);
        self.ejected_until_ms.store(until, Ordering::Relaxed);
    }
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, policy: LbPolicy) -> EndpointSet {
        let mut ring = Vec::new();
        if policy == LbPolicy::ConsistentHash {
            for (index, endpoint) in endpoints.iter().enumerate() {
                let key = endpoint.addr.to_string();
                for replica in 0..endpoint.weight.max(1) * RING_POINTS_PER_WEIGHT {
                    let point = xxhash_rust::xxh3::xxh3_64(format!("{key}-{replica}").as_bytes());
                    ring.push((point, index));
                }
            }
            ring.sort_unstable();
        }
        EndpointSet { endpoints, ring }
    }

    /// Walks the ring clockwise from `hash` and returns the first endpoint for
    /// which `usable` holds.
    pub fn ring_lookup(&self, hash: u64, usable: impl Fn(&Endpoint) -> bool) -> Option<&Arc<Endpoint>> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self.ring.partition_point(|(point, _)| *point < hash);
        (0..self.ring.len())
            .map(|offset| &self.endpoints[self.ring[(start + offset) % self.ring.len()].1])
            .find(|endpoint| usable(endpoint))
    }
}

impl Cluster {
    /// Resolves every endpoint (DNS names included) and builds the cluster.
    /// Fails with a message naming the endpoint that does not resolve.
    pub fn build(name: &str, settings: ClusterSettings, specs: Vec<EndpointSpec>) -> Result<Cluster, String> {
        let resolved = resolve_all(&specs)?;
        let set = EndpointSet::new(resolved, settings.lb_policy);
        let uses_dns = specs.iter().any(|spec| spec.address.parse::<SocketAddr>().is_err());
        Ok(Cluster {
            uses_dns,
            name: name.into(),
            stats: crate::metrics::cluster_stats(name),
            settings,
            specs,
            endpoints: ArcSwap::from_pointee(set),
        })
    }

    pub fn endpoints(&self) -> arc_swap::Guard<Arc<EndpointSet>> {
        self.endpoints.load()
    }

    /// Whether any endpoint is given by name (and so needs periodic resolution).
    pub fn uses_dns(&self) -> bool {
        self.uses_dns
    }

    /// Resolves the names again and swaps the endpoint set when the answer
    /// changed, keeping the health of addresses that stay.
    pub fn refresh_dns(&self) -> Result<bool, String> {
        let fresh = resolve_all(&self.specs)?;
        let current = self.endpoints.load();
        let same = fresh.len() == current.endpoints.len()
            && fresh
                .iter()
                .zip(&current.endpoints)
                .all(|(a, b)| a.addr == b.addr && a.weight == b.weight);
        if same {
            return Ok(false);
        }
        for endpoint in &fresh {
            if let Some(previous) = current.endpoints.iter().find(|old| old.addr == endpoint.addr) {
                endpoint.carry_health_from(previous);
            }
        }
        self.endpoints
            .store(Arc::new(EndpointSet::new(fresh, self.settings.lb_policy)));
        Ok(true)
    }

    /// Takes over the health state of `previous` for addresses both have, so a
    /// reload does not forget which endpoints are down.
    pub fn inherit_health(&self, previous: &Cluster) {
        let previous = previous.endpoints.load();
        for endpoint in &self.endpoints.load().endpoints {
            if let Some(old) = previous.endpoints.iter().find(|old| old.addr == endpoint.addr) {
                endpoint.carry_health_from(old);
            }
        }
    }
}

fn resolve_all(specs: &[EndpointSpec]) -> Result<Vec<Arc<Endpoint>>, String> {
    let mut endpoints = Vec::new();
    for spec in specs {
        let addrs = spec
            .address
            .to_socket_addrs()
            .map_err(|error| format!("endpoint \"{}\" does not resolve: {error}", spec.address))?;
        let before = endpoints.len();
        for addr in addrs {
            if !endpoints.iter().any(|e: &Arc<Endpoint>| e.addr == addr) {
                endpoints.push(Arc::new(Endpoint::new(addr, spec.weight)));
            }
        }
        if endpoints.len() == before && !endpoints.iter().any(|e| spec.address.contains(&e.addr.to_string())) {
            return Err(format!("endpoint \"{}\" resolved to no address", spec.address));
        }
    }
    Ok(endpoints)
}
