//! Plugins in the config: each `Plugin` message checked and resolved into
//! `PluginSettings` (module file read and hashed, configuration bytes,
//! limits, match rule), the global VM budget with its default, and the
//! per-route plugin lists the request path reads (`PluginSet`), so serving
//! a request does no matching work. Nothing here loads or runs wasm: the
//! plugin pool turns `PluginSettings` into modules and instances.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::defaults;
use super::error::Errors;
use super::proto;
use super::resources::{content_hash, Sources};
use super::settings::duration;

/// Smallest `max_memory`: one wasm page.
pub const WASM_PAGE: u64 = 64 * 1024;
/// Largest `max_memory`: wasm32's whole address space.
const MAX_LINEAR_MEMORY: u64 = 4 * 1024 * 1024 * 1024;
const MIN_CALL_TIME: Duration = Duration::from_millis(1);
const MAX_CALL_TIME: Duration = Duration::from_secs(10);

/// What happens to a stream whose plugin fails (trap, memory, timeout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailStrategy {
    /// Answer 503 (Envoy's default).
    FailClosed,
    /// Skip the plugin; the stream goes on.
    FailOpen,
}

/// How the module file is run, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleKind {
    /// `.aot`: WAMR AOT code from tollgate-aotc.
    Aot,
    /// `.wasm`: WAMR's fast interpreter.
    Wasm,
}

/// Where a plugin runs. Listed hosts and listed routes add up; neither
/// means every route of every host.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MatchRule {
    /// Virtual host names: all their routes.
    pub hosts: Vec<Arc<str>>,
    /// (host name, route name) pairs.
    pub routes: Vec<(Arc<str>, Arc<str>)>,
}

impl MatchRule {
    pub fn is_all(&self) -> bool {
        self.hosts.is_empty() && self.routes.is_empty()
    }

    /// Whether the plugin may run on some route of `host`.
    pub fn touches_host(&self, host: &str) -> bool {
        self.is_all() || self.hosts.iter().any(|h| &**h == host) || self.routes.iter().any(|(h, _)| &**h == host)
    }

    pub fn applies(&self, host: &str, route: &str) -> bool {
        self.is_all()
            || self.hosts.iter().any(|h| &**h == host)
            || self.routes.iter().any(|(h, r)| &**h == host && &**r == route)
    }
}

/// One enabled plugin, checked and resolved: everything the pool needs to
/// load its module and start instances, and the rule of where it runs.
pub struct PluginSettings {
    pub name: Arc<str>,
    /// As configured; relative paths are from the working directory.
    pub module_path: PathBuf,
    pub module_kind: ModuleKind,
    /// The module file's bytes, read when the config was loaded.
    pub module: Arc<[u8]>,
    /// xxh3 of `module`.
    pub module_hash: u64,
    /// For proxy_on_configure.
    pub configuration: Arc<[u8]>,
    /// For proxy_on_vm_start.
    pub vm_configuration: Arc<[u8]>,
    pub root_id: String,
    pub order: i32,
    pub fail_strategy: FailStrategy,
    /// A multiple of 64 KiB.
    pub max_memory_bytes: u64,
    pub max_call_time: Duration,
    /// WASI environment, sorted by name.
    pub environment: Vec<(String, String)>,
    pub rule: MatchRule,
    /// Identifies what instances are built from (module bytes,
    /// configurations, root_id, limits): equal versions need no new
    /// instances; a change of order, rule or fail strategy keeps the version.
    pub version: u64,
    /// Hash of the source message, and the module file as it looked when
    /// read: an equal message over an unchanged file is not read again.
    source_hash: u64,
    stamp: Option<FileStamp>,
}

/// A file's identity and size; differs when it is replaced or rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
    device: u64,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            inode: metadata.ino(),
            device: metadata.dev(),
        })
    }
}

