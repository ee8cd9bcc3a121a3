//! The global VM budget: how many instances each plugin gets, which worker
//! uses which instance, and what happens to an instance that faults.
//!
//! A plugin version (`LoadedPlugin`) owns a fixed set of slots, each holding
//! one instance behind a mutex. The number of slots comes from `plan`: the
//! process-wide `vm_budget` (and `vm_memory_budget`, counting every instance
//! at its memory cap) is divided among plugins, never more slots than
//! workers. Worker `w` uses slot `w % slots`, so when the budget is below
//! workers × plugins, workers share an instance and its lock; a stream keeps
//! the slot (and the instance generation) that created its context.
//!
//! A fault (trap, memory cap, watchdog timeout) poisons the instance: the
//! slot drops it and goes down; the housekeeping thread recreates it with
//! exponential backoff while streams use another ready slot of the plugin or
//! follow the fail strategy. A config change builds a new `LoadedPlugin` for
//! changed plugins only; streams that started on the old version finish on
//! its instances, which are freed when the last such stream ends.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::abi::RedisSettings;
use super::instance::{Fault, FaultKind, InstanceSettings, PendingCall, PluginInstance};
use super::vm::PluginModule;
use crate::config::FailStrategy;
use crate::metrics::{self, PluginStats};

/// An instance that faulted once is recreated on the next housekeeping sweep;
/// after that the wait starts here and doubles per consecutive failure up to
/// `MAX_BACKOFF`, so a plugin that faults on every call costs little.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An instance that ran this long without a fault resets the backoff.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// Instances per plugin under the budget, with the sentence startup logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetPlan {
    pub slots: Vec<usize>,
    pub explanation: String,
}

/// Divides `vm_budget` instances and `memory_budget` bytes among plugins
/// whose memory caps are `max_memory`. Each plugin gets at least one
/// instance and never more than `workers`.
pub fn plan(vm_budget: usize, memory_budget: u64, max_memory: &[u64], workers: usize) -> Result<BudgetPlan, String> {
    let plugins = max_memory.len();
    if plugins == 0 {
        return Ok(BudgetPlan {
            slots: Vec::new(),
            explanation: "no plugins".into(),
        });
    }
    if vm_budget < plugins {
        return Err(format!(
            "vm_budget {vm_budget} is below the {plugins} enabled plugins: each plugin needs at least one instance"
        ));
    }
    let workers = workers.max(1);
    let fair = (vm_budget / plugins).min(workers);
    let mut slots = vec![fair; plugins];
    // The remainder goes to the first plugins, still at most one per worker.
    let mut spare = vm_budget - fair * plugins;
    for count in slots.iter_mut() {
        if spare == 0 {
            break;
        }
        if *count < workers {
            *count += 1;
            spare -= 1;
        }
    }
    let reserved = |slots: &[usize]| -> u64 { slots.iter().zip(max_memory).map(|(&n, &m)| n as u64 * m).sum() };
    let minimum: u64 = max_memory.iter().sum();
    if minimum > memory_budget {
        return Err(format!(
            "vm_memory_budget {memory_budget} bytes is below one instance of every plugin at its max_memory \
             ({minimum} bytes)"
        ));
    }
    let by_count = slots.iter().sum::<usize>();
    // Shrink the plugin holding the most reserved memory until the caps fit.
    while reserved(&slots) > memory_budget {
        let largest = (0..plugins)
            .filter(|&i| slots[i] > 1)
            .max_by_key(|&i| slots[i] as u64 * max_memory[i])
            .expect("one instance each fits, so some plugin has more than one");
        slots[largest] -= 1;
    }
    let total: usize = slots.iter().sum();
    let mut explanation = format!(
        "{plugins} plugins × {workers} workers = {} wanted; vm_budget {vm_budget} → {} per plugin (at most one per worker) = {by_count}",
        plugins * workers,
        fair
    );
    if total < by_count {
        explanation.push_str(&format!(
            "; vm_memory_budget {memory_budget} bytes at each plugin's max_memory → {total}"
        ));
    }
    explanation.push_str(&format!(" instances; {total} in total"));
    Ok(BudgetPlan { slots, explanation })
}

/// One version of one plugin: its module, settings and instance slots.
pub struct LoadedPlugin {
    pub name: String,
    pub fail_strategy: FailStrategy,
    /// Content hash of everything that defines this version; equal hashes are reused across reloads.
    pub version_hash: u64,
    pub(super) settings: InstanceSettings,
    module: Arc<PluginModule>,
    slots: Vec<Slot>,
    pub(super) stats: Arc<PluginStats>,
}

