//! Change sets: upserts and deletes of listeners, hosts, clusters,
//! certificates and plugins by name, applied to a snapshot to give the next one or every
//! error found. Only the changed resources are checked, plus the cross
//! references they touch (found through the snapshot's reverse references,
//! never by walking all hosts); every unchanged compiled part (host, route
//! table, cluster with its pools and health, parsed certificate, SNI entry)
//! is the previous snapshot's own `Arc`, found by name and content hash.
//! Plugins are few: a change to any is checked with all of them, reusing
//! each unchanged plugin's settings and module bytes (no file is read
//! again), and never rebuilds a host; the per-route plugin lists are
//! computed again for changed hosts, or for all when a plugin's rule or
//! place in the run order changed.
//! The file reload compares the new file with the running snapshot by
//! resource hash and applies the difference through the same path.

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::error::{ConfigErrors, Errors};
use super::plugins::{self, route_name, PluginContext};
use super::proto;
use super::resources::{content_hash, Clusters};
use super::settings;
use super::snapshot::{build_cluster, build_host, build_listener_tls, next_generation, sni_host, Snapshot};
use super::tls::{self, users_suffix};
use super::validate::{check, host_name, host_plan, status_page, HostContext};
use crate::plugin::LoadedPlugins;
use crate::route::Domain;
use crate::tls::LoadedCertificate;

/// The config's global sections, replaced together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    pub runtime: Option<proto::Runtime>,
    pub admin: Option<proto::Admin>,
    pub access_log: Option<proto::AccessLog>,
    pub http: Option<proto::HttpOptions>,
    pub ebpf: Option<proto::Ebpf>,
    /// The plugin budget (`vm_budget`, `vm_memory_budget`); its `plugins`
    /// list must be empty: plugins change through `upsert_plugins`.
    pub plugins: Option<proto::Plugins>,
}

/// Resources to upsert (insert or replace, by name) and to delete (by name).
/// Deletes happen first, so deleting and upserting one name replaces it.
/// Hosts are named by `name`, else by their first domain.
#[derive(Debug, Clone, Default)]
pub struct ChangeSet {
    pub settings: Option<Settings>,
    /// A new listener goes after the existing ones; a replaced one keeps its place.
    pub upsert_listeners: Vec<proto::Listener>,
    pub delete_listeners: Vec<String>,
    pub upsert_hosts: Vec<proto::VirtualHost>,
    pub delete_hosts: Vec<String>,
    pub upsert_clusters: Vec<proto::Cluster>,
    pub delete_clusters: Vec<String>,
    pub upsert_certificates: Vec<proto::Certificate>,
    pub delete_certificates: Vec<String>,
    /// A new plugin goes after the existing ones (list order breaks ties of
    /// `order`); a replaced one keeps its place.
    pub upsert_plugins: Vec<proto::Plugin>,
    pub delete_plugins: Vec<String>,
}

/// The budget fields of a plugins section, without its plugins; None when
/// both are unset.
fn plugin_budget(section: Option<&proto::Plugins>) -> Option<proto::Plugins> {
    section
        .map(|section| proto::Plugins {
            vm_budget: section.vm_budget,
            vm_memory_budget: section.vm_memory_budget.clone(),
            plugins: Vec::new(),
        })
        .filter(|budget| *budget != proto::Plugins::default())
}

/// `hosts["name"]`: where an error in a changed resource is reported.
fn path(kind: &str, name: &str) -> String {
    format!("{kind}[{name:?}]")
}

