//! The basic-auth configuration and the check of an `Authorization: Basic …` header against the configured
//! consumers. Pure code, tested on the host.

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

const DEFAULT_REALM: &str = "tollgate";
const DEFAULT_CONSUMER_HEADER: &str = "x-consumer";

#[derive(Debug)]
pub struct Config {
    /// The `WWW-Authenticate` value sent with every 401, built once.
    pub challenge: String,
    /// Lower-case name of the header that tells the upstream which consumer was authenticated.
    pub consumer_header: String,
    /// "user:password" → consumer name.
    consumers: HashMap<String, String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    Missing,
    Invalid,
}

impl Denied {
    pub fn message(&self) -> &'static str {
        match self {
            Denied::Missing => "missing credentials",
            Denied::Invalid => "invalid credentials",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    consumers: Vec<RawConsumer>,
    #[serde(default)]
    realm: Option<String>,
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
            return Err("the configuration is empty; expected {\"consumers\": [{\"name\", \"credential\"}]}".into());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let realm = raw.realm.as_deref().unwrap_or(DEFAULT_REALM);
        if realm.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
            return Err(format!(
                "realm {realm:?} may not contain quotes, backslashes or control characters"
            ));
        }
        let consumer_header = match raw.consumer_header {
            Some(name) => header_name(&name)?,
            None => DEFAULT_CONSUMER_HEADER.to_string(),
        };
        if raw.consumers.is_empty() {
            return Err("\"consumers\" is empty: no request could ever be admitted".into());
        }
        let mut consumers = HashMap::new();
        for (i, consumer) in raw.consumers.into_iter().enumerate() {
            if consumer.name.is_empty() || consumer.name.chars().any(|c| c.is_control()) {
                return Err(format!("consumers[{i}].name must be non-empty printable text"));
            }
            match consumer.credential.split_once(':') {
                Some((user, _)) if !user.is_empty() => {}
                _ => {
                    return Err(format!(
                        "consumers[{i}].credential must be \"user:password\" with a non-empty user"
                    ))
                }
            }
            if let Some(other) = consumers.insert(consumer.credential, consumer.name.clone()) {
                return Err(format!(
                    "consumers[{i}] ({}) reuses the credential of {other}",
                    consumer.name
                ));
            }
        }
        Ok(Config {
            challenge: format!("Basic realm=\"{realm}\""),
            consumer_header,
            consumers,
        })
    }

    /// The consumer named by an `Authorization` header value, or why the request is denied.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&str, Denied> {
        let value = authorization
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or(Denied::Missing)?;
        let (scheme, token) = value.split_once(' ').ok_or(Denied::Invalid)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(Denied::Invalid);
        }
        let decoded = STANDARD.decode(token.trim_start()).map_err(|_| Denied::Invalid)?;
        let credential = String::from_utf8(decoded).map_err(|_| Denied::Invalid)?;
        self.consumers
            .get(&credential)
            .map(String::as_str)
            .ok_or(Denied::Invalid)
    }
}

fn header_name(name: &str) -> Result<String, String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() || !name.chars().all(is_token_char) {
        return Err(format!("consumer_header: {name:?} is not a valid header name"));
    }
    Ok(name.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"consumers": [{"name": "alice", "credential": "alice:password"},
                                           {"name": "bob", "credential": "bob:pa:ss"}], "realm": "api"}"#;

    fn basic(credential: &str) -> String {
        format!("Basic {}", STANDARD.encode(credential))
    }

    #[test]
    fn admits_configured_consumers() {
        let config = Config::parse(CONFIG.as_bytes()).unwrap();
        assert_eq!(config.challenge, "Basic realm=\"api\"");
        assert_eq!(config.consumer_header, "x-consumer");
        assert_eq!(config.authenticate(Some(&basic("alice:password"))), Ok("alice"));
        assert_eq!(config.authenticate(Some(&basic("bob:pa:ss"))), Ok("bob"));
        assert_eq!(
            config.authenticate(Some(&format!("  bAsIc   {}", STANDARD.encode("alice:password")))),
            Ok("alice")
        );
    }

    #[test]
    fn denies_missing_and_wrong_credentials() {
        let config = Config::parse(CONFIG.as_bytes()).unwrap();
        assert_eq!(config.authenticate(None), Err(Denied::Missing));
        assert_eq!(config.authenticate(Some("  ")), Err(Denied::Missing));
        assert_eq!(config.authenticate(Some(&basic("alice:wrong"))), Err(Denied::Invalid));
        assert_eq!(config.authenticate(Some(&basic("alice"))), Err(Denied::Invalid));
        assert_eq!(config.authenticate(Some("Bearer abc")), Err(Denied::Invalid));
        assert_eq!(config.authenticate(Some("Basic")), Err(Denied::Invalid));
        assert_eq!(config.authenticate(Some("Basic !!!notbase64")), Err(Denied::Invalid));
        assert_eq!(
            config.authenticate(Some(&format!("Basic {}", STANDARD.encode([0xff, b':', 0xfe])))),
            Err(Denied::Invalid)
        );
    }

    #[test]
    fn defaults_and_rejections() {
        let config =
            Config::parse(br#"{"consumers": [{"name": "a", "credential": "a:b"}], "consumer_header": "X-User"}"#)
                .unwrap();
        assert_eq!(config.challenge, "Basic realm=\"tollgate\"");
        assert_eq!(config.consumer_header, "x-user");
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err(r#"{"consumers": []}"#).contains("\"consumers\" is empty"));
        assert!(err(r#"{"consumers": [{"name": "a", "credential": "nocolon"}]}"#).contains("user:password"));
        assert!(err(r#"{"consumers": [{"name": "a", "credential": ":pw"}]}"#).contains("non-empty user"));
        assert!(
            err(r#"{"consumers": [{"name": "a", "credential": "a:b"}, {"name": "b", "credential": "a:b"}]}"#)
                .contains("reuses the credential of a")
        );
        assert!(err(r#"{"consumers": [{"name": "a", "credential": "a:b"}], "realm": "x\"y"}"#).contains("realm"));
        assert!(
            err(r#"{"consumers": [{"name": "a", "credential": "a:b"}], "consumer_header": "a b"}"#)
                .contains("consumer_header")
        );
        assert!(err(r#"{"consumers": [{"name": "a", "credential": "a:b"}], "realms": "x"}"#).contains("unknown field"));
    }
}