pub(super) struct Slot {
    state: Mutex<SlotState>,
    /// Bumped each time the slot gets a new instance; stream contexts carry
    /// the generation they were created in.
    generation: AtomicU64,
}

pub(super) enum SlotState {
    /// `failures`: consecutive faults before this instance, for the backoff.
    Ready {
        instance: PluginInstance,
        since: Instant,
        failures: u32,
        next_tick: Option<Instant>,
    },
    Down {
        reason: String,
        retry_at: Instant,
        failures: u32,
    },
}

/// Calls a root context dispatched, and the instance that must hear back.
pub(super) struct RootCalls {
    pub slot: usize,
    pub generation: u64,
    pub calls: Vec<PendingCall>,
}

/// A locked, ready instance and the generation its contexts belong to.
pub(super) struct Leased<'a> {
    guard: MutexGuard<'a, SlotState>,
    pub generation: u64,
    pub slot: usize,
}

impl Leased<'_> {
    pub fn instance(&mut self) -> &mut PluginInstance {
        match &mut *self.guard {
            SlotState::Ready { instance, .. } => instance,
            SlotState::Down { .. } => unreachable!("a lease is only handed out for a ready slot"),
        }
    }
}

impl Drop for LoadedPlugin {
    /// A retired version (removed or replaced, its last stream finished)
    /// lets each root context know before its instance goes.
    fn drop(&mut self) {
        for slot in &self.slots {
            if let SlotState::Ready { instance, .. } = &mut *lock(&slot.state) {
                if let Err(fault) = instance.shutdown() {
                    tracing::debug!(plugin = %self.name, %fault, "plugin root context failed to shut down");
                }
            }
        }
    }
}

impl LoadedPlugin {
    /// Loads the module and starts every slot's instance. The first start
    /// runs the plugin's `on_configure`: a plugin that rejects its config,
    /// or a module that does not load, fails the whole config change.
    pub fn load(
        name: &str,
        module_bytes: Vec<u8>,
        settings: InstanceSettings,
        fail_strategy: FailStrategy,
        slots: usize,
        version_hash: u64,
    ) -> Result<LoadedPlugin, String> {
        let module = Arc::new(PluginModule::load(module_bytes)?);
        let mut started = Vec::with_capacity(slots);
        for _ in 0..slots.max(1) {
            let instance = PluginInstance::start(&module, &settings)?;
            started.push(Slot {
                state: Mutex::new(SlotState::Ready {
                    instance,
                    since: Instant::now(),
                    failures: 0,
                    next_tick: None,
                }),
                generation: AtomicU64::new(1),
            });
        }
        let stats = metrics::plugin_stats(name);
        stats.restarted_slots(0);
        Ok(LoadedPlugin {
            name: name.to_string(),
            fail_strategy,
            version_hash,
            settings,
            module,
            slots: started,
            stats,
        })
    }

    pub fn is_aot(&self) -> bool {
        self.module.is_aot()
    }

    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Ready instances and their linear memory, for the gauges.
    pub fn instances_and_memory(&self) -> (usize, u64) {
        let mut ready = 0;
        let mut memory = 0;
        for slot in &self.slots {
            if let SlotState::Ready { instance, .. } = &*lock(&slot.state) {
                ready += 1;
                memory += instance.memory_bytes();
            }
        }
        (ready, memory)
    }

