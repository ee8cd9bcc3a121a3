//! Process metrics: per-route, per-cluster and per-worker counters written by
//! workers without shared locks, and their Prometheus text exposition.
//!
//! Every statistic is sharded by worker: each worker writes its own
//! cache-line-aligned shard, so no two workers write the same line on the
//! request path. The control thread sums the shards when `/metrics` is scraped.
//! The registries that hand out stats by name are locked only when a config
//! snapshot is built and when metrics are encoded, never per request.
//!
//! Certificate expiry is not a counter: it is computed at scrape time from
//! the running snapshot's loaded certificates. The eBPF counters live in BPF
//! maps (per-CPU, written by the kernel) and are read at scrape time too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::config::Snapshot;
use crate::ebpf::EbpfMetrics;
use crate::plugin::{FaultKind, MetricKind, MetricValue, HISTOGRAM_BUCKETS};
use crate::upstream::Cluster;

/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Status classes 1xx..5xx, then "other" for codes outside 100..=599.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

/// Downstream errors are counted per exact status in 400..=599.
const ERROR_STATUS_BASE: u16 = 400;
const ERROR_STATUS_SLOTS: usize = 200;

/// Sets the number of per-worker shards. Call once, before the first config
/// snapshot is built and before workers start. Returns false when the count
/// was already fixed (by an earlier call, or by stats used before this call
/// with the default of one shard); counts stay correct then, only workers
/// share shards and the per-worker series are merged.
pub fn init(workers: usize) -> bool {
    let mut applied = false;
    GLOBAL.get_or_init(|| {
        applied = true;
        Stats::new(workers)
    });
    applied
}

fn global() -> &'static Stats {
    GLOBAL.get_or_init(|| Stats::new(1))
}

/// Keeps one shard on its own cache line so workers never write a shared line.
#[repr(align(64))]
#[derive(Default)]
struct Padded<T>(T);

fn shards<T: Default>(count: usize) -> Box<[Padded<T>]> {
    (0..count).map(|_| Padded::default()).collect()
}

fn shard<T>(shards: &[Padded<T>], worker: usize) -> &T {
    &shards[worker % shards.len()].0
}

fn sum<T>(shards: &[Padded<T>], field: impl Fn(&T) -> &AtomicU64) -> u64 {
    shards.iter().map(|shard| field(&shard.0).load(Ordering::Relaxed)).sum()
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[derive(Default)]
struct RouteShard {
    classes: [AtomicU64; STATUS_CLASSES.len()],
    request_bytes: AtomicU64,
    response_bytes: AtomicU64,
}

/// Request counters of one (host, route), kept across config reloads.
pub struct RouteStats {
    shards: Box<[Padded<RouteShard>]>,
}

impl RouteStats {
    pub fn record(&self, worker: usize, status: u16, request_bytes: u64, response_bytes: u64) {
        let shard = shard(&self.shards, worker);
        let class = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => STATUS_CLASSES.len() - 1,
        };
        bump(&shard.classes[class]);
        shard.request_bytes.fetch_add(request_bytes, Ordering::Relaxed);
        shard.response_bytes.fetch_add(response_bytes, Ordering::Relaxed);
    }
}

#[derive(Default)]
struct ClusterShard {
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    connect_failures: AtomicU64,
    timeouts: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    bad_responses: AtomicU64,
    new_connections: AtomicU64,
    reused_connections: AtomicU64,
}

/// Upstream counters and the latency histogram of one cluster, by name.
pub struct ClusterStats {
    shards: Box<[Padded<ClusterShard>]>,
}

