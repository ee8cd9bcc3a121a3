//! proxy-wasm plugins on WAMR (AOT or fast interpreter), ABI 0.2.1 and the
//! older versions Envoy loads, plus Higress's Redis calls.
//!
//! - `vm.rs`: the safe wrapper over WAMR; `instance.rs`: one instance and its
//!   proxy-wasm lifecycle; `abi/`: the host functions; `watchdog.rs`: stops
//!   calls that overrun their time.
//! - `pool.rs`: the global VM budget, instance slots shared by workers, fault
//!   recovery; `set.rs`: the running config's plugins, loaded.
//! - `chain.rs`: one HTTP stream through its route's plugins; `callout.rs`:
//!   the http/redis calls plugins dispatch; `housekeeping.rs`: the thread for
//!   ticks, queues, root-context calls and recreating faulted instances.

pub mod abi;
mod callout;
mod chain;
mod housekeeping;
pub mod instance;
mod pool;
mod set;
pub mod vm;
mod watchdog;

pub use abi::metrics::HISTOGRAM_BUCKETS;
pub use abi::{plugin_metric_values, take_ready_queues, MetricKind, MetricValue, RedisSettings};
pub use chain::{CallTargets, Direction, StreamChain, Verdict};
pub use housekeeping::spawn as spawn_housekeeping;
pub use instance::{
    set_known_clusters, Action, BodyAction, Fault, FaultKind, HeaderMap, HttpCallResponse, InstanceSettings,
    LocalResponse, PendingCall, PluginInstance, RedisFailure, StreamData, StreamProperties, TlsInfo,
};
pub use pool::LoadedPlugin;
pub use set::{set_worker_count, LoadedPlugins};
pub use vm::{init_runtime, AbiVersion, PluginModule};