// By hand: the module and configurations are summarized by size, so a
// logged plugin does not print megabytes of wasm.
impl std::fmt::Debug for PluginSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginSettings")
            .field("name", &self.name)
            .field("module_path", &self.module_path)
            .field("module_kind", &self.module_kind)
            .field("module_bytes", &self.module.len())
            .field("module_hash", &format_args!("{:016x}", self.module_hash))
            .field("configuration_bytes", &self.configuration.len())
            .field("vm_configuration_bytes", &self.vm_configuration.len())
            .field("root_id", &self.root_id)
            .field("order", &self.order)
            .field("fail_strategy", &self.fail_strategy)
            .field("max_memory_bytes", &self.max_memory_bytes)
            .field("max_call_time", &self.max_call_time)
            .field("rule", &self.rule)
            .field("version", &format_args!("{:016x}", self.version))
            .finish_non_exhaustive()
    }
}

impl PluginSettings {
    /// Whether the module file still looks as it did when it was read.
    pub(super) fn module_unchanged(&self) -> bool {
        self.stamp.is_some() && self.stamp == FileStamp::of(&self.module_path)
    }
}

/// The budget of plugin instances shared by all plugins and workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginBudget {
    /// Instances in the whole process; None: the default, min(workers, 8)
    /// per enabled plugin.
    pub vm_budget: Option<u32>,
    /// Linear memory of all instances, each counted at its max_memory.
    pub vm_memory_budget: u64,
}

impl PluginBudget {
    /// The instance budget for `plugins` enabled plugins on `workers`
    /// workers: `vm_budget`, or by default min(workers, 8) per plugin.
    pub fn instances(&self, workers: usize, plugins: usize) -> u64 {
        match self.vm_budget {
            Some(budget) => u64::from(budget),
            None => plugins as u64 * (workers.max(1) as u64).min(defaults::PLUGIN_INSTANCES_PER_PLUGIN),
        }
    }
}

impl Default for PluginBudget {
    fn default() -> Self {
        PluginBudget {
            vm_budget: None,
            vm_memory_budget: defaults::PLUGIN_VM_MEMORY_BUDGET,
        }
    }
}

/// What the request path needs for one route that has plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlugins {
    /// Indices into `PluginSet::plugins`, in run order.
    pub plugins: Box<[usize]>,
    /// The route's `max_buffered_body_bytes`, default applied.
    pub max_buffered_body_bytes: u64,
}

/// Route name → its plugins, for the routes of one host that have any.
type HostPlugins = HashMap<Arc<str>, RoutePlugins>;

/// The snapshot's plugins: the enabled ones in run order, the budget, and
/// which run on each route.
#[derive(Clone, Default)]
pub struct PluginSet {
    pub budget: PluginBudget,
    /// Enabled plugins in run order: by `order`, ties in list order.
    pub plugins: Arc<[Arc<PluginSettings>]>,
    /// Only hosts with a route some plugin runs on.
    routes: imbl::HashMap<Arc<str>, Arc<HostPlugins>>,
}

impl PluginSet {
    /// The plugins of a route (found by the router) or None when no plugin
    /// runs on it: two hash lookups, none at all without plugins.
    pub fn route(&self, host: &str, route: &str) -> Option<&RoutePlugins> {
        if self.plugins.is_empty() {
            return None;
        }
        self.routes.get(host)?.get(route)
    }

    pub fn get(&self, name: &str) -> Option<&Arc<PluginSettings>> {
        self.plugins.iter().find(|plugin| &*plugin.name == name)
    }

    /// With every host's route lists computed.
    pub(super) fn new(
        budget: PluginBudget,
        plugins: Vec<Arc<PluginSettings>>,
        hosts: &Sources<proto::VirtualHost>,
    ) -> PluginSet {
        let mut set = PluginSet {
            budget,
            plugins: plugins.into(),
            routes: imbl::HashMap::new(),
        };
        set.recompute_all(hosts);
        set
    }

