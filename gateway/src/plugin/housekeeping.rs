//! The plugin housekeeping thread: everything plugins need that no request
//! drives. It recreates faulted instances when their backoff has passed,
//! delivers ticks (`proxy_set_tick_period_milliseconds`) and shared-queue
//! notifications to root contexts, and performs the http/redis calls root
//! contexts dispatch, on its own small monoio runtime so no worker and not
//! the control plane ever waits for a plugin's background work.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::callout;
use super::pool::{LoadedPlugin, RootCalls};
use crate::config::Snapshot;

/// Shortest pause between sweeps, however soon the next tick is due.
const MIN_PAUSE: Duration = Duration::from_millis(1);
/// Longest pause: how late shared-queue data may be noticed, and how soon a
/// new config's plugins are first looked at. The thread otherwise sleeps
/// until the next tick or recreation is due, so it rarely preempts a worker
/// sharing its CPU.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Starts the thread; it runs for the life of the process.
pub fn spawn(live: Arc<ArcSwap<Snapshot>>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tollgate-plugins".into())
        .spawn(move || {
            let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .expect("the plugin housekeeping runtime starts");
            runtime.block_on(run(live));
        })?;
    Ok(())
}

async fn run(live: Arc<ArcSwap<Snapshot>>) {
    // Plugin versions already swept for calls dispatched while starting.
    let mut seen: HashSet<usize> = HashSet::new();
    loop {
        let snapshot = live.load_full();
        let now = Instant::now();
        let mut dispatched: Vec<(Arc<LoadedPlugin>, RootCalls)> = Vec::new();
        let mut current = HashSet::new();
        let mut wake = now + MAX_PAUSE;
        for plugin in snapshot.plugins.iter() {
            let key = Arc::as_ptr(plugin) as usize;
            current.insert(key);
            if seen.insert(key) {
                for calls in plugin.take_startup_calls() {
                    dispatched.push((Arc::clone(plugin), calls));
                }
            }
            for calls in plugin.recreate_due() {
                dispatched.push((Arc::clone(plugin), calls));
            }
            let (ticked, next_tick) = plugin.run_due_ticks(now);
            for calls in ticked {
                dispatched.push((Arc::clone(plugin), calls));
            }
            for due in next_tick.into_iter().chain(plugin.next_recreation()) {
                wake = wake.min(due);
            }
        }
        seen.retain(|key| current.contains(key));
        for (instance_id, queue_id) in super::abi::take_ready_queues() {
            for plugin in snapshot.plugins.iter() {
                let mut calls = Vec::new();
                if plugin.notify_queue(instance_id, queue_id, &mut calls) {
                    dispatched.extend(calls.into_iter().map(|c| (Arc::clone(plugin), c)));
                    break;
                }
            }
        }
        for (plugin, calls) in dispatched {
            let snapshot = Arc::clone(&snapshot);
            monoio::spawn(perform_root_calls(snapshot, plugin, calls));
        }
        let pause = wake.saturating_duration_since(Instant::now()).max(MIN_PAUSE);
        monoio::time::sleep(pause).await;
    }
}

/// Performs one batch of root-context calls and delivers each answer; calls
/// the answers dispatch in turn are performed the same way.
async fn perform_root_calls(snapshot: Arc<Snapshot>, plugin: Arc<LoadedPlugin>, batch: RootCalls) {
    let mut queue = vec![batch];
    while let Some(RootCalls {
        slot,
        generation,
        calls,
    }) = queue.pop()
    {
        for call in calls {
            let mut more = Vec::new();
            let redis = |cluster: &str| plugin.redis_settings(slot, generation, cluster);
            let answer = callout::perform(call, |cluster| endpoint(&snapshot, cluster), redis).await;
            plugin.answer_root_call(slot, generation, |instance| answer.deliver(instance, None), &mut more);
            queue.extend(more);
        }
    }
}

/// The first available endpoint of a cluster in the running config.
pub fn endpoint(snapshot: &Snapshot, cluster: &str) -> Option<SocketAddr> {
    let cluster = snapshot.clusters.get(cluster)?;
    let endpoints = cluster.endpoints();
    endpoints.endpoints.iter().find(|e| e.is_available()).map(|e| e.addr)
}
