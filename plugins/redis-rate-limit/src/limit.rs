//! The redis-rate-limit configuration, the one-round-trip Redis query (an `EVAL` of a small Lua script), and the
//! verdict drawn from its reply. Pure code, tested on the host.

use serde::Deserialize;

use crate::resp::{self, Reply};

/// INCR the window's counter, start its expiry on the first hit (and repair a counter that somehow lost its
/// expiry, which would otherwise never reset), return {count, seconds left}. Atomic inside Redis, so every
/// gateway counting against the same key agrees.
pub const SCRIPT: &str = "local c = redis.call('INCR', KEYS[1]) \
if c == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end \
local t = redis.call('TTL', KEYS[1]) \
if t < 0 then redis.call('EXPIRE', KEYS[1], ARGV[1]) t = tonumber(ARGV[1]) end \
return {c, t}";

#[derive(Debug, PartialEq, Eq)]
pub enum KeySource {
    /// The client IP (port stripped) from the `source.address` property.
    Ip,
    /// The value of this (lower-case) request header; requests without it share one counter.
    Header(String),
    /// One counter for every request.
    Global,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub redis_cluster: String,
    pub username: String,
    pub password: String,
    pub timeout_ms: u32,
    pub key: KeySource,
    pub requests: u64,
    pub window_seconds: u64,
    pub key_prefix: String,
    pub fail_open_on_redis_error: bool,
    pub status: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    redis_cluster: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
    key: String,
    requests: u64,
    window_seconds: u64,
    #[serde(default = "default_key_prefix")]
    key_prefix: String,
    #[serde(default = "default_fail_open")]
    fail_open_on_redis_error: bool,
    #[serde(default = "default_status")]
    status: u32,
}

fn default_timeout_ms() -> u32 {
    500
}

fn default_key_prefix() -> String {
    "tollgate-rl".into()
}

fn default_fail_open() -> bool {
    true
}

fn default_status() -> u32 {
    429
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.is_empty() {
            return Err(
                "the configuration is empty; expected {\"redis_cluster\", \"key\", \"requests\", \
                        \"window_seconds\"}"
                    .into(),
            );
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if raw.redis_cluster.is_empty() {
            return Err("redis_cluster is empty".into());
        }
        if raw.timeout_ms == 0 {
            return Err("timeout_ms must be at least 1".into());
        }
        if raw.requests == 0 {
            return Err("requests must be at least 1".into());
        }
        if raw.window_seconds == 0 {
            return Err("window_seconds must be at least 1".into());
        }
        if !(400..=599).contains(&raw.status) {
            return Err(format!("status {} is not an HTTP error status (400-599)", raw.status));
        }
        Ok(Config {
            key: parse_key(&raw.key)?,
            redis_cluster: raw.redis_cluster,
            username: raw.username,
            password: raw.password,
            timeout_ms: raw.timeout_ms,
            requests: raw.requests,
            window_seconds: raw.window_seconds,
            key_prefix: raw.key_prefix,
            fail_open_on_redis_error: raw.fail_open_on_redis_error,
            status: raw.status,
        })
    }

    /// The RESP query counting one request against `key` (the request's key, already resolved).
    pub fn query(&self, key: &str) -> Vec<u8> {
        let redis_key = format!("{}:{key}", self.key_prefix);
        let window = self.window_seconds.to_string();
        resp::command(&[
            b"EVAL",
            SCRIPT.as_bytes(),
            b"1",
            redis_key.as_bytes(),
            window.as_bytes(),
        ])
    }
}

/// "ip", "global" or "header:<name>".
fn parse_key(key: &str) -> Result<KeySource, String> {
    match key {
        "ip" => Ok(KeySource::Ip),
        "global" => Ok(KeySource::Global),
        _ => {
            let name = key
                .strip_prefix("header:")
                .ok_or_else(|| format!("key {key:?} is not \"ip\", \"global\" or \"header:<name>\""))?;
            let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if name.is_empty() || !name.chars().all(is_token_char) {
                return Err(format!("key {key:?}: {name:?} is not a valid header name"));
            }
            Ok(KeySource::Header(name.to_ascii_lowercase()))
        }
    }
}

/// The address without its port: "10.0.0.1:5000" → "10.0.0.1", "[::1]:5000" → "::1"; anything else unchanged.
pub fn client_ip(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split_once(']').map_or(address, |(ip, _)| ip);
    }
    match address.split_once(':') {
        Some((ip, port)) if !port.contains(':') => ip,
        _ => address,
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow { remaining: u64 },
    Deny { retry_after: u64 },
}

