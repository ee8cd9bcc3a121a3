//! The running configuration: an immutable snapshot of typed settings, live
//! clusters, the compiled router, certificates, the SNI table and the
//! plugins with their per-route lists, built from a validated config. `build` without a previous snapshot checks and
//! compiles everything; every later snapshot comes from `apply` (apply.rs),
//! which reuses each unchanged compiled part by content hash. Certificates
//! are parsed here, on the control thread.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::ebpf::EbpfSettings;
use super::error::{ConfigErrors, Errors};
use super::plugins::PluginSet;
use super::proto;
use super::resources::{Clusters, References, SourceConfig};
use super::settings::{AccessLogTarget, ClusterPlan, HttpSettings, ListenerSettings, RuntimeSettings};
use super::tls::{HostTlsPlan, ListenerTlsPlan};
use super::validate::{check, ActionPlan, HostPlan, ProxyPlan};
use crate::plugin::LoadedPlugins;
use crate::route::{ProxyRoute, Route, RouteAction, RouteTable, Router, VirtualHost};
use crate::tls::{ListenerTls, LoadedCertificate, SniHost, SniTable};
use crate::upstream::Cluster;

/// Generation of the last snapshot built; 0 before the first.
static GENERATION: AtomicU64 = AtomicU64::new(0);

pub struct Snapshot {
    /// Increases by one per successful build in this process.
    pub generation: u64,
    pub runtime: RuntimeSettings,
    pub admin_address: SocketAddr,
    pub access_log: AccessLogTarget,
    pub http: HttpSettings,
    /// The guard and steering settings (`crate::ebpf` applies them).
    pub ebpf: EbpfSettings,
    pub listeners: Vec<ListenerSettings>,
    pub router: Router,
    pub clusters: Clusters,
    /// Every configured certificate, parsed, by name.
    pub certificates: imbl::HashMap<String, Arc<LoadedCertificate>>,
    /// Compiled TLS of each TLS listener, by listener name (plain listeners
    /// have no entry).
    pub listener_tls: HashMap<String, Arc<ListenerTls>>,
    /// Enabled plugins in run order, the VM budget, and the plugins of each
    /// route (`plugin_config.route(&route.host_name, &route.name)`), as
    /// configured: loading modules and running instances is the plugin
    /// pool's.
    pub plugin_config: PluginSet,
    /// The enabled plugins loaded and running, index-aligned with
    /// `plugin_config.plugins`.
    pub plugins: LoadedPlugins,
    /// The config this snapshot was built from, by resource.
    pub source: SourceConfig,
    /// Every host with a certificate; shared by the listeners' resolvers.
    pub(super) sni: Arc<SniTable>,
    pub(super) references: References,
}

// Workers read snapshots from many threads at once.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Snapshot>();
};

pub(super) fn next_generation() -> u64 {
    GENERATION.fetch_add(1, Ordering::Relaxed) + 1
}

impl Snapshot {
    /// Validates `config` and builds it. With a `previous` snapshot (a file
    /// reload) the file is compared with it resource by resource and only
    /// the difference goes through `apply`, so unchanged hosts, clusters
    /// (their pools and health) and certificates are the previous ones.
    /// Every error is reported at once, with the file's field paths; on
    /// error nothing is built. Resolving endpoint names is the only step
    /// after validation that can fail, reported on `clusters[i].endpoints`.
    pub fn build(config: proto::Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
        match previous {
            Some(previous) => previous.reload(&config),
            None => Snapshot::from_config(config),
        }
    }

    fn from_config(config: proto::Config) -> Result<Snapshot, ConfigErrors> {
        let checked = check(&config)?;
        let clusters = build_clusters(checked.clusters)?;
        let mut host_tls = Vec::with_capacity(checked.hosts.len());
        let hosts: Vec<Arc<VirtualHost>> = checked
            .hosts
            .into_iter()
            .map(|mut plan| {
                host_tls.push(plan.tls.take());
                Arc::new(build_host(plan, &clusters))
            })
            .collect();
        let sni = Arc::new(SniTable::new(hosts.iter().zip(&host_tls).filter_map(|(host, tls)| {
            Some((sni_host(host, tls.as_ref()?), host.domains.as_slice()))
        })));
        let certificates: imbl::HashMap<String, Arc<LoadedCertificate>> = checked.certificates.into_iter().collect();
        let listener_tls = build_listener_tls(&checked.listener_tls, &certificates, &sni)?;
        let source = SourceConfig::new(config);
        let references = References::new(&source.hosts);
        let plugin_config = PluginSet::new(checked.plugin_budget, checked.plugins, &source.hosts);
        let plugins = LoadedPlugins::build(&plugin_config, &clusters, None)?;
        Ok(Snapshot {
            generation: next_generation(),
            runtime: checked.runtime,
            admin_address: checked.admin_address,
            access_log: checked.access_log,
            http: checked.http,
            ebpf: checked.ebpf,
            listeners: checked.listeners,
            router: Router::new(hosts),
            clusters: Clusters::new(clusters),
            certificates,
            listener_tls,
            plugin_config,
            plugins,
            source,
            sni,
            references,
        })
    }
}