impl ClusterStats {
    /// Records the time from sending the request to the upstream until its
    /// response head arrived.
    pub fn record_upstream(&self, worker: usize, latency: Duration) {
        let shard = shard(&self.shards, worker);
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS.partition_point(|bound| *bound < seconds);
        bump(&shard.buckets[bucket]);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        shard.latency_sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn connect_failure(&self, worker: usize) {
        bump(&shard(&self.shards, worker).connect_failures);
    }

    pub fn timeout(&self, worker: usize) {
        bump(&shard(&self.shards, worker).timeouts);
    }

    pub fn retry(&self, worker: usize) {
        bump(&shard(&self.shards, worker).retries);
    }

    pub fn ejection(&self, worker: usize) {
        bump(&shard(&self.shards, worker).ejections);
    }

    pub fn bad_response(&self, worker: usize) {
        bump(&shard(&self.shards, worker).bad_responses);
    }

    pub fn new_connection(&self, worker: usize) {
        bump(&shard(&self.shards, worker).new_connections);
    }

    pub fn reused_connection(&self, worker: usize) {
        bump(&shard(&self.shards, worker).reused_connections);
    }
}

/// Labels of `tollgate_tls_handshakes_total{version}`.
const TLS_VERSIONS: [&str; 3] = ["TLSv1.2", "TLSv1.3", "none"];
/// Labels of `tollgate_tls_handshakes_total{result}`.
const TLS_RESULTS: [&str; 4] = ["ok", "failed", "rejected", "timeout"];

/// A certificate expiring within this is flagged by `tollgate_certificates_expiring`.
const EXPIRING_WITHIN: Duration = Duration::from_secs(14 * 24 * 60 * 60);

#[derive(Default)]
struct TlsShard {
    /// Index = version * TLS_RESULTS.len() + result.
    handshakes: [AtomicU64; TLS_VERSIONS.len() * TLS_RESULTS.len()],
    /// Non-cumulative counts per bucket; the last slot is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
}

/// Handshake counters and latency of one TLS listener, by name.
pub struct TlsStats {
    shards: Box<[Padded<TlsShard>]>,
}

impl TlsStats {
    /// Counts one handshake. `version` is "TLSv1.2", "TLSv1.3" or "none"
    /// (failed before a version was agreed); `result` is "ok", "failed",
    /// "rejected" (unknown SNI) or "timeout". Other labels count as "none" /
    /// "failed" rather than being lost.
    pub fn record_handshake(&self, worker: usize, version: &'static str, result: &'static str, latency: Duration) {
        let shard = shard(&self.shards, worker);
        let version = TLS_VERSIONS.iter().position(|v| *v == version).unwrap_or(2);
        let result = TLS_RESULTS.iter().position(|r| *r == result).unwrap_or(1);
        bump(&shard.handshakes[version * TLS_RESULTS.len() + result]);
        let seconds = latency.as_secs_f64();
        bump(&shard.buckets[LATENCY_BUCKETS.partition_point(|bound| *bound < seconds)]);
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        shard.latency_sum_ns.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Counters of one worker; only that worker writes them.
#[repr(align(64))]
pub struct WorkerStats {
    connections_opened: AtomicU64,
    connections_closed: AtomicU64,
    requests: AtomicU64,
    pool_idle: AtomicI64,
    /// Index = status - 400.
    errors: Box<[AtomicU64]>,
}

impl WorkerStats {
    fn new() -> WorkerStats {
        WorkerStats {
            connections_opened: AtomicU64::new(0),
            connections_closed: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            pool_idle: AtomicI64::new(0),
            errors: (0..ERROR_STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn connection_opened(&self) {
        bump(&self.connections_opened);
    }

    pub fn connection_closed(&self) {
        bump(&self.connections_closed);
    }

    pub fn request(&self) {
        bump(&self.requests);
    }

    /// Adds `delta` (negative when connections leave) to the idle pool size.
    pub fn pool_idle_add(&self, delta: i64) {
        self.pool_idle.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts a request rejected before routing (malformed, too large, ...).
    /// Statuses outside 400..=599 are not errors and are ignored.
    pub fn http_error(&self, status: u16) {
        if let Some(slot) = status
            .checked_sub(ERROR_STATUS_BASE)
            .and_then(|i| self.errors.get(usize::from(i)))
        {
            bump(slot);
        }
    }

    fn active_connections(&self) -> u64 {
        // Closed first: both only grow, so opened read afterwards is never smaller.
        let closed = self.connections_closed.load(Ordering::Relaxed);
        self.connections_opened.load(Ordering::Relaxed).saturating_sub(closed)
    }
}

#[derive(Default)]
struct PluginShard {
    calls: AtomicU64,
    call_ns: AtomicU64,
    /// Per `FaultKind`, in `FAULT_KINDS` order.
    faults: [AtomicU64; FAULT_KINDS.len()],
}

const FAULT_KINDS: [(FaultKind, &str); 3] = [
    (FaultKind::Trap, "trap"),
    (FaultKind::Timeout, "timeout"),
    (FaultKind::Memory, "memory"),
];

/// Calls into one plugin (by name, across its versions), the time they took,
/// its faults and instance restarts. Shards are per worker; calls made by the
/// plugin housekeeping thread (ticks, queues) land in an extra last shard.
pub struct PluginStats {
    shards: Box<[Padded<PluginShard>]>,
    restarts: AtomicU64,
}

impl PluginStats {
    /// `worker` is `usize::MAX` for the housekeeping thread.
    pub fn call(&self, worker: usize, elapsed: Duration) {
        let shard = self.shard(worker);
        bump(&shard.calls);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        shard.call_ns.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn fault(&self, worker: usize, kind: FaultKind) {
        let index = FAULT_KINDS.iter().position(|(k, _)| *k == kind).unwrap_or(0);
        bump(&self.shard(worker).faults[index]);
    }

    pub fn restarted_slots(&self, count: u64) {
        self.restarts.fetch_add(count, Ordering::Relaxed);
    }

    fn shard(&self, worker: usize) -> &PluginShard {
        let last = self.shards.len() - 1;
        &self.shards[if worker >= last { last } else { worker }].0
    }
}

/// Instances and memory of one plugin, read from the running snapshot at scrape time.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginGauges {
    pub plugin: String,
    pub mode: &'static str,
    pub instances: usize,
    pub memory_bytes: u64,
}

/// Every statistic of the process; one global instance, separate ones in tests.
struct Stats {
    shards: usize,
    routes: Mutex<BTreeMap<(String, String), Arc<RouteStats>>>,
    clusters: Mutex<BTreeMap<String, Arc<ClusterStats>>>,
    tls: Mutex<BTreeMap<String, Arc<TlsStats>>>,
    plugins: Mutex<BTreeMap<String, Arc<PluginStats>>>,
    workers: Arc<[WorkerStats]>,
}

static GLOBAL: OnceLock<Stats> = OnceLock::new();

impl Stats {
    fn new(workers: usize) -> Stats {
        let shards = workers.max(1);
        Stats {
            shards,
            routes: Mutex::new(BTreeMap::new()),
            clusters: Mutex::new(BTreeMap::new()),
            tls: Mutex::new(BTreeMap::new()),
            plugins: Mutex::new(BTreeMap::new()),
            workers: (0..shards).map(|_| WorkerStats::new()).collect(),
        }
    }

    fn route_stats(&self, host: &str, route: &str) -> Arc<RouteStats> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        routes
            .entry((host.to_owned(), route.to_owned()))
            .or_insert_with(|| {
                Arc::new(RouteStats {
                    shards: shards(self.shards),
                })
            })
            .clone()
    }

    fn cluster_stats(&self, cluster: &str) -> Arc<ClusterStats> {
        let mut clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        clusters
            .entry(cluster.to_owned())
            .or_insert_with(|| {
                Arc::new(ClusterStats {
                    shards: shards(self.shards),
                })
            })
            .clone()
    }

    fn tls_stats(&self, listener: &str) -> Arc<TlsStats> {
        let mut tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        tls.entry(listener.to_owned())
            .or_insert_with(|| {
                Arc::new(TlsStats {
                    shards: shards(self.shards),
                })
            })
            .clone()
    }

    fn plugin_stats(&self, plugin: &str) -> Arc<PluginStats> {
        let mut plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner);
        plugins
            .entry(plugin.to_owned())
            .or_insert_with(|| {
                Arc::new(PluginStats {
                    shards: shards(self.shards + 1),
                    restarts: AtomicU64::new(0),
                })
            })
            .clone()
    }

    fn worker_stats(&self, worker: usize) -> &WorkerStats {
        debug_assert!(
            worker < self.workers.len(),
            "worker {worker} beyond metrics::init({})",
            self.workers.len()
        );
        &self.workers[worker % self.workers.len()]
    }

    fn encode(
        &self,
        generation: u64,
        clusters: impl Iterator<Item = Arc<Cluster>>,
        certificates: Vec<CertificateExpiry>,
        plugin_gauges: Vec<PluginGauges>,
        ebpf: EbpfMetrics,
    ) -> String {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let cluster_stats = self.clusters.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let tls = self.tls.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let plugins = self.plugins.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut clusters: Vec<Arc<Cluster>> = clusters.collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition {
            generation,
            routes,
            cluster_stats,
            clusters,
            tls,
            certificates,
            plugins,
            plugin_gauges,
            workers: self.workers.clone(),
            ebpf,
        }));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).expect("writing to a String cannot fail");
        out
    }
}

/// The stats of (host, route); the same object for the same names across
/// config reloads, so counters never reset when a config is applied.
pub fn route_stats(host: &str, route: &str) -> Arc<RouteStats> {
    global().route_stats(host, route)
}

/// The stats of a cluster by name, kept across config reloads.
pub fn cluster_stats(cluster: &str) -> Arc<ClusterStats> {
    global().cluster_stats(cluster)
}

/// The handshake stats of a TLS listener by name, kept across config reloads.
pub fn tls_stats(listener: &str) -> Arc<TlsStats> {
    global().tls_stats(listener)
}

/// The call and fault counters of a plugin by name, kept across versions and reloads.
pub fn plugin_stats(plugin: &str) -> Arc<PluginStats> {
    global().plugin_stats(plugin)
}

/// The counters of worker `worker` (0-based, below the count given to `init`).
pub fn worker_stats(worker: usize) -> &'static WorkerStats {
    global().worker_stats(worker)
}

/// Prometheus text exposition of every metric, with the config generation,
/// endpoint health and certificate expiry read from the running snapshot.
pub fn encode(snapshot: &Snapshot) -> String {
    global().encode(
        snapshot.generation,
        snapshot.clusters.iter().map(|(_, cluster)| Arc::clone(cluster)),
        certificate_expiry(snapshot, SystemTime::now()),
        snapshot.plugins.gauges(),
        crate::ebpf::metrics(),
    )
}

/// One (certificate, host) pair of `tollgate_certificate_expiry_seconds`.
#[derive(Debug, Clone, PartialEq)]
struct CertificateExpiry {
    certificate: String,
    /// The virtual host serving it; empty for a certificate no host uses
    /// (a listener's default certificate).
    host: String,
    /// Until not_after; negative once expired.
    seconds: f64,
}

/// Every loaded certificate with each host that uses it, sorted.
fn certificate_expiry(snapshot: &Snapshot, now: SystemTime) -> Vec<CertificateExpiry> {
    let seconds_left = |not_after: SystemTime| match not_after.duration_since(now) {
        Ok(left) => left.as_secs_f64(),
        Err(past) => -past.duration().as_secs_f64(),
    };
    let mut used = std::collections::HashSet::new();
    let mut expiry = Vec::new();
    for (source, host) in snapshot.source.hosts.iter().zip(snapshot.router.hosts()) {
        let Some(name) = source.tls.as_ref().map(|tls| tls.certificate.as_str()) else {
            continue;
        };
        if let Some(certificate) = snapshot.certificates.get(name) {
            used.insert(name);
            expiry.push(CertificateExpiry {
                certificate: name.to_owned(),
                host: host.name.to_string(),
                seconds: seconds_left(certificate.not_after),
            });
        }
    }
    for (name, certificate) in &snapshot.certificates {
        if !used.contains(name.as_str()) {
            expiry.push(CertificateExpiry {
                certificate: name.clone(),
                host: String::new(),
                seconds: seconds_left(certificate.not_after),
            });
        }
    }
    expiry.sort_by(|a, b| (&a.certificate, &a.host).cmp(&(&b.certificate, &b.host)));
    expiry
}

/// One scrape's view of the stats plus the running snapshot's clusters.
struct Exposition {
    generation: u64,
    routes: BTreeMap<(String, String), Arc<RouteStats>>,
    cluster_stats: BTreeMap<String, Arc<ClusterStats>>,
    clusters: Vec<Arc<Cluster>>,
    tls: BTreeMap<String, Arc<TlsStats>>,
    certificates: Vec<CertificateExpiry>,
    plugins: BTreeMap<String, Arc<PluginStats>>,
    plugin_gauges: Vec<PluginGauges>,
    workers: Arc<[WorkerStats]>,
    ebpf: EbpfMetrics,
}

impl std::fmt::Debug for Exposition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exposition")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A label value escaped as the text format requires (the encoder writes
/// values verbatim).
struct Escaped<'a>(&'a str);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        for c in self.0.chars() {
            match c {
                '\\' => encoder.write_str("\\\\")?,
                '"' => encoder.write_str("\\\"")?,
                '\n' => encoder.write_str("\\n")?,
                c => encoder.write_char(c)?,
            }
        }
        Ok(())
    }
}

