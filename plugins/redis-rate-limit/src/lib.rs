//! redis-rate-limit: a proxy-wasm plugin that keeps a cluster-wide fixed-window rate limit in Redis, through the
//! Higress Redis host calls. Each request costs one round trip (an `EVAL` that increments and returns the window's
//! count); the request waits (paused) for the answer, then continues or gets the configured status (429 by default)
//! with `retry-after`. When Redis cannot answer, `fail_open_on_redis_error` decides between letting the request
//! through and 503. The SDK glue is here; the Redis ABI is in `redis`, RESP in `resp`, config and verdicts in `limit`.

#![deny(unsafe_code)]

mod limit;
#[expect(unsafe_code, reason = "FFI of the Higress Redis host calls")]
mod redis;
mod resp;

use std::cell::Cell;
use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use tollgate_plugin_support::ConfiguredRoot;

use limit::{Config, KeySource, Verdict};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("redis-rate-limit", configure, |context_id, config| {
            Box::new(Stream {
                context_id,
                config,
                remaining: Rc::default(),
            })
        }))
    });
}}

/// Parses the configuration and initialises its Redis cluster with the host: a cluster the host cannot set up
/// refuses the configuration.
fn configure(bytes: &[u8]) -> Result<Config, String> {
    let config = Config::parse(bytes)?;
    redis::init(
        &config.redis_cluster,
        &config.username,
        &config.password,
        config.timeout_ms,
    )
    .map_err(|status| {
        format!(
            "redis_init of cluster {:?} failed with status {status}",
            config.redis_cluster
        )
    })?;
    Ok(config)
}

struct Stream {
    context_id: u32,
    config: Rc<Config>,
    /// Filled by the Redis answer when the request is admitted; reported on the response.
    remaining: Rc<Cell<Option<u64>>>,
}

/// What a stream does once the count (or the failure to get it) is known.
enum Outcome {
    Continue,
    Respond {
        status: u32,
        headers: Vec<(&'static str, String)>,
        body: &'static [u8],
    },
}

fn outcome(config: &Config, reply: Result<Vec<u8>, String>, remaining: &Cell<Option<u64>>) -> Outcome {
    match reply.and_then(|bytes| limit::verdict(&bytes, config.requests)) {
        Ok(Verdict::Allow { remaining: left }) => {
            remaining.set(Some(left));
            Outcome::Continue
        }
        Ok(Verdict::Deny { retry_after }) => Outcome::Respond {
            status: config.status,
            headers: vec![
                ("retry-after", retry_after.to_string()),
                ("x-ratelimit-limit", config.requests.to_string()),
                ("x-ratelimit-remaining", "0".into()),
                ("content-type", "application/json".into()),
            ],
            body: br#"{"error":"rate limit exceeded"}"#,
        },
        Err(reason) => {
            let open = config.fail_open_on_redis_error;
            let effect = if open { "admitted" } else { "refused with 503" };
            let _ = hostcalls::log(LogLevel::Warn, &format!("redis-rate-limit: {reason}; request {effect}"));
            if open {
                Outcome::Continue
            } else {
                Outcome::Respond {
                    status: 503,
                    headers: vec![("content-type", "application/json".into())],
                    body: br#"{"error":"rate limit unavailable"}"#,
                }
            }
        }
    }
}

fn respond(status: u32, headers: &[(&str, String)], body: &[u8]) {
    let headers = headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let _ = hostcalls::send_http_response(status, headers, Some(body));
}

impl Stream {
    fn counter_key(&self) -> String {
        match &self.config.key {
            KeySource::Ip => {
                let address = self.get_property(vec!["source", "address"]).unwrap_or_default();
                format!("ip:{}", limit::client_ip(&String::from_utf8_lossy(&address)))
            }
            KeySource::Header(name) => format!("header:{}", self.get_http_request_header(name).unwrap_or_default()),
            KeySource::Global => "global".to_string(),
        }
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let query = self.config.query(&self.counter_key());
        match redis::call(&self.config.redis_cluster, &query) {
            Ok(token) => {
                let (config, remaining) = (Rc::clone(&self.config), Rc::clone(&self.remaining));
                let handler = move |reply| match outcome(&config, reply, &remaining) {
                    Outcome::Continue => {
                        let _ = hostcalls::resume_http_request();
                    }
                    Outcome::Respond { status, headers, body } => respond(status, &headers, body),
                };
                redis::expect(token, self.context_id, Box::new(handler));
                Action::Pause
            }
            Err(status) => {
                let reply = Err(format!(
                    "redis_call to {:?} failed with status {status}",
                    self.config.redis_cluster
                ));
                match outcome(&self.config, reply, &self.remaining) {
                    Outcome::Continue => Action::Continue,
                    Outcome::Respond { status, headers, body } => {
                        respond(status, &headers, body);
                        Action::Pause
                    }
                }
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(remaining) = self.remaining.get() {
            self.set_http_response_header("x-ratelimit-limit", Some(&self.config.requests.to_string()));
            self.set_http_response_header("x-ratelimit-remaining", Some(&remaining.to_string()));
        }
        Action::Continue
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        redis::forget(self.context_id);
    }
}
