//! What /metrics reports of the BPF side: the per-CPU guard and steering
//! counters summed over CPUs, the busiest tracked sources, and which features
//! run. The maps are read on the scraping thread (never by a worker); the
//! scan of `SOURCES` for top talkers runs at most every `TOP_REFRESH`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use aya::maps::{HashMap, MapData, PerCpuArray};
use tollgate_ebpf_common::{ip_of, Addr, Count, GuardCounter, SourceState, SteerCounter};

use super::{error_chain, Maps};

/// Sources listed by `tollgate_xdp_top_source_packets`.
pub const TOP_SOURCES: usize = 10;
/// Oldest a top-talkers list may be before a scrape computes it again.
const TOP_REFRESH: Duration = Duration::from_secs(5);

/// One scrape's view; `None` counters when the maps are not loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EbpfMetrics {
    pub guard_active: bool,
    pub steering_active: bool,
    /// Packets and bytes per `GuardCounter`, in `GuardCounter::ALL` order.
    pub guard: Option<Vec<(GuardCounter, Count)>>,
    /// Connections per `SteerCounter`, in `SteerCounter::ALL` order.
    pub steer: Option<Vec<(SteerCounter, u64)>>,
    /// The busiest sources by packets, most first.
    pub top_sources: Vec<(IpAddr, u64)>,
}

struct Readers {
    guard_counters: PerCpuArray<MapData, Count>,
    steer_counters: PerCpuArray<MapData, u64>,
    sources: HashMap<MapData, Addr, SourceState>,
    /// Bound on one scan of `SOURCES` (its size: entries can move while it runs).
    sources_limit: usize,
    top: Vec<(IpAddr, u64)>,
    top_at: Option<Instant>,
}

static READERS: Mutex<Option<Readers>> = Mutex::new(None);
static GUARD_ACTIVE: AtomicBool = AtomicBool::new(false);
static STEERING_ACTIVE: AtomicBool = AtomicBool::new(false);

/// Hands the counter maps to the scraper.
pub(super) fn install(maps: &mut Maps, tracked_sources: u32) -> Result<(), String> {
    let readers = Readers {
        guard_counters: maps.typed(tollgate_ebpf_common::maps::GUARD_COUNTERS)?,
        steer_counters: maps.typed(tollgate_ebpf_common::maps::STEER_COUNTERS)?,
        sources: maps.typed(tollgate_ebpf_common::maps::SOURCES)?,
        sources_limit: tracked_sources as usize * 2,
        top: Vec::new(),
        top_at: None,
    };
    *READERS.lock().unwrap_or_else(PoisonError::into_inner) = Some(readers);
    Ok(())
}

/// Drops the scraper's maps (the loader stopped).
pub(super) fn uninstall() {
    READERS.lock().unwrap_or_else(PoisonError::into_inner).take();
    set_active(false, false);
}

pub(super) fn set_active(guard: bool, steering: bool) {
    GUARD_ACTIVE.store(guard, Ordering::Relaxed);
    STEERING_ACTIVE.store(steering, Ordering::Relaxed);
}

/// The top `n` of `(source, packets)` pairs, most packets first (ties by address).
pub fn top_sources(sources: impl IntoIterator<Item = (IpAddr, u64)>, n: usize) -> Vec<(IpAddr, u64)> {
    let mut all: Vec<(IpAddr, u64)> = sources.into_iter().filter(|(_, packets)| *packets > 0).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

/// Reads the counters now (and the top talkers when due).
pub fn metrics() -> EbpfMetrics {
    let mut metrics = EbpfMetrics {
        guard_active: GUARD_ACTIVE.load(Ordering::Relaxed),
        steering_active: STEERING_ACTIVE.load(Ordering::Relaxed),
        ..EbpfMetrics::default()
    };
    let mut readers = READERS.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(readers) = readers.as_mut() else {
        return metrics;
    };
    let guard: Result<Vec<_>, _> = GuardCounter::ALL
        .iter()
        .map(|&counter| {
            readers
                .guard_counters
                .get(&(counter as u32), 0)
                .map(|per_cpu| (counter, per_cpu.iter().copied().sum()))
        })
        .collect();
    match guard {
        Ok(guard) => metrics.guard = Some(guard),
        Err(error) => tracing::warn!("ebpf: reading GUARD_COUNTERS: {}", error_chain(&error)),
    }
    let steer: Result<Vec<_>, _> = SteerCounter::ALL
        .iter()
        .map(|&counter| {
            readers
                .steer_counters
                .get(&(counter as u32), 0)
                .map(|per_cpu| (counter, per_cpu.iter().fold(0u64, |sum, n| sum.wrapping_add(*n))))
        })
        .collect();
    match steer {
        Ok(steer) => metrics.steer = Some(steer),
        Err(error) => tracing::warn!("ebpf: reading STEER_COUNTERS: {}", error_chain(&error)),
    }
    if readers.top_at.is_none_or(|at| at.elapsed() >= TOP_REFRESH) {
        let scanned = readers
            .sources
            .iter()
            .take(readers.sources_limit)
            .filter_map(Result::ok)
            .map(|(addr, state)| (ip_of(&addr), state.packets));
        readers.top = top_sources(scanned, TOP_SOURCES);
        readers.top_at = Some(Instant::now());
    }
    metrics.top_sources = readers.top.clone();
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_sources_keeps_the_busiest_first() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let sources = [
            (ip("10.0.0.1"), 5),
            (ip("10.0.0.2"), 50),
            (ip("2001:db8::1"), 50),
            (ip("10.0.0.3"), 0),
            (ip("10.0.0.4"), 7),
        ];
        assert_eq!(
            top_sources(sources, 3),
            vec![(ip("10.0.0.2"), 50), (ip("2001:db8::1"), 50), (ip("10.0.0.4"), 7)]
        );
        assert_eq!(
            top_sources(sources, 10).len(),
            4,
            "sources without packets are left out"
        );
    }
}
