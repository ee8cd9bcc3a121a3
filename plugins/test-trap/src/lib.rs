//! `test-trap`: a misbehaving proxy-wasm plugin that traps at the callback named in its config, so the
//! gateway's end-to-end tests can prove a trap fails only that stream (or that config) and the instance is
//! recreated. A Rust panic in a `wasm32-wasip1` cdylib aborts (the target only supports `panic=abort`), and
//! abort is the wasm `unreachable` instruction: the SDK's panic hook logs the message first at critical level.

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;
use tollgate_plugin_support::read_configuration;

/// Where the plugin traps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TrapPoint {
    RequestHeaders,
    ResponseHeaders,
    Configure,
    Tick,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    on: TrapPoint,
    /// Tick period when `on` is `tick`.
    #[serde(default = "default_tick_ms")]
    tick_ms: u64,
}

fn default_tick_ms() -> u64 {
    100
}

fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let config: Config = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if config.on == TrapPoint::Tick && config.tick_ms == 0 {
        return Err("tick_ms must be at least 1 when on is \"tick\"".to_string());
    }
    Ok(config)
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(TrapRoot { on: None }) });
}}

struct TrapRoot {
    on: Option<TrapPoint>,
}

impl Context for TrapRoot {}

impl RootContext for TrapRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let Some(config) = read_configuration(self, "test-trap", parse_config) else {
            return false;
        };
        match config.on {
            TrapPoint::Configure => panic!("test-trap: trapping in on_configure as configured"),
            TrapPoint::Tick => self.set_tick_period(Duration::from_millis(config.tick_ms)),
            TrapPoint::RequestHeaders | TrapPoint::ResponseHeaders => {}
        }
        self.on = Some(config.on);
        true
    }

    fn on_tick(&mut self) {
        if self.on == Some(TrapPoint::Tick) {
            panic!("test-trap: trapping in on_tick as configured");
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(TrapStream { on: self.on }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct TrapStream {
    on: Option<TrapPoint>,
}

impl Context for TrapStream {}

impl HttpContext for TrapStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.on == Some(TrapPoint::RequestHeaders) {
            panic!("test-trap: trapping in on_http_request_headers as configured");
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.on == Some(TrapPoint::ResponseHeaders) {
            panic!("test-trap: trapping in on_http_response_headers as configured");
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_trap_point() {
        for (text, point) in [
            ("request_headers", TrapPoint::RequestHeaders),
            ("response_headers", TrapPoint::ResponseHeaders),
            ("configure", TrapPoint::Configure),
            ("tick", TrapPoint::Tick),
        ] {
            let config = parse_config(format!(r#"{{"on":"{text}"}}"#).as_bytes()).unwrap();
            assert_eq!(config.on, point);
            assert_eq!(config.tick_ms, 100);
        }
    }

    #[test]
    fn rejects_bad_configs() {
        for bad in [
            &b""[..],
            b"{}",
            br#"{"on":"request_body"}"#,
            br#"{"on":"tick","tick_ms":0}"#,
            br#"{"on":"tick","x":1}"#,
        ] {
            assert!(parse_config(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