/// Reads the script's `{count, ttl}` reply: the `requests`-th request of a window is still admitted.
pub fn verdict(reply: &[u8], requests: u64) -> Result<Verdict, String> {
    match resp::parse(reply)? {
        Reply::Array(Some(items)) => match items.as_slice() {
            [Reply::Integer(count), Reply::Integer(ttl)] if *count > 0 => {
                let count = *count as u64;
                if count > requests {
                    Ok(Verdict::Deny {
                        retry_after: (*ttl).max(1) as u64,
                    })
                } else {
                    Ok(Verdict::Allow {
                        remaining: requests - count,
                    })
                }
            }
            _ => Err(format!("unexpected script result {items:?}")),
        },
        Reply::Error(message) => Err(format!("redis error: {message}")),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"{"redis_cluster": "redis", "key": "ip", "requests": 5, "window_seconds": 10}"#;

    #[test]
    fn parses_with_defaults() {
        let c = Config::parse(MINIMAL.as_bytes()).unwrap();
        assert_eq!(
            c,
            Config {
                redis_cluster: "redis".into(),
                username: String::new(),
                password: String::new(),
                timeout_ms: 500,
                key: KeySource::Ip,
                requests: 5,
                window_seconds: 10,
                key_prefix: "tollgate-rl".into(),
                fail_open_on_redis_error: true,
                status: 429,
            }
        );
        let c = Config::parse(
            br#"{"redis_cluster": "r", "username": "u", "password": "p", "timeout_ms": 50, "key": "header:X-Tenant",
                 "requests": 1, "window_seconds": 1, "key_prefix": "api", "fail_open_on_redis_error": false,
                 "status": 503}"#,
        )
        .unwrap();
        assert_eq!(
            (c.key, c.timeout_ms, c.fail_open_on_redis_error, c.status),
            (KeySource::Header("x-tenant".into()), 50, false, 503)
        );
        assert_eq!(
            Config::parse(br#"{"redis_cluster": "r", "key": "global", "requests": 1, "window_seconds": 1}"#)
                .unwrap()
                .key,
            KeySource::Global
        );
    }

    #[test]
    fn rejects_unusable_configs() {
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        let with = |field: &str| MINIMAL.replace('}', &format!(", {field}}}"));
        assert!(err("").contains("empty"));
        assert!(err(r#"{"key": "ip", "requests": 5, "window_seconds": 10}"#).contains("missing field `redis_cluster`"));
        assert!(err(&MINIMAL.replace("\"redis\"", "\"\"")).contains("redis_cluster is empty"));
        assert!(err(&MINIMAL.replace("\"ip\"", "\"path\"")).contains("is not \"ip\""));
        assert!(err(&MINIMAL.replace("5", "0")).contains("requests must be at least 1"));
        assert!(err(&MINIMAL.replace("10", "0")).contains("window_seconds must be at least 1"));
        assert!(err(&with("\"timeout_ms\": 0")).contains("timeout_ms"));
        assert!(err(&with("\"status\": 302")).contains("400-599"));
        assert!(err(&with("\"window\": \"60s\"")).contains("unknown field `window`"));
    }

    #[test]
    fn the_query_is_one_eval_with_the_prefixed_key_and_window() {
        let c = Config::parse(MINIMAL.as_bytes()).unwrap();
        let expected = resp::command(&[b"EVAL", SCRIPT.as_bytes(), b"1", b"tollgate-rl:ip:10.0.0.1", b"10"]);
        assert_eq!(c.query("ip:10.0.0.1"), expected);
        assert!(String::from_utf8(expected).unwrap().starts_with("*5\r\n$4\r\nEVAL\r\n"));
    }

    #[test]
    fn verdicts_from_replies() {
        assert_eq!(verdict(b"*2\r\n:1\r\n:10\r\n", 5), Ok(Verdict::Allow { remaining: 4 }));
        assert_eq!(verdict(b"*2\r\n:5\r\n:3\r\n", 5), Ok(Verdict::Allow { remaining: 0 }));
        assert_eq!(verdict(b"*2\r\n:6\r\n:3\r\n", 5), Ok(Verdict::Deny { retry_after: 3 }));
        assert_eq!(verdict(b"*2\r\n:6\r\n:0\r\n", 5), Ok(Verdict::Deny { retry_after: 1 }));
        assert!(verdict(b"-NOSCRIPT no script\r\n", 5)
            .unwrap_err()
            .contains("redis error: NOSCRIPT"));
        assert!(verdict(b":1\r\n", 5).unwrap_err().contains("unexpected reply"));
        assert!(verdict(b"*1\r\n:1\r\n", 5)
            .unwrap_err()
            .contains("unexpected script result"));
        assert!(verdict(b"*2\r\n:0\r\n:1\r\n", 5).is_err());
        assert!(verdict(b"*2\r\n:1\r\n", 5).is_err());
    }

    #[test]
    fn strips_ports_from_addresses() {
        assert_eq!(client_ip("10.1.2.3:4567"), "10.1.2.3");
        assert_eq!(client_ip("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1");
    }
}
