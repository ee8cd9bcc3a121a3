//! The running configuration: an immutable snapshot of typed settings, live
//! clusters and the compiled router, built from a validated config. A new
//! snapshot reuses every unchanged cluster (keeping its pools and health) and
//! every unchanged virtual host of the previous one, so a change costs what
//! it touches. Certificates are parsed here too (through validation), on
//! the control thread; an unchanged one is the previous snapshot's.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::error::{ConfigErrors, Errors};
use super::proto;
use super::settings::{AccessLogTarget, ClusterPlan, HttpSettings, ListenerSettings, RuntimeSettings};
use super::tls::{HostTlsPlan, ListenerTlsPlan};
use super::validate::{check, ActionPlan, HostPlan, ProxyPlan};
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
    pub listeners: Vec<ListenerSettings>,
    pub router: Router,
    pub clusters: HashMap<String, Arc<Cluster>>,
    /// Every configured certificate, parsed, by name.
    pub certificates: HashMap<String, Arc<LoadedCertificate>>,
    /// Compiled TLS of each TLS listener, by listener name (plain listeners
    /// have no entry).
    pub listener_tls: HashMap<String, Arc<ListenerTls>>,
    /// The config this snapshot was built from.
    pub source: proto::Config,
}

// Workers read snapshots from many threads at once.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Snapshot>();
};

impl Snapshot {
    /// Validates `config` and builds it, reusing what is unchanged from
    /// `previous`. Every error is reported at once; on error nothing is built.
    /// Resolving endpoint names is the only step after validation that can
    /// fail, and it is reported on `clusters[i].endpoints`.
    pub fn build(config: proto::Config, previous: Option<&Snapshot>) -> Result<Snapshot, ConfigErrors> {
        let mut checked = check(&config, previous)?;
        let clusters = build_clusters(checked.clusters, &config.clusters, previous)?;
        let host_tls: Vec<Option<HostTlsPlan>> = checked.hosts.iter_mut().map(|plan| plan.tls.take()).collect();
        let listeners_changed = previous.is_none_or(|previous| previous.listeners != checked.listeners);
        let previous_hosts = previous.map(Snapshot::hosts_by_name);
        let hosts = checked
            .hosts
            .into_iter()
            .zip(&config.hosts)
            .map(|(plan, source)| {
                let reusable = previous_hosts.as_ref().and_then(|hosts| hosts.get(&*plan.name)).filter(
                    |(previous_source, compiled)| {
                        *previous_source == source
                            && !(plan.uses_status_page && listeners_changed)
                            && same_clusters(compiled, &clusters)
                    },
                );
                match reusable {
                    Some((_, compiled)) => Arc::clone(compiled),
                    None => Arc::new(build_host(plan, &clusters)),
                }
            })
            .collect::<Vec<_>>();
        let listener_tls = build_listener_tls(checked.listener_tls, &checked.certificates, &hosts, host_tls)?;
        Ok(Snapshot {
            generation: GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
            runtime: checked.runtime,
            admin_address: checked.admin_address,
            access_log: checked.access_log,
            http: checked.http,
            listeners: checked.listeners,
            router: Router::new(hosts),
            clusters,
            certificates: checked.certificates,
            listener_tls,
            source: config,
        })
    }
}

impl Snapshot {
    /// Each compiled host by name, with the message it was compiled from
    /// (`source.hosts` and `router.hosts()` are in the same order).
    pub(crate) fn hosts_by_name(&self) -> HashMap<&str, (&proto::VirtualHost, &Arc<VirtualHost>)> {
        self.source
            .hosts
            .iter()
            .zip(self.router.hosts())
            .map(|(source, compiled)| (&*compiled.name, (source, compiled)))
            .collect()
    }
}

/// Builds the clusters; an unchanged one is the previous `Arc` itself, a
/// changed one takes over the previous one's endpoint health.
fn build_clusters(
    plans: Vec<ClusterPlan>,
    sources: &[proto::Cluster],
    previous: Option<&Snapshot>,
) -> Result<HashMap<String, Arc<Cluster>>, ConfigErrors> {
    let previous_sources: HashMap<&str, &proto::Cluster> = previous
        .map(|previous| previous.source.clusters.iter().map(|c| (c.name.as_str(), c)).collect())
        .unwrap_or_default();
    let mut errors = Errors::default();
    let mut clusters = HashMap::with_capacity(plans.len());
    for (index, (plan, source)) in plans.into_iter().zip(sources).enumerate() {
        let old = previous.and_then(|previous| previous.clusters.get(&plan.name));
        if let (Some(old), Some(old_source)) = (old, previous_sources.get(plan.name.as_str())) {
            if *old_source == source {
                clusters.insert(plan.name, Arc::clone(old));
                continue;
            }
        }
        match Cluster::build(&plan.name, plan.settings, plan.specs) {
            Ok(cluster) => {
                if let Some(old) = old {
                    cluster.inherit_health(old);
                }
                clusters.insert(plan.name, Arc::new(cluster));
            }
            Err(message) => errors.add(format!("clusters[{index}].endpoints"), message),
        }
    }
    errors.into_result(clusters)
}

/// Compiles each TLS listener over one SNI table of the hosts' certificates.
fn build_listener_tls(
    plans: Vec<ListenerTlsPlan>,
    certificates: &HashMap<String, Arc<LoadedCertificate>>,
    hosts: &[Arc<VirtualHost>],
    host_tls: Vec<Option<HostTlsPlan>>,
) -> Result<HashMap<String, Arc<ListenerTls>>, ConfigErrors> {
    if plans.is_empty() {
        return Ok(HashMap::new());
    }
    let table = Arc::new(SniTable::new(hosts.iter().zip(host_tls).filter_map(|(host, tls)| {
        let tls = tls?;
        let sni_host = SniHost {
            host: Arc::clone(&host.name),
            key: tls.key,
            client_auth: tls.client_auth,
        };
        Some((sni_host, host.domains.as_slice()))
    })));
    let mut errors = Errors::default();
    let mut built = HashMap::with_capacity(plans.len());
    for plan in plans {
        let default = plan
            .settings
            .default_certificate
            .as_ref()
            .and_then(|name| certificates.get(name))
            .map(|certificate| Arc::clone(&certificate.key));
        match ListenerTls::build(&plan.name, &plan.settings, Arc::clone(&table), default) {
            Ok(tls) => {
                built.insert(plan.name, Arc::new(tls));
            }
            Err(message) => errors.add(format!("listeners[{}].tls", plan.index), message),
        }
    }
    errors.into_result(built)
}

/// Whether every cluster a compiled host proxies to is still the same object.
fn same_clusters(host: &VirtualHost, clusters: &HashMap<String, Arc<Cluster>>) -> bool {
    host.routes.routes().iter().all(|route| match &route.action {
        RouteAction::Proxy(proxy) => clusters
            .get(&*proxy.cluster.name)
            .is_some_and(|current| Arc::ptr_eq(current, &proxy.cluster)),
        RouteAction::Redirect(_) | RouteAction::Direct(_) => true,
    })
}

fn build_host(plan: HostPlan, clusters: &HashMap<String, Arc<Cluster>>) -> VirtualHost {
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
    clusters: &HashMap<String, Arc<Cluster>>,
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