    /// The same hosts under a new plugin list: the route lists are kept when
    /// no plugin's place in the run order or rule changed, else computed
    /// again for every host (plugins are few; hosts are not rebuilt).
    pub(super) fn with_plugins(
        &self,
        budget: PluginBudget,
        plugins: Vec<Arc<PluginSettings>>,
        hosts: &Sources<proto::VirtualHost>,
    ) -> PluginSet {
        let same_rules = plugins.len() == self.plugins.len()
            && plugins
                .iter()
                .zip(self.plugins.iter())
                .all(|(new, old)| new.name == old.name && new.rule == old.rule);
        let mut set = PluginSet {
            budget,
            plugins: plugins.into(),
            routes: self.routes.clone(),
        };
        if !same_rules {
            set.recompute_all(hosts);
        }
        set
    }

    /// Hosts that were upserted or deleted: their route lists again.
    pub(super) fn update_hosts<'a>(
        &mut self,
        changed: impl IntoIterator<Item = &'a Arc<str>>,
        hosts: &Sources<proto::VirtualHost>,
    ) {
        if self.plugins.is_empty() {
            return;
        }
        for name in changed {
            match hosts
                .get(name)
                .and_then(|host| host_plugins(name, &host.message, &self.plugins))
            {
                Some(routes) => {
                    self.routes.insert(Arc::clone(name), Arc::new(routes));
                }
                None => {
                    self.routes.remove(name);
                }
            }
        }
    }

    fn recompute_all(&mut self, hosts: &Sources<proto::VirtualHost>) {
        self.routes = imbl::HashMap::new();
        if self.plugins.is_empty() {
            return;
        }
        for name in hosts.names() {
            if let Some(routes) = host_plugins(name, &hosts.get(name).expect("listed").message, &self.plugins) {
                self.routes.insert(Arc::clone(name), Arc::new(routes));
            }
        }
    }
}

fn host_plugins(name: &str, host: &proto::VirtualHost, plugins: &[Arc<PluginSettings>]) -> Option<HostPlugins> {
    let candidates: Vec<usize> = (0..plugins.len())
        .filter(|&index| plugins[index].rule.touches_host(name))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let mut routes = HostPlugins::new();
    for (index, route) in host.routes.iter().enumerate() {
        let route_name = route_name(index, route);
        let list: Box<[usize]> = candidates
            .iter()
            .copied()
            .filter(|&plugin| plugins[plugin].rule.applies(name, &route_name))
            .collect();
        if !list.is_empty() {
            routes.insert(
                route_name.into(),
                RoutePlugins {
                    plugins: list,
                    max_buffered_body_bytes: match route.max_buffered_body_bytes {
                        0 => defaults::MAX_BUFFERED_BODY_BYTES,
                        bytes => bytes,
                    },
                },
            );
        }
    }
    (!routes.is_empty()).then_some(routes)
}

/// A route's name: its own, else its index in the host.
pub(super) fn route_name(index: usize, route: &proto::Route) -> String {
    if route.name.is_empty() {
        index.to_string()
    } else {
        route.name.clone()
    }
}

/// What checking plugins needs to know about the hosts and the previous
/// snapshot.
pub(super) struct PluginContext<'a> {
    pub has_host: &'a dyn Fn(&str) -> bool,
    /// Whether the host exists and has a route of this name.
    pub has_route: &'a dyn Fn(&str, &str) -> bool,
    /// The running plugins, whose unchanged settings (and module bytes) are
    /// reused rather than read again.
    pub previous: Option<&'a PluginSet>,
}

