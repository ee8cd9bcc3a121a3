//! body-transform: a proxy-wasm plugin that masks configured fields of JSON request and/or response bodies (e.g.
//! passwords, card numbers) before they reach the upstream or the client. Only JSON bodies are touched; the body is
//! buffered to its end, masked, and replaced, and the gateway reframes it (content-length is dropped up front).
//! Anything that does not parse as JSON passes unchanged. The SDK glue is here; config and masking are in `mask`.

#![forbid(unsafe_code)]

mod mask;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_plugin_support::ConfiguredRoot;

use mask::Config;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("body-transform", Config::parse, |_, config| {
            Box::new(Stream {
                config,
                mask_request: false,
                mask_response: false,
            })
        }))
    });
}}

struct Stream {
    config: Rc<Config>,
    /// Decided from the headers: this body is JSON and its direction is configured.
    mask_request: bool,
    mask_response: bool,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if self.config.responses() {
            // A compressed response cannot be parsed, so ask the upstream for an identity-encoded one.
            self.remove_http_request_header("accept-encoding");
        }
        let json = self
            .get_http_request_header("content-type")
            .is_some_and(|value| mask::is_json(&value));
        if self.config.requests() && json && !end_of_stream {
            self.mask_request = true;
            self.remove_http_request_header("content-length");
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.mask_request {
            return Action::Continue;
        }
        if !end_of_stream {
            // In a body callback Pause means "keep buffering": the whole body comes back with end_of_stream.
            return Action::Pause;
        }
        if let Some(masked) = self
            .get_http_request_body(0, body_size)
            .and_then(|body| self.config.mask(&body))
        {
            self.set_http_request_body(0, body_size, &masked);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let json = self
            .get_http_response_header("content-type")
            .is_some_and(|value| mask::is_json(&value));
        let encoded = self
            .get_http_response_header("content-encoding")
            .is_some_and(|value| !value.trim().eq_ignore_ascii_case("identity"));
        if self.config.responses() && json && !encoded && !end_of_stream {
            self.mask_response = true;
            self.remove_http_response_header("content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.mask_response {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if let Some(masked) = self
            .get_http_response_body(0, body_size)
            .and_then(|body| self.config.mask(&body))
        {
            self.set_http_response_body(0, body_size, &masked);
        }
        Action::Continue
    }
}
