//! The XDP guard's userspace half: attaching `tollgate_guard` to the
//! configured interfaces (native, generic, or native with a generic
//! fallback) and detaching it, `GUARD_CONFIG` from the rate limits, the
//! blocklist and allowlist tries synced to the config entry by entry (the
//! diff is a pure function over sets), and the CPU-redirect maps.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, CpuMap, MapData};
use aya::programs::xdp::XdpLinkId;
use aya::programs::{Xdp, XdpMode};
use tollgate_ebpf_common::{addr_of, prefix_bits, Addr, Bucket, GuardConfig, GUARD_CPU_REDIRECT, MAX_CPUS};

use super::{error_chain, Maps};
use crate::config::{Cidr, EbpfMode, EbpfSettings};

/// A trie key as the maps hold it: prefix bits over the IPv4-mapped or IPv6 address.
pub type Prefix = (u32, Addr);

/// The kernel's queue per redirect CPU (packets waiting for that CPU's kthread).
const CPU_MAP_QUEUE: u32 = 2048;

/// The trie key of a configured prefix: IPv4 goes into ::ffff:0:0/96.
pub fn prefix(cidr: &Cidr) -> Prefix {
    (prefix_bits(cidr.addr, u32::from(cidr.prefix_len)), addr_of(cidr.addr))
}

/// What to delete from and add to a list so it holds exactly `desired`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListChanges {
    pub remove: Vec<Prefix>,
    pub add: Vec<Prefix>,
}

pub fn diff_list(current: &BTreeSet<Prefix>, desired: &[Cidr]) -> ListChanges {
    let desired: BTreeSet<Prefix> = desired.iter().map(prefix).collect();
    ListChanges {
        remove: current.difference(&desired).copied().collect(),
        add: desired.difference(current).copied().collect(),
    }
}

/// `GUARD_CONFIG[0]` for the settings, redirecting to `redirect_cpus` CPUs
/// (0: no redirect).
pub fn guard_config(settings: &EbpfSettings, redirect_cpus: u32) -> GuardConfig {
    let limits = &settings.rate_limit;
    GuardConfig {
        flags: if redirect_cpus > 0 { GUARD_CPU_REDIRECT } else { 0 },
        redirect_cpus,
        syn: Bucket::new(limits.syn_per_second, limits.syn_burst),
        packets: Bucket::new(limits.packets_per_second, limits.packets_burst),
    }
}

/// The CPUs the guard may redirect to: each worker's CPU once, in worker
/// order, below `MAX_CPUS`.
pub fn redirect_targets(worker_cpus: &[usize]) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    worker_cpus
        .iter()
        .filter_map(|&cpu| u32::try_from(cpu).ok().filter(|&cpu| cpu < MAX_CPUS))
        .filter(|cpu| seen.insert(*cpu))
        .collect()
}

/// The XDP mode an attachment ended up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Native,
    Generic,
}

impl Attached {
    pub fn label(self) -> &'static str {
        match self {
            Attached::Native => "native",
            Attached::Generic => "generic",
        }
    }
}

pub struct Guard {
    blocklist: LpmTrie<MapData, Addr, u8>,
    allowlist: LpmTrie<MapData, Addr, u8>,
    config: Array<MapData, GuardConfig>,
    cpu_map: CpuMap<MapData>,
    redirect_cpus: Array<MapData, u32>,
    /// Interfaces the guard is attached to, with how.
    links: BTreeMap<String, (XdpLinkId, Attached)>,
    mode: EbpfMode,
}

impl Guard {
    pub(super) fn new(maps: &mut Maps) -> Result<Guard, String> {
        Ok(Guard {
            blocklist: maps.typed(tollgate_ebpf_common::maps::BLOCKLIST)?,
            allowlist: maps.typed(tollgate_ebpf_common::maps::ALLOWLIST)?,
            config: maps.typed(tollgate_ebpf_common::maps::GUARD_CONFIG)?,
            cpu_map: maps.typed(tollgate_ebpf_common::maps::CPU_MAP)?,
            redirect_cpus: maps.typed(tollgate_ebpf_common::maps::REDIRECT_CPUS)?,
            links: BTreeMap::new(),
            mode: EbpfMode::Auto,
        })
    }

