//! Process-wide shared data (key → value with a CAS number) and shared
//! queues, common to every plugin instance on every worker. As in Envoy with
//! the default (empty) vm_id, all plugins share one key space.
//! Shared data: a set with a non-zero `cas` that differs from the stored
//! entry's fails with CasMismatch; every successful set gives the entry a new
//! CAS number. Queues: `register` makes the calling instance the consumer
//! (the latest registrant wins, as in Envoy); `enqueue` marks (consumer
//! instance, queue) ready for the pool, which calls `on_queue_ready` on it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use super::{HostResult, Status};
use crate::plugin::vm::Caller;

/// Bounds on shared state, so plugins cannot grow host memory without limit:
/// items per queue, bytes per queue, and bytes of all shared data (keys and
/// values). Past them, sets and enqueues fail.
const MAX_QUEUE_ITEMS: usize = 10_000;
const MAX_QUEUE_BYTES: usize = 16 << 20;
const MAX_SHARED_DATA_BYTES: usize = 64 << 20;

#[derive(Default)]
struct Data {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    last_cas: u32,
    /// Sum of key and value lengths.
    bytes: usize,
}

#[derive(Default)]
struct Queues {
    by_name: HashMap<(String, String), u32>,
    /// id → queue.
    queues: HashMap<u32, Queue>,
    last_id: u32,
    ready: Vec<(u64, u32)>,
}

struct Queue {
    consumer: u64,
    items: VecDeque<Vec<u8>>,
    bytes: usize,
}

fn data() -> MutexGuard<'static, Data> {
    static DATA: OnceLock<Mutex<Data>> = OnceLock::new();
    DATA.get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

fn queues() -> MutexGuard<'static, Queues> {
    static QUEUES: OnceLock<Mutex<Queues>> = OnceLock::new();
    QUEUES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Reads a key: (value, cas), or None.
pub(crate) fn get_shared(key: &[u8]) -> Option<(Vec<u8>, u32)> {
    data().entries.get(key).cloned()
}

/// Sets a key with CAS semantics (cas 0: unconditional).
pub(crate) fn set_shared(key: &[u8], value: Vec<u8>, cas: u32) -> Result<(), Status> {
    let mut data = data();
    if cas != 0 {
        if let Some((_, current)) = data.entries.get(key) {
            if *current != cas {
                return Err(Status::CasMismatch);
            }
        }
    }
    let old = data.entries.get(key).map_or(0, |(v, _)| key.len() + v.len());
    let bytes = data.bytes - old + key.len() + value.len();
    if bytes > MAX_SHARED_DATA_BYTES && bytes > data.bytes {
        return Err(Status::InternalFailure);
    }
    data.bytes = bytes;
    data.last_cas = data.last_cas.wrapping_add(1).max(1);
    let cas = data.last_cas;
    data.entries.insert(key.to_vec(), (value, cas));
    Ok(())
}

/// proxy_get_shared_data(key) → value, cas.
pub(super) fn get_data(c: &Caller, kp: u32, kl: u32, rpp: u32, rsp: u32, casp: u32) -> HostResult {
    let key = c.read(kp, kl)?;
    let (value, cas) = get_shared(&key).ok_or(Status::NotFound)?;
    c.write_u32(casp, cas)?;
    c.return_bytes(&value, rpp, rsp)
}

/// proxy_set_shared_data(key, value, cas).
pub(super) fn set_data(c: &Caller, kp: u32, kl: u32, vp: u32, vl: u32, cas: u32) -> HostResult {
    let key = c.read(kp, kl)?;
    let value = c.read(vp, vl)?;
    set_shared(&key, value, cas)
}

/// proxy_register_shared_queue(name) → id; the caller becomes the consumer.
pub(super) fn register_queue(c: &Caller, np: u32, nl: u32, idp: u32) -> HostResult {
    let name = c.read_string(np, nl)?;
    let instance = c.state()?.instance_id;
    let id = {
        let mut q = queues();
        let id = match q.by_name.get(&(String::new(), name.clone())) {
            Some(&id) => id,
            None => {
                q.last_id = q.last_id.wrapping_add(1).max(1);
                let id = q.last_id;
                q.by_name.insert((String::new(), name), id);
                id
            }
        };
        q.queues
            .entry(id)
            .or_insert_with(|| Queue {
                consumer: instance,
                items: VecDeque::new(),
                bytes: 0,
            })
            .consumer = instance;
        id
    };
    c.write_u32(idp, id)
}

/// proxy_resolve_shared_queue(vm_id, name) → id, NotFound when never registered.
pub(super) fn resolve_queue(c: &Caller, vp: u32, vl: u32, np: u32, nl: u32, idp: u32) -> HostResult {
    let vm_id = c.read_string(vp, vl)?;
    let name = c.read_string(np, nl)?;
    let id = *queues().by_name.get(&(vm_id, name)).ok_or(Status::NotFound)?;
    c.write_u32(idp, id)
}

/// proxy_dequeue_shared_queue(id) → item; Empty when none, NotFound for an unknown id.
pub(super) fn dequeue(c: &Caller, id: u32, rpp: u32, rsp: u32) -> HostResult {
    let item = {
        let mut q = queues();
        let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
        let item = queue.items.pop_front().ok_or(Status::Empty)?;
        queue.bytes -= item.len();
        item
    };
    c.return_bytes(&item, rpp, rsp)
}

/// proxy_enqueue_shared_queue(id, item).
pub(super) fn enqueue(c: &Caller, id: u32, p: u32, l: u32) -> HostResult {
    let item = c.read(p, l)?;
    let mut q = queues();
    let queue = q.queues.get_mut(&id).ok_or(Status::NotFound)?;
    if queue.items.len() >= MAX_QUEUE_ITEMS || queue.bytes + item.len() > MAX_QUEUE_BYTES {
        return Err(Status::InternalFailure);
    }
    queue.bytes += item.len();
    queue.items.push_back(item);
    let entry = (queue.consumer, id);
    if !q.ready.contains(&entry) {
        q.ready.push(entry);
    }
    Ok(())
}

/// (consumer instance id, queue id) pairs that received items since the last
/// call. The pool calls `on_queue_ready(queue id)` on that instance (when it
/// still exists; a recreated instance registers again in its on_configure).
pub fn take_ready_queues() -> Vec<(u64, u32)> {
    std::mem::take(&mut queues().ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_with_cas_fails_after_another_writer() {
        let key = b"shared-cas-test-key";
        assert!(get_shared(key).is_none());
        set_shared(key, b"1".to_vec(), 0).unwrap();
        let (value, cas) = get_shared(key).unwrap();
        assert_eq!(value, b"1");
        assert_ne!(cas, 0);
        // Writer A and B both read `cas`; A wins, B's CAS no longer matches.
        set_shared(key, b"2".to_vec(), cas).unwrap();
        assert_eq!(set_shared(key, b"3".to_vec(), cas), Err(Status::CasMismatch));
        let (value, cas2) = get_shared(key).unwrap();
        assert_eq!(value, b"2");
        assert_ne!(cas2, cas);
        // cas 0 is unconditional; a non-zero cas on a missing key inserts.
        set_shared(key, b"4".to_vec(), 0).unwrap();
        set_shared(b"shared-cas-test-new", b"x".to_vec(), 12345).unwrap();
    }
}
