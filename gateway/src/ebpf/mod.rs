//! eBPF in the gateway: loading the embedded object (`object`), pinning its
//! maps, attaching the XDP guard (`guard`) and connection steering
//! (`steer`), applying config changes to the maps without reloading the
//! programs, the counters /metrics reads (`stats`), and the report of
//! `tollgate check`. Unsafe code lives in `sys` only.
//!
//! Everything here fails soft: when the kernel refuses (no privilege, no
//! BTF, an old kernel, an interface without XDP), one line says why and the
//! gateway serves with kernel SO_REUSEPORT balancing and without the guard.
//! Only the control thread calls in; the data path never touches a map.

mod guard;
pub mod object;
mod stats;
mod steer;
mod sys;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapError};
use aya::programs::{SkReuseport, Xdp};
use aya::EbpfLoader;
use tollgate_ebpf_common::{maps, programs};

use crate::config::{EbpfMode, EbpfSettings};
use crate::listener::BoundListener;
pub use stats::{metrics, EbpfMetrics};
pub use sys::incoming_cpu;

/// The ending of the one line logged when eBPF cannot be used at all.
const UNAVAILABLE: &str = "serving with kernel SO_REUSEPORT balancing and without the XDP guard";
/// Longest reason put in a log line (verifier logs run to megabytes).
const MAX_REASON: usize = 600;

/// Where the workers run: `cpus[i]` is worker i's CPU, pinned or not.
#[derive(Debug, Clone)]
pub struct WorkerCpus {
    pub cpus: Vec<usize>,
    pub pinned: bool,
}

/// An error and its sources on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            let _ = write!(text, ": {shown}");
        }
        source = cause.source();
    }
    one_line(&text)
}

/// Newlines folded, and a long text cut in the middle (the start says what
/// failed, the end of a verifier log says where).
fn one_line(text: &str) -> String {
    let folded: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= MAX_REASON {
        return folded;
    }
    let head: String = folded.chars().take(MAX_REASON / 3).collect();
    let tail: Vec<char> = folded.chars().rev().take(MAX_REASON * 2 / 3).collect();
    let tail: String = tail.into_iter().rev().collect();
    format!("{head} … {tail}")
}

/// Takes typed maps out of a loaded object.
struct Maps<'a>(&'a mut aya::Ebpf);

impl Maps<'_> {
    fn typed<T: TryFrom<Map, Error = MapError>>(&mut self, name: &str) -> Result<T, String> {
        let map = self
            .0
            .take_map(name)
            .ok_or_else(|| format!("the object has no map {name}"))?;
        T::try_from(map).map_err(|error| format!("map {name}: {}", error_chain(&error)))
    }
}

/// The loaded programs and their maps; owned by the control thread.
pub struct Ebpf {
    bpf: aya::Ebpf,
    guard: guard::Guard,
    /// Ok when steering runs; else why not.
    steering: Result<steer::Steering, String>,
    guard_loaded: Result<(), String>,
    applied: EbpfSettings,
    workers: WorkerCpus,
}

/// A loaded object and how loading each program went (one may fail alone).
struct Loaded {
    bpf: aya::Ebpf,
    guard: Result<(), String>,
    steer: Result<(), String>,
}

/// Loads the object with its maps pinned under `pin_dir`, and both programs
/// into the kernel (the verifier runs). The maps stay in the returned object;
/// Err when neither program loads.
fn load_object(object: &[u8], pin_dir: &Path, tracked_sources: u32) -> Result<Loaded, String> {
    // The kernel refuses a CPU map larger than its NR_CPUS build setting.
    let cpus = aya::util::nr_cpus().map_err(|(path, error)| format!("reading {path}: {error}"))?;
    let mut bpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .map_max_entries(maps::SOURCES, tracked_sources)
        .map_max_entries(
            maps::CPU_MAP,
            u32::try_from(cpus).unwrap_or(tollgate_ebpf_common::MAX_CPUS),
        )
        .load(object)
        .map_err(|error| format!("loading the eBPF object: {}", error_chain(&error)))?;
    let guard = load_program::<Xdp>(&mut bpf, programs::GUARD, |p| p.load());
    let steer = load_program::<SkReuseport>(&mut bpf, programs::STEER, |p| p.load());
    if let (Err(guard), Err(steer)) = (&guard, &steer) {
        return Err(format!("{}: {guard}; {}: {steer}", programs::GUARD, programs::STEER));
    }
    Ok(Loaded { bpf, guard, steer })
}

