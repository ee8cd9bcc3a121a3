//! header-rewrite: a proxy-wasm plugin that removes, sets and adds request and response headers as its JSON
//! configuration says (format in plugins/README.md). The SDK glue is here; the configuration rules are in `config`.

#![forbid(unsafe_code)]

mod config;

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use tollgate_plugin_support::ConfiguredRoot;

use config::{Config, Edits};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("header-rewrite", Config::parse, |_, config| {
            Box::new(Stream { config })
        }))
    });
}}

struct Stream {
    config: Rc<Config>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Edits { remove, set, add } = &self.config.request;
        for name in remove {
            self.remove_http_request_header(name);
        }
        for (name, value) in set {
            self.set_http_request_header(name, Some(value));
        }
        for (name, value) in add {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Edits { remove, set, add } = &self.config.response;
        for name in remove {
            self.remove_http_response_header(name);
        }
        for (name, value) in set {
            self.set_http_response_header(name, Some(value));
        }
        for (name, value) in add {
            self.add_http_response_header(name, value);
        }
        Action::Continue
    }
}
