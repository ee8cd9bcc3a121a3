//! The control thread: binds the listeners, loads eBPF (the XDP guard and
//! connection steering, which needs every worker's socket bound), starts the
//! workers, then runs a tokio runtime for the admin listener, active health
//! checks, DNS refresh, config reloads (SIGHUP or a changed file) and the
//! graceful stop (SIGTERM/SIGINT), which detaches the guard last.
//!
//! Reloads build the new snapshot off to the side (validation and DNS on a
//! blocking thread), bind any new listeners, and only then swap the atomic
//! pointer: a rejected config leaves everything as it was. eBPF changes go
//! to the maps and attachments; the programs stay loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, AdminState};
use crate::config::{self, EbpfMode, Snapshot, WorkersSetting};
use crate::ebpf::{self, Ebpf, WorkerCpus};
use crate::listener::{self, sizing, BoundListener, WorkerCommand, WorkerHandle};
use crate::upstream::{self, Cluster};

/// How often the config file's modification time is checked.
const FILE_POLL: Duration = Duration::from_secs(2);
/// How often clusters are checked for a due DNS refresh.
const DNS_TICK: Duration = Duration::from_secs(1);

/// Loads the config from `path`, or the embedded default config.
pub fn load_source(path: Option<&Path>) -> Result<config::proto::Config, config::ConfigErrors> {
    match path {
        Some(path) => config::load_file(path),
        None => config::parse_yaml(config::DEFAULT_CONFIG),
    }
}

/// Serves until SIGTERM or SIGINT, then drains and returns.
pub fn run(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    let source = load_source(config_path.as_deref()).map_err(|errors| anyhow!("invalid config:\n{errors}"))?;
    let runtime = config::runtime_settings(&source).map_err(|errors| anyhow!("invalid config:\n{errors}"))?;
    let plan = sizing::plan_workers(match runtime.workers {
        WorkersSetting::Auto => None,
        WorkersSetting::Count(count) => Some(count),
    });
    tracing::info!(
        "worker plan: workers={} affinity_cpus={} cgroup_quota={} ({})",
        plan.count,
        plan.affinity_cpus,
        plan.cgroup_quota
            .map_or("none".to_string(), |quota| format!("{quota:.2}")),
        plan.explanation
    );
    crate::metrics::init(plan.count);
    crate::plugin::set_worker_count(plan.count);
    let snapshot = Snapshot::build(source, None).map_err(|errors| anyhow!("invalid config:\n{errors}"))?;
    let admin_address = snapshot.admin_address;
    let live = Arc::new(ArcSwap::from_pointee(snapshot));
    crate::plugin::spawn_housekeeping(live.clone()).context("starting the plugin housekeeping thread")?;
    let cpus: Vec<usize> = (0..plan.count).map(|i| plan.cpus[i % plan.cpus.len()]).collect();
    let bound = listener::bind_listeners(&live.load().listeners, cpus.len())?;
    let workers = WorkerCpus {
        cpus: cpus.clone(),
        pinned: runtime.pin_workers,
    };
    let ebpf = Ebpf::start(ebpf::object::guard_object(), &live.load().ebpf, workers, &bound);
    let workers = listener::spawn_workers(&cpus, runtime.pin_workers, runtime.io, live.clone(), bound)?;
    for listener in &live.load().listeners {
        tracing::info!(listener = %listener.name, address = %listener.address, workers = workers.len(), "listening");
    }
    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control runtime")?;
    control.block_on(async move {
        let admin_listener = tokio::net::TcpListener::bind(admin_address)
            .await
            .with_context(|| format!("binding the admin listener {admin_address}"))?;
        tracing::info!(address = %admin_address, "admin listening");
        let control = Control {
            config_path,
            live: live.clone(),
            workers,
            health: HashMap::new(),
            dns_refreshed: HashMap::new(),
            admin: Arc::new(AdminState::new(live)),
            ebpf,
        };
        control.serve(admin_listener).await
    })
}

struct Control {
    config_path: Option<PathBuf>,
    live: Arc<ArcSwap<Snapshot>>,
    workers: Vec<WorkerHandle>,
    /// Health-check task per cluster, with the cluster instance it checks.
    health: HashMap<String, (Arc<Cluster>, tokio::task::JoinHandle<()>)>,
    dns_refreshed: HashMap<String, Instant>,
    admin: Arc<AdminState>,
    /// None when eBPF is off or was refused at start.
    ebpf: Option<Ebpf>,
}

