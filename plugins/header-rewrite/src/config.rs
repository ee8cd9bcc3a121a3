//! The header-rewrite configuration: parsed from JSON, header names lower-cased and checked, values checked for
//! characters that would split a header. Pure code, tested on the host.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Edits for one direction, applied in this order: remove, set (replace or create), add (append another value).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Edits {
    pub remove: Vec<String>,
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub request: Edits,
    pub response: Edits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    request: RawEdits,
    #[serde(default)]
    response: RawEdits,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdits {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.is_empty() {
            return Err(
                "the configuration is empty; expected a JSON object with \"request\" and/or \"response\"".into(),
            );
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(Config {
            request: edits("request", raw.request)?,
            response: edits("response", raw.response)?,
        })
    }
}

fn edits(direction: &str, raw: RawEdits) -> Result<Edits, String> {
    let pairs = |kind: &str, map: BTreeMap<String, String>| -> Result<Vec<(String, String)>, String> {
        map.into_iter()
            .map(|(name, value)| {
                let name = header_name(&name).map_err(|e| format!("{direction}.{kind}: {e}"))?;
                check_value(&value).map_err(|e| format!("{direction}.{kind}.{name}: {e}"))?;
                Ok((name, value))
            })
            .collect()
    };
    let remove = raw
        .remove
        .iter()
        .map(|name| header_name(name).map_err(|e| format!("{direction}.remove: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(Edits {
        remove,
        set: pairs("set", raw.set)?,
        add: pairs("add", raw.add)?,
    })
}

/// The gateway keeps header names lower-case (as HTTP/2 does), so names are lower-cased here once.
fn header_name(name: &str) -> Result<String, String> {
    let is_token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if !name.chars().all(is_token_char) {
        return Err(format!(
            "{name:?} is not a valid header name (pseudo-headers such as :path are not rewritable)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

fn check_value(value: &str) -> Result<(), String> {
    if value.chars().any(|c| matches!(c, '\r' | '\n' | '\0')) {
        return Err(format!("{value:?} contains CR, LF or NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_both_directions_and_lowercases_names() {
        let config = Config::parse(
            br#"{"request": {"set": {"X-Env": "prod"}, "add": {"x-tag": "a"}, "remove": ["Cookie"]},
                 "response": {"remove": ["server", "x-powered-by"]}}"#,
        )
        .unwrap();
        assert_eq!(
            config.request,
            Edits {
                remove: vec!["cookie".into()],
                set: owned(&[("x-env", "prod")]),
                add: owned(&[("x-tag", "a")])
            }
        );
        assert_eq!(
            config.response.remove,
            vec!["server".to_string(), "x-powered-by".to_string()]
        );
        assert!(config.response.set.is_empty() && config.response.add.is_empty());
    }

    #[test]
    fn one_direction_is_enough() {
        let config = Config::parse(br#"{"response": {"set": {"cache-control": "no-store"}}}"#).unwrap();
        assert_eq!(config.request, Edits::default());
        assert_eq!(config.response.set, owned(&[("cache-control", "no-store")]));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err("{").contains("EOF"));
        assert!(err(r#"{"requests": {}}"#).contains("unknown field `requests`"));
        assert!(err(r#"{"request": {"replace": {}}}"#).contains("unknown field `replace`"));
        assert!(err(r#"{"request": {"set": {"bad name": "x"}}}"#).contains("request.set"));
        assert!(err(r#"{"request": {"remove": [":path"]}}"#).contains("request.remove"));
        assert!(err(r#"{"response": {"add": {"x-a": "1\r\nx-b: 2"}}}"#).contains("response.add.x-a"));
        assert!(err(r#"{"request": {"set": {"x-a": 1}}}"#).contains("invalid type"));
        assert!(err(r#"{"request": {"remove": [""]}}"#).contains("empty header name"));
    }
}
