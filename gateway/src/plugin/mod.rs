//! proxy-wasm plugins on WAMR: the engine (vm, instance, abi host functions,
//! watchdog). The lead takes this file over to add the pool and the chain.

pub mod abi;
pub mod instance;
pub mod vm;
mod watchdog;

pub use abi::{plugin_metric_values, take_ready_queues, MetricKind, MetricValue, RedisSettings};
pub use instance::{
    set_known_clusters, Action, BodyAction, Fault, FaultKind, HeaderMap, HttpCallResponse, InstanceSettings,
    LocalResponse, PendingCall, PluginInstance, RedisFailure, StreamData, StreamProperties, TlsInfo,
};
pub use vm::{init_runtime, AbiVersion, PluginModule};
