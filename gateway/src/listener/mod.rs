//! Workers: threads, CPU pinning, per-worker SO_REUSEPORT listeners, accept
//! loops and drain.
//!
//! Each worker is one thread running one monoio runtime (io_uring, or epoll
//! when io_uring is unavailable or `io: epoll`), pinned to one CPU, with its
//! own listening socket per configured listener. Everything a request touches
//! is worker-local (`Worker`) except the config snapshot (an atomic pointer)
//! and endpoint health (atomics): no lock is shared between workers.
//!
//! Every worker's socket of every listener is bound before any worker starts
//! (`bind_listeners`), so the control thread can hand the whole SO_REUSEPORT
//! group to connection steering (`crate::ebpf`) first.

pub mod sizing;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use arc_swap::ArcSwap;

use crate::config::{IoDriver, ListenerSettings, Snapshot};
pub use worker::Worker;

/// What the control thread tells a worker.
pub enum WorkerCommand {
    /// Start accepting on a socket bound for this worker.
    AddListener {
        name: Arc<str>,
        socket: std::net::TcpListener,
    },
    /// Stop accepting on a listener that left the config.
    RemoveListener { name: Arc<str> },
    /// Stop accepting, finish in-flight requests, exit by `deadline`.
    Drain { deadline: std::time::Instant },
}

pub struct WorkerHandle {
    pub index: usize,
    pub commands: async_channel::Sender<WorkerCommand>,
    pub thread: JoinHandle<()>,
}

/// Binds one SO_REUSEPORT socket; the kernel spreads connections over the
/// sockets bound to the same address, one per worker.
pub fn bind_reuseport(address: SocketAddr, backlog: u32) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, Some(Protocol::TCP))
        .with_context(|| format!("socket() for {address}"))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit it: no setsockopt per connection. Responses
    // leave in as few writes as possible, so Nagle would only add delay.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket
        .bind(&address.into())
        .with_context(|| format!("binding {address}"))?;
    socket
        .listen(backlog.min(i32::MAX as u32) as i32)
        .with_context(|| format!("listen() on {address}"))?;
    Ok(socket.into())
}

/// One listener's sockets: `sockets[w]` is worker w's.
pub struct BoundListener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub sockets: Vec<std::net::TcpListener>,
}

/// Binds one socket per worker for `listener`.
pub fn bind_listener(listener: &ListenerSettings, workers: usize) -> anyhow::Result<BoundListener> {
    let sockets = (0..workers)
        .map(|_| bind_reuseport(listener.address, listener.backlog))
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("listener {}", listener.name))?;
    Ok(BoundListener {
        name: Arc::from(listener.name.as_str()),
        address: listener.address,
        sockets,
    })
}

/// Binds every listener's sockets for `workers` workers.
pub fn bind_listeners(listeners: &[ListenerSettings], workers: usize) -> anyhow::Result<Vec<BoundListener>> {
    listeners
        .iter()
        .map(|listener| bind_listener(listener, workers))
        .collect()
}

/// Starts `cpus.len()` workers on the sockets of `listeners` (bound for as
/// many workers); worker `i` is pinned to `cpus[i]` when `pin` is set.
/// Returns once every worker thread is running its runtime.
pub fn spawn_workers(
    cpus: &[usize],
    pin: bool,
    io: IoDriver,
    live: Arc<ArcSwap<Snapshot>>,
    listeners: Vec<BoundListener>,
) -> anyhow::Result<Vec<WorkerHandle>> {
    let mut per_worker: Vec<Vec<(Arc<str>, std::net::TcpListener)>> = (0..cpus.len()).map(|_| Vec::new()).collect();
    for listener in listeners {
        anyhow::ensure!(
            listener.sockets.len() == cpus.len(),
            "listener {} has {} sockets for {} workers",
            listener.name,
            listener.sockets.len(),
            cpus.len()
        );
        for (worker, socket) in per_worker.iter_mut().zip(listener.sockets) {
            worker.push((listener.name.clone(), socket));
        }
    }
    let mut handles = Vec::with_capacity(cpus.len());
    for ((index, &cpu), sockets) in cpus.iter().enumerate().zip(per_worker) {
        let (commands, receiver) = async_channel::unbounded();
        let live = live.clone();
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("tollgate-worker-{index}"))
            .spawn(move || {
                let pinned = (pin && pin_to_cpu(cpu)).then_some(cpu);
                worker::run(index, pinned, io, live, sockets, receiver, started_tx);
            })
            .context("spawning a worker thread")?;
        match started_rx.recv() {
            Ok(Ok(driver)) => tracing::info!(worker = index, cpu = pin.then_some(cpu), driver, "worker started"),
            Ok(Err(error)) => anyhow::bail!("worker {index} could not start its runtime: {error}"),
            Err(_) => anyhow::bail!("worker {index} exited while starting"),
        }
        handles.push(WorkerHandle {
            index,
            commands,
            thread,
        });
    }
    Ok(handles)
}

/// Pins the calling thread to `cpu`; false (logged) when the kernel refuses.
fn pin_to_cpu(cpu: usize) -> bool {
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_err() {
        tracing::warn!(cpu, "could not pin worker to its CPU: beyond the CPU set");
        return false;
    }
    match nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(cpu, %error, "could not pin worker to its CPU");
            false
        }
    }
}
