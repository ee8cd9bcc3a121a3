//! cors: a proxy-wasm plugin that applies a CORS policy at the gateway. A preflight (OPTIONS with `Origin` and
//! `Access-Control-Request-Method`) is answered locally: 204 with the allow headers when the policy allows the
//! origin, method and requested headers, 403 otherwise; it never reaches the upstream. Responses to other requests
//! from an allowed origin get `Access-Control-Allow-Origin` (and `Vary`, credentials, exposed headers). The SDK glue
//! is here; the policy is in `policy`.

#![forbid(unsafe_code)]

mod policy;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_plugin_support::ConfiguredRoot;

use policy::Config;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("cors", Config::parse, |_, config| {
            Box::new(Stream {
                config,
                allowed_origin: None,
            })
        }))
    });
}}

struct Stream {
    config: Rc<Config>,
    /// The request's `Origin` when the policy allows it: its response gets the CORS headers.
    allowed_origin: Option<String>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(origin) = self.get_http_request_header("origin") else {
            return Action::Continue;
        };
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let requested_method = self.get_http_request_header("access-control-request-method");
        match requested_method {
            Some(requested_method) if method == "OPTIONS" => {
                let requested_headers = self.get_http_request_header("access-control-request-headers");
                match self
                    .config
                    .preflight(&origin, &requested_method, requested_headers.as_deref())
                {
                    Some(headers) => {
                        let headers = headers
                            .iter()
                            .map(|(name, value)| (name.as_str(), value.as_str()))
                            .collect();
                        self.send_http_response(204, headers, None);
                    }
                    None => {
                        let body = br#"{"error":"CORS preflight refused"}"#;
                        self.send_http_response(403, vec![("content-type", "application/json")], Some(body));
                    }
                }
                Action::Pause
            }
            _ => {
                if self.config.origin_allowed(&origin) {
                    self.allowed_origin = Some(origin);
                }
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(origin) = &self.allowed_origin {
            for (name, value) in self.config.response_headers(origin) {
                // `Vary` may already list other headers from the upstream: add a value rather than replace it.
                if name == "vary" {
                    self.add_http_response_header(&name, &value);
                } else {
                    self.set_http_response_header(&name, Some(&value));
                }
            }
        }
        Action::Continue
    }
}
