//! One worker: its runtime, accept loops, worker-local state (pools,
//! balancer, access log) and the drain sequence. Access-log lines say where
//! a request ran: the worker, its pinned CPU and the CPU that received the
//! connection's packets (`SO_INCOMING_CPU`, read when the line is written).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Cache};

use super::WorkerCommand;
use crate::accesslog::{AccessEntry, AccessLogWriter, Placement};
use crate::config::{AccessLogTarget, IoDriver, Snapshot};
use crate::http::serve_connection;
use crate::metrics::WorkerStats;
use crate::upstream::{Balancer, Pools};

/// io_uring submission queue entries per worker.
const URING_ENTRIES: u32 = 4096;
/// How often pools are swept and the access log is flushed.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// How often a draining worker checks whether its connections are gone.
const DRAIN_POLL: Duration = Duration::from_millis(25);

pub struct Worker {
    pub index: usize,
    /// The CPU the worker's thread is pinned to; None when unpinned.
    pub cpu: Option<usize>,
    snapshot: RefCell<Cache<Arc<ArcSwap<Snapshot>>, Arc<Snapshot>>>,
    /// The worker's handle on the current snapshot. Requests clone this `Rc`
    /// rather than the `Arc`, whose count every worker would write.
    #[expect(clippy::redundant_allocation, reason = "the Rc keeps refcount traffic worker-local")]
    current: RefCell<Rc<Arc<Snapshot>>>,
    pub pools: RefCell<Pools>,
    pub balancer: RefCell<Balancer>,
    pub stats: &'static WorkerStats,
    access_log: RefCell<Option<(AccessLogTarget, AccessLogWriter)>>,
    draining: Cell<bool>,
    connections: RefCell<HashMap<u64, Rc<TrackedConnection>>>,
    next_connection: Cell<u64>,
    request_seq: Cell<u64>,
    request_id_prefix: u64,
    listeners: RefCell<HashMap<Arc<str>, ListenerControl>>,
    /// The idle-pool size last published to the metrics gauge.
    reported_pool_idle: Cell<i64>,
}

struct ListenerControl {
    fd: RawFd,
    stopped: Rc<Cell<bool>>,
}

struct TrackedConnection {
    fd: RawFd,
    idle: Cell<bool>,
}

/// Registered for the life of a client connection so a drain can find and
/// close the idle ones.
pub struct ConnectionTracker<'w> {
    worker: &'w Worker,
    id: u64,
    state: Rc<TrackedConnection>,
}

impl ConnectionTracker<'_> {
    /// Marks whether the connection waits for a request (and so may be closed
    /// by a drain without losing anything).
    pub fn set_idle(&self, idle: bool) {
        self.state.idle.set(idle);
    }
}

impl Drop for ConnectionTracker<'_> {
    fn drop(&mut self) {
        self.worker.connections.borrow_mut().remove(&self.id);
        self.worker.stats.connection_closed();
    }
}

impl Worker {
    fn new(index: usize, cpu: Option<usize>, live: Arc<ArcSwap<Snapshot>>) -> Worker {
        let prefix = {
            use std::hash::{BuildHasher, Hasher};
            let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
            hasher.write_usize(index);
            hasher.finish()
        };
        let current = RefCell::new(Rc::new(live.load_full()));
        Worker {
            index,
            cpu,
            snapshot: RefCell::new(Cache::new(live)),
            current,
            pools: RefCell::new(Pools::default()),
            balancer: RefCell::new(Balancer::new(prefix)),
            stats: crate::metrics::worker_stats(index),
            access_log: RefCell::new(None),
            draining: Cell::new(false),
            connections: RefCell::new(HashMap::new()),
            next_connection: Cell::new(0),
            request_seq: Cell::new(0),
            request_id_prefix: prefix,
            listeners: RefCell::new(HashMap::new()),
            reported_pool_idle: Cell::new(0),
        }
    }