fn counter(encoder: &mut MetricEncoder, labels: &impl EncodeLabelSet, value: u64) -> std::fmt::Result {
    encoder
        .encode_family(labels)?
        .encode_counter::<NoLabelSet, _, u64>(&value, None)
}

fn gauge(encoder: &mut MetricEncoder, labels: &impl EncodeLabelSet, value: i64) -> std::fmt::Result {
    encoder.encode_family(labels)?.encode_gauge(&value)
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // An info-typed metric is OpenMetrics-only; a gauge of 1 reads the
        // same in both text formats.
        let mut e = encoder.encode_descriptor("tollgate_info", "Build information.", None, MetricType::Gauge)?;
        gauge(&mut e, &[("version", env!("CARGO_PKG_VERSION"))], 1)?;
        let mut e = encoder.encode_descriptor(
            "tollgate_config_generation",
            "Generation of the running config snapshot.",
            None,
            MetricType::Gauge,
        )?;
        e.encode_gauge(&i64::try_from(self.generation).unwrap_or(i64::MAX))?;
        encode_routes(&mut encoder, &self.routes)?;
        encode_clusters(&mut encoder, &self.cluster_stats)?;
        encode_endpoints(&mut encoder, &self.clusters)?;
        encode_tls(&mut encoder, &self.tls)?;
        encode_certificates(&mut encoder, &self.certificates)?;
        encode_plugins(&mut encoder, &self.plugins, &self.plugin_gauges)?;
        encode_plugin_defined(&mut encoder, &crate::plugin::plugin_metric_values())?;
        encode_workers(&mut encoder, &self.workers)?;
        encode_ebpf(&mut encoder, &self.ebpf)
    }
}