    /// Interfaces the guard runs on, with their mode, by name.
    pub fn attached(&self) -> impl Iterator<Item = (&str, Attached)> {
        self.links.iter().map(|(name, (_, how))| (name.as_str(), *how))
    }

    /// Writes the maps the settings decide: rate limits, redirect targets
    /// and both lists. Stops at the first map the kernel refuses.
    pub fn apply_maps(&mut self, settings: &EbpfSettings, worker_cpus: &[usize]) -> Result<(), String> {
        let targets = if settings.cpu_redirect {
            redirect_targets(worker_cpus)
        } else {
            Vec::new()
        };
        for (index, &cpu) in targets.iter().enumerate() {
            self.cpu_map
                .set(cpu, CPU_MAP_QUEUE, None, 0)
                .map_err(|error| format!("CPU_MAP[{cpu}]: {}", error_chain(&error)))?;
            self.redirect_cpus
                .set(index as u32, cpu, 0)
                .map_err(|error| format!("REDIRECT_CPUS[{index}]: {}", error_chain(&error)))?;
        }
        let config = guard_config(settings, targets.len() as u32);
        self.config
            .set(0, config, 0)
            .map_err(|error| format!("GUARD_CONFIG: {}", error_chain(&error)))?;
        sync_list(&mut self.blocklist, "BLOCKLIST", &settings.blocklist)?;
        sync_list(&mut self.allowlist, "ALLOWLIST", &settings.allowlist)?;
        Ok(())
    }

    /// Attaches to the interfaces of `settings` not attached yet and detaches
    /// from the others (from all first when the mode changed). An interface
    /// that refuses is logged and left out; the next reload tries again.
    pub fn sync_interfaces(&mut self, program: &mut Xdp, settings: &EbpfSettings) {
        if settings.mode != self.mode {
            self.detach_all(program);
            self.mode = settings.mode;
        }
        let stale: Vec<String> = self
            .links
            .keys()
            .filter(|name| !settings.interfaces.contains(name))
            .cloned()
            .collect();
        for name in stale {
            self.detach(program, &name);
        }
        for name in &settings.interfaces {
            if self.links.contains_key(name) {
                continue;
            }
            match attach(program, name, settings.mode) {
                Ok((link, how)) => {
                    self.links.insert(name.clone(), (link, how));
                }
                Err(reason) => tracing::warn!("ebpf: xdp guard not attached to {name}: {reason}"),
            }
        }
    }

    fn detach(&mut self, program: &mut Xdp, name: &str) {
        if let Some((link, _)) = self.links.remove(name) {
            match program.detach(link) {
                Ok(()) => tracing::info!("ebpf: xdp guard detached from {name}"),
                Err(error) => tracing::warn!("ebpf: detaching the xdp guard from {name}: {}", error_chain(&error)),
            }
        }
    }

    pub fn detach_all(&mut self, program: &mut Xdp) {
        let names: Vec<String> = self.links.keys().cloned().collect();
        for name in names {
            self.detach(program, &name);
        }
    }
}

/// Attaches in the mode asked for; `auto` tries native first and says why
/// it fell back.
fn attach(program: &mut Xdp, interface: &str, mode: EbpfMode) -> Result<(XdpLinkId, Attached), String> {
    if !super::sys::interface_exists(interface) {
        return Err("no such interface".into());
    }
    let generic = |program: &mut Xdp| {
        program
            .attach(interface, XdpMode::Skb)
            .map(|link| (link, Attached::Generic))
            .map_err(|error| error_chain(&error))
    };
    match mode {
        EbpfMode::Generic => generic(program),
        EbpfMode::Native | EbpfMode::Auto => match program.attach(interface, XdpMode::Driver) {
            Ok(link) => Ok((link, Attached::Native)),
            Err(error) if mode == EbpfMode::Auto => {
                tracing::info!(
                    "ebpf: native XDP refused on {interface} ({}); using generic mode",
                    error_chain(&error)
                );
                generic(program)
            }
            Err(error) => Err(format!("native mode refused: {}", error_chain(&error))),
        },
        EbpfMode::Off => Err("ebpf.mode is off".into()),
    }
}