fn load_program<'a, P>(
    bpf: &'a mut aya::Ebpf,
    name: &str,
    load: impl FnOnce(&mut P) -> Result<(), aya::programs::ProgramError>,
) -> Result<(), String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
    P: 'a,
{
    let program = bpf
        .program_mut(name)
        .ok_or_else(|| format!("the object has no program {name}"))?;
    let program: &mut P = program.try_into().map_err(|error| error_chain(&error))?;
    load(program).map_err(|error| error_chain(&error))
}

/// Makes sure pins can be made at `dir`: bpffs mounted at /sys/fs/bpf when
/// missing, the directory created and on a bpffs.
fn prepare_pin_dir(dir: &Path) -> Result<(), String> {
    match sys::ensure_bpffs() {
        Ok(true) => tracing::info!("ebpf: mounted bpffs at {}", sys::BPFFS),
        Ok(false) => {}
        Err(error) => return Err(format!("cannot mount bpffs at {}: {error}", sys::BPFFS)),
    }
    std::fs::create_dir_all(dir).map_err(|error| format!("creating {}: {error}", dir.display()))?;
    if !sys::on_bpffs(dir) {
        return Err(format!("{} is not on a bpffs", dir.display()));
    }
    Ok(())
}

/// Unpins every pinned map under `dir` whose kernel shape (sizes, entries,
/// flags) differs from what the object declares, so loading creates it anew
/// instead of reusing it (aya reuses a pin without comparing).
fn unpin_incompatible(object: &[u8], dir: &Path, tracked_sources: u32) -> Result<(), String> {
    let parsed =
        aya_obj::Object::parse(object).map_err(|error| format!("parsing the eBPF object: {}", error_chain(&error)))?;
    for (name, map) in &parsed.maps {
        if map.pinning() != aya_obj::maps::PinningType::ByName {
            continue;
        }
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let max_entries = if name == maps::SOURCES {
            tracked_sources
        } else {
            map.max_entries()
        };
        let expected = (map.key_size(), map.value_size(), max_entries, map.map_flags());
        let mismatch = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => {
                let found = (info.key_size(), info.value_size(), info.max_entries(), info.map_flags());
                (found != expected).then(|| {
                    format!(
                        "key/value/entries/flags {}/{}/{}/{:#x}, expected {}/{}/{}/{:#x}",
                        found.0, found.1, found.2, found.3, expected.0, expected.1, expected.2, expected.3
                    )
                })
            }
            Err(error) => {
                return Err(format!(
                    "opening the pinned map {}: {}",
                    path.display(),
                    error_chain(&error)
                ))
            }
        };
        if let Some(mismatch) = mismatch {
            std::fs::remove_file(&path).map_err(|error| format!("unpinning {}: {error}", path.display()))?;
            tracing::warn!(
                "ebpf: pinned map {name} at {} does not match the program ({mismatch}); unpinned, starting it empty",
                path.display()
            );
        }
    }
    Ok(())
}

impl Ebpf {
    /// Loads and attaches everything `settings` asks for, registering the
    /// listeners (every worker's socket bound) for steering. None when eBPF
    /// is off or unavailable; either is logged in one line.
    pub fn start(
        object: &[u8],
        settings: &EbpfSettings,
        workers: WorkerCpus,
        listeners: &[BoundListener],
    ) -> Option<Ebpf> {
        stats::set_active(false, false);
        if settings.mode == EbpfMode::Off {
            tracing::info!("ebpf: off (ebpf.mode is off)");
            return None;
        }
        let mut ebpf = match Ebpf::load(object, settings, workers) {
            Ok(ebpf) => ebpf,
            Err(reason) => {
                tracing::warn!("ebpf unavailable: {reason}; {UNAVAILABLE}");
                return None;
            }
        };
        if ebpf.guard_loaded.is_ok() {
            ebpf.sync_guard(settings);
        }
        if ebpf.steering.is_ok() {
            for listener in listeners {
                ebpf.register_listener(listener);
            }
        }
        ebpf.publish_active();
        tracing::info!("ebpf active: {}", ebpf.summary());
        Some(ebpf)
    }

    fn load(object: &[u8], settings: &EbpfSettings, workers: WorkerCpus) -> Result<Ebpf, String> {
        prepare_pin_dir(&settings.pin_path)?;
        unpin_incompatible(object, &settings.pin_path, settings.tracked_sources)?;
        let Loaded {
            mut bpf,
            guard: guard_loaded,
            steer: steer_loaded,
        } = load_object(object, &settings.pin_path, settings.tracked_sources)?;
        let mut maps = Maps(&mut bpf);
        let guard = guard::Guard::new(&mut maps)?;
        stats::install(&mut maps, settings.tracked_sources)?;
        let steering = steer_loaded
            .map_err(|reason| format!("{} did not load: {reason}", programs::STEER))
            .and_then(|()| {
                if !settings.steering {
                    Err("ebpf.steering is false".to_string())
                } else if !workers.pinned {
                    Err("workers are not pinned (runtime.pin_workers is false)".to_string())
                } else {
                    steer::Steering::new(&mut maps, &workers.cpus)
                }
            });
        Ok(Ebpf {
            bpf,
            guard,
            steering,
            guard_loaded: guard_loaded.map_err(|reason| format!("{} did not load: {reason}", programs::GUARD)),
            applied: settings.clone(),
            workers,
        })
    }