/// The XDP guard's and steering's counters (when their maps are loaded),
/// which features run, and the busiest sources.
fn encode_ebpf(encoder: &mut DescriptorEncoder, ebpf: &EbpfMetrics) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_ebpf_active",
        "1 while the eBPF feature runs (xdp_guard: attached to an interface; steering: selecting listeners).",
        None,
        MetricType::Gauge,
    )?;
    for (feature, active) in [("xdp_guard", ebpf.guard_active), ("steering", ebpf.steering_active)] {
        gauge(&mut e, &[("feature", feature)], i64::from(active))?;
    }
    if let Some(guard) = &ebpf.guard {
        type Field = fn(&tollgate_ebpf_common::Count) -> u64;
        let families: [(&str, &str, Field); 2] = [
            (
                "tollgate_xdp_packets",
                "Packets the XDP guard passed or dropped, by reason, summed over CPUs.",
                |c| c.packets,
            ),
            (
                "tollgate_xdp_bytes",
                "Bytes of the packets the XDP guard passed or dropped, by reason.",
                |c| c.bytes,
            ),
        ];
        for (name, help, field) in families {
            let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (reason, count) in guard {
                let action = if reason.dropped() { "drop" } else { "pass" };
                counter(&mut e, &[("reason", reason.label()), ("action", action)], field(count))?;
            }
        }
    }
    if let Some(steer) = &ebpf.steer {
        let mut e = encoder.encode_descriptor(
            "tollgate_steer_connections",
            "New connections by how steering chose their listener.",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in steer {
            counter(&mut e, &[("result", result.label())], *count)?;
        }
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_xdp_top_source_packets",
        "Packets seen by the XDP guard from the busiest tracked sources (top 10, refreshed at most every 5 s).",
        None,
        MetricType::Gauge,
    )?;
    for (source, packets) in &ebpf.top_sources {
        let source = source.to_string();
        gauge(
            &mut e,
            &[("source", Escaped(&source))],
            i64::try_from(*packets).unwrap_or(i64::MAX),
        )?;
    }
    Ok(())
}

/// Metrics plugins define (`proxy_define_metric`), one family each, named
/// `tollgate_wasm_<name>` with characters Prometheus does not allow replaced by `_`.
fn encode_plugin_defined(
    encoder: &mut DescriptorEncoder,
    metrics: &[(String, MetricKind, MetricValue)],
) -> std::fmt::Result {
    for (name, _, value) in metrics {
        let mut family: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
            .collect();
        match value {
            MetricValue::Counter(count) => {
                // The encoder appends `_total` to counters itself.
                if let Some(stripped) = family.strip_suffix("_total") {
                    family = stripped.to_string();
                }
                let name = format!("tollgate_wasm_{family}");
                let mut e = encoder.encode_descriptor(&name, "Defined by a plugin.", None, MetricType::Counter)?;
                e.encode_counter::<NoLabelSet, _, u64>(count, None)?;
            }
            MetricValue::Gauge(level) => {
                let name = format!("tollgate_wasm_{family}");
                let mut e = encoder.encode_descriptor(&name, "Defined by a plugin.", None, MetricType::Gauge)?;
                e.encode_gauge(level)?;
            }
            MetricValue::Histogram { buckets, count, sum } => {
                let name = format!("tollgate_wasm_{family}");
                let mut e = encoder.encode_descriptor(&name, "Defined by a plugin.", None, MetricType::Histogram)?;
                // The plugin side counts cumulatively; the encoder wants each bucket alone.
                let mut previous = 0;
                let mut per_bucket: Vec<(f64, u64)> = HISTOGRAM_BUCKETS
                    .iter()
                    .zip(buckets)
                    .map(|(&bound, &cumulative)| {
                        let alone = cumulative.saturating_sub(previous);
                        previous = cumulative;
                        (bound, alone)
                    })
                    .collect();
                per_bucket.push((f64::MAX, count.saturating_sub(previous)));
                e.encode_histogram::<NoLabelSet>(*sum as f64, *count, &per_bucket, None)?;
            }
        }
    }
    Ok(())
}