impl Control {
    async fn serve(mut self, admin_listener: tokio::net::TcpListener) -> anyhow::Result<()> {
        tokio::spawn(admin::serve(admin_listener, self.admin.clone()));
        self.sync_health_checks();
        self.admin.mark_ready();
        let mut hangup = signal(SignalKind::hangup())?;
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut file_poll = tokio::time::interval(FILE_POLL);
        let mut dns_tick = tokio::time::interval(DNS_TICK);
        let mut last_modified = self.config_modified();
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    last_modified = self.config_modified();
                    self.reload().await;
                }
                _ = file_poll.tick() => {
                    let modified = self.config_modified();
                    if modified != last_modified {
                        last_modified = modified;
                        tracing::info!("config file changed: reloading");
                        self.reload().await;
                    }
                }
                _ = dns_tick.tick() => self.refresh_dns(),
                _ = terminate.recv() => break,
                _ = interrupt.recv() => break,
            }
        }
        self.drain().await
    }

    fn config_modified(&self) -> Option<SystemTime> {
        let path = self.config_path.as_ref()?;
        std::fs::metadata(path).and_then(|m| m.modified()).ok()
    }

    async fn reload(&mut self) {
        let Some(path) = self.config_path.clone() else {
            tracing::info!("running the embedded config: nothing to reload");
            return;
        };
        // Only this thread stores snapshots: `previous` stays the running one.
        let previous = self.live.load_full();
        let base = Arc::clone(&previous);
        let built = tokio::task::spawn_blocking(move || {
            let source = config::load_file(&path)?;
            Snapshot::build(source, Some(&base))
        })
        .await;
        let snapshot = match built {
            Ok(Ok(snapshot)) => snapshot,
            Ok(Err(errors)) => {
                tracing::error!(
                    generation = previous.generation,
                    "config rejected, the running config stays:\n{errors}"
                );
                return;
            }
            Err(error) => {
                tracing::error!(%error, "config reload failed");
                return;
            }
        };
        if snapshot.runtime != previous.runtime {
            tracing::warn!("runtime settings (workers, io, pinning) change only at restart");
        }
        let (added, removed) = match self.bind_changed_listeners(&previous, &snapshot) {
            Ok(changes) => changes,
            Err(error) => {
                tracing::error!("config rejected, the running config stays: {error:#}");
                return;
            }
        };
        let generation = snapshot.generation;
        match &mut self.ebpf {
            Some(ebpf) => {
                for (name, address) in &removed {
                    ebpf.unregister_listener(name, *address);
                }
                for bound in &added {
                    ebpf.register_listener(bound);
                }
                ebpf.apply(&snapshot.ebpf);
            }
            None if previous.ebpf.mode == EbpfMode::Off && snapshot.ebpf.mode != EbpfMode::Off => {
                tracing::warn!("ebpf: leaving ebpf.mode off takes effect at restart");
            }
            None => {}
        }
        self.live.store(Arc::new(snapshot));
        for (name, _) in removed {
            self.broadcast(|| WorkerCommand::RemoveListener { name: name.clone() })
                .await;
        }
        for bound in added {
            for (worker, socket) in self.workers.iter().zip(bound.sockets) {
                let _ = worker
                    .commands
                    .send(WorkerCommand::AddListener {
                        name: bound.name.clone(),
                        socket,
                    })
                    .await;
            }
        }
        self.sync_health_checks();
        tracing::info!(generation, "config applied");
    }

    /// Binds one socket per worker for every listener that is new or moved.
    /// Returns them with the names and addresses of listeners to stop; binds
    /// nothing on error.
    #[allow(clippy::type_complexity)]
    fn bind_changed_listeners(
        &self,
        previous: &Snapshot,
        next: &Snapshot,
    ) -> anyhow::Result<(Vec<BoundListener>, Vec<(Arc<str>, std::net::SocketAddr)>)> {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for old in &previous.listeners {
            let kept = next
                .listeners
                .iter()
                .any(|new| new.name == old.name && new.address == old.address);
            if !kept {
                removed.push((Arc::<str>::from(old.name.as_str()), old.address));
            }
        }
        for new in &next.listeners {
            let existed = previous
                .listeners
                .iter()
                .any(|old| old.name == new.name && old.address == new.address);
            if existed {
                continue;
            }
            added.push(listener::bind_listener(new, self.workers.len())?);
        }
        Ok((added, removed))
    }

    async fn broadcast(&self, command: impl Fn() -> WorkerCommand) {
        for worker in &self.workers {
            let _ = worker.commands.send(command()).await;
        }
    }

    /// Keeps one health-check task per cluster instance; a reused cluster
    /// keeps its task and its state.
    fn sync_health_checks(&mut self) {
        let snapshot = self.live.load_full();
        self.health.retain(|name, (cluster, task)| {
            let current = snapshot.clusters.get(name).is_some_and(|now| Arc::ptr_eq(now, cluster));
            if !current {
                task.abort();
            }
            current
        });
        for (name, cluster) in &snapshot.clusters {
            if self.health.contains_key(name) {
                continue;
            }
            if let Some(task) = upstream::health::spawn(cluster.clone()) {
                self.health.insert(name.clone(), (cluster.clone(), task));
            }
        }
    }

    fn refresh_dns(&mut self) {
        let snapshot = self.live.load_full();
        let now = Instant::now();
        for (name, cluster) in &snapshot.clusters {
            if !cluster.uses_dns() {
                continue;
            }
            let last = *self.dns_refreshed.entry(name.clone()).or_insert(now);
            if now.duration_since(last) < cluster.settings.dns_refresh {
                continue;
            }
            self.dns_refreshed.insert(name.clone(), now);
            let cluster = cluster.clone();
            tokio::task::spawn_blocking(move || match cluster.refresh_dns() {
                Ok(true) => tracing::info!(cluster = %cluster.name, "DNS answer changed: endpoints updated"),
                Ok(false) => {}
                Err(error) => tracing::warn!(cluster = %cluster.name, %error, "DNS refresh failed: keeping endpoints"),
            });
        }
    }

    /// Stops accepting, lets in-flight requests finish (bounded by the drain
    /// timeout), closes idle connections, and waits for the workers.
    async fn drain(mut self) -> anyhow::Result<()> {
        self.admin.mark_draining();
        let timeout = self.live.load().runtime.drain_timeout;
        tracing::info!(?timeout, "stopping: draining connections");
        let deadline = Instant::now() + timeout;
        self.broadcast(|| WorkerCommand::Drain { deadline }).await;
        for (_, task) in self.health.values() {
            task.abort();
        }
        for worker in self.workers {
            let index = worker.index;
            let joined = tokio::task::spawn_blocking(move || worker.thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(worker = index, "worker thread panicked");
            }
        }
        // Last: the guard keeps filtering while connections drain.
        if let Some(ebpf) = self.ebpf.take() {
            ebpf.stop();
        }
        tracing::info!("stopped");
        Ok(())
    }
}
