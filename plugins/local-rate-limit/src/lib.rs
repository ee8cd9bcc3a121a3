//! local-rate-limit: a proxy-wasm plugin that admits at most `requests` requests per key per fixed window. The
//! counters live in the host's shared data and are updated with compare-and-swap, so every worker and every instance
//! of the plugin in the gateway process counts against the same numbers. Over the limit → the configured status
//! (429 by default) with `retry-after`; admitted responses carry `x-ratelimit-limit`/`x-ratelimit-remaining`.
//! The SDK glue is here; configuration and the window arithmetic are in `limit`.

#![forbid(unsafe_code)]

mod limit;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, Status};
use tollgate_plugin_support::ConfiguredRoot;

use limit::{Config, Decision, KeySource, Window};

/// Compare-and-swap attempts per request before giving up. Each failed attempt means another worker admitted a
/// request for the same key in between, so a handful is plenty; past it the request is admitted uncounted rather
/// than spinning inside the host's per-call time limit.
const MAX_CAS_ATTEMPTS: usize = 8;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("local-rate-limit", Settings::parse, |_, settings| {
            Box::new(Stream {
                settings,
                remaining: None,
            })
        }))
    });
}}

struct Settings {
    limit: Config,
    /// Shared data is process-wide: keys carry the plugin name so two rate-limit plugins never share counters.
    key_prefix: String,
}

impl Settings {
    /// The configuration, and the key prefix from the plugin's name (asked of the host while configuring).
    fn parse(bytes: &[u8]) -> Result<Settings, String> {
        let limit = Config::parse(bytes)?;
        let plugin = hostcalls::get_property(vec!["plugin_name"])
            .ok()
            .flatten()
            .unwrap_or_default();
        let key_prefix = format!("local-rate-limit/{}/", String::from_utf8_lossy(&plugin));
        Ok(Settings { limit, key_prefix })
    }
}

struct Stream {
    settings: Rc<Settings>,
    /// Set when the request was admitted and counted; reported on the response.
    remaining: Option<u64>,
}

impl Stream {
    fn counter_key(&self) -> String {
        let prefix = &self.settings.key_prefix;
        match &self.settings.limit.key {
            KeySource::Ip => {
                let address = self.get_property(vec!["source", "address"]).unwrap_or_default();
                format!("{prefix}ip:{}", limit::client_ip(&String::from_utf8_lossy(&address)))
            }
            KeySource::Header(name) => {
                format!(
                    "{prefix}header:{}",
                    self.get_http_request_header(name).unwrap_or_default()
                )
            }
            KeySource::Global => format!("{prefix}global"),
        }
    }

    /// Reads the key's window, decides, and stores the incremented count only if nobody changed it meanwhile.
    /// None when every attempt lost the race.
    fn take(&self, key: &str, now_secs: u64) -> Option<Decision> {
        let Config {
            requests, window_secs, ..
        } = self.settings.limit;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (stored, cas) = self.get_shared_data(key);
            let decision = limit::decide(
                stored.as_deref().and_then(Window::decode),
                now_secs,
                window_secs,
                requests,
            );
            let Decision::Allow { next, .. } = &decision else {
                return Some(decision);
            };
            // A key that does not exist yet has no CAS value, so its very first write is unconditional: two
            // workers creating the same key at the same instant can lose one count, once per key.
            match self.set_shared_data(key, Some(&next.encode()), cas) {
                Ok(()) => return Some(decision),
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    let _ = hostcalls::log(
                        LogLevel::Warn,
                        &format!("local-rate-limit: set_shared_data: {status:?}"),
                    );
                    return None;
                }
            }
        }
        None
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let key = self.counter_key();
        let now_secs = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match self.take(&key, now_secs) {
            Some(Decision::Allow { remaining, .. }) => {
                self.remaining = Some(remaining);
                Action::Continue
            }
            Some(Decision::Deny { retry_after }) => {
                let Config { requests, status, .. } = self.settings.limit;
                let (retry_after, requests) = (retry_after.to_string(), requests.to_string());
                let headers = vec![
                    ("retry-after", retry_after.as_str()),
                    ("x-ratelimit-limit", requests.as_str()),
                    ("x-ratelimit-remaining", "0"),
                    ("content-type", "application/json"),
                ];
                self.send_http_response(status, headers, Some(br#"{"error":"rate limit exceeded"}"#));
                Action::Pause
            }
            None => {
                let message =
                    format!("local-rate-limit: {key}: shared data contended {MAX_CAS_ATTEMPTS} times, admitted");
                let _ = hostcalls::log(LogLevel::Warn, &message);
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(remaining) = self.remaining {
            self.set_http_response_header("x-ratelimit-limit", Some(&self.settings.limit.requests.to_string()));
            self.set_http_response_header("x-ratelimit-remaining", Some(&remaining.to_string()));
        }
        Action::Continue
    }
}