    /// The maps, then the attachments, for `settings`.
    fn sync_guard(&mut self, settings: &EbpfSettings) {
        if let Err(reason) = self.guard.apply_maps(settings, &self.workers.cpus) {
            tracing::warn!("ebpf: the guard's maps were not updated: {reason}");
        }
        let Some(program) = self.bpf.program_mut(programs::GUARD) else {
            return;
        };
        let Ok(program) = <&mut Xdp>::try_from(program) else {
            return;
        };
        self.guard.sync_interfaces(program, settings);
    }

    fn publish_active(&self) {
        stats::set_active(self.guard.attached().next().is_some(), self.steering.is_ok());
    }

    /// "xdp guard on veth0 (native); steering on (1 listeners, 2 CPUs)".
    pub fn summary(&self) -> String {
        let mut text = String::new();
        let attached: Vec<String> = self
            .guard
            .attached()
            .map(|(name, how)| format!("{name} ({})", how.label()))
            .collect();
        match (&self.guard_loaded, attached.is_empty()) {
            (Err(reason), _) => {
                let _ = write!(text, "no xdp guard ({reason})");
            }
            (Ok(()), true) if self.applied.interfaces.is_empty() => {
                text.push_str("no xdp guard (no interfaces configured)")
            }
            (Ok(()), true) => text.push_str("no xdp guard (no interface accepted it)"),
            (Ok(()), false) => {
                let _ = write!(text, "xdp guard on {}", attached.join(", "));
                if self.applied.cpu_redirect {
                    let cpus = guard::redirect_targets(&self.workers.cpus).len();
                    let _ = write!(text, " with cpu redirect over {cpus} CPUs");
                }
            }
        }
        match &self.steering {
            Ok(steering) => {
                let cpus = steer::workers_by_cpu(&self.workers.cpus).len();
                let _ = write!(text, "; steering on ({} listeners, {cpus} CPUs)", steering.listeners());
                let sharing = self.workers.cpus.len() - cpus;
                if sharing > 0 {
                    // One socket per CPU and listener can be selected.
                    let _ = write!(
                        text,
                        " ({sharing} workers share a CPU and get only unsteered connections)"
                    );
                }
            }
            Err(reason) => {
                let _ = write!(text, "; steering off ({reason})");
            }
        }
        text
    }

    /// Applies a reloaded config: lists, rate limits, redirect and
    /// interfaces, without reloading the programs.
    pub fn apply(&mut self, settings: &EbpfSettings) {
        if *settings == self.applied {
            return;
        }
        let restart_only = settings.pin_path != self.applied.pin_path
            || settings.tracked_sources != self.applied.tracked_sources
            || settings.steering != self.applied.steering;
        if restart_only {
            tracing::warn!("ebpf: pin_path, tracked_sources and steering change only at restart");
        }
        if settings.mode == EbpfMode::Off {
            self.detach_guard();
            if let Ok(steering) = &mut self.steering {
                steering.unregister_all();
            }
            self.steering = Err("ebpf.mode is off".into());
            self.applied = settings.clone();
            stats::set_active(false, false);
            tracing::info!("ebpf: off (ebpf.mode is off); the programs stay loaded until restart");
            return;
        }
        if self.guard_loaded.is_ok() {
            self.sync_guard(settings);
        }
        self.applied = settings.clone();
        self.publish_active();
        tracing::info!(
            "ebpf: config applied (blocklist {}, allowlist {}): {}",
            settings.blocklist.len(),
            settings.allowlist.len(),
            self.summary()
        );
    }

    /// Registers a listener for steering (start, or added by a reload).
    /// A failure turns steering off for good, logged once.
    pub fn register_listener(&mut self, listener: &BoundListener) {
        let BoundListener { name, address, sockets } = listener;
        let Ok(steering) = &mut self.steering else {
            return;
        };
        let Some(program) = self
            .bpf
            .program(programs::STEER)
            .and_then(|p| <&SkReuseport>::try_from(p).ok())
        else {
            return;
        };
        if let Err(reason) = steering.register(program, name, *address, sockets) {
            steering.unregister_all();
            let reason = format!("registering listener {name} ({address}): {reason}");
            tracing::warn!("ebpf: steering off: {reason}");
            self.steering = Err(reason);
            self.publish_active();
        }
    }

