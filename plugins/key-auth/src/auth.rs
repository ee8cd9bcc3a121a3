//! The key-auth configuration and decisions: where the API key is looked for (headers, then query parameters),
//! which consumer it belongs to, and how the key is taken out of the request forwarded upstream. Pure code, tested
//! on the host.

use std::collections::HashMap;

use serde::Deserialize;

const DEFAULT_CONSUMER_HEADER: &str = "x-consumer";

#[derive(Debug)]
pub struct Config {
    /// Lower-case header names, looked up in order.
    pub header_keys: Vec<String>,
    /// Query parameter names, looked up in order after the headers.
    pub query_keys: Vec<String>,
    /// Lower-case name of the header that tells the upstream which consumer was authenticated.
    pub consumer_header: String,
    /// credential → consumer name.
    consumers: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    query_keys: Vec<String>,
    consumers: Vec<RawConsumer>,
    #[serde(default)]
    consumer_header: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConsumer {
    name: String,
    credential: String,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.is_empty() {
            return Err("the configuration is empty; expected {\"keys\": [...], \"consumers\": [...]}".into());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if raw.keys.is_empty() && raw.query_keys.is_empty() {
            return Err(
                "neither \"keys\" (header names) nor \"query_keys\" is given: nowhere to look for the key".into(),
            );
        }
        let header_keys = raw
            .keys
            .iter()
            .map(|k| header_name(k, "keys"))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(empty) = raw.query_keys.iter().position(|k| k.is_empty()) {
            return Err(format!("query_keys[{empty}] is empty"));
        }
        let consumer_header = match &raw.consumer_header {
            Some(name) => header_name(name, "consumer_header")?,
            None => DEFAULT_CONSUMER_HEADER.to_string(),
        };
        if raw.consumers.is_empty() {
            return Err("\"consumers\" is empty: no key could ever be accepted".into());
        }
        let mut consumers = HashMap::new();
        for (i, consumer) in raw.consumers.into_iter().enumerate() {
            if consumer.name.is_empty() || consumer.name.chars().any(|c| c.is_control()) {
                return Err(format!("consumers[{i}].name must be non-empty printable text"));
            }
            if consumer.credential.is_empty() {
                return Err(format!("consumers[{i}].credential is empty"));
            }
            if let Some(other) = consumers.insert(consumer.credential, consumer.name.clone()) {
                return Err(format!(
                    "consumers[{i}] ({}) reuses the credential of {other}",
                    consumer.name
                ));
            }
        }
        Ok(Config {
            header_keys,
            query_keys: raw.query_keys,
            consumer_header,
            consumers,
        })
    }

    /// The first non-empty key found: header names in order, then query parameters of `path` in order.
    pub fn find_key(&self, header: impl Fn(&str) -> Option<String>, path: &str) -> Option<String> {
        let from_headers = self
            .header_keys
            .iter()
            .filter_map(|name| header(name))
            .find(|value| !value.is_empty());
        from_headers.or_else(|| {
            self.query_keys
                .iter()
                .filter_map(|name| query_param(path, name))
                .find(|value| !value.is_empty())
        })
    }

    pub fn consumer(&self, key: &str) -> Option<&str> {
        self.consumers.get(key).map(String::as_str)
    }
}

fn header_name(name: &str, field: &str) -> Result<String, String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("{field}: {name:?} is not a valid header name"));
    }
    Ok(name.to_ascii_lowercase())
}

