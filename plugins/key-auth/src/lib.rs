//! key-auth: a proxy-wasm plugin that admits a request only when it carries an API key (header or query
//! parameter) of a consumer listed in its configuration. Missing key → 401, unknown key → 403, both answered by the
//! gateway without reaching the upstream; on success the upstream gets the consumer's name in a header and never
//! sees the key. The SDK glue is here; configuration and decisions are in `auth`.

#![forbid(unsafe_code)]

mod auth;

use std::rc::Rc;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use auth::Config;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| Box::new(Root { config: None }));
}}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(reason) => {
                // The gateway refuses the configuration when this returns false; the log says why.
                let _ = hostcalls::log(LogLevel::Error, &format!("key-auth: invalid configuration: {reason}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // No stream is created before a successful on_configure, so `config` is set here.
        self.config
            .clone()
            .map(|config| Box::new(Stream { config }) as Box<dyn HttpContext>)
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Rc<Config>,
}

impl Stream {
    fn deny(&self, status: u32, message: &str) -> Action {
        let body = serde_json::json!({ "error": message }).to_string();
        self.send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body.as_bytes()),
        );
        Action::Pause
    }
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let Some(key) = config.find_key(|name| self.get_http_request_header(name), &path) else {
            return self.deny(401, "missing API key");
        };
        let Some(consumer) = config.consumer(&key) else {
            return self.deny(403, "invalid API key");
        };
        // `set` replaces whatever the client sent under the consumer header, so it cannot claim an identity.
        self.set_http_request_header(&config.consumer_header, Some(consumer));
        for name in &config.header_keys {
            self.remove_http_request_header(name);
        }
        if let Some(stripped) = auth::strip_query_params(&path, &config.query_keys) {
            self.set_http_request_header(":path", Some(&stripped));
        }
        Action::Continue
    }
}
