//! The local-rate-limit configuration and the fixed-window arithmetic: which key a request counts against, how a
//! window's count is stored in shared data, and whether a request fits. Pure code, tested on the host.

use serde::Deserialize;

const DEFAULT_STATUS: u32 = 429;

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
    pub key: KeySource,
    pub requests: u64,
    pub window_secs: u64,
    pub status: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    key: String,
    requests: u64,
    window: RawWindow,
    #[serde(default)]
    status: Option<u32>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawWindow {
    Seconds(u64),
    Text(String),
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.is_empty() {
            return Err("the configuration is empty; expected {\"key\", \"requests\", \"window\"}".into());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let key = parse_key(&raw.key)?;
        if raw.requests == 0 {
            return Err("requests must be at least 1".into());
        }
        let window_secs = match raw.window {
            RawWindow::Seconds(secs) => secs,
            RawWindow::Text(text) => parse_duration_secs(&text)?,
        };
        if window_secs == 0 {
            return Err("window must be at least one second".into());
        }
        let status = raw.status.unwrap_or(DEFAULT_STATUS);
        if !(400..=599).contains(&status) {
            return Err(format!("status {status} is not an HTTP error status (400-599)"));
        }
        Ok(Config {
            key,
            requests: raw.requests,
            window_secs,
            status,
        })
    }
}

/// "ip", "global" or "header:<name>".
pub fn parse_key(key: &str) -> Result<KeySource, String> {
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

/// "90", "90s", "15m", "1h" → seconds.
fn parse_duration_secs(text: &str) -> Result<u64, String> {
    let invalid =
        || format!("window {text:?} is not a duration such as \"30s\", \"15m\", \"1h\" or a number of seconds");
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: u64 = digits.parse().map_err(|_| invalid())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(invalid()),
    };
    value.checked_mul(scale).ok_or_else(invalid)
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

/// One key's counter: the start (Unix seconds, a multiple of the window length) of the window it counts and the
/// requests admitted in it. Stored in shared data as 16 little-endian bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub count: u64,
}

impl Window {
    pub fn encode(&self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.start.to_le_bytes());
        bytes[8..].copy_from_slice(&self.count.to_le_bytes());
        bytes
    }

    /// None for anything that is not a stored window (a missing key reads as no bytes).
    pub fn decode(bytes: &[u8]) -> Option<Window> {
        let bytes: &[u8; 16] = bytes.try_into().ok()?;
        let (start, count) = bytes.split_at(8);
        Some(Window {
            start: u64::from_le_bytes(start.try_into().ok()?),
            count: u64::from_le_bytes(count.try_into().ok()?),
        })
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Admit and store `next`; `remaining` requests are left in this window afterwards.
    Allow { next: Window, remaining: u64 },
    /// Refuse; the window ends in `retry_after` seconds.
    Deny { retry_after: u64 },
}