    /// The current config; an exchange keeps the one it started with.
    pub fn snapshot(&self) -> Rc<Arc<Snapshot>> {
        let mut cache = self.snapshot.borrow_mut();
        let latest = cache.load();
        let mut current = self.current.borrow_mut();
        if !Arc::ptr_eq(latest, &current) {
            *current = Rc::new(latest.clone());
        }
        current.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    pub fn track_connection(&self, stream: &monoio::net::TcpStream) -> ConnectionTracker<'_> {
        let id = self.next_connection.get();
        self.next_connection.set(id + 1);
        let state = Rc::new(TrackedConnection {
            fd: stream.as_raw_fd(),
            idle: Cell::new(true),
        });
        self.connections.borrow_mut().insert(id, state.clone());
        self.stats.connection_opened();
        ConnectionTracker {
            worker: self,
            id,
            state,
        }
    }

    /// A process-unique id: random per worker start, then a sequence.
    pub fn next_request_id(&self) -> String {
        let seq = self.request_seq.get();
        self.request_seq.set(seq + 1);
        format!("{:016x}{:08x}", self.request_id_prefix, seq)
    }

    /// Writes an access-log line; the entry is only built (clock reads
    /// included) when a log is open.
    pub fn log_access<'e>(&self, entry: impl FnOnce() -> AccessEntry<'e>) {
        if let Some((_, writer)) = self.access_log.borrow_mut().as_mut() {
            if writer.is_off() {
                return;
            }
            let placement = Placement {
                worker: self.index,
                worker_cpu: self.cpu,
            };
            writer.write(&entry(), &placement);
        }
    }

    fn add_listener(self: &Rc<Self>, name: Arc<str>, socket: std::net::TcpListener) {
        let listener = match monoio::net::TcpListener::from_std(socket) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(worker = self.index, listener = %name, %error, "cannot use listening socket");
                return;
            }
        };
        let stopped = Rc::new(Cell::new(false));
        let control = ListenerControl {
            fd: listener.as_raw_fd(),
            stopped: stopped.clone(),
        };
        if let Some(previous) = self.listeners.borrow_mut().insert(name.clone(), control) {
            previous.stop();
        }
        monoio::spawn(accept_loop(self.clone(), name, listener, stopped));
    }

    fn remove_listener(&self, name: &str) {
        if let Some(control) = self.listeners.borrow_mut().remove(name) {
            control.stop();
        }
    }

    /// Opens, reopens or closes the access log when the config names another target.
    fn sync_access_log(&self) {
        let target = self.snapshot().access_log.clone();
        let mut current = self.access_log.borrow_mut();
        if current.as_ref().map(|(open, _)| open) == Some(&target) {
            return;
        }
        if let Some((_, writer)) = current.as_mut() {
            writer.flush();
        }
        *current = match AccessLogWriter::open(&target) {
            Ok(writer) => Some((target, writer)),
            Err(error) => {
                tracing::error!(worker = self.index, %error, "cannot open the access log");
                None
            }
        };
    }

    fn housekeeping(&self) {
        self.pools.borrow_mut().sweep();
        let idle = self.pools.borrow().idle_count() as i64;
        self.stats.pool_idle_add(idle - self.reported_pool_idle.replace(idle));
        self.sync_access_log();
        if let Some((_, writer)) = self.access_log.borrow_mut().as_mut() {
            writer.flush();
        }
    }

    /// Closes the read side of idle client connections: their pending read
    /// returns end-of-stream and the connection loop ends normally.
    fn close_idle_connections(&self) {
        for connection in self.connections.borrow().values() {
            if connection.idle.get() {
                // SAFETY: the fd belongs to a live TcpStream (the tracker is
                // removed before the stream is dropped); shutdown does not
                // release it.
                unsafe { libc::shutdown(connection.fd, libc::SHUT_RD) };
            }
        }
    }

    async fn drain(&self, deadline: Instant) {
        self.draining.set(true);
        for (_, control) in self.listeners.borrow_mut().drain() {
            control.stop();
        }
        self.pools.borrow_mut().clear();
        while !self.connections.borrow().is_empty() && Instant::now() < deadline {
            self.close_idle_connections();
            monoio::time::sleep(DRAIN_POLL).await;
        }
        let left = self.connections.borrow().len();
        if left > 0 {
            tracing::warn!(
                worker = self.index,
                connections = left,
                "drain timeout: closing remaining connections"
            );
        }
        if let Some((_, writer)) = self.access_log.borrow_mut().as_mut() {
            writer.flush();
        }
    }
}