fn encode_plugins(
    encoder: &mut DescriptorEncoder,
    plugins: &BTreeMap<String, Arc<PluginStats>>,
    gauges: &[PluginGauges],
) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_plugin_calls",
        "Calls into a plugin's wasm (callbacks, ticks, context creation).",
        None,
        MetricType::Counter,
    )?;
    for (plugin, stats) in plugins {
        counter(&mut e, &[("plugin", Escaped(plugin))], sum(&stats.shards, |s| &s.calls))?;
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_plugin_call_seconds",
        "Time spent inside a plugin's wasm.",
        None,
        MetricType::Counter,
    )?;
    for (plugin, stats) in plugins {
        let seconds = sum(&stats.shards, |s| &s.call_ns) as f64 / 1e9;
        e.encode_family(&[("plugin", Escaped(plugin))])?
            .encode_counter::<NoLabelSet, _, u64>(&seconds, None)?;
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_plugin_faults",
        "Plugin calls that trapped, ran out of memory or were stopped by the watchdog.",
        None,
        MetricType::Counter,
    )?;
    for (plugin, stats) in plugins {
        for (index, (_, kind)) in FAULT_KINDS.iter().enumerate() {
            let value = sum(&stats.shards, |s| &s.faults[index]);
            counter(&mut e, &[("plugin", Escaped(plugin)), ("kind", Escaped(kind))], value)?;
        }
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_plugin_restarts",
        "Plugin instances recreated after a fault.",
        None,
        MetricType::Counter,
    )?;
    for (plugin, stats) in plugins {
        counter(
            &mut e,
            &[("plugin", Escaped(plugin))],
            stats.restarts.load(Ordering::Relaxed),
        )?;
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_plugin_instances",
        "Ready instances of each plugin in the running config.",
        None,
        MetricType::Gauge,
    )?;
    for g in gauges {
        let labels = [("plugin", Escaped(&g.plugin)), ("mode", Escaped(g.mode))];
        gauge(&mut e, &labels, i64::try_from(g.instances).unwrap_or(i64::MAX))?;
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_plugin_memory_bytes",
        "Linear memory of a plugin's ready instances.",
        None,
        MetricType::Gauge,
    )?;
    for g in gauges {
        gauge(
            &mut e,
            &[("plugin", Escaped(&g.plugin))],
            i64::try_from(g.memory_bytes).unwrap_or(i64::MAX),
        )?;
    }
    Ok(())
}

fn encode_tls(encoder: &mut DescriptorEncoder, listeners: &BTreeMap<String, Arc<TlsStats>>) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_tls_handshakes",
        "TLS handshakes, by listener, protocol version and result.",
        None,
        MetricType::Counter,
    )?;
    for (listener, stats) in listeners {
        for (v, version) in TLS_VERSIONS.iter().enumerate() {
            for (r, result) in TLS_RESULTS.iter().enumerate() {
                let value = sum(&stats.shards, |s| &s.handshakes[v * TLS_RESULTS.len() + r]);
                // Successes per real version always appear; the rest once seen.
                if value > 0 || (*result == "ok" && *version != "none") {
                    let labels = [
                        ("listener", Escaped(listener)),
                        ("version", Escaped(version)),
                        ("result", Escaped(result)),
                    ];
                    counter(&mut e, &labels, value)?;
                }
            }
        }
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_tls_handshake_seconds",
        "Time from accepting a TLS connection to the end of its handshake.",
        None,
        MetricType::Histogram,
    )?;
    for (listener, stats) in listeners {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .enumerate()
            .map(|(index, bound)| (bound, sum(&stats.shards, |s| &s.buckets[index])))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let seconds = sum(&stats.shards, |s| &s.latency_sum_ns) as f64 / 1e9;
        e.encode_family(&[("listener", Escaped(listener))])?
            .encode_histogram::<NoLabelSet>(seconds, count, &buckets, None)?;
    }
    Ok(())
}

fn encode_certificates(encoder: &mut DescriptorEncoder, certificates: &[CertificateExpiry]) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_certificate_expiry_seconds",
        "Seconds until the certificate's not_after (negative once expired), by certificate and host using it.",
        None,
        MetricType::Gauge,
    )?;
    for expiry in certificates {
        let labels = [
            ("certificate", Escaped(&expiry.certificate)),
            ("host", Escaped(&expiry.host)),
        ];
        e.encode_family(&labels)?.encode_gauge(&expiry.seconds)?;
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_certificates_expiring",
        "1 when the host's certificate expires within 14 days or has expired.",
        None,
        MetricType::Gauge,
    )?;
    for expiry in certificates.iter().filter(|expiry| !expiry.host.is_empty()) {
        let expiring = expiry.seconds < EXPIRING_WITHIN.as_secs_f64();
        gauge(&mut e, &[("host", Escaped(&expiry.host))], i64::from(expiring))?;
    }
    Ok(())
}

