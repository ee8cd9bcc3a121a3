//! `test-loop`: a misbehaving proxy-wasm plugin that never returns from the callback named in its config, so
//! the gateway's end-to-end tests can prove its watchdog terminates a runaway call (AOT and interpreter), fails
//! that stream by the plugin's fail strategy and recreates the instance.

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;
use tollgate_plugin_support::ConfiguredRoot;

/// The callback that spins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LoopPoint {
    RequestHeaders,
    ResponseHeaders,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    on: LoopPoint,
    /// Request header that arms the loop; every stream spins when absent.
    header: Option<String>,
}

fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let mut config: Config = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    // Header maps hold lower-case names; match what the client sent whatever case the config used.
    config.header = config.header.map(|h| h.to_ascii_lowercase());
    Ok(config)
}

/// Never returns. The counter lives in memory and every access is volatile, so the optimizer can neither
/// delete the loop nor turn it into an empty `loop {}`: the module really executes a back edge forever, which
/// is what the AOT suspend checks and the interpreter's termination flag must catch.
fn spin_forever() -> ! {
    let mut counter: u64 = 0;
    let counter_ptr: *mut u64 = &mut counter;
    loop {
        // SAFETY: `counter_ptr` points to a live, aligned local that nothing else references.
        unsafe { counter_ptr.write_volatile(counter_ptr.read_volatile().wrapping_add(1)) };
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("test-loop", parse_config, |_, config| {
            Box::new(LoopStream { config, armed: false })
        }))
    });
}}

struct LoopStream {
    config: Rc<Config>,
    /// Decided from the request headers, so `response_headers` loops are armed by the client too.
    armed: bool,
}

impl Context for LoopStream {}

impl HttpContext for LoopStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.armed = match &self.config.header {
            Some(name) => self.get_http_request_header_bytes(name).is_some(),
            None => true,
        };
        if self.armed && self.config.on == LoopPoint::RequestHeaders {
            log::warn!("test-loop: spinning forever in on_http_request_headers");
            spin_forever();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.armed && self.config.on == LoopPoint::ResponseHeaders {
            log::warn!("test-loop: spinning forever in on_http_response_headers");
            spin_forever();
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_point_and_optional_header() {
        let config = parse_config(br#"{"on":"response_headers","header":"X-Loop"}"#).unwrap();
        assert_eq!(
            config,
            Config {
                on: LoopPoint::ResponseHeaders,
                header: Some("x-loop".to_string())
            }
        );
        let config = parse_config(br#"{"on":"request_headers"}"#).unwrap();
        assert_eq!(
            config,
            Config {
                on: LoopPoint::RequestHeaders,
                header: None
            }
        );
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            &b""[..],
            b"{}",
            br#"{"on":"tick"}"#,
            br#"{"on":"request_headers","headers":"x"}"#,
        ] {
            assert!(parse_config(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