/// Windows are aligned to multiples of their length since the epoch, so every worker and instance agrees on where
/// a window starts without talking to the others.
pub fn decide(stored: Option<Window>, now_secs: u64, window_secs: u64, limit: u64) -> Decision {
    let start = now_secs - now_secs % window_secs;
    let count = match stored {
        Some(window) if window.start == start => window.count,
        _ => 0,
    };
    if count >= limit {
        return Decision::Deny {
            retry_after: (start + window_secs - now_secs).max(1),
        };
    }
    Decision::Allow {
        next: Window {
            start,
            count: count + 1,
        },
        remaining: limit - count - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_windows_and_status() {
        let c = Config::parse(br#"{"key": "ip", "requests": 10, "window": "60s"}"#).unwrap();
        assert_eq!(
            c,
            Config {
                key: KeySource::Ip,
                requests: 10,
                window_secs: 60,
                status: 429
            }
        );
        let c = Config::parse(br#"{"key": "header:X-Tenant", "requests": 1, "window": 5, "status": 503}"#).unwrap();
        assert_eq!(
            c,
            Config {
                key: KeySource::Header("x-tenant".into()),
                requests: 1,
                window_secs: 5,
                status: 503
            }
        );
        let c = Config::parse(br#"{"key": "global", "requests": 3, "window": "2m"}"#).unwrap();
        assert_eq!((c.key, c.window_secs), (KeySource::Global, 120));
        assert_eq!(
            Config::parse(br#"{"key": "ip", "requests": 1, "window": "1h"}"#)
                .unwrap()
                .window_secs,
            3600
        );
        assert_eq!(
            Config::parse(br#"{"key": "ip", "requests": 1, "window": "7"}"#)
                .unwrap()
                .window_secs,
            7
        );
    }

    #[test]
    fn rejects_unusable_configs() {
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err(r#"{"key": "cookie", "requests": 1, "window": 1}"#).contains("is not \"ip\""));
        assert!(err(r#"{"key": "header:", "requests": 1, "window": 1}"#).contains("not a valid header name"));
        assert!(err(r#"{"key": "ip", "requests": 0, "window": 1}"#).contains("at least 1"));
        assert!(err(r#"{"key": "ip", "requests": 1, "window": 0}"#).contains("at least one second"));
        assert!(err(r#"{"key": "ip", "requests": 1, "window": "10d"}"#).contains("not a duration"));
        assert!(err(r#"{"key": "ip", "requests": 1, "window": "s"}"#).contains("not a duration"));
        assert!(err(r#"{"key": "ip", "requests": 1, "window": "-1s"}"#).contains("not a duration"));
        assert!(err(r#"{"key": "ip", "requests": 1, "window": 1, "status": 200}"#).contains("400-599"));
        assert!(err(r#"{"key": "ip", "requests": 1}"#).contains("missing field `window`"));
        assert!(err(r#"{"key": "ip", "requests": 1, "window": 1, "burst": 2}"#).contains("unknown field"));
    }

    #[test]
    fn strips_ports_from_addresses() {
        assert_eq!(client_ip("10.1.2.3:4567"), "10.1.2.3");
        assert_eq!(client_ip("[2001:db8::1]:443"), "2001:db8::1");
        assert_eq!(client_ip("2001:db8::1"), "2001:db8::1");
        assert_eq!(client_ip("10.1.2.3"), "10.1.2.3");
    }

    #[test]
    fn windows_round_trip_and_garbage_reads_as_none() {
        let w = Window {
            start: 1_700_000_040,
            count: 7,
        };
        assert_eq!(Window::decode(&w.encode()), Some(w));
        assert_eq!(Window::decode(b""), None);
        assert_eq!(Window::decode(&[1; 15]), None);
    }

    #[test]
    fn counts_up_to_the_limit_then_denies_until_the_next_window() {
        let (limit, window) = (3, 60);
        let mut stored = None;
        let mut remaining = vec![];
        for now in [120, 121, 150] {
            match decide(stored, now, window, limit) {
                Decision::Allow { next, remaining: r } => {
                    assert_eq!(next.start, 120);
                    stored = Some(next);
                    remaining.push(r);
                }
                deny => panic!("request at {now} denied: {deny:?}"),
            }
        }
        assert_eq!(remaining, [2, 1, 0]);
        assert_eq!(decide(stored, 170, window, limit), Decision::Deny { retry_after: 10 });
        assert_eq!(decide(stored, 179, window, limit), Decision::Deny { retry_after: 1 });
        let Decision::Allow { next, remaining } = decide(stored, 180, window, limit) else {
            panic!("new window denied")
        };
        assert_eq!((next, remaining), (Window { start: 180, count: 1 }, 2));
    }

    #[test]
    fn a_stale_window_is_replaced() {
        let stale = Some(Window { start: 0, count: 99 });
        assert_eq!(
            decide(stale, 65, 60, 1),
            Decision::Allow {
                next: Window { start: 60, count: 1 },
                remaining: 0
            }
        );
    }
}