/// Checks the plugins section; `at` gives each plugin's path
/// (`plugins.plugins[2]` in a file, `plugins["auth"]` in a change set).
/// Returns the budget and the enabled plugins in run order.
pub(super) fn check(
    errors: &mut Errors,
    section: &proto::Plugins,
    at: &dyn Fn(usize, &proto::Plugin) -> String,
    context: &PluginContext<'_>,
) -> (PluginBudget, Vec<Arc<PluginSettings>>) {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut enabled = Vec::new();
    for (index, plugin) in section.plugins.iter().enumerate() {
        let path = at(index, plugin);
        let before = errors.len();
        if plugin.name.is_empty() {
            errors.add(format!("{path}.name"), "must not be empty");
        } else if !is_plugin_name(&plugin.name) {
            errors.add(
                format!("{path}.name"),
                format!(
                    "invalid plugin name \"{}\": lower-case letters, digits, '_' and '-' only",
                    plugin.name
                ),
            );
        } else if let Some(first) = names.insert(&plugin.name, index) {
            errors.add(
                format!("{path}.name"),
                format!(
                    "duplicate plugin name \"{}\" (also {})",
                    plugin.name,
                    at(first, &section.plugins[first])
                ),
            );
        }
        let settings = plugin_settings(errors, &path, plugin, context);
        if errors.len() == before {
            enabled.extend(settings);
        }
    }
    let budget = budget(errors, section, &enabled);
    // Stable: equal orders keep list order.
    enabled.sort_by_key(|plugin| plugin.order);
    (budget, enabled)
}

fn budget(errors: &mut Errors, section: &proto::Plugins, enabled: &[Arc<PluginSettings>]) -> PluginBudget {
    let vm_budget = match section.vm_budget {
        0 => None,
        budget if (budget as usize) < enabled.len() => {
            errors.add(
                "plugins.vm_budget",
                format!(
                    "{budget} is below the {} enabled plugins: each plugin needs at least one instance",
                    enabled.len()
                ),
            );
            None
        }
        budget => Some(budget),
    };
    let vm_memory_budget = size(
        errors,
        "plugins.vm_memory_budget",
        &section.vm_memory_budget,
        defaults::PLUGIN_VM_MEMORY_BUDGET,
    );
    let one_each: u64 = enabled.iter().map(|plugin| plugin.max_memory_bytes).sum();
    if one_each > vm_memory_budget {
        errors.add(
            "plugins.vm_memory_budget",
            format!(
                "{} is below one instance of each enabled plugin at its max_memory ({})",
                format_size(vm_memory_budget),
                format_size(one_each)
            ),
        );
    }
    PluginBudget {
        vm_budget,
        vm_memory_budget,
    }
}