/// The percent-decoded value of the first `name` parameter in the query of `path`.
fn query_param(path: &str, name: &str) -> Option<String> {
    let (_, query) = path.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// `path` without the query parameters named in `names`, or None when it has none of them. The key must not
/// travel to the upstream: it would show up in its access logs.
pub fn strip_query_params(path: &str, names: &[String]) -> Option<String> {
    let (base, query) = path.split_once('?')?;
    let is_key = |pair: &&str| {
        let key = pair.split_once('=').map_or(*pair, |(key, _)| key);
        names.iter().any(|name| *name == percent_decode(key))
    };
    if !query.split('&').any(|pair| is_key(&pair)) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_key(pair)).collect();
    Some(if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).and_then(|&b| hex(b)),
            bytes.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    const BOTH: &str = r#"{"keys": ["X-API-Key", "x-token"], "query_keys": ["apikey"],
        "consumers": [{"name": "alice", "credential": "s3cret"}, {"name": "bob", "credential": "b0b"}]}"#;

    #[test]
    fn parses_and_defaults_the_consumer_header() {
        let c = config(BOTH);
        assert_eq!(c.header_keys, ["x-api-key", "x-token"]);
        assert_eq!(c.query_keys, ["apikey"]);
        assert_eq!(c.consumer_header, "x-consumer");
        assert_eq!(c.consumer("s3cret"), Some("alice"));
        assert_eq!(c.consumer("b0b"), Some("bob"));
        assert_eq!(c.consumer("S3CRET"), None);
        let c = config(
            r#"{"query_keys": ["k"], "consumers": [{"name": "a", "credential": "x"}], "consumer_header": "X-Who"}"#,
        );
        assert_eq!(c.consumer_header, "x-who");
    }

    #[test]
    fn rejects_configs_that_cannot_work() {
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err(r#"{"consumers": [{"name": "a", "credential": "x"}]}"#).contains("nowhere to look"));
        assert!(err(r#"{"keys": ["k"], "consumers": []}"#).contains("\"consumers\" is empty"));
        assert!(err(r#"{"keys": ["k"]}"#).contains("missing field `consumers`"));
        assert!(err(r#"{"keys": ["bad key"], "consumers": [{"name": "a", "credential": "x"}]}"#).contains("keys:"));
        assert!(
            err(r#"{"keys": ["k"], "consumers": [{"name": "a", "credential": ""}]}"#).contains("credential is empty")
        );
        assert!(err(
            r#"{"keys": ["k"], "consumers": [{"name": "a", "credential": "x"}, {"name": "b", "credential": "x"}]}"#
        )
        .contains("reuses the credential of a"));
        assert!(
            err(r#"{"keys": ["k"], "consumers": [{"name": "a", "credential": "x", "extra": 1}]}"#)
                .contains("unknown field")
        );
        assert!(
            err(r#"{"query_keys": [""], "consumers": [{"name": "a", "credential": "x"}]}"#).contains("query_keys[0]")
        );
    }

    #[test]
    fn headers_win_over_the_query_and_empty_values_do_not_count() {
        let c = config(BOTH);
        let headers = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string())
        };
        assert_eq!(
            c.find_key(headers(&[("x-token", "t")]), "/a?apikey=q").as_deref(),
            Some("t")
        );
        assert_eq!(
            c.find_key(headers(&[("x-api-key", "h"), ("x-token", "t")]), "/")
                .as_deref(),
            Some("h")
        );
        assert_eq!(
            c.find_key(headers(&[("x-api-key", "")]), "/a?x=1&apikey=q%2Bw")
                .as_deref(),
            Some("q+w")
        );
        assert_eq!(c.find_key(headers(&[]), "/a?apikey=&apikey2=z"), None);
        assert_eq!(c.find_key(headers(&[]), "/apikey=z"), None);
    }

    #[test]
    fn strips_only_the_key_parameters() {
        let names = ["apikey".to_string()];
        assert_eq!(strip_query_params("/a?apikey=s&b=2", &names).as_deref(), Some("/a?b=2"));
        assert_eq!(
            strip_query_params("/a?b=2&apikey=s&c", &names).as_deref(),
            Some("/a?b=2&c")
        );
        assert_eq!(strip_query_params("/a?apikey=s", &names).as_deref(), Some("/a"));
        assert_eq!(strip_query_params("/a?api%6Bey=s", &names).as_deref(), Some("/a"));
        assert_eq!(strip_query_params("/a?apikey2=s", &names), None);
        assert_eq!(strip_query_params("/a", &names), None);
    }

    #[test]
    fn percent_decoding_leaves_broken_escapes_alone() {
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
    }
}