    /// The slot a new stream on `worker` uses: its own, or the next ready one
    /// when that is down. None when every instance is down.
    pub(super) fn lease_for_new_stream(&self, worker: usize) -> Option<Leased<'_>> {
        let home = worker % self.slots.len();
        (0..self.slots.len())
            .map(|offset| (home + offset) % self.slots.len())
            .find_map(|slot| self.lease(slot, None))
    }

    /// Locks `slot` if it is ready and (when given) still in `generation`.
    pub(super) fn lease(&self, slot: usize, generation: Option<u64>) -> Option<Leased<'_>> {
        let entry = &self.slots[slot];
        let guard = lock(&entry.state);
        let current = entry.generation.load(Ordering::Relaxed);
        if generation.is_some_and(|g| g != current) || !matches!(&*guard, SlotState::Ready { .. }) {
            return None;
        }
        Some(Leased {
            guard,
            generation: current,
            slot,
        })
    }

    /// Records a fault on a leased instance: the instance is dropped and the
    /// slot waits for the housekeeping thread to recreate it.
    pub(super) fn fault(&self, mut lease: Leased<'_>, fault: &Fault, worker: usize) {
        self.stats.fault(worker, fault.kind);
        let failures = match &*lease.guard {
            SlotState::Ready { since, .. } if since.elapsed() >= HEALTHY_AFTER => 0,
            SlotState::Ready { failures, .. } | SlotState::Down { failures, .. } => *failures,
        };
        tracing::warn!(
            plugin = %self.name,
            slot = lease.slot,
            kind = ?fault.kind,
            error = %fault.message,
            "plugin instance faulted: discarding it"
        );
        self.slots[lease.slot].generation.fetch_add(1, Ordering::Relaxed);
        *lease.guard = SlotState::Down {
            reason: fault.message.clone(),
            retry_at: Instant::now() + backoff(failures),
            failures: failures + 1,
        };
    }

    /// Recreates down slots whose backoff has passed. Runs on the
    /// housekeeping thread; the instance starts without the slot locked so
    /// streams never wait behind a start.
    /// Returns the calls the new instances' root contexts dispatched while
    /// starting.
    pub(super) fn recreate_due(&self) -> Vec<RootCalls> {
        let mut dispatched = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let due = match &*lock(&slot.state) {
                SlotState::Down { retry_at, failures, .. } if *retry_at <= Instant::now() => Some(*failures),
                _ => None,
            };
            let Some(failures) = due else { continue };
            match PluginInstance::start(&self.module, &self.settings) {
                Ok(mut instance) => {
                    let calls = instance.take_root_pending();
                    let mut state = lock(&slot.state);
                    // Under the lock, so no lease sees the new instance with the old generation.
                    let generation = slot.generation.fetch_add(1, Ordering::Relaxed) + 1;
                    *state = SlotState::Ready {
                        instance,
                        since: Instant::now(),
                        failures,
                        next_tick: None,
                    };
                    drop(state);
                    if !calls.is_empty() {
                        dispatched.push(RootCalls {
                            slot: index,
                            generation,
                            calls,
                        });
                    }
                    self.stats.restarted_slots(1);
                    tracing::info!(plugin = %self.name, slot = index, "plugin instance recreated");
                }
                Err(reason) => {
                    tracing::warn!(plugin = %self.name, slot = index, %reason, "recreating a plugin instance failed");
                    *lock(&slot.state) = SlotState::Down {
                        reason,
                        retry_at: Instant::now() + backoff(failures),
                        failures: failures + 1,
                    };
                }
            }
        }
        dispatched
    }

    /// Calls `on_tick` on every ready instance whose tick period has come
    /// round. Returns the root-context calls the ticks dispatched (with the
    /// slot and generation to answer them on) and when the next tick is due.
    pub(super) fn run_due_ticks(&self, now: Instant) -> (Vec<RootCalls>, Option<Instant>) {
        let mut dispatched = Vec::new();
        let mut next_due: Option<Instant> = None;
        for slot in 0..self.slots.len() {
            let Some(mut lease) = self.lease(slot, None) else {
                continue;
            };
            let SlotState::Ready {
                instance, next_tick, ..
            } = &mut *lease.guard
            else {
                continue;
            };
            let Some(period) = instance.tick_period() else {
                *next_tick = None;
                continue;
            };
            let due = *next_tick.get_or_insert(now + period);
            if due > now {
                next_due = Some(next_due.map_or(due, |next| next.min(due)));
                continue;
            }
            *next_tick = Some(now + period);
            next_due = Some(next_due.map_or(now + period, |next| next.min(now + period)));
            let result = instance.on_tick();
            self.stats.call(usize::MAX, lease.instance().take_busy_time());
            self.finish_root_call(lease, result, &mut dispatched);
        }
        (dispatched, next_due)
    }

    /// When the earliest down slot may be recreated.
    pub(super) fn next_recreation(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|slot| match &*lock(&slot.state) {
                SlotState::Down { retry_at, .. } => Some(*retry_at),
                SlotState::Ready { .. } => None,
            })
            .min()
    }

    /// Calls root contexts dispatched while starting (in `on_vm_start` or
    /// `on_configure`), collected once when this version is first seen.
    pub(super) fn take_startup_calls(&self) -> Vec<RootCalls> {
        let mut dispatched = Vec::new();
        for slot in 0..self.slots.len() {
            if let Some(lease) = self.lease(slot, None) {
                self.finish_root_call(lease, Ok(()), &mut dispatched);
            }
        }
        dispatched
    }

    /// Tells the instance `instance_id` (if it is one of this plugin's) that
    /// `queue_id` has data.
    pub(super) fn notify_queue(&self, instance_id: u64, queue_id: u32, dispatched: &mut Vec<RootCalls>) -> bool {
        for slot in 0..self.slots.len() {
            let Some(mut lease) = self.lease(slot, None) else {
                continue;
            };
            if lease.instance().id() != instance_id {
                continue;
            }
            let result = lease.instance().on_queue_ready(queue_id);
            self.stats.call(usize::MAX, lease.instance().take_busy_time());
            self.finish_root_call(lease, result, dispatched);
            return true;
        }
        false
    }

    /// Delivers the answer to a root-context call on the instance that made
    /// it, if that instance still lives.
    pub(super) fn answer_root_call(
        &self,
        slot: usize,
        generation: u64,
        answer: impl FnOnce(&mut PluginInstance) -> Result<(), Fault>,
        dispatched: &mut Vec<RootCalls>,
    ) {
        let Some(mut lease) = self.lease(slot, Some(generation)) else {
            return;
        };
        let result = answer(lease.instance());
        self.stats.call(usize::MAX, lease.instance().take_busy_time());
        self.finish_root_call(lease, result, dispatched);
    }

    fn finish_root_call(&self, mut lease: Leased<'_>, result: Result<(), Fault>, dispatched: &mut Vec<RootCalls>) {
        match result {
            Ok(()) => {
                let calls = lease.instance().take_root_pending();
                if !calls.is_empty() {
                    dispatched.push(RootCalls {
                        slot: lease.slot,
                        generation: lease.generation,
                        calls,
                    });
                }
            }
            Err(fault) => self.fault(lease, &fault, usize::MAX),
        }
    }

    /// What the instance in `slot` gave `proxy_redis_init` for `cluster`.
    pub(super) fn redis_settings(&self, slot: usize, generation: u64, cluster: &str) -> Option<RedisSettings> {
        self.lease(slot, Some(generation))?.instance().redis_settings(cluster)
    }

    /// Why the plugin has no ready instance: the fault that took the first
    /// down slot down (an empty string when one is ready again).
    pub(super) fn down_reason(&self) -> String {
        self.slots
            .iter()
            .find_map(|slot| match &*lock(&slot.state) {
                SlotState::Down { reason, .. } => Some(reason.clone()),
                SlotState::Ready { .. } => None,
            })
            .unwrap_or_default()
    }
}