/// `[a-z0-9_-]+`: safe in metric labels, log fields and file names.
fn is_plugin_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks one plugin; None when it is disabled (or has errors, which are
/// recorded).
fn plugin_settings(
    errors: &mut Errors,
    path: &str,
    plugin: &proto::Plugin,
    context: &PluginContext<'_>,
) -> Option<Arc<PluginSettings>> {
    let module_kind = match Path::new(&plugin.module).extension().and_then(|e| e.to_str()) {
        _ if plugin.module.is_empty() => {
            errors.add(format!("{path}.module"), "must name a .aot or .wasm file");
            None
        }
        Some("aot") => Some(ModuleKind::Aot),
        Some("wasm") => Some(ModuleKind::Wasm),
        _ => {
            errors.add(
                format!("{path}.module"),
                format!(
                    "{}: expected a .aot file (tollgate-aotc) or a .wasm file",
                    plugin.module
                ),
            );
            None
        }
    };
    let rule = match_rule(errors, path, plugin, context);
    let fail_strategy = match proto::FailStrategy::try_from(plugin.fail_strategy) {
        Ok(proto::FailStrategy::FailClosed) => FailStrategy::FailClosed,
        Ok(proto::FailStrategy::FailOpen) => FailStrategy::FailOpen,
        Err(_) => {
            errors.add(
                format!("{path}.fail_strategy"),
                format!("unknown fail strategy {}", plugin.fail_strategy),
            );
            FailStrategy::FailClosed
        }
    };
    let max_memory = size(
        errors,
        &format!("{path}.max_memory"),
        &plugin.max_memory,
        defaults::PLUGIN_MAX_MEMORY,
    );
    let max_memory_bytes = if max_memory < WASM_PAGE {
        errors.add(
            format!("{path}.max_memory"),
            format!("{} is below one 64 KiB wasm page", format_size(max_memory)),
        );
        defaults::PLUGIN_MAX_MEMORY
    } else if max_memory > MAX_LINEAR_MEMORY {
        errors.add(
            format!("{path}.max_memory"),
            format!(
                "{} is more than a wasm32 memory can hold (4 GiB)",
                format_size(max_memory)
            ),
        );
        defaults::PLUGIN_MAX_MEMORY
    } else {
        max_memory / WASM_PAGE * WASM_PAGE
    };
    let max_call_time = duration(
        errors,
        || format!("{path}.max_call_time"),
        &plugin.max_call_time,
        defaults::PLUGIN_MAX_CALL_TIME,
        false,
    );
    if !(MIN_CALL_TIME..=MAX_CALL_TIME).contains(&max_call_time) {
        errors.add(
            format!("{path}.max_call_time"),
            format!(
                "{} is out of range: 1ms to 10s",
                humantime::format_duration(max_call_time)
            ),
        );
    }
    for name in plugin.environment.keys() {
        if name.is_empty() || name.contains(['=', '\0']) {
            errors.add(
                format!("{path}.environment"),
                format!("invalid variable name {name:?}: not empty, no '=' or NUL"),
            );
        }
    }
    for (name, value) in &plugin.environment {
        if value.contains('\0') {
            errors.add(format!("{path}.environment.{name}"), "the value contains NUL");
        }
    }
    if !plugin.enabled.unwrap_or(defaults::PLUGIN_ENABLED) {
        return None;
    }
    let module_kind = module_kind?;
    let source_hash = content_hash(plugin);
    let module_path = PathBuf::from(&plugin.module);
    let previous = context
        .previous
        .and_then(|set| set.get(&plugin.name))
        .filter(|old| old.module_path == module_path);
    if let Some(old) = previous.filter(|old| old.source_hash == source_hash && old.module_unchanged()) {
        return Some(Arc::clone(old));
    }
    // Stamped before reading: a file replaced while it is read looks
    // changed at the next reload rather than unchanged.
    let stamp = FileStamp::of(&module_path);
    let (module, module_hash) = match previous.filter(|old| old.module_unchanged()) {
        Some(old) => (Arc::clone(&old.module), old.module_hash),
        None => {
            let bytes = match read_module(&module_path) {
                Ok(bytes) => bytes,
                Err(message) => {
                    errors.add(format!("{path}.module"), message);
                    return None;
                }
            };
            let hash = xxhash_rust::xxh3::xxh3_64(&bytes);
            // A file rewritten with the same bytes keeps the shared copy.
            match previous.filter(|old| old.module_hash == hash) {
                Some(old) => (Arc::clone(&old.module), hash),
                None => (Arc::from(bytes), hash),
            }
        }
    };
    let settings = PluginSettings {
        name: plugin.name.as_str().into(),
        module_path,
        module_kind,
        module,
        module_hash,
        configuration: plugin.configuration.as_slice().into(),
        vm_configuration: plugin.vm_configuration.as_slice().into(),
        root_id: plugin.root_id.clone(),
        order: plugin.order,
        fail_strategy,
        max_memory_bytes,
        max_call_time,
        environment: plugin
            .environment
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect(),
        rule: rule?,
        version: 0,
        source_hash,
        stamp,
    };
    Some(Arc::new(PluginSettings {
        version: version(&settings),
        ..settings
    }))
}

/// The hash of what an instance is built from.
fn version(settings: &PluginSettings) -> u64 {
    let mut input = Vec::with_capacity(64 + settings.configuration.len() + settings.vm_configuration.len());
    for part in [
        &settings.module_hash.to_le_bytes()[..],
        &(settings.configuration.len() as u64).to_le_bytes(),
        &settings.configuration,
        &(settings.vm_configuration.len() as u64).to_le_bytes(),
        &settings.vm_configuration,
        &(settings.root_id.len() as u64).to_le_bytes(),
        settings.root_id.as_bytes(),
        &settings.max_memory_bytes.to_le_bytes(),
        &settings.max_call_time.as_nanos().to_le_bytes(),
    ] {
        input.extend_from_slice(part);
    }
    for (name, value) in &settings.environment {
        for part in [name.as_bytes(), value.as_bytes()] {
            input.extend_from_slice(&(part.len() as u64).to_le_bytes());
            input.extend_from_slice(part);
        }
    }
    xxhash_rust::xxh3::xxh3_64(&input)
}

/// The module file's bytes; errors read "path: reason".
fn read_module(path: &Path) -> Result<Vec<u8>, String> {
    let display = path.display();
    match std::fs::metadata(path) {
        Ok(metadata) if !metadata.is_file() => return Err(format!("{display}: not a regular file")),
        Ok(_) => {}
        Err(error) => return Err(format!("{display}: {error}")),
    }
    std::fs::read(path).map_err(|error| format!("{display}: {error}"))
}

fn match_rule(
    errors: &mut Errors,
    path: &str,
    plugin: &proto::Plugin,
    context: &PluginContext<'_>,
) -> Option<MatchRule> {
    let before = errors.len();
    let mut rule = MatchRule::default();
    for (index, host) in plugin.hosts.iter().enumerate() {
        match reference_error(context, host, None) {
            Some(message) => errors.add(format!("{path}.hosts[{index}]"), message),
            None => rule.hosts.push(host.as_str().into()),
        }
    }
    for (index, reference) in plugin.routes.iter().enumerate() {
        let at = format!("{path}.routes[{index}]");
        let Some((host, route)) = reference.split_once('/') else {
            errors.add(
                at,
                format!("invalid route \"{reference}\": expected \"host/route\" (the host's name, the route's name)"),
            );
            continue;
        };
        match reference_error(context, host, Some(route)) {
            Some(message) => errors.add(at, message),
            None => rule.routes.push((host.into(), route.into())),
        }
    }
    (errors.len() == before).then_some(rule)
}

fn reference_error(context: &PluginContext<'_>, host: &str, route: Option<&str>) -> Option<String> {
    if !(context.has_host)(host) {
        return Some(format!("unknown host \"{host}\""));
    }
    match route {
        Some(route) if !(context.has_route)(host, route) => Some(format!("host \"{host}\" has no route \"{route}\"")),
        _ => None,
    }
}

/// The plugins that name a host (by its name or one of its routes) the
/// host can no longer satisfy: after `host` was deleted (`routes` None) or
/// replaced by one with these route names. (plugin name, what it names.)
pub(super) fn broken_references(
    section: &proto::Plugins,
    host: &str,
    routes: Option<&[String]>,
) -> Vec<(String, String)> {
    let mut broken = Vec::new();
    for plugin in &section.plugins {
        if routes.is_none() && plugin.hosts.iter().any(|h| h == host) {
            broken.push((plugin.name.clone(), format!("host \"{host}\"")));
        }
        for reference in &plugin.routes {
            if let Some((h, route)) = reference.split_once('/') {
                if h == host && !routes.is_some_and(|routes| routes.iter().any(|r| r == route)) {
                    broken.push((plugin.name.clone(), format!("route \"{reference}\"")));
                }
            }
        }
    }
    broken
}

/// A size: bytes ("65536") or a number with KiB, MiB or GiB ("32MiB",
/// "1 GiB"); unset takes `default`.
pub(super) fn size(errors: &mut Errors, path: &str, value: &str, default: u64) -> u64 {
    if value.is_empty() {
        return default;
    }
    match parse_size(value) {
        Some(bytes) => bytes,
        None => {
            errors.add(
                path,
                format!(
                    "invalid size \"{value}\": expected bytes (\"65536\") or a number with KiB, MiB or GiB (\"32MiB\")"
                ),
            );
            default
        }
    }
}

fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// "32 MiB", "1 GiB", "65536 B": exact, for messages.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    format!("{bytes} B")
}