fn encode_routes(
    encoder: &mut DescriptorEncoder,
    routes: &BTreeMap<(String, String), Arc<RouteStats>>,
) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_requests",
        "Requests answered, by virtual host, route and status class.",
        None,
        MetricType::Counter,
    )?;
    for ((host, route), stats) in routes {
        for (index, class) in STATUS_CLASSES.iter().enumerate() {
            let value = sum(&stats.shards, |s| &s.classes[index]);
            // "other" appears only when something produced such a status.
            if index < 5 || value > 0 {
                counter(
                    &mut e,
                    &[
                        ("host", Escaped(host)),
                        ("route", Escaped(route)),
                        ("class", Escaped(class)),
                    ],
                    value,
                )?;
            }
        }
    }
    type Field = fn(&RouteShard) -> &AtomicU64;
    let byte_counters: [(&str, &str, Field); 2] = [
        (
            "tollgate_request_bytes",
            "Request body bytes received, by route.",
            |s| &s.request_bytes,
        ),
        ("tollgate_response_bytes", "Response bytes sent, by route.", |s| {
            &s.response_bytes
        }),
    ];
    for (name, help, field) in byte_counters {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for ((host, route), stats) in routes {
            counter(
                &mut e,
                &[("host", Escaped(host)), ("route", Escaped(route))],
                sum(&stats.shards, field),
            )?;
        }
    }
    Ok(())
}

fn encode_clusters(
    encoder: &mut DescriptorEncoder,
    clusters: &BTreeMap<String, Arc<ClusterStats>>,
) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_upstream_response_seconds",
        "Time from sending a request upstream to receiving its response head.",
        None,
        MetricType::Histogram,
    )?;
    for (name, stats) in clusters {
        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
            .iter()
            .copied()
            .chain([f64::MAX])
            .enumerate()
            .map(|(index, bound)| (bound, sum(&stats.shards, |s| &s.buckets[index])))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let seconds = sum(&stats.shards, |s| &s.latency_sum_ns) as f64 / 1e9;
        e.encode_family(&[("cluster", Escaped(name))])?
            .encode_histogram::<NoLabelSet>(seconds, count, &buckets, None)?;
    }
    type Field = fn(&ClusterShard) -> &AtomicU64;
    let cluster_counters: [(&str, &str, Field); 7] = [
        (
            "tollgate_upstream_connect_failures",
            "Failed upstream connection attempts.",
            |s| &s.connect_failures,
        ),
        (
            "tollgate_upstream_timeouts",
            "Upstream exchanges that timed out.",
            |s| &s.timeouts,
        ),
        (
            "tollgate_upstream_retries",
            "Requests retried on another attempt.",
            |s| &s.retries,
        ),
        (
            "tollgate_upstream_ejections",
            "Endpoints ejected after consecutive failures.",
            |s| &s.ejections,
        ),
        (
            "tollgate_upstream_bad_responses",
            "Upstream responses that were malformed.",
            |s| &s.bad_responses,
        ),
        (
            "tollgate_upstream_connections_opened",
            "Upstream connections opened.",
            |s| &s.new_connections,
        ),
        (
            "tollgate_upstream_connections_reused",
            "Requests sent on a pooled connection.",
            |s| &s.reused_connections,
        ),
    ];
    for (name, help, field) in cluster_counters {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (cluster, stats) in clusters {
            counter(&mut e, &[("cluster", Escaped(cluster))], sum(&stats.shards, field))?;
        }
    }
    Ok(())
}

fn encode_endpoints(encoder: &mut DescriptorEncoder, clusters: &[Arc<Cluster>]) -> std::fmt::Result {
    type State = fn(&crate::upstream::Endpoint) -> bool;
    let states: [(&str, &str, State); 3] = [
        (
            "tollgate_endpoint_healthy",
            "1 when the endpoint takes traffic (health check passing, not ejected).",
            |e| e.is_available(),
        ),
        (
            "tollgate_endpoint_health_check_passing",
            "1 when active health checks pass.",
            |e| e.is_active_healthy(),
        ),
        (
            "tollgate_endpoint_ejected",
            "1 while the endpoint is passively ejected.",
            |e| e.is_ejected(),
        ),
    ];
    for (name, help, state) in states {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for cluster in clusters {
            for endpoint in &cluster.endpoints().endpoints {
                let address = endpoint.addr.to_string();
                let labels = [("cluster", Escaped(&cluster.name)), ("endpoint", Escaped(&address))];
                gauge(&mut e, &labels, i64::from(state(endpoint)))?;
            }
        }
    }
    Ok(())
}

