//! `test-unknown-import`: a misbehaving proxy-wasm plugin for the gateway's end-to-end tests. It imports
//! `env.proxy_tollgate_does_not_exist`, which no host provides, and calls it in the request headers callback
//! (the call must trap, or the module must be refused at load, never crash the worker). Before that it calls
//! `proxy_grpc_call`, part of ABI 0.2.1 that a host may leave unimplemented, and reports the status the host
//! returned in the response header `x-grpc-status`, so a test can see an error status instead of a crash.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;
use tollgate_plugin_support::{empty_as_object, ConfiguredRoot};

/// Cluster, service and method of the gRPC call: no gateway config defines such a cluster.
const GRPC_CLUSTER: &str = "tollgate-test-no-such-cluster";
const GRPC_SERVICE: &str = "tollgate.test.Unknown";
const GRPC_METHOD: &str = "Call";
const GRPC_TIMEOUT_MS: u32 = 1000;
/// Passed to the unknown import; a host that somehow resolves it shows its answer in a request header.
const UNKNOWN_IMPORT_ARGUMENT: i32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    /// Not part of any proxy-wasm ABI: no host implements it.
    fn proxy_tollgate_does_not_exist(x: i32) -> i32;

    /// The ABI's `proxy_grpc_call`, declared here returning the raw status word. The SDK's wrapper declares it
    /// returning its `Status` enum and panics on any status but Ok/ParseFailure/InternalFailure (and a value
    /// outside that enum, such as the spec's Unimplemented = 12, is not even a valid `Status`), so going
    /// through the SDK would turn the host's answer into a trap and hide it.
    fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        message_data_data: *const u8,
        message_data_size: usize,
        timeout: u32,
        return_callout_id: *mut u32,
    ) -> u32;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// When false only the gRPC status probe runs, so the stream completes and carries `x-grpc-status`.
    #[serde(default = "default_call_unknown")]
    call_unknown: bool,
}

fn default_call_unknown() -> bool {
    true
}

/// An empty configuration means `{}`.
fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    serde_json::from_slice(empty_as_object(bytes)).map_err(|e| e.to_string())
}

/// Calls `proxy_grpc_call` for a cluster nobody configured and returns the host's status word.
fn probe_grpc_call() -> u32 {
    // An empty metadata map in the ABI's serialization: a little-endian u32 pair count of zero.
    let metadata = 0u32.to_le_bytes();
    let message: &[u8] = b"";
    let mut token: u32 = 0;
    // SAFETY: every pointer/length pair describes a live buffer for the whole call, and `token` is a valid
    // out-pointer; the host only reads the inputs and writes one u32 through `token`.
    let status = unsafe {
        proxy_grpc_call(
            GRPC_CLUSTER.as_ptr(),
            GRPC_CLUSTER.len(),
            GRPC_SERVICE.as_ptr(),
            GRPC_SERVICE.len(),
            GRPC_METHOD.as_ptr(),
            GRPC_METHOD.len(),
            metadata.as_ptr(),
            metadata.len(),
            message.as_ptr(),
            message.len(),
            GRPC_TIMEOUT_MS,
            &mut token,
        )
    };
    if status == 0 {
        // A host that accepted the call must not deliver its answer: the SDK's dispatcher never registered the
        // token (the call bypassed it) and would panic on an unknown one.
        if let Err(cancel_status) = hostcalls::cancel_grpc_call(token) {
            log::warn!("test-unknown-import: cancelling gRPC call {token} failed: {cancel_status:?}");
        }
    }
    status
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("test-unknown-import", parse_config, |_, config| {
            Box::new(UnknownStream {
                config: *config,
                grpc_status: None,
            })
        }))
    });
}}

struct UnknownStream {
    config: Config,
    grpc_status: Option<u32>,
}

impl Context for UnknownStream {}

impl HttpContext for UnknownStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = probe_grpc_call();
        log::info!("test-unknown-import: proxy_grpc_call returned status {status}");
        self.grpc_status = Some(status);
        if self.config.call_unknown {
            log::warn!("test-unknown-import: calling env.proxy_tollgate_does_not_exist");
            // SAFETY: takes and returns plain integers; a host without the function traps instead of returning.
            let result = unsafe { proxy_tollgate_does_not_exist(UNKNOWN_IMPORT_ARGUMENT) };
            self.set_http_request_header("x-unknown-import-result", Some(&result.to_string()));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(status) = self.grpc_status {
            self.set_http_response_header("x-grpc-status", Some(&status.to_string()));
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_unknown_defaults_to_true() {
        assert_eq!(parse_config(b"").unwrap(), Config { call_unknown: true });
        assert_eq!(parse_config(b"{}").unwrap(), Config { call_unknown: true });
        assert_eq!(
            parse_config(br#"{"call_unknown":false}"#).unwrap(),
            Config { call_unknown: false }
        );
    }

    #[test]
    fn rejects_bad_configs() {
        assert!(parse_config(br#"{"call_unknown":"no"}"#).is_err());
        assert!(parse_config(br#"{"call":false}"#).is_err());
    }
}
