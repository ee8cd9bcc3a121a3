//! `test-probe`: a proxy-wasm plugin that exercises the host ABI for the gateway's end-to-end tests. It copies
//! stream properties into request headers, counts requests in shared data with CAS, feeds a shared queue that
//! its root context drains, defines and updates metrics, makes an `http_call` when asked, answers locally
//! when asked, rewrites a buffered request body, counts ticks, and touches WASI (environment, clock, random,
//! stdout) when configured. plugins/test-README.md is the contract the tests are written against.

mod counters;
mod stream;

use std::hash::{BuildHasher, RandomState};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel, MetricType};
use serde::Deserialize;
use tollgate_plugin_support::{empty_as_object, read_configuration};

use crate::stream::ProbeStream;

const QUEUE_NAME: &str = "probe-queue";
const DEFAULT_TICK_MS: u64 = 100;
/// A day: more is a typo, and the ABI carries the period as u32 milliseconds.
const MAX_TICK_MS: u64 = 86_400_000;
const DEFAULT_ENV_VAR: &str = "TOLLGATE_PROBE";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Tick period; 0 turns ticks off.
    #[serde(default = "default_tick_ms")]
    tick_ms: u64,
    /// Environment variable printed to stdout on configure.
    #[serde(default = "default_env_var")]
    env_var: String,
}

fn default_tick_ms() -> u64 {
    DEFAULT_TICK_MS
}

fn default_env_var() -> String {
    DEFAULT_ENV_VAR.to_string()
}

/// An empty configuration means `{}`.
fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let config: Config = serde_json::from_slice(empty_as_object(bytes)).map_err(|e| e.to_string())?;
    if config.tick_ms > MAX_TICK_MS {
        return Err(format!("tick_ms must be at most {MAX_TICK_MS}, got {}", config.tick_ms));
    }
    Ok(config)
}

/// Host-side ids created by the root context and used by every stream of this instance.
struct Handles {
    queue_id: u32,
    requests_total: u32,
    inflight: u32,
    body_bytes: u32,
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(ProbeRoot { handles: None, configured: false }) });
}}

struct ProbeRoot {
    handles: Option<Rc<Handles>>,
    configured: bool,
}

impl ProbeRoot {
    fn register() -> Result<Handles, String> {
        let queue_id = hostcalls::register_shared_queue(QUEUE_NAME)
            .map_err(|s| format!("register_shared_queue({QUEUE_NAME}): {s:?}"))?;
        let define = |kind, name: &str| {
            hostcalls::define_metric(kind, name).map_err(|s| format!("define_metric({name}): {s:?}"))
        };
        Ok(Handles {
            queue_id,
            requests_total: define(MetricType::Counter, "probe_requests_total")?,
            inflight: define(MetricType::Gauge, "probe_inflight")?,
            body_bytes: define(MetricType::Histogram, "probe_body_bytes")?,
        })
    }
}

impl Context for ProbeRoot {}

impl RootContext for ProbeRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        match ProbeRoot::register() {
            Ok(handles) => {
                self.handles = Some(Rc::new(handles));
                true
            }
            Err(message) => {
                log::error!("test-probe: {message}");
                false
            }
        }
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = read_configuration(self, "test-probe", parse_config) else {
            return false;
        };
        for key in [counters::HITS, counters::DEQUEUED, counters::TICKS] {
            if let Err(message) = counters::ensure(key) {
                log::error!("test-probe: {message}");
                return false;
            }
        }
        if config.tick_ms > 0 {
            self.set_tick_period(Duration::from_millis(config.tick_ms));
        }
        print_wasi_line(&config.env_var);
        self.configured = true;
        true
    }

    fn on_tick(&mut self) {
        if let Err(message) = counters::increment(counters::TICKS) {
            log::warn!("test-probe: tick: {message}");
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let Some(handles) = &self.handles else { return };
        if queue_id != handles.queue_id {
            log::warn!(
                "test-probe: on_queue_ready for queue {queue_id}, registered {}",
                handles.queue_id
            );
            return;
        }
        loop {
            match hostcalls::dequeue_shared_queue(queue_id) {
                Ok(Some(_path)) => {
                    if let Err(message) = counters::increment(counters::DEQUEUED) {
                        log::warn!("test-probe: dequeue: {message}");
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    log::warn!("test-probe: dequeue_shared_queue({queue_id}): {status:?}");
                    break;
                }
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if !self.configured {
            return None;
        }
        Some(Box::new(ProbeStream::new(self.handles.clone()?)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One stdout line through WASI: `environ_get`, `clock_time_get`, `random_get` (std's `RandomState` seeds
/// itself from it) and `fd_write`.
fn print_wasi_line(env_var: &str) {
    let env_value = std::env::var(env_var).unwrap_or_else(|_| "<unset>".to_string());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let random = RandomState::new().hash_one(now);
    println!(
        "test-probe: configured at unix {}.{:03} env {env_var}={env_value} random {random:016x}",
        now.as_secs(),
        now.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_from_empty_config() {
        let expected = Config {
            tick_ms: 100,
            env_var: "TOLLGATE_PROBE".to_string(),
        };
        assert_eq!(parse_config(b"").unwrap(), expected);
        assert_eq!(parse_config(b"{}").unwrap(), expected);
    }

    #[test]
    fn explicit_values_and_bounds() {
        let config = parse_config(br#"{"tick_ms":0,"env_var":"HOME"}"#).unwrap();
        assert_eq!(
            config,
            Config {
                tick_ms: 0,
                env_var: "HOME".to_string()
            }
        );
        assert!(parse_config(br#"{"tick_ms":86400001}"#).is_err());
        assert!(parse_config(br#"{"tick":5}"#).is_err());
        assert!(parse_config(b"nope").is_err());
    }
}
