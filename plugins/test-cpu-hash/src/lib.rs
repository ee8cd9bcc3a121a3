//! `test-cpu-hash`: the CPU-heavy plugin of the plugin benchmark (AOT against the fast interpreter). On
//! request headers it runs a chain of `rounds` SHA-256 hashes over the request's `:path` and a fixed 1 KiB
//! buffer and sends the final digest upstream in the request header `x-hash`. The chain is defined in
//! [`hash_chain`]; plugins/test-README.md gives reference values so tests can check the header.

mod sha256;

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};
use serde::Deserialize;
use sha256::Sha256;
use tollgate_plugin_support::{empty_as_object, ConfiguredRoot};

const DEFAULT_ROUNDS: u32 = 2000;
/// Keeps a typo from making one request take minutes in the interpreter.
const MAX_ROUNDS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_rounds")]
    rounds: u32,
}

fn default_rounds() -> u32 {
    DEFAULT_ROUNDS
}

/// An empty configuration means `{}`.
fn parse_config(bytes: &[u8]) -> Result<Config, String> {
    let config: Config = serde_json::from_slice(empty_as_object(bytes)).map_err(|e| e.to_string())?;
    if !(1..=MAX_ROUNDS).contains(&config.rounds) {
        return Err(format!(
            "rounds must be between 1 and {MAX_ROUNDS}, got {}",
            config.rounds
        ));
    }
    Ok(config)
}

/// The fixed 1 KiB buffer hashed in every round: byte `i` is `i mod 256`.
fn filler() -> [u8; 1024] {
    std::array::from_fn(|i| (i % 256) as u8)
}

/// `d1 = SHA-256(path ‖ filler)`, `dk = SHA-256(d(k-1) ‖ filler)`; returns `d(rounds)` (`rounds` ≥ 1).
fn hash_chain(path: &[u8], rounds: u32) -> [u8; 32] {
    let filler = filler();
    let mut hasher = Sha256::new();
    hasher.update(path);
    hasher.update(&filler);
    let mut digest = hasher.finalize();
    for _ in 1..rounds {
        let mut hasher = Sha256::new();
        hasher.update(&digest);
        hasher.update(&filler);
        digest = hasher.finalize();
    }
    digest
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| {
        Box::new(ConfiguredRoot::new("test-cpu-hash", parse_config, |_, config| {
            Box::new(HashStream { rounds: config.rounds })
        }))
    });
}}

struct HashStream {
    rounds: u32,
}

impl Context for HashStream {}

impl HttpContext for HashStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header_bytes(":path").unwrap_or_default();
        let digest = hash_chain(&path, self.rounds);
        self.set_http_request_header("x-hash", Some(&to_hex(&digest)));
        Action::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Python's hashlib (see plugins/test-README.md).
    #[test]
    fn chain_matches_reference_values() {
        let cases: [(&[u8], u32, &str); 4] = [
            (
                b"/",
                1,
                "a4642996bf86d3e8fb6dea212c8c2b45eab92e1a27f4bb367c14c704385a7354",
            ),
            (
                b"/",
                2,
                "dc9b697bd4e1270aed2e3f0e38036a4e52a3d7d44dc6fef351ae44556a5bec6e",
            ),
            (
                b"/",
                2000,
                "c92be413ea21492513ee90c94ae42bcc8f66585b703f914cc6c927cfa7011d87",
            ),
            (
                b"/bench?x=1",
                3,
                "4bf63367d3e97e4269e6e1840b7d3504f7b59a86f326099574f37ed8d95e8786",
            ),
        ];
        for (path, rounds, expected) in cases {
            assert_eq!(
                to_hex(&hash_chain(path, rounds)),
                expected,
                "{} x{rounds}",
                String::from_utf8_lossy(path)
            );
        }
    }

    #[test]
    fn config_defaults_and_bounds() {
        assert_eq!(parse_config(b"").unwrap().rounds, DEFAULT_ROUNDS);
        assert_eq!(parse_config(br#"{"rounds":5}"#).unwrap().rounds, 5);
        assert!(parse_config(br#"{"rounds":0}"#).is_err());
        assert!(parse_config(br#"{"rounds":1000001}"#).is_err());
        assert!(parse_config(br#"{"round":5}"#).is_err());
    }
}