fn backoff(failures: u32) -> Duration {
    match failures {
        0 => Duration::ZERO,
        n => FIRST_BACKOFF.saturating_mul(1 << (n - 1).min(16)).min(MAX_BACKOFF),
    }
}

/// A panic while a slot was locked cannot leave the instance half-called
/// (wasm calls do not unwind through the lock), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a fault kind means to an operator, for logs and local replies.
pub fn describe(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Trap => "trapped",
        FaultKind::Timeout => "ran past its max_call_time",
        FaultKind::Memory => "exhausted its memory",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    /// Traps in request headers; its root context's on_delete stores "yes"
    /// under the 14-byte shared-data key `KEY` (tests run in parallel over
    /// one process-wide store, so each uses its own key).
    const MODULE: &str = r#"(module
        (import "env" "proxy_set_shared_data" (func $set (param i32 i32 i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (data (i32.const 16) "KEY")
        (data (i32.const 48) "yes")
        (func (export "proxy_abi_version_0_2_1"))
        (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
        (func (export "proxy_on_context_create") (param i32 i32))
        (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 1))
        (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))
        (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) unreachable)
        (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
        (func (export "proxy_on_delete") (param $ctx i32)
          (if (i32.eq (local.get $ctx) (i32.const 1))
            (then (drop (call $set (i32.const 16) (i32.const 14) (i32.const 48) (i32.const 3) (i32.const 0)))))))"#;

    fn loaded(slots: usize, key: &str) -> LoadedPlugin {
        assert_eq!(key.len(), 14);
        super::super::vm::init_runtime().unwrap();
        let settings = InstanceSettings {
            plugin_name: "pool-test".into(),
            root_id: String::new(),
            vm_configuration: Vec::new(),
            plugin_configuration: Vec::new(),
            max_memory_bytes: 2 * 65536,
            max_call_time: Duration::from_millis(100),
            environment: Vec::new(),
        };
        let bytes = wat::parse_str(MODULE.replace("KEY", key)).unwrap();
        LoadedPlugin::load("pool-test", bytes, settings, FailStrategy::FailClosed, slots, 1).unwrap()
    }

    #[test]
    fn a_faulted_slot_is_skipped_then_recreated() {
        let plugin = loaded(2, "pool-faulted-a");
        // Worker 2's home slot is 0.
        let mut lease = plugin.lease_for_new_stream(2).expect("ready");
        assert_eq!(lease.slot, 0);
        let generation = lease.generation;
        let ctx = lease.instance().create_stream().unwrap();
        let mut data = crate::plugin::StreamData::default();
        let fault = lease.instance().on_request_headers(ctx, &mut data, true).unwrap_err();
        assert_eq!(fault.kind, FaultKind::Trap);
        plugin.fault(lease, &fault, 0);
        assert!(
            plugin.lease(0, Some(generation)).is_none(),
            "the old context's instance is gone"
        );
        assert_eq!(plugin.lease_for_new_stream(2).expect("the other slot").slot, 1);
        assert_eq!(plugin.instances_and_memory().0, 1);
        assert!(plugin.down_reason().contains("unreachable"), "{}", plugin.down_reason());
        // The first fault is recreated at once (no backoff yet).
        assert!(plugin.recreate_due().is_empty(), "this root context dispatches nothing");
        assert_eq!(plugin.instances_and_memory().0, 2);
        let lease = plugin.lease_for_new_stream(2).expect("home again");
        assert_eq!(lease.slot, 0);
        assert_ne!(lease.generation, generation);
    }

    #[test]
    fn a_retired_version_shuts_its_root_contexts_down() {
        let plugin = loaded(1, "pool-retired-b");
        assert!(super::super::abi::shared::get_shared(b"pool-retired-b").is_none());
        drop(plugin);
        let (value, _) = super::super::abi::shared::get_shared(b"pool-retired-b").expect("on_delete ran");
        assert_eq!(value, b"yes");
    }

    #[test]
    fn budget_above_demand_gives_one_instance_per_worker() {
        let plan = plan(100, 10_000 * MIB, &[32 * MIB; 3], 2).unwrap();
        assert_eq!(plan.slots, vec![2, 2, 2]);
    }

    #[test]
    fn budget_below_demand_shares_instances() {
        // The issue's scenario: 64 workers, 8 plugins, budget 16.
        let plan = plan(16, 10_000 * MIB, &[32 * MIB; 8], 64).unwrap();
        assert_eq!(plan.slots, vec![2; 8]);
        assert_eq!(plan.slots.iter().sum::<usize>(), 16);
        // 255 workers, 8 plugins, budget 64; the remainder goes to the first plugins.
        let plan = plan_ok(67, 255, 8);
        assert_eq!(plan.slots, vec![9, 9, 9, 8, 8, 8, 8, 8]);
    }

    fn plan_ok(budget: usize, workers: usize, plugins: usize) -> BudgetPlan {
        plan(budget, u64::MAX, &vec![32 * MIB; plugins], workers).unwrap()
    }

    #[test]
    fn memory_budget_trims_the_largest_reservation() {
        // 4 × 64 MiB + 4 × 16 MiB = 320 MiB wanted, 200 MiB allowed.
        let plan = plan(8, 200 * MIB, &[64 * MIB, 16 * MIB], 4).unwrap();
        assert_eq!(plan.slots, vec![2, 4]);
        assert!(plan.explanation.contains("vm_memory_budget"), "{}", plan.explanation);
    }

    #[test]
    fn impossible_budgets_are_refused() {
        assert!(plan(2, u64::MAX, &[MIB; 3], 4)
            .unwrap_err()
            .contains("below the 3 enabled plugins"));
        assert!(plan(8, MIB, &[MIB, MIB], 4).unwrap_err().contains("vm_memory_budget"));
    }

    #[test]
    fn backoff_doubles_and_caps() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(4), FIRST_BACKOFF * 8);
        assert_eq!(backoff(40), MAX_BACKOFF);
    }
}
