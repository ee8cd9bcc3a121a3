//! The running config's plugins, loaded: one `LoadedPlugin` per enabled
//! plugin, index-aligned with the config's `PluginSet`, sized by the budget
//! plan. Building it reuses every plugin whose version (module bytes,
//! configurations, limits), slot count and fail strategy are unchanged, so a
//! config change restarts only the plugins it touches.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use super::instance::{set_known_clusters, InstanceSettings};
use super::pool::{self, LoadedPlugin};
use crate::config::{ConfigErrors, PluginSet, RoutePlugins};
use crate::metrics::PluginGauges;
use crate::upstream::Cluster;

/// Workers in this process, fixed at startup; the budget plan divides
/// instances among them. `tollgate check` plans for one.
static WORKERS: OnceLock<usize> = OnceLock::new();

/// Sets the worker count once, before the first snapshot is built.
pub fn set_worker_count(workers: usize) {
    let _ = WORKERS.set(workers.max(1));
}

fn worker_count() -> usize {
    WORKERS.get().copied().unwrap_or(1)
}

#[derive(Default, Clone)]
pub struct LoadedPlugins {
    plugins: Vec<Arc<LoadedPlugin>>,
}

impl LoadedPlugins {
    /// Loads what `set` needs, reusing `previous` where nothing changed. A
    /// module that does not load or a plugin that rejects its configuration
    /// refuses the whole config, naming the plugin and the reason.
    pub fn build(
        set: &PluginSet,
        clusters: &imbl::HashMap<String, Arc<Cluster>>,
        previous: Option<&LoadedPlugins>,
    ) -> Result<LoadedPlugins, ConfigErrors> {
        // Plugins check cluster names in http_call and redis_init, also
        // while they start (on_configure) below.
        set_known_clusters(Arc::new(clusters.keys().cloned().collect::<HashSet<String>>()));
        if set.plugins.is_empty() {
            return Ok(LoadedPlugins::default());
        }
        super::vm::init_runtime().map_err(|error| ConfigErrors::single("plugins", error))?;
        let workers = worker_count();
        let caps: Vec<u64> = set.plugins.iter().map(|p| p.max_memory_bytes).collect();
        let budget = usize::try_from(set.budget.instances(workers, caps.len())).unwrap_or(usize::MAX);
        let plan = pool::plan(budget, set.budget.vm_memory_budget, &caps, workers)
            .map_err(|error| ConfigErrors::single("plugins.vm_budget", error))?;
        let mut plugins = Vec::with_capacity(set.plugins.len());
        for (settings, &slots) in set.plugins.iter().zip(&plan.slots) {
            let reusable = previous.into_iter().flat_map(|p| p.plugins.iter()).find(|old| {
                *old.name == *settings.name
                    && old.version_hash == settings.version
                    && old.slot_count() == slots
                    && old.fail_strategy == settings.fail_strategy
            });
            if let Some(old) = reusable {
                plugins.push(Arc::clone(old));
                continue;
            }
            let instance_settings = InstanceSettings {
                plugin_name: settings.name.to_string(),
                root_id: settings.root_id.clone(),
                vm_configuration: settings.vm_configuration.to_vec(),
                plugin_configuration: settings.configuration.to_vec(),
                max_memory_bytes: settings.max_memory_bytes,
                max_call_time: settings.max_call_time,
                environment: settings.environment.clone(),
            };
            let loaded = LoadedPlugin::load(
                &settings.name,
                settings.module.to_vec(),
                instance_settings,
                settings.fail_strategy,
                slots,
                settings.version,
            )
            .map_err(|error| {
                ConfigErrors::single(
                    format!("plugins[\"{}\"]", settings.name),
                    format!("{}: {error}", settings.module_path.display()),
                )
            })?;
            tracing::info!(
                plugin = %settings.name,
                mode = if loaded.is_aot() { "aot" } else { "interpreter" },
                instances = slots,
                "plugin loaded"
            );
            plugins.push(Arc::new(loaded));
        }
        tracing::info!("plugin budget: {}", plan.explanation);
        Ok(LoadedPlugins { plugins })
    }

    /// The loaded plugins of a route, in run order.
    pub fn for_route<'a>(&'a self, route: &'a RoutePlugins) -> impl Iterator<Item = &'a Arc<LoadedPlugin>> + 'a {
        route.plugins.iter().filter_map(|&index| self.plugins.get(index))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedPlugin>> {
        self.plugins.iter()
    }

    /// Instances and memory per plugin, for /metrics.
    pub fn gauges(&self) -> Vec<PluginGauges> {
        self.plugins
            .iter()
            .map(|plugin| {
                let (instances, memory_bytes) = plugin.instances_and_memory();
                PluginGauges {
                    plugin: plugin.name.clone(),
                    mode: if plugin.is_aot() { "aot" } else { "interpreter" },
                    instances,
                    memory_bytes,
                }
            })
            .collect()
    }
}
