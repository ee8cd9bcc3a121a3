//! The `ebpf` section: mode, interfaces, pin path, blocklist and allowlist
//! (CIDRs parsed here with std, host bits refused), per-source rate limits
//! with their burst defaults, the tracked-sources size and the steering and
//! CPU-redirect switches, checked with field paths and turned into
//! `EbpfSettings`. What the settings do to the kernel is `crate::ebpf`'s.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;

use tollgate_ebpf_common::LPM_MAX_ENTRIES;

use super::defaults;
use super::error::Errors;
use super::proto;

/// Where the guard runs, or whether eBPF is used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EbpfMode {
    /// Driver mode, else generic mode.
    Auto,
    Native,
    Generic,
    Off,
}

impl EbpfMode {
    pub fn label(self) -> &'static str {
        match self {
            EbpfMode::Auto => "auto",
            EbpfMode::Native => "native",
            EbpfMode::Generic => "generic",
            EbpfMode::Off => "off",
        }
    }
}

/// An IPv4 or IPv6 prefix with no bits set past its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// "192.0.2.0/24", "2001:db8::/32", or a bare address (a /32 or /128).
    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("\"{addr}\" is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(len) => match len.parse::<u8>() {
                Ok(len) if len <= max => len,
                _ => return Err(format!("prefix length \"{len}\" must be a number from 0 to {max}")),
            },
        };
        let masked = mask(addr, prefix_len);
        if masked != addr {
            return Err(format!(
                "host bits are set past /{prefix_len} (the network is {masked}/{prefix_len})"
            ));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

/// `addr` with every bit past `prefix_len` cleared.
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let kept = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & kept))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let kept = u128::MAX.checked_shl(128 - u32::from(prefix_len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & kept))
        }
    }
}

/// Per-source token buckets; a rate of 0 is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EbpfRateLimits {
    pub syn_per_second: u64,
    pub syn_burst: u64,
    pub packets_per_second: u64,
    pub packets_burst: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EbpfSettings {
    pub mode: EbpfMode,
    /// Unique, in config order.
    pub interfaces: Vec<String>,
    pub pin_path: PathBuf,
    /// Unique prefixes, in config order.
    pub blocklist: Vec<Cidr>,
    pub allowlist: Vec<Cidr>,
    pub rate_limit: EbpfRateLimits,
    pub tracked_sources: u32,
    pub steering: bool,
    pub cpu_redirect: bool,
}

impl Default for EbpfSettings {
    fn default() -> Self {
        ebpf(&mut Errors::default(), None)
    }
}

/// Most sources `tracked_sources` may ask for: the LRU map is preallocated,
/// about 120 bytes per entry, so this is half a GiB of kernel memory.
pub const MAX_TRACKED_SOURCES: u32 = 4 * 1024 * 1024;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_INTERFACE_NAME: usize = 15;

pub(crate) fn ebpf(errors: &mut Errors, section: Option<&proto::Ebpf>) -> EbpfSettings {
    let default = proto::Ebpf::default();
    let section = section.unwrap_or(&default);
    let mode = match proto::EbpfMode::try_from(section.mode) {
        Ok(proto::EbpfMode::Auto) => EbpfMode::Auto,
        Ok(proto::EbpfMode::Native) => EbpfMode::Native,
        Ok(proto::EbpfMode::Generic) => EbpfMode::Generic,
        Ok(proto::EbpfMode::Off) => EbpfMode::Off,
        Err(_) => {
            errors.add("ebpf.mode", format!("unknown eBPF mode {}", section.mode));
            EbpfMode::Auto
        }
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut interfaces = Vec::with_capacity(section.interfaces.len());
    for (index, name) in section.interfaces.iter().enumerate() {
        let path = format!("ebpf.interfaces[{index}]");
        if name.is_empty() || name.len() > MAX_INTERFACE_NAME {
            errors.add(
                path,
                format!("interface name \"{name}\" must be 1 to {MAX_INTERFACE_NAME} bytes"),
            );
        } else if name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
        {
            errors.add(
                path,
                format!("interface name \"{name}\" must not hold '/', ':', spaces or control characters"),
            );
        } else if let Some(first) = seen.insert(name, index) {
            errors.add(
                path,
                format!("duplicate interface \"{name}\" (also ebpf.interfaces[{first}])"),
            );
        } else {
            interfaces.push(name.clone());
        }
    }
    let pin_path = match section.pin_path.as_str() {
        "" => PathBuf::from(defaults::EBPF_PIN_PATH),
        path if path.starts_with('/') => PathBuf::from(path),
        path => {
            errors.add("ebpf.pin_path", format!("\"{path}\" must be an absolute path"));
            PathBuf::from(defaults::EBPF_PIN_PATH)
        }
    };
    let blocklist = cidrs(errors, "ebpf.blocklist", &section.blocklist);
    let allowlist = cidrs(errors, "ebpf.allowlist", &section.allowlist);
    let limits = section.rate_limit.unwrap_or_default();
    let rate_limit = EbpfRateLimits {
        syn_per_second: u64::from(limits.syn_per_second),
        syn_burst: burst(
            errors,
            "ebpf.rate_limit.syn_burst",
            limits.syn_per_second,
            limits.syn_burst,
            "syn_per_second",
        ),
        packets_per_second: u64::from(limits.packets_per_second),
        packets_burst: burst(
            errors,
            "ebpf.rate_limit.packets_burst",
            limits.packets_per_second,
            limits.packets_burst,
            "packets_per_second",
        ),
    };
    let tracked_sources = match section.tracked_sources {
        0 => defaults::EBPF_TRACKED_SOURCES,
        count if count > MAX_TRACKED_SOURCES => {
            errors.add(
                "ebpf.tracked_sources",
                format!("{count} is too large; at most {MAX_TRACKED_SOURCES}"),
            );
            defaults::EBPF_TRACKED_SOURCES
        }
        count => count,
    };
    EbpfSettings {
        mode,
        interfaces,
        pin_path,
        blocklist,
        allowlist,
        rate_limit,
        tracked_sources,
        steering: section.steering.unwrap_or(defaults::EBPF_STEERING),
        cpu_redirect: section.cpu_redirect,
    }
}

/// The burst of a bucket: unset means the rate (one second's worth).
fn burst(errors: &mut Errors, path: &str, rate: u32, burst: u32, rate_field: &str) -> u64 {
    match (rate, burst) {
        (0, 0) => 0,
        (0, _) => {
            errors.add(path, format!("set without {rate_field}, which turns the limit on"));
            0
        }
        (rate, 0) => u64::from(rate),
        (_, burst) => u64::from(burst),
    }
}

fn cidrs(errors: &mut Errors, path: &str, values: &[String]) -> Vec<Cidr> {
    if values.len() > LPM_MAX_ENTRIES as usize {
        errors.add(path, format!("{} entries; at most {LPM_MAX_ENTRIES}", values.len()));
    }
    let mut seen: HashMap<Cidr, usize> = HashMap::new();
    let mut parsed = Vec::with_capacity(values.len());
    for (index, value) in values.iter().enumerate() {
        match value.trim().parse::<Cidr>() {
            Ok(cidr) => match seen.insert(cidr, index) {
                Some(first) => errors.add(
                    format!("{path}[{index}]"),
                    format!("duplicate entry {cidr} (also {path}[{first}])"),
                ),
                None => parsed.push(cidr),
            },
            Err(reason) => errors.add(
                format!("{path}[{index}]"),
                format!("\"{value}\" is not a CIDR: {reason}"),
            ),
        }
    }
    parsed
}
