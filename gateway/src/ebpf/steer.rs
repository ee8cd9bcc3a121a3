//! Connection steering's userspace half: each listener gets a slot
//! (`STEER_LISTENERS`, keyed by its address as the program reads it from the
//! listening socket), each pinned worker's socket of that listener goes into
//! `STEER_SOCKETS[steer_index(slot, cpu)]`, and `tollgate_steer` is attached
//! to the listener's SO_REUSEPORT group (`SO_ATTACH_REUSEPORT_EBPF`, through
//! aya). Sockets of every worker must be bound before a listener registers.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};

use aya::maps::{HashMap, MapData, ReusePortSockArray};
use aya::programs::SkReuseport;
use tollgate_ebpf_common::{addr_of, steer_index, ListenerKey, AF_INET, AF_INET6, MAX_CPUS, MAX_LISTENERS};

use super::{error_chain, Maps};

/// The key the steering program builds from a listening socket bound to `address`.
pub fn listener_key(address: SocketAddr) -> ListenerKey {
    ListenerKey {
        family: if address.is_ipv4() { AF_INET } else { AF_INET6 },
        port: u32::from(address.port()),
        addr: addr_of(address.ip()),
    }
}

/// (CPU, worker) for each CPU that has a pinned worker: the first worker
/// pinned there (one socket per CPU and listener can be selected). `cpus[i]`
/// is worker i's CPU.
pub fn workers_by_cpu(cpus: &[usize]) -> Vec<(u32, usize)> {
    let mut first: BTreeMap<u32, usize> = BTreeMap::new();
    for (worker, &cpu) in cpus.iter().enumerate() {
        if let Ok(cpu) = u32::try_from(cpu) {
            if cpu < MAX_CPUS {
                first.entry(cpu).or_insert(worker);
            }
        }
    }
    first.into_iter().collect()
}

struct Registered {
    slot: u32,
    /// The listener (by name) whose sockets fill the slot now.
    owner: String,
}

pub struct Steering {
    listeners: HashMap<MapData, ListenerKey, u32>,
    sockets: ReusePortSockArray<MapData>,
    by_cpu: Vec<(u32, usize)>,
    registered: BTreeMap<SocketAddr, Registered>,
}

impl Steering {
    pub(super) fn new(maps: &mut Maps, worker_cpus: &[usize]) -> Result<Steering, String> {
        Ok(Steering {
            listeners: maps.typed(tollgate_ebpf_common::maps::STEER_LISTENERS)?,
            sockets: maps.typed(tollgate_ebpf_common::maps::STEER_SOCKETS)?,
            by_cpu: workers_by_cpu(worker_cpus),
            registered: BTreeMap::new(),
        })
    }

    pub fn listeners(&self) -> usize {
        self.registered.len()
    }

    /// Registers listener `name` on `address` whose sockets are `sockets[w]`
    /// for worker w, and attaches the program to their group. A listener
    /// replacing another on the same address takes over its slot.
    pub fn register(
        &mut self,
        program: &SkReuseport,
        name: &str,
        address: SocketAddr,
        sockets: &[TcpListener],
    ) -> Result<(), String> {
        let slot = match self.registered.get(&address) {
            Some(existing) => existing.slot,
            None => (0..MAX_LISTENERS)
                .find(|slot| self.registered.values().all(|r| r.slot != *slot))
                .ok_or_else(|| format!("all {MAX_LISTENERS} steering slots are in use"))?,
        };
        for &(cpu, worker) in &self.by_cpu {
            let Some(socket) = sockets.get(worker) else {
                continue;
            };
            self.sockets
                .set(steer_index(slot, cpu), socket, 0)
                .map_err(|error| format!("STEER_SOCKETS for CPU {cpu}: {}", error_chain(&error)))?;
        }
        self.listeners
            .insert(listener_key(address), slot, 0)
            .map_err(|error| format!("STEER_LISTENERS: {}", error_chain(&error)))?;
        let first = sockets.first().ok_or("the listener has no sockets")?;
        program
            .attach(first)
            .map_err(|error| format!("SO_ATTACH_REUSEPORT_EBPF: {}", error_chain(&error)))?;
        self.registered.insert(
            address,
            Registered {
                slot,
                owner: name.to_owned(),
            },
        );
        Ok(())
    }

    /// Forgets listener `name` on `address` unless another listener took
    /// the address over since. Its sockets leave `STEER_SOCKETS` by
    /// themselves when they close.
    pub fn unregister(&mut self, name: &str, address: SocketAddr) {
        if self.registered.get(&address).is_none_or(|r| r.owner != name) {
            return;
        }
        self.registered.remove(&address);
        if let Err(error) = self.listeners.remove(&listener_key(address)) {
            tracing::warn!(
                "ebpf: unregistering listener {name} from steering: {}",
                error_chain(&error)
            );
        }
    }

    /// Stops selecting for every listener: the kernel's hash takes over.
    pub fn unregister_all(&mut self) {
        let all: Vec<(SocketAddr, String)> = self
            .registered
            .iter()
            .map(|(address, r)| (*address, r.owner.clone()))
            .collect();
        for (address, name) in all {
            self.unregister(&name, address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ebpf_common::ipv4_mapped;

    #[test]
    fn listener_keys_match_what_the_program_reads() {
        let v4 = listener_key("0.0.0.0:8080".parse().unwrap());
        assert_eq!((v4.family, v4.port), (AF_INET, 8080));
        assert_eq!(v4.addr, ipv4_mapped([0; 4]));
        let bound = listener_key("10.1.2.3:443".parse().unwrap());
        assert_eq!(bound.addr, ipv4_mapped([10, 1, 2, 3]));
        let v6 = listener_key("[::1]:9000".parse().unwrap());
        assert_eq!((v6.family, v6.port), (AF_INET6, 9000));
        assert_eq!(v6.addr, std::net::Ipv6Addr::LOCALHOST.octets());
    }

    #[test]
    fn each_cpu_gets_its_first_worker() {
        assert_eq!(workers_by_cpu(&[2, 0, 2, 1]), vec![(0, 1), (1, 3), (2, 0)]);
        assert_eq!(
            workers_by_cpu(&[MAX_CPUS as usize, 4]),
            vec![(4, 1)],
            "beyond the map is skipped"
        );
    }
}
