//! key-auth: a proxy-wasm plugin that admits a request only when it carries an API key (header or query
//! parameter) of a consumer listed in its configuration. Missing key → 401, unknown key → 403, both answered by the
//! gateway without reaching the upstream; on success the upstream gets the consumer's name in a header and never
//! sees the key. The SDK glue is here; configuration and decisions are in `auth`.

#![forbid(unsafe_code)]

mod auth;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_plugin_support::ConfiguredRoot;

use auth::Config;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("key-auth", Config::parse, |_, config| Box::new(Stream { config })))
    });
}}

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
