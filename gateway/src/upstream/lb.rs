//! Endpoint selection: round robin (weighted), least request (per-worker
//! in-flight counts, power of two choices) and consistent hashing on the
//! cluster's ring. State is worker-local; only health is shared (atomics).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Cluster, Endpoint, LbPolicy};

/// Below this many endpoints least-request looks at all of them.
const FULL_SCAN_LIMIT: usize = 4;

#[derive(Default)]
pub struct Balancer {
    round_robin: HashMap<Arc<str>, u64>,
    in_flight: HashMap<SocketAddr, u32>,
    random_state: u64,
}

impl Balancer {
    pub fn new(seed: u64) -> Balancer {
        Balancer {
            random_state: seed | 1,
            ..Balancer::default()
        }
    }

    /// Chooses an available endpoint not in `exclude`. `hash` is the request's
    /// key for consistent hashing.
    pub fn pick(&mut self, cluster: &Cluster, hash: u64, exclude: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let set = cluster.endpoints();
        let usable = |endpoint: &Endpoint| endpoint.is_available() && !exclude.contains(&endpoint.addr);
        match cluster.settings.lb_policy {
            LbPolicy::ConsistentHash => set.ring_lookup(hash, usable).cloned(),
            LbPolicy::RoundRobin => {
                let total_weight: u64 = set.endpoints.iter().map(|e| u64::from(e.weight.max(1))).sum();
                if total_weight == 0 {
                    return None;
                }
                let counter = self.round_robin.entry(cluster.name.clone()).or_default();
                let start = *counter % total_weight;
                *counter = counter.wrapping_add(1);
                let first = position_by_weight(&set.endpoints, start);
                (0..set.endpoints.len())
                    .map(|offset| &set.endpoints[(first + offset) % set.endpoints.len()])
                    .find(|endpoint| usable(endpoint))
                    .cloned()
            }
            LbPolicy::LeastRequest => {
                let candidates: Vec<&Arc<Endpoint>> = set.endpoints.iter().filter(|e| usable(e)).collect();
                let (r1, r2, r3) = (self.next_random(), self.next_random(), self.next_random());
                let in_flight = &self.in_flight;
                let load = |endpoint: &Endpoint| {
                    let in_flight = in_flight.get(&endpoint.addr).copied().unwrap_or(0);
                    (u64::from(in_flight) + 1) * 1_000_000 / u64::from(endpoint.weight.max(1))
                };
                let chosen = if candidates.len() <= FULL_SCAN_LIMIT {
                    let rotation = r1 as usize;
                    (0..candidates.len())
                        .map(|i| candidates[(rotation + i) % candidates.len()])
                        .min_by_key(|endpoint| load(endpoint))
                } else {
                    let a = candidates[r2 as usize % candidates.len()];
                    let b = candidates[r3 as usize % candidates.len()];
                    Some(if load(b) < load(a) { b } else { a })
                };
                chosen.cloned()
            }
        }
    }

    pub fn request_started(&mut self, addr: SocketAddr) {
        *self.in_flight.entry(addr).or_default() += 1;
    }

    pub fn request_finished(&mut self, addr: SocketAddr) {
        if let Some(count) = self.in_flight.get_mut(&addr) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.in_flight.remove(&addr);
            }
        }
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64: cheap and good enough to break ties and sample pairs.
        let mut x = self.random_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random_state = x;
        x
    }
}

fn position_by_weight(endpoints: &[Arc<Endpoint>], mut point: u64) -> usize {
    for (index, endpoint) in endpoints.iter().enumerate() {
        let weight = u64::from(endpoint.weight.max(1));
        if point < weight {
            return index;
        }
        point -= weight;
    }
    0
}
