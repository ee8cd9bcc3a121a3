//! The process-wide watchdog that stops a plugin call running past its
//! deadline. One thread for the whole process: a call registers (instance,
//! deadline) in a slab before entering wasm and unregisters when it returns;
//! the thread sleeps until the earliest deadline it knows of (or until woken
//! because a new deadline is earlier), and on overrun calls
//! `wasm_runtime_terminate` on that instance, which makes the running call
//! return "terminated by user". No thread per call and no polling loop: the
//! thread wakes at most once per deadline.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::vm::TerminateHandle;

struct Entry {
    handle: TerminateHandle,
    deadline: Instant,
    fired: bool,
}

#[derive(Default)]
struct Table {
    slots: Vec<Option<Entry>>,
    free: Vec<usize>,
    /// When the watchdog thread will next wake on its own (None: never).
    planned_wake: Option<Instant>,
}

struct Watchdog {
    table: Mutex<Table>,
    wake: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            table: Mutex::new(Table::default()),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("plugin-watchdog".into())
            .spawn(move || dog.run())
            .expect("spawning the plugin watchdog thread");
        dog
    })
}

/// A registered call; unregister it with [`Guard::finish`]. Dropping it
/// unregisters too, so an instance can never be destroyed while registered.
pub(super) struct Guard {
    slot: usize,
}

impl Drop for Guard {
    fn drop(&mut self) {
        release(self.slot);
    }
}

/// Frees a slot; true when its call had been terminated.
fn release(slot: usize) -> bool {
    let mut table = watchdog().lock();
    let fired = table.slots[slot].take().is_some_and(|e| e.fired);
    table.free.push(slot);
    fired
}

/// Registers a call on `handle` that must finish within `limit`.
pub(super) fn register(handle: TerminateHandle, limit: Duration) -> Guard {
    let dog = watchdog();
    let deadline = Instant::now() + limit;
    let mut table = dog.lock();
    let entry = Some(Entry {
        handle,
        deadline,
        fired: false,
    });
    let slot = match table.free.pop() {
        Some(slot) => {
            table.slots[slot] = entry;
            slot
        }
        None => {
            table.slots.push(entry);
            table.slots.len() - 1
        }
    };
    // Wake the thread only when it would otherwise sleep past this deadline.
    if table.planned_wake.is_none_or(|wake| deadline < wake) {
        table.planned_wake = Some(deadline);
        dog.wake.notify_one();
    }
    Guard { slot }
}

impl Guard {
    /// Unregisters the call; true when the watchdog terminated it (the call
    /// overran, whatever it returned).
    pub(super) fn finish(self) -> bool {
        let fired = release(self.slot);
        // Released above, under the same lock that read `fired`.
        std::mem::forget(self);
        fired
    }
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut table = self.lock();
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for entry in table.slots.iter_mut().flatten() {
                if entry.fired {
                    continue;
                }
                if entry.deadline <= now {
                    // SAFETY: the entry is registered, so its call is in progress and
                    // the instance alive; unregistering needs this lock, which we hold.
                    unsafe { entry.handle.terminate() };
                    entry.fired = true;
                } else {
                    next = Some(next.map_or(entry.deadline, |n| n.min(entry.deadline)));
                }
            }
            table.planned_wake = next;
            table = match next {
                None => self.wake.wait(table).unwrap_or_else(PoisonError::into_inner),
                Some(at) => {
                    let wait = at.saturating_duration_since(Instant::now());
                    self.wake
                        .wait_timeout(table, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
            };
        }
    }
}