impl Snapshot {
    /// The snapshot with `changes` applied, or every error they cause (the
    /// running snapshot is untouched either way). Costs what the change
    /// touches: the changed resources, the hosts that use a changed cluster
    /// or certificate, and the listeners.
    pub fn apply(&self, changes: ChangeSet) -> Result<Snapshot, ConfigErrors> {
        let mut errors = Errors::default();
        let mut source = self.source.clone();

        // Settings and listeners are few: checked whole when touched.
        let settings_touched =
            changes.settings.is_some() || !changes.upsert_listeners.is_empty() || !changes.delete_listeners.is_empty();
        let plugins_touched =
            changes.settings.is_some() || !changes.upsert_plugins.is_empty() || !changes.delete_plugins.is_empty();
        if let Some(settings) = changes.settings {
            source.runtime = settings.runtime;
            source.admin = settings.admin;
            source.access_log = settings.access_log;
            source.http = settings.http;
            source.ebpf = settings.ebpf;
            let budget = settings.plugins.unwrap_or_default();
            if !budget.plugins.is_empty() {
                errors.add(
                    "settings.plugins.plugins",
                    "plugins change through upsert_plugins and delete_plugins",
                );
            }
            source.plugins.vm_budget = budget.vm_budget;
            source.plugins.vm_memory_budget = budget.vm_memory_budget;
        }
        for name in &changes.delete_plugins {
            match source.plugins.plugins.iter().position(|plugin| plugin.name == *name) {
                Some(index) => {
                    source.plugins.plugins.remove(index);
                }
                None => errors.add(path("plugins", name), "no such plugin to delete"),
            }
        }
        let mut seen = HashSet::new();
        for plugin in changes.upsert_plugins {
            if !seen.insert(plugin.name.clone()) {
                errors.add(
                    format!("{}.name", path("plugins", &plugin.name)),
                    "upserted twice in one change set",
                );
                continue;
            }
            match source.plugins.plugins.iter_mut().find(|old| old.name == plugin.name) {
                Some(old) => *old = plugin,
                None => source.plugins.plugins.push(plugin),
            }
        }
        for name in &changes.delete_listeners {
            match source.listeners.iter().position(|listener| listener.name == *name) {
                Some(index) => {
                    source.listeners.remove(index);
                }
                None => errors.add(path("listeners", name), "no such listener to delete"),
            }
        }
        for listener in changes.upsert_listeners {
            match source.listeners.iter_mut().find(|old| old.name == listener.name) {
                Some(old) => *old = listener,
                None => source.listeners.push(listener),
            }
        }
        let (runtime, admin_address, access_log, http, ebpf, listeners) = if settings_touched {
            let runtime = settings::runtime(&mut errors, source.runtime.as_ref());
            let admin_address = settings::admin_address(&mut errors, source.admin.as_ref());
            let access_log = settings::access_log(source.access_log.as_ref());
            let http = settings::http(&mut errors, source.http.as_ref());
            let ebpf = super::ebpf::ebpf(&mut errors, source.ebpf.as_ref());
            let listeners = settings::listeners(&mut errors, &source.listeners, admin_address);
            (runtime, admin_address, access_log, http, ebpf, listeners)
        } else {
            (
                self.runtime.clone(),
                self.admin_address,
                self.access_log.clone(),
                self.http.clone(),
                self.ebpf.clone(),
                self.listeners.clone(),
            )
        };

        // Certificates: an upsert equal by hash (and by its files on disk)
        // keeps the parsed certificate.
        let mut certificates = self.certificates.clone();
        let mut changed_certificates: Vec<Arc<str>> = Vec::new();
        let mut deleted_certificates: BTreeSet<Arc<str>> = BTreeSet::new();
        for name in &changes.delete_certificates {
            if source.certificates.remove(name).is_none() {
                errors.add(path("certificates", name), "no such certificate to delete");
                continue;
            }
            certificates.remove(name);
            deleted_certificates.insert(name.as_str().into());
        }
        let mut seen = HashSet::new();
        for certificate in changes.upsert_certificates {
            let at = path("certificates", &certificate.name);
            if !seen.insert(certificate.name.clone()) {
                errors.add(format!("{at}.name"), "upserted twice in one change set");
                continue;
            }
            let before = errors.len();
            tls::certificate_fields(&mut errors, &at, &certificate);
            if errors.len() > before {
                continue;
            }
            let name: Arc<str> = certificate.name.as_str().into();
            let hash = content_hash(&certificate);
            let unchanged = self
                .certificates
                .get(&*name)
                .filter(|old| self.source.certificates.hash(&name) == Some(hash) && old.files_unchanged(&certificate));
            match unchanged {
                Some(old) => {
                    certificates.insert(certificate.name.clone(), Arc::clone(old));
                }
                None => match LoadedCertificate::load(&certificate) {
                    Ok(loaded) => {
                        certificates.insert(certificate.name.clone(), Arc::new(loaded));
                        changed_certificates.push(Arc::clone(&name));
                    }
                    Err(error) => {
                        let users: Vec<&Arc<str>> = self.references.certificate_users(&name).collect();
                        errors.add(
                            format!("{at}.{}", error.field),
                            format!("{}{}", error.message, users_suffix(&users)),
                        );
                    }
                },
            }
            deleted_certificates.remove(&name);
            source.certificates.insert(name, hash, Arc::new(certificate));
        }

        // Clusters: an upsert equal by hash keeps the live cluster (pools,
        // health); a changed one inherits the old one's health.
        let mut clusters = self.clusters.map().clone();
        let mut changed_clusters: Vec<Arc<str>> = Vec::new();
        let mut deleted_clusters: BTreeSet<Arc<str>> = BTreeSet::new();
        for name in &changes.delete_clusters {
            if source.clusters.remove(name).is_none() {
                errors.add(path("clusters", name), "no such cluster to delete");
                continue;
            }
            clusters.remove(name);
            deleted_clusters.insert(name.as_str().into());
        }
        let mut seen = HashSet::new();
        for cluster in changes.upsert_clusters {
            let at = path("clusters", &cluster.name);
            if !seen.insert(cluster.name.clone()) {
                errors.add(format!("{at}.name"), "upserted twice in one change set");
                continue;
            }
            let mut own = Errors::default();
            let plan = settings::clusters(&mut own, std::slice::from_ref(&cluster)).pop();
            let failed = own.len() > 0;
            errors.absorb(own, "clusters[0]", &at);
            let Some(plan) = plan.filter(|_| !failed) else {
                continue;
            };
            let name: Arc<str> = cluster.name.as_str().into();
            let hash = content_hash(&cluster);
            let old = self.clusters.get(&name);
            match old.filter(|_| self.source.clusters.hash(&name) == Some(hash)) {
                Some(old) => {
                    clusters.insert(cluster.name.clone(), Arc::clone(old));
                }
                None => match build_cluster(plan, old) {
                    Ok(built) => {
                        clusters.insert(cluster.name.clone(), built);
                        changed_clusters.push(Arc::clone(&name));
                    }
                    Err(message) => errors.add(format!("{at}.endpoints"), message),
                },
            }
            deleted_clusters.remove(&name);
            source.clusters.insert(name, hash, Arc::new(cluster));
        }

        // Hosts: deleted and upserted ones update the reverse references.
        let mut references = self.references.clone();
        let mut touched: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut deleted_hosts: Vec<Arc<str>> = Vec::new();
        for name in &changes.delete_hosts {
            match source.hosts.remove(name) {
                Some(old) => {
                    references.remove(name, &old.message);
                    touched.insert(name.as_str().into());
                    deleted_hosts.push(name.as_str().into());
                }
                None => errors.add(path("hosts", name), "no such host to delete"),
            }
        }
        let mut upserted = Vec::with_capacity(changes.upsert_hosts.len());
        let mut seen = HashSet::new();
        for (index, host) in changes.upsert_hosts.into_iter().enumerate() {
            let name: Arc<str> = host_name(index, &host).into();
            if !seen.insert(Arc::clone(&name)) {
                errors.add(
                    format!("{}.name", path("hosts", &name)),
                    "upserted twice in one change set",
                );
                continue;
            }
            let hash = content_hash(&host);
            if source.hosts.hash(&name) == Some(hash) {
                continue;
            }
            match source.hosts.get(&name) {
                Some(old) => references.replace(&name, &old.message, &host),
                None => references.add(&name, &host),
            }
            let host = Arc::new(host);
            source.hosts.insert(Arc::clone(&name), hash, Arc::clone(&host));
            touched.insert(Arc::clone(&name));
            upserted.push((name, host));
        }

        // A resource deleted while an unchanged host still names it.
        for (kind, deleted) in [("clusters", &deleted_clusters), ("certificates", &deleted_certificates)] {
            for name in deleted {
                let users: Vec<&Arc<str>> = if kind == "clusters" {
                    references.cluster_users(name).collect()
                } else {
                    references.certificate_users(name).collect()
                };
                let users: Vec<&Arc<str>> = users.into_iter().filter(|user| !touched.contains(*user)).collect();
                if !users.is_empty() {
                    errors.add(path(kind, name), format!("cannot delete{}", users_suffix(&users)));
                }
            }
        }

        // Plugins: all checked again when one changed (against the hosts
        // as changed); else only the hosts that changed are checked against
        // what the plugins name.
        let checked_plugins = if plugins_touched {
            let has_host = |name: &str| source.hosts.contains(name);
            let has_route = |host: &str, route: &str| {
                source.hosts.get(host).is_some_and(|host| {
                    host.message
                        .routes
                        .iter()
                        .enumerate()
                        .any(|(index, candidate)| route_name(index, candidate) == route)
                })
            };
            let context = PluginContext {
                has_host: &has_host,
                has_route: &has_route,
                previous: Some(&self.plugin_config),
            };
            Some(plugins::check(
                &mut errors,
                &source.plugins,
                &|_, plugin| path("plugins", &plugin.name),
                &context,
            ))
        } else {
            for name in &deleted_hosts {
                for (plugin, named) in plugins::broken_references(&source.plugins, name, None) {
                    errors.add(
                        path("hosts", name),
                        format!("cannot delete: plugin \"{plugin}\" names {named}"),
                    );
                }
            }
            for (name, host) in &upserted {
                let routes: Vec<String> = host
                    .routes
                    .iter()
                    .enumerate()
                    .map(|(index, route)| route_name(index, route))
                    .collect();
                for (plugin, named) in plugins::broken_references(&source.plugins, name, Some(&routes)) {
                    errors.add(
                        format!("{}.routes", path("hosts", name)),
                        format!("plugin \"{plugin}\" names {named}, which the host no longer has"),
                    );
                }
            }
            None
        };

        // Unchanged hosts compiled again: those proxying to a changed
        // cluster, and the status page's when the listeners changed.
        let status_page_changed = listeners != self.listeners;
        let mut recompile: BTreeSet<Arc<str>> = BTreeSet::new();
        for cluster in &changed_clusters {
            recompile.extend(references.cluster_users(cluster).cloned());
        }
        if status_page_changed {
            recompile.extend(references.status_page_users().cloned());
        }
        recompile.retain(|name| !touched.contains(name));
        // Unchanged hosts whose certificate changed: only their SNI entry.
        let mut new_key: BTreeSet<Arc<str>> = BTreeSet::new();
        for certificate in &changed_certificates {
            new_key.extend(references.certificate_users(certificate).cloned());
        }
        new_key.retain(|name| !touched.contains(name) && !recompile.contains(name));

        // Check the hosts to compile. A domain is free when no host holds
        // it or its holder is itself changed or deleted (so hosts may trade
        // domains within one change set); two claims on it conflict.
        let mut claimed: HashMap<Domain, Arc<str>> = HashMap::new();
        let has_cluster = |name: &str| clusters.contains_key(name);
        let has_certificate = |name: &str| source.certificates.contains(name);
        let certificate = |name: &str| certificates.get(name).cloned();
        let context = HostContext {
            has_cluster: &has_cluster,
            status_page: status_page(&listeners),
            has_certificate: &has_certificate,
            certificate: &certificate,
        };
        let to_compile = upserted.iter().map(|(name, host)| (name, &**host)).chain(
            recompile
                .iter()
                .filter_map(|name| Some((name, &*source.hosts.get(name)?.message))),
        );
        let mut plans = Vec::new();
        for (name, host) in to_compile {
            let mut claim = |domain: &Domain, _: usize| {
                if let Some(owner) = self
                    .router
                    .owner(domain)
                    .filter(|owner| !touched.contains(&owner.name) && !recompile.contains(&owner.name))
                {
                    return Err(format!(
                        "domain \"{domain}\" is already used by host \"{}\"",
                        owner.name
                    ));
                }
                match claimed.entry(domain.clone()) {
                    Entry::Occupied(owner) => Err(format!(
                        "domain \"{domain}\" is already used by host \"{}\"",
                        owner.get()
                    )),
                    Entry::Vacant(slot) => {
                        slot.insert(Arc::clone(name));
                        Ok(())
                    }
                }
            };
            plans.push(host_plan(
                &mut errors,
                &path("hosts", name),
                name.to_string(),
                host,
                &context,
                &mut claim,
            ));
        }
        let mut rekeyed = Vec::new();
        for name in &new_key {
            let Some(tls) = source.hosts.get(name).and_then(|host| host.message.tls.as_ref()) else {
                continue;
            };
            let (plan, _) = tls::host(&mut errors, &path("hosts", name), tls, &has_certificate, &certificate);
            rekeyed.extend(plan.map(|plan| (Arc::clone(name), plan)));
        }
        let listener_plans = tls::listeners(
            &mut errors,
            &source.listeners,
            &has_certificate,
            references.hosts_have_certificates(),
        );
        errors.into_result(())?;

        // Build: only what changed is compiled; every map is a copy of the
        // previous one with those entries replaced.
        let mut compiled = Vec::with_capacity(plans.len());
        let mut with_tls = Vec::new();
        for mut plan in plans {
            let tls = plan.tls.take();
            let host = Arc::new(build_host(plan, &clusters));
            if let Some(tls) = tls {
                with_tls.push((Arc::clone(&host), tls));
            }
            compiled.push(host);
        }
        let router = self
            .router
            .with_changes(deleted_hosts.iter().map(|name| &**name), compiled);
        let sni_changed = !touched.is_empty() || !recompile.is_empty() || !rekeyed.is_empty();
        let sni = if sni_changed {
            // Hosts that no longer have a certificate (or no longer exist).
            let kept: HashSet<&str> = with_tls
                .iter()
                .map(|(host, _)| &*host.name)
                .chain(rekeyed.iter().map(|(name, _)| &**name))
                .collect();
            let removed = touched
                .iter()
                .chain(&recompile)
                .chain(&new_key)
                .map(|name| &**name)
                .filter(|name| !kept.contains(name));
            let added = with_tls
                .iter()
                .map(|(host, tls)| (sni_host(host, tls), host.domains.as_slice()))
                .chain(rekeyed.iter().filter_map(|(name, tls)| {
                    let host = router.named(name)?;
                    Some((sni_host(host, tls), host.domains.as_slice()))
                }));
            Arc::new(self.sni.with_changes(removed, added))
        } else {
            Arc::clone(&self.sni)
        };
        // A listener's default certificate may have changed with no host using it.
        let certificates_changed = !changed_certificates.is_empty() || !deleted_certificates.is_empty();
        let listener_tls = if sni_changed || settings_touched || certificates_changed {
            build_listener_tls(&listener_plans, &certificates, &sni)?
        } else {
            self.listener_tls.clone()
        };
        let (mut plugin_config, plugins) = match checked_plugins {
            Some((budget, enabled)) => {
                let plugin_config = self.plugin_config.with_plugins(budget, enabled, &source.hosts);
                let plugins = LoadedPlugins::build(&plugin_config, &clusters, Some(&self.plugins))?;
                (plugin_config, plugins)
            }
            None => (self.plugin_config.clone(), self.plugins.clone()),
        };
        plugin_config.update_hosts(&touched, &source.hosts);
        Ok(Snapshot {
            generation: next_generation(),
            runtime,
            admin_address,
            access_log,
            http,
            ebpf,
            listeners,
            router,
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

    /// A reloaded file: its difference from this snapshot, applied. The
    /// comparison hashes every resource of the file (the file was parsed
    /// whole anyway); on error the whole file is checked again so errors
    /// carry the file's own paths (`hosts[3].domains[0]`).
    pub(super) fn reload(&self, config: &proto::Config) -> Result<Snapshot, ConfigErrors> {
        let applied = match self.diff(config) {
            Some(changes) => self.apply(changes),
            None => Err(ConfigErrors(Vec::new())),
        };
        applied.map_err(|errors| match check(config) {
            Err(file_errors) => file_errors,
            Ok(_) => errors,
        })
    }

    /// The change set turning this snapshot's config into `config`; None
    /// when the file repeats a name (which only the whole-file check can
    /// report with its positions).
    fn diff(&self, config: &proto::Config) -> Option<ChangeSet> {
        let mut changes = ChangeSet::default();
        let settings = Settings {
            runtime: config.runtime.clone(),
            admin: config.admin.clone(),
            access_log: config.access_log.clone(),
            http: config.http.clone(),
            ebpf: config.ebpf.clone(),
            plugins: plugin_budget(config.plugins.as_ref()),
        };
        let current = &self.source;
        if (
            &settings.runtime,
            &settings.admin,
            &settings.access_log,
            &settings.http,
            &settings.ebpf,
        ) != (
            &current.runtime,
            &current.admin,
            &current.access_log,
            &current.http,
            &current.ebpf,
        ) || settings.plugins != plugin_budget(Some(&current.plugins))
        {
            changes.settings = Some(settings);
        }
        // Plugins are few: all again, in the file's order, when any differs
        // or a module file changed on disk; unchanged ones are reused.
        let plugins = config.plugins.as_ref().map_or(&[][..], |section| &section.plugins[..]);
        let modules_changed = self
            .plugin_config
            .plugins
            .iter()
            .any(|plugin| !plugin.module_unchanged());
        if plugins != current.plugins.plugins || modules_changed {
            changes.delete_plugins = current
                .plugins
                .plugins
                .iter()
                .map(|plugin| plugin.name.clone())
                .collect();
            changes.upsert_plugins = plugins.to_vec();
        }
        if config.listeners != current.listeners {
            // All again, in the file's order.
            changes.delete_listeners = current.listeners.iter().map(|listener| listener.name.clone()).collect();
            changes.upsert_listeners = config.listeners.clone();
        }
        let (upserts, deletes) = diff_kind(&config.hosts, &current.hosts, host_name, |_, _| true)?;
        (changes.upsert_hosts, changes.delete_hosts) = (upserts, deletes);
        let (upserts, deletes) = diff_kind(&config.clusters, &current.clusters, |_, c| c.name.clone(), |_, _| true)?;
        (changes.upsert_clusters, changes.delete_clusters) = (upserts, deletes);
        let (upserts, deletes) = diff_kind(
            &config.certificates,
            &current.certificates,
            |_, c| c.name.clone(),
            // Same message, but a file it names was replaced on disk.
            |name, message| {
                self.certificates
                    .get(name)
                    .is_some_and(|loaded| loaded.files_unchanged(message))
            },
        )?;
        (changes.upsert_certificates, changes.delete_certificates) = (upserts, deletes);
        Some(changes)
    }
}

/// Upserts for the messages that are new or differ by hash (or that
/// `still_current` rejects), deletes for the names that are gone.
fn diff_kind<T: prost::Message + Clone>(
    messages: &[T],
    current: &super::resources::Sources<T>,
    name: impl Fn(usize, &T) -> String,
    still_current: impl Fn(&str, &T) -> bool,
) -> Option<(Vec<T>, Vec<String>)> {
    let mut names = HashSet::with_capacity(messages.len());
    let mut upserts = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let name = name(index, message);
        let same = current.hash(&name) == Some(content_hash(message)) && still_current(&name, message);
        if !same {
            upserts.push(message.clone());
        }
        if !names.insert(name) {
            return None;
        }
    }
    let deletes = if names.len() == current.len() && upserts.is_empty() {
        Vec::new()
    } else {
        current
            .names()
            .filter(|name| !names.contains(&***name))
            .map(|name| name.to_string())
            .collect()
    };
    Some((upserts, deletes))
}
