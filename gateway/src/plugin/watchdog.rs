//! The process-wide watchdog that stops a plugin call running past its
//! deadline. One thread for the whole process: a call registers (instance,
//! deadline) in a slab before entering wasm and unregisters when it returns;
//! the thread sleeps until the earliest deadline it knows of (or until woken
//! because a new deadline is earlier), and on overrun calls
//! `wasm_runtime_terminate` on that instance, which makes the running call
//! return "terminated by user". No thread per call and no polling loop: the
//! thread wakes at most once per deadline.
//!
//! `wasm_runtime_terminate` can take a while: when the guest sits in a WASI
//! call WAMR treats as blocking, WAMR signals the thread (SIGUSR1) every
//! 50 ms until it leaves the call. So the watchdog calls it without holding
//! the table lock (registering and unregistering stay fast for every other
//! call) and marks the entry `Terminating` meanwhile; unregistering such an
//! entry waits until terminate has returned, so an instance is never
//! destroyed while the watchdog still touches it.
//!
//! WAMR checks for termination at loop back-edges (interpreter; AOT with the
//! suspend-check patch of tollgate-aotc), interrupts blocking WASI calls by
//! signal, and ends a WASI clock sleep (`poll_oneoff` on clocks only, slept
//! in 1 s slices) at the end of the current slice: such a sleep stops within
//! about one second rather than at the deadline.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use super::vm::TerminateHandle;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Armed,
    /// The watchdog is calling terminate right now, outside the lock.
    Terminating,
    Fired,
}

struct Entry {
    handle: TerminateHandle,
    deadline: Instant,
    state: State,
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
    /// Wakes the watchdog thread for an earlier deadline.
    wake: Condvar,
    /// Wakes callers waiting for a terminate in progress to finish.
    terminated: Condvar,
}

fn watchdog() -> &'static Watchdog {
    static WATCHDOG: OnceLock<&'static Watchdog> = OnceLock::new();
    WATCHDOG.get_or_init(|| {
        let dog: &'static Watchdog = Box::leak(Box::new(Watchdog {
            table: Mutex::new(Table::default()),
            wake: Condvar::new(),
            terminated: Condvar::new(),
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
    started: Instant,
}

impl Drop for Guard {
    fn drop(&mut self) {
        release(self.slot);
    }
}

/// Registers a call on `handle` that must finish within `limit`.
pub(super) fn register(handle: TerminateHandle, limit: Duration) -> Guard {
    let dog = watchdog();
    let now = Instant::now();
    // A limit too large to represent means "a year": far enough to be none.
    let deadline = now
        .checked_add(limit)
        .unwrap_or(now + Duration::from_secs(365 * 24 * 3600));
    let mut table = dog.lock();
    let entry = Some(Entry {
        handle,
        deadline,
        state: State::Armed,
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
    Guard { slot, started: now }
}

impl Guard {
    /// Unregisters the call; returns whether the watchdog terminated it
    /// (the call overran, whatever it returned) and how long it ran.
    pub(super) fn finish(self) -> (bool, Duration) {
        let elapsed = self.started.elapsed();
        let fired = release(self.slot);
        // Released above, under the same lock that read the state.
        std::mem::forget(self);
        (fired, elapsed)
    }
}

/// Frees a slot once no terminate is in progress on it; true when its call
/// had been terminated.
fn release(slot: usize) -> bool {
    let dog = watchdog();
    let mut table = dog.lock();
    while table.slots[slot]
        .as_ref()
        .is_some_and(|e| e.state == State::Terminating)
    {
        table = dog.terminated.wait(table).unwrap_or_else(PoisonError::into_inner);
    }
    let fired = table.slots[slot].take().is_some_and(|e| e.state == State::Fired);
    table.free.push(slot);
    fired
}

impl Watchdog {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut overdue = Vec::new();
        let mut table = self.lock();
        loop {
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for (slot, entry) in table.slots.iter_mut().enumerate() {
                let Some(entry) = entry else { continue };
                if entry.state != State::Armed {
                    continue;
                }
                if entry.deadline <= now {
                    entry.state = State::Terminating;
                    overdue.push((slot, entry.handle));
                } else {
                    next = Some(next.map_or(entry.deadline, |n| n.min(entry.deadline)));
                }
            }
            if !overdue.is_empty() {
                drop(table);
                for &(_, handle) in &overdue {
                    // SAFETY: the entry is Terminating, so `release` of its call waits
                    // for us: the call is still in progress and the instance alive.
                    unsafe { handle.terminate() };
                }
                table = self.lock();
                for (slot, _) in overdue.drain(..) {
                    if let Some(entry) = table.slots[slot].as_mut() {
                        entry.state = State::Fired;
                    }
                }
                self.terminated.notify_all();
                // Deadlines may have been registered meanwhile: scan again.
                continue;
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