fn encode_workers(encoder: &mut DescriptorEncoder, workers: &[WorkerStats]) -> std::fmt::Result {
    let mut e = encoder.encode_descriptor(
        "tollgate_active_connections",
        "Open downstream connections.",
        None,
        MetricType::Gauge,
    )?;
    for (index, worker) in workers.iter().enumerate() {
        gauge(
            &mut e,
            &[("worker", index)],
            i64::try_from(worker.active_connections()).unwrap_or(i64::MAX),
        )?;
    }
    type Field = fn(&WorkerStats) -> &AtomicU64;
    let worker_counters: [(&str, &str, Field); 2] = [
        ("tollgate_connections", "Downstream connections accepted.", |w| {
            &w.connections_opened
        }),
        ("tollgate_worker_requests", "Requests handled.", |w| &w.requests),
    ];
    for (name, help, field) in worker_counters {
        let mut e = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (index, worker) in workers.iter().enumerate() {
            counter(&mut e, &[("worker", index)], field(worker).load(Ordering::Relaxed))?;
        }
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_upstream_pool_idle",
        "Idle upstream connections in the worker's keep-alive pools.",
        None,
        MetricType::Gauge,
    )?;
    for (index, worker) in workers.iter().enumerate() {
        gauge(&mut e, &[("worker", index)], worker.pool_idle.load(Ordering::Relaxed))?;
    }
    let mut e = encoder.encode_descriptor(
        "tollgate_downstream_errors",
        "Requests rejected before routing, by status.",
        None,
        MetricType::Counter,
    )?;
    for (index, worker) in workers.iter().enumerate() {
        for (offset, slot) in worker.errors.iter().enumerate() {
            let value = slot.load(Ordering::Relaxed);
            if value > 0 {
                let status = usize::from(ERROR_STATUS_BASE) + offset;
                counter(&mut e, &[("worker", index), ("status", status)], value)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{ClusterSettings, EndpointSpec};

    fn settings() -> ClusterSettings {
        ClusterSettings::for_tests()
    }

    fn lines(text: &str) -> Vec<&str> {
        text.lines().collect()
    }

    #[test]
    fn encodes_sums_over_worker_shards() {
        let stats = Stats::new(4);
        let route = stats.route_stats("api.example.com", "users");
        assert!(
            Arc::ptr_eq(&route, &stats.route_stats("api.example.com", "users")),
            "same names, same stats"
        );
        route.record(0, 200, 10, 100);
        route.record(3, 204, 5, 50);
        route.record(1, 503, 0, 20);
        route.record(2, 42, 0, 0);

        let cluster = stats.cluster_stats("users-backend");
        cluster.record_upstream(0, Duration::from_micros(300));
        cluster.record_upstream(1, Duration::from_millis(3));
        cluster.record_upstream(2, Duration::from_secs(20));
        cluster.connect_failure(1);
        cluster.connect_failure(2);
        cluster.retry(3);
        cluster.new_connection(0);
        cluster.reused_connection(0);
        cluster.reused_connection(1);

        let worker = stats.worker_stats(2);
        worker.connection_opened();
        worker.connection_opened();
        worker.connection_opened();
        worker.connection_closed();
        worker.request();
        worker.pool_idle_add(5);
        worker.pool_idle_add(-2);
        worker.http_error(431);
        worker.http_error(431);
        worker.http_error(200);

        let spec = EndpointSpec {
            address: "127.0.0.1:9".into(),
            weight: 1,
        };
        let upstream = Arc::new(Cluster::build("users-backend", settings(), vec![spec]).unwrap());
        upstream.endpoints().endpoints[0].set_active_healthy(false);
        let clusters = [upstream];

        let text = stats.encode(7, clusters.into_iter(), Vec::new(), Vec::new(), EbpfMetrics::default());
        let lines = lines(&text);
        let info = format!("tollgate_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        let expected = [
            info.as_str(),
            "tollgate_config_generation 7",
            "# TYPE tollgate_requests counter",
            "tollgate_requests_total{host=\"api.example.com\",route=\"users\",class=\"2xx\"} 2",
            "tollgate_requests_total{host=\"api.example.com\",route=\"users\",class=\"4xx\"} 0",
            "tollgate_requests_total{host=\"api.example.com\",route=\"users\",class=\"5xx\"} 1",
            "tollgate_requests_total{host=\"api.example.com\",route=\"users\",class=\"other\"} 1",
            "tollgate_request_bytes_total{host=\"api.example.com\",route=\"users\"} 15",
            "tollgate_response_bytes_total{host=\"api.example.com\",route=\"users\"} 170",
            "# TYPE tollgate_upstream_response_seconds histogram",
            "tollgate_upstream_response_seconds_bucket{le=\"0.0005\",cluster=\"users-backend\"} 1",
            "tollgate_upstream_response_seconds_bucket{le=\"0.001\",cluster=\"users-backend\"} 1",
            "tollgate_upstream_response_seconds_bucket{le=\"0.005\",cluster=\"users-backend\"} 2",
            "tollgate_upstream_response_seconds_bucket{le=\"10.0\",cluster=\"users-backend\"} 2",
            "tollgate_upstream_response_seconds_bucket{le=\"+Inf\",cluster=\"users-backend\"} 3",
            "tollgate_upstream_response_seconds_count{cluster=\"users-backend\"} 3",
            "tollgate_upstream_response_seconds_sum{cluster=\"users-backend\"} 20.0033",
            "tollgate_upstream_connect_failures_total{cluster=\"users-backend\"} 2",
            "tollgate_upstream_retries_total{cluster=\"users-backend\"} 1",
            "tollgate_upstream_timeouts_total{cluster=\"users-backend\"} 0",
            "tollgate_upstream_connections_opened_total{cluster=\"users-backend\"} 1",
            "tollgate_upstream_connections_reused_total{cluster=\"users-backend\"} 2",
            "tollgate_endpoint_healthy{cluster=\"users-backend\",endpoint=\"127.0.0.1:9\"} 0",
            "tollgate_endpoint_health_check_passing{cluster=\"users-backend\",endpoint=\"127.0.0.1:9\"} 0",
            "tollgate_endpoint_ejected{cluster=\"users-backend\",endpoint=\"127.0.0.1:9\"} 0",
            "tollgate_active_connections{worker=\"2\"} 2",
            "tollgate_active_connections{worker=\"3\"} 0",
            "tollgate_connections_total{worker=\"2\"} 3",
            "tollgate_worker_requests_total{worker=\"2\"} 1",
            "tollgate_upstream_pool_idle{worker=\"2\"} 3",
            "tollgate_downstream_errors_total{worker=\"2\",status=\"431\"} 2",
        ];
        for line in expected {
            assert!(lines.contains(&line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("status=\"200\""),
            "a 200 is not a downstream error:\n{text}"
        );
        assert!(
            !lines.contains(&"tollgate_active_connections{worker=\"4\"} 0"),
            "only 4 shards:\n{text}"
        );
    }

    #[test]
    fn encodes_tls_handshakes_per_listener() {
        let stats = Stats::new(2);
        let tls = stats.tls_stats("https");
        assert!(Arc::ptr_eq(&tls, &stats.tls_stats("https")), "same name, same stats");
        tls.record_handshake(0, "TLSv1.3", "ok", Duration::from_millis(2));
        tls.record_handshake(1, "TLSv1.3", "ok", Duration::from_millis(3));
        tls.record_handshake(1, "TLSv1.2", "ok", Duration::from_micros(400));
        tls.record_handshake(0, "none", "rejected", Duration::from_micros(100));
        tls.record_handshake(1, "none", "timeout", Duration::from_secs(10));
        let text = stats.encode(1, std::iter::empty(), Vec::new(), Vec::new(), EbpfMetrics::default());
        let lines = lines(&text);
        let expected = [
            "tollgate_tls_handshakes_total{listener=\"https\",version=\"TLSv1.3\",result=\"ok\"} 2",
            "tollgate_tls_handshakes_total{listener=\"https\",version=\"TLSv1.2\",result=\"ok\"} 1",
            "tollgate_tls_handshakes_total{listener=\"https\",version=\"none\",result=\"rejected\"} 1",
            "tollgate_tls_handshakes_total{listener=\"https\",version=\"none\",result=\"timeout\"} 1",
            "tollgate_tls_handshake_seconds_bucket{le=\"0.0005\",listener=\"https\"} 2",
            "tollgate_tls_handshake_seconds_bucket{le=\"0.0025\",listener=\"https\"} 3",
            "tollgate_tls_handshake_seconds_bucket{le=\"10.0\",listener=\"https\"} 5",
            "tollgate_tls_handshake_seconds_count{listener=\"https\"} 5",
        ];
        for line in expected {
            assert!(lines.contains(&line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("version=\"TLSv1.2\",result=\"failed\""),
            "zero failures stay hidden"
        );
    }

    #[test]
    fn encodes_ebpf_counters_and_top_sources() {
        use tollgate_ebpf_common::{Count, GuardCounter, SteerCounter};
        let stats = Stats::new(1);
        let idle = stats.encode(1, std::iter::empty(), Vec::new(), Vec::new(), EbpfMetrics::default());
        assert!(
            lines(&idle).contains(&"tollgate_ebpf_active{feature=\"xdp_guard\"} 0"),
            "{idle}"
        );
        assert!(
            !idle.contains("tollgate_xdp_packets_total"),
            "no maps, no counters:\n{idle}"
        );
        let ebpf = EbpfMetrics {
            guard_active: true,
            steering_active: false,
            guard: Some(
                GuardCounter::ALL
                    .iter()
                    .map(|&c| {
                        let n = c as u64;
                        (
                            c,
                            Count {
                                packets: n * 10,
                                bytes: n * 1000,
                            },
                        )
                    })
                    .collect(),
            ),
            steer: Some(SteerCounter::ALL.iter().map(|&c| (c, c as u64 + 1)).collect()),
            top_sources: vec![("10.9.0.2".parse().unwrap(), 700), ("2001:db8::7".parse().unwrap(), 3)],
        };
        let text = stats.encode(1, std::iter::empty(), Vec::new(), Vec::new(), ebpf);
        let expected = [
            "tollgate_ebpf_active{feature=\"xdp_guard\"} 1",
            "tollgate_ebpf_active{feature=\"steering\"} 0",
            "tollgate_xdp_packets_total{reason=\"passed\",action=\"pass\"} 0",
            "tollgate_xdp_packets_total{reason=\"blocklist\",action=\"drop\"} 40",
            "tollgate_xdp_bytes_total{reason=\"malformed\",action=\"drop\"} 7000",
            "tollgate_xdp_bytes_total{reason=\"redirected\",action=\"pass\"} 3000",
            "tollgate_steer_connections_total{result=\"steered\"} 1",
            "tollgate_steer_connections_total{result=\"select_failed\"} 4",
            "tollgate_xdp_top_source_packets{source=\"10.9.0.2\"} 700",
            "tollgate_xdp_top_source_packets{source=\"2001:db8::7\"} 3",
        ];
        let lines = lines(&text);
        for line in expected {
            assert!(lines.contains(&line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn escapes_label_values() {
        let stats = Stats::new(1);
        stats.route_stats("quote\"host", "back\\slash").record(0, 301, 0, 0);
        let text = stats.encode(0, std::iter::empty(), Vec::new(), Vec::new(), EbpfMetrics::default());
        let line = "tollgate_requests_total{host=\"quote\\\"host\",route=\"back\\\\slash\",class=\"3xx\"} 1";
        assert!(lines(&text).contains(&line), "missing {line:?} in:\n{text}");
    }
}