    /// A listener left the config (its sockets close with the workers' copies).
    pub fn unregister_listener(&mut self, name: &str, address: SocketAddr) {
        if let Ok(steering) = &mut self.steering {
            steering.unregister(name, address);
        }
    }

    fn detach_guard(&mut self) {
        let Some(program) = self.bpf.program_mut(programs::GUARD) else {
            return;
        };
        if let Ok(program) = <&mut Xdp>::try_from(program) {
            self.guard.detach_all(program);
        }
    }

    /// Detaches the guard from every interface and unloads the programs;
    /// the pinned maps stay for the next start.
    pub fn stop(mut self) {
        self.detach_guard();
        stats::uninstall();
    }

    /// Kernel ids of the guard and steering programs (the same across reloads).
    pub fn program_ids(&self) -> (Option<u32>, Option<u32>) {
        let id = |name: &str| {
            self.bpf
                .program(name)
                .and_then(|program| program.info().ok())
                .map(|info| info.id())
        };
        (id(programs::GUARD), id(programs::STEER))
    }

    /// Interfaces the guard is attached to, with "native" or "generic".
    pub fn attached(&self) -> Vec<(String, &'static str)> {
        self.guard
            .attached()
            .map(|(name, how)| (name.to_owned(), how.label()))
            .collect()
    }

    /// Whether new connections are steered, or why not.
    pub fn steering(&self) -> Result<(), &str> {
        self.steering.as_ref().map(|_| ()).map_err(String::as_str)
    }
}

/// What `tollgate check` prints: loads the object into the kernel (the
/// verifier runs) with its maps pinned in a scratch directory, attaches
/// nothing, and says which features `run` would start.
pub fn check(object: &[u8], settings: &EbpfSettings, workers_pinned: bool) -> String {
    if settings.mode == EbpfMode::Off {
        return "ebpf: off (ebpf.mode is off)".into();
    }
    let scratch = PathBuf::from(sys::BPFFS).join(format!("tollgate-check-{}", std::process::id()));
    let loaded = prepare_pin_dir(&scratch).and_then(|()| load_object(object, &scratch, settings.tracked_sources));
    let _ = std::fs::remove_dir_all(&scratch);
    let Loaded { guard, steer, .. } = match loaded {
        Ok(loaded) => loaded,
        Err(reason) => return format!("ebpf: off ({reason})"),
    };
    let mut text = String::from("ebpf: ");
    match guard {
        Err(reason) => {
            let _ = write!(text, "no xdp guard ({} did not load: {reason})", programs::GUARD);
        }
        Ok(()) if settings.interfaces.is_empty() => text.push_str("no xdp guard (no interfaces configured)"),
        Ok(()) => {
            let (present, missing): (Vec<&String>, Vec<&String>) =
                settings.interfaces.iter().partition(|name| sys::interface_exists(name));
            if present.is_empty() {
                text.push_str("no xdp guard");
            } else {
                let names: Vec<&str> = present.iter().map(|name| name.as_str()).collect();
                let _ = write!(
                    text,
                    "xdp guard on {} (mode {})",
                    names.join(", "),
                    settings.mode.label()
                );
            }
            if !missing.is_empty() {
                let names: Vec<&str> = missing.iter().map(|name| name.as_str()).collect();
                let _ = write!(text, ", not on {} (no such interface)", names.join(", "));
            }
        }
    }
    match steer {
        Err(reason) => {
            let _ = write!(text, ", steering off ({} did not load: {reason})", programs::STEER);
        }
        Ok(()) if !settings.steering => text.push_str(", steering off (ebpf.steering is false)"),
        Ok(()) if !workers_pinned => text.push_str(", steering off (workers are not pinned)"),
        Ok(()) => text.push_str(", steering on"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_on_one_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        let long = format!("start {} end", "x ".repeat(2000));
        let short = one_line(&long);
        assert!(short.starts_with("start x"));
        assert!(short.ends_with("x end"));
        assert!(short.chars().count() <= MAX_REASON + 3);
    }

    #[test]
    fn error_chains_name_every_cause_once() {
        let inner = std::io::Error::other("permission denied");
        let outer = MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: inner,
        });
        let text = error_chain(&outer);
        assert!(text.contains("bpf_map_update_elem"), "{text}");
        assert_eq!(text.matches("permission denied").count(), 1, "{text}");
    }
}
