//! `test-alloc`: a misbehaving proxy-wasm plugin that, in the request headers callback, allocates, fills and
//! leaks 1 MiB blocks until the allocator cannot grow linear memory any more. Rust's allocation-failure
//! handler then aborts (wasm `unreachable`), so the gateway's tests see a memory-limit trap and can prove the
//! stream fails by the fail strategy, the worker survives and the instance is recreated.

use std::hint::black_box;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;
use tollgate_plugin_support::{empty_as_object, ConfiguredRoot};

const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Request header that arms the allocation; every stream allocates when absent.
    header: Option<String>,
}

/// An empty configuration means `{}`: allocate on every request.
fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let mut config: Config = serde_json::from_slice(empty_as_object(bytes)).map_err(|e| e.to_string())?;
    // Header maps hold lower-case names; match what the client sent whatever case the config used.
    config.header = config.header.map(|h| h.to_ascii_lowercase());
    Ok(config)
}

/// Never returns: leaks filled 1 MiB blocks until allocation fails and Rust's allocation-error handler aborts.
fn allocate_until_failure() -> ! {
    let mut mib: u64 = 0;
    loop {
        let chunk: &'static mut [u8] = vec![0xa5u8; CHUNK_BYTES].leak();
        // The optimizer may delete an allocation nobody reads; black_box makes every block observable.
        black_box(&mut *chunk);
        mib += 1;
        if mib.is_multiple_of(64) {
            log::warn!("test-alloc: leaked {mib} MiB so far");
        }
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("test-alloc", parse_config, |_, config| {
            Box::new(AllocStream {
                header: config.header.clone(),
            })
        }))
    });
}}

struct AllocStream {
    header: Option<String>,
}

impl Context for AllocStream {}

impl HttpContext for AllocStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let armed = match &self.header {
            Some(name) => self.get_http_request_header_bytes(name).is_some(),
            None => true,
        };
        if armed {
            log::warn!("test-alloc: allocating until linear memory runs out");
            allocate_until_failure();
        }
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_allocates_always() {
        assert_eq!(parse_config(b"").unwrap(), Config { header: None });
        assert_eq!(parse_config(b"{}").unwrap(), Config { header: None });
    }

    #[test]
    fn header_is_lower_cased_and_unknown_fields_rejected() {
        assert_eq!(
            parse_config(br#"{"header":"X-Alloc"}"#).unwrap(),
            Config {
                header: Some("x-alloc".to_string())
            }
        );
        assert!(parse_config(br#"{"headr":"x-alloc"}"#).is_err());
        assert!(parse_config(b"[").is_err());
    }
}
