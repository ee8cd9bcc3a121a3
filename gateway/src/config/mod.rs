//! Configuration: the protobuf schema (`proto`), loading it from YAML,
//! validation that reports every error with its field path, the defaults of
//! unset fields (`defaults`, the only place they live), typed settings, and
//! the immutable `Snapshot` the gateway runs on.
//!
//! Flow: YAML text → `proto::Config` (`parse_yaml`, `load_file`) →
//! `Snapshot::build` (validate everything, read plugin modules, then resolve
//! clusters and compile routes). Later snapshots come from `Snapshot::apply` with a `ChangeSet`
//! (the admin API's path; a file reload diffs the file into one), which
//! checks and compiles only what changed and reuses the rest by hash.

mod apply;
#[cfg(test)]
mod apply_tests;
pub mod defaults;
mod ebpf;
mod error;
mod plugins;
pub mod proto;
mod resources;
mod settings;
mod snapshot;
#[cfg(test)]
mod tests;
mod tls;
mod validate;

use std::path::Path;

pub use apply::{ChangeSet, Settings};
pub use ebpf::{Cidr, EbpfMode, EbpfRateLimits, EbpfSettings, MAX_TRACKED_SOURCES};
pub use error::{ConfigErrors, FieldError};
pub use plugins::{
    format_size, FailStrategy, MatchRule, ModuleKind, PluginBudget, PluginSet, PluginSettings, RoutePlugins,
};
pub use resources::{Clusters, Source, SourceConfig, Sources};
pub use settings::{AccessLogTarget, HttpSettings, IoDriver, ListenerSettings, RuntimeSettings, WorkersSetting};
pub use snapshot::Snapshot;
pub use tls::{ListenerTlsSettings, TlsVersion, UnknownSniPolicy};
pub use validate::validate;

/// The config built into the binary (and the appliance image).
pub const DEFAULT_CONFIG: &str = include_str!("../../../image/config/default.yaml");

/// Parses YAML text into the schema. Unknown keys and wrong types are errors;
/// the message names the field and the line and column.
pub fn parse_yaml(text: &str) -> Result<proto::Config, ConfigErrors> {
    // An empty document is an empty config (which validation then explains).
    if text
        .lines()
        .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'))
    {
        return Ok(proto::Config::default());
    }
    serde_yaml::from_str(text).map_err(|error| ConfigErrors::single("", error.to_string()))
}

/// Reads and parses a YAML config file; errors name the file.
pub fn load_file(path: impl AsRef<Path>) -> Result<proto::Config, ConfigErrors> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|error| ConfigErrors::single("", format!("{}: {error}", path.display())))?;
    parse_yaml(&text).map_err(|errors| {
        ConfigErrors(
            errors
                .0
                .into_iter()
                .map(|error| FieldError {
                    path: error.path,
                    message: format!("{}: {}", path.display(), error.message),
                })
                .collect(),
        )
    })
}

/// The runtime settings alone, so the process can size its workers (and the
/// per-worker metric shards) before the first snapshot is built.
pub fn runtime_settings(config: &proto::Config) -> Result<RuntimeSettings, ConfigErrors> {
    let mut errors = error::Errors::default();
    let runtime = settings::runtime(&mut errors, config.runtime.as_ref());
    errors.into_result(runtime)
}
