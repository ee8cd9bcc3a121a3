//! basic-auth: a proxy-wasm plugin that admits a request only with HTTP Basic credentials of a consumer listed in
//! its configuration. Missing or wrong credentials → 401 with a `WWW-Authenticate: Basic realm="…"` challenge,
//! answered by the gateway; on success the upstream gets the consumer's name in a header and no `Authorization`.
//! The SDK glue is here; configuration and the credential check are in `auth`.

#![forbid(unsafe_code)]

mod auth;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_plugin_support::ConfiguredRoot;

use auth::Config;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("basic-auth", Config::parse, |_, config| Box::new(Stream { config })))
    });
}}

struct Stream {
    config: Rc<Config>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let config = Rc::clone(&self.config);
        let authorization = self.get_http_request_header("authorization");
        match config.authenticate(authorization.as_deref()) {
            Ok(consumer) => {
                // `set` replaces whatever the client sent under the consumer header, so it cannot claim an identity.
                self.set_http_request_header(&config.consumer_header, Some(consumer));
                self.remove_http_request_header("authorization");
                Action::Continue
            }
            Err(denied) => {
                let body = serde_json::json!({ "error": denied.message() }).to_string();
                let headers = vec![
                    ("www-authenticate", config.challenge.as_str()),
                    ("content-type", "application/json"),
                ];
                self.send_http_response(401, headers, Some(body.as_bytes()));
                Action::Pause
            }
        }
    }
}