impl ListenerControl {
    /// Ends the accept loop: a pending accept on a shut-down listening socket
    /// fails with EINVAL, and the loop sees `stopped`.
    fn stop(&self) {
        self.stopped.set(true);
        // SAFETY: the fd belongs to the listener owned by the accept loop,
        // which only closes it after seeing `stopped`.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}

async fn accept_loop(worker: Rc<Worker>, name: Arc<str>, listener: monoio::net::TcpListener, stopped: Rc<Cell<bool>>) {
    let mut last_error_log: Option<Instant> = None;
    loop {
        let accepted = listener.accept().await;
        if stopped.get() {
            break;
        }
        match accepted {
            Ok((stream, peer)) => {
                // TCP_NODELAY comes from the listening socket (Linux copies it).
                monoio::spawn(serve_connection(worker.clone(), stream, peer, name.clone()));
            }
            Err(error) => {
                // Out of descriptors or buffers: back off instead of spinning.
                if last_error_log.is_none_or(|at| at.elapsed() > Duration::from_secs(5)) {
                    tracing::warn!(worker = worker.index, listener = %name, %error, "accept failed");
                    last_error_log = Some(Instant::now());
                }
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn worker_main(
    worker: Rc<Worker>,
    sockets: Vec<(Arc<str>, std::net::TcpListener)>,
    commands: async_channel::Receiver<WorkerCommand>,
) {
    worker.sync_access_log();
    for (name, socket) in sockets {
        worker.add_listener(name, socket);
    }
    let housekeeper = worker.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(HOUSEKEEPING_INTERVAL).await;
            housekeeper.housekeeping();
        }
    });
    while let Ok(command) = commands.recv().await {
        match command {
            WorkerCommand::AddListener { name, socket } => worker.add_listener(name, socket),
            WorkerCommand::RemoveListener { name } => worker.remove_listener(&name),
            WorkerCommand::Drain { deadline } => {
                worker.drain(deadline).await;
                return;
            }
        }
    }
}

/// One thread submits to and reaps each ring, so the kernel may run
/// completion work at the worker's next syscall instead of interrupting it
/// (COOP_TASKRUN). Measured on loopback: ~15% less proxy CPU per request.
/// DEFER_TASKRUN is not used: it posts completions only when the ring is
/// entered to wait, and monoio submits without waiting while tasks are ready.
fn uring_runtime(tuned: bool) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let mut setup = io_uring::IoUring::builder();
    if tuned {
        setup.setup_coop_taskrun().setup_single_issuer();
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(URING_ENTRIES)
        .uring_builder(setup)
        .enable_timer()
        .build()
}

/// Runs worker `index` on this thread until it drains. Reports the I/O driver
/// it got (or why it could not start) through `started`.
pub(super) fn run(
    index: usize,
    cpu: Option<usize>,
    io: IoDriver,
    live: Arc<ArcSwap<Snapshot>>,
    sockets: Vec<(Arc<str>, std::net::TcpListener)>,
    commands: async_channel::Receiver<WorkerCommand>,
    started: std::sync::mpsc::Sender<Result<&'static str, String>>,
) {
    let want_uring = match io {
        IoDriver::Epoll => false,
        IoDriver::IoUring => true,
        IoDriver::Auto => monoio::utils::detect_uring(),
    };
    if want_uring {
        // Kernels before 6.0 lack the tuning flags: try plain io_uring next.
        match uring_runtime(true).or_else(|_| uring_runtime(false)) {
            Ok(mut runtime) => {
                let _ = started.send(Ok("io_uring"));
                let worker = Rc::new(Worker::new(index, cpu, live));
                runtime.block_on(worker_main(worker, sockets, commands));
                return;
            }
            Err(error) if io == IoDriver::IoUring => {
                let _ = started.send(Err(format!("io_uring requested but unavailable: {error}")));
                return;
            }
            Err(error) => tracing::warn!(worker = index, %error, "io_uring unavailable, using epoll"),
        }
    }
    match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(mut runtime) => {
            let _ = started.send(Ok("epoll"));
            let worker = Rc::new(Worker::new(index, cpu, live));
            runtime.block_on(worker_main(worker, sockets, commands));
        }
        Err(error) => {
            let _ = started.send(Err(format!("epoll runtime: {error}")));
        }
    }
}