/// Makes the trie hold exactly `desired`: deletes what is not configured
/// (also entries left pinned by an earlier run), adds what is missing.
fn sync_list(map: &mut LpmTrie<MapData, Addr, u8>, name: &str, desired: &[Cidr]) -> Result<(), String> {
    let mut current = BTreeSet::new();
    // Bounded: a trie holds at most LPM_MAX_ENTRIES keys.
    for key in map.keys().take(tollgate_ebpf_common::LPM_MAX_ENTRIES as usize) {
        let key = key.map_err(|error| format!("{name}: reading keys: {}", error_chain(&error)))?;
        current.insert((key.prefix_len(), key.data()));
    }
    let changes = diff_list(&current, desired);
    for (prefix_len, addr) in changes.remove {
        map.remove(&Key::new(prefix_len, addr))
            .map_err(|error| format!("{name}: deleting an entry: {}", error_chain(&error)))?;
    }
    for (prefix_len, addr) in changes.add {
        map.insert(&Key::new(prefix_len, addr), 1, 0)
            .map_err(|error| format!("{name}: adding an entry: {}", error_chain(&error)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_ebpf_common::{ip_of, ipv4_mapped};

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|text| text.parse().unwrap()).collect()
    }

    #[test]
    fn prefixes_map_ipv4_into_the_ipv6_space() {
        let v4 = prefix(&"192.0.2.0/24".parse().unwrap());
        assert_eq!(v4.0, 96 + 24);
        assert_eq!(v4.1, ipv4_mapped([192, 0, 2, 0]));
        let v6 = prefix(&"2001:db8::/32".parse().unwrap());
        assert_eq!(v6.0, 32);
        assert_eq!(v6.1[..4], [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(ip_of(&ipv4_mapped([198, 51, 100, 7])).to_string(), "198.51.100.7");
        assert_eq!(ip_of(&v6.1).to_string(), "2001:db8::");
    }

    #[test]
    fn list_diff_deletes_the_unconfigured_and_adds_the_missing() {
        let current: BTreeSet<Prefix> = cidrs(&["10.0.0.0/8", "192.0.2.1", "2001:db8::/32"])
            .iter()
            .map(prefix)
            .collect();
        let changes = diff_list(&current, &cidrs(&["192.0.2.1", "2001:db8::/32", "198.51.100.0/24"]));
        assert_eq!(changes.remove, vec![prefix(&"10.0.0.0/8".parse().unwrap())]);
        assert_eq!(changes.add, vec![prefix(&"198.51.100.0/24".parse().unwrap())]);
        let same = diff_list(&current, &cidrs(&["2001:db8::/32", "10.0.0.0/8", "192.0.2.1"]));
        assert_eq!(same, ListChanges::default(), "order does not matter");
        let emptied = diff_list(&current, &[]);
        assert_eq!(emptied.remove.len(), 3);
        assert!(emptied.add.is_empty());
        let filled = diff_list(&BTreeSet::new(), &cidrs(&["::/0", "0.0.0.0/0"]));
        assert_eq!(filled.add, vec![(0, [0; 16]), (96, ipv4_mapped([0; 4]))]);
        // 10.0.0.0/8 and 10.0.0.0/16 are different entries of one trie.
        let nested = diff_list(&current, &cidrs(&["10.0.0.0/16"]));
        assert!(nested.remove.contains(&prefix(&"10.0.0.0/8".parse().unwrap())));
        assert_eq!(nested.add, vec![prefix(&"10.0.0.0/16".parse().unwrap())]);
    }

    #[test]
    fn guard_config_follows_the_rate_limits_and_redirect() {
        let mut settings = EbpfSettings::default();
        assert_eq!(guard_config(&settings, 0), GuardConfig::default());
        settings.rate_limit.syn_per_second = 100;
        settings.rate_limit.syn_burst = 20;
        let config = guard_config(&settings, 3);
        assert_eq!(config.flags, GUARD_CPU_REDIRECT);
        assert_eq!(config.redirect_cpus, 3);
        assert_eq!(config.syn, Bucket::new(100, 20));
        assert!(!config.packets.enabled());
    }

    #[test]
    fn redirect_targets_are_unique_worker_cpus_in_order() {
        assert_eq!(redirect_targets(&[3, 1, 3, 0, 5000]), vec![3, 1, 0]);
        assert!(redirect_targets(&[]).is_empty());
    }
}