/// Builds every cluster of a new config.
fn build_clusters(plans: Vec<ClusterPlan>) -> Result<imbl::HashMap<String, Arc<Cluster>>, ConfigErrors> {
    let mut errors = Errors::default();
    let mut clusters = imbl::HashMap::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let name = plan.name.clone();
        match build_cluster(plan, None) {
            Ok(cluster) => {
                clusters.insert(name, cluster);
            }
            Err(message) => errors.add(format!("clusters[{index}].endpoints"), message),
        }
    }
    errors.into_result(clusters)
}

/// A changed cluster takes over the endpoint health of the one it replaces.
pub(super) fn build_cluster(plan: ClusterPlan, old: Option<&Arc<Cluster>>) -> Result<Arc<Cluster>, String> {
    let cluster = Cluster::build(&plan.name, plan.settings, plan.specs)?;
    if let Some(old) = old {
        cluster.inherit_health(old);
    }
    Ok(Arc::new(cluster))
}

pub(super) fn sni_host(host: &VirtualHost, tls: &HostTlsPlan) -> SniHost {
    SniHost {
        host: Arc::clone(&host.name),
        key: Arc::clone(&tls.key),
        client_auth: tls.client_auth.clone(),
    }
}

/// Compiles each TLS listener over the snapshot's SNI table: O(listeners +
/// hosts with mTLS), whatever the number of hosts.
pub(super) fn build_listener_tls(
    plans: &[ListenerTlsPlan],
    certificates: &imbl::HashMap<String, Arc<LoadedCertificate>>,
    table: &Arc<SniTable>,
) -> Result<HashMap<String, Arc<ListenerTls>>, ConfigErrors> {
    let mut errors = Errors::default();
    let mut built = HashMap::with_capacity(plans.len());
    for plan in plans {
        let default = plan
            .settings
            .default_certificate
            .as_ref()
            .and_then(|name| certificates.get(name))
            .map(|certificate| Arc::clone(&certificate.key));
        match ListenerTls::build(&plan.name, &plan.settings, Arc::clone(table), default) {
            Ok(tls) => {
                built.insert(plan.name.clone(), Arc::new(tls));
            }
            Err(message) => errors.add(format!("listeners[{}].tls", plan.index), message),
        }
    }
    errors.into_result(built)
}

pub(super) fn build_host(plan: HostPlan, clusters: &imbl::HashMap<String, Arc<Cluster>>) -> VirtualHost {
    let routes = plan
        .routes
        .into_iter()
        .map(|route| {
            let action = match route.action {
                ActionPlan::Proxy(proxy) => RouteAction::Proxy(proxy_route(proxy, &route.matcher, clusters)),
                ActionPlan::Redirect(redirect) => RouteAction::Redirect(redirect),
                ActionPlan::Direct(direct) => RouteAction::Direct(direct),
            };
            Route {
                stats: crate::metrics::route_stats(&plan.name, &route.name),
                name: route.name,
                host_name: Arc::clone(&plan.name),
                matcher: route.matcher,
                max_body_bytes: route.max_body_bytes,
                action,
                hsts: plan.hsts.clone(),
            }
        })
        .collect();
    VirtualHost {
        name: plan.name,
        domains: plan.domains,
        routes: RouteTable::new(routes),
    }
}

fn proxy_route(
    plan: ProxyPlan,
    matcher: &crate::route::RouteMatch,
    clusters: &imbl::HashMap<String, Arc<Cluster>>,
) -> ProxyRoute {
    // Validation checked the name; the map holds every configured cluster.
    let cluster = Arc::clone(&clusters[&plan.cluster]);
    let endpoints = cluster.endpoints().endpoints.len() as u32;
    let matched_prefix = match (&matcher.path, &plan.prefix_rewrite) {
        (crate::route::PathMatch::Prefix(prefix), Some(_)) => Some(prefix.clone()),
        _ => None,
    };
    ProxyRoute {
        read_timeout: plan.read_timeout.unwrap_or(cluster.settings.read_timeout),
        send_timeout: plan.send_timeout.unwrap_or(cluster.settings.send_timeout),
        max_retries: plan.max_retries.min(endpoints.saturating_sub(1)),
        cluster,
        prefix_rewrite: plan.prefix_rewrite,
        host_rewrite: plan.host_rewrite,
        retry_on_statuses: plan.retry_on_statuses,
        matched_prefix,
    }
}
