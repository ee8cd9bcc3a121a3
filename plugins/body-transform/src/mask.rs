//! The body-transform configuration and the JSON field mask: which bodies qualify (by content type) and how dotted
//! paths reach into nested objects and arrays of objects. Pure code, tested on the host.

use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Request,
    Response,
    Both,
}

#[derive(Debug, PartialEq)]
pub struct Config {
    pub direction: Direction,
    /// Each field as its path segments: "card.number" → ["card", "number"].
    paths: Vec<Vec<String>>,
    replacement: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    direction: Direction,
    mask_fields: Vec<String>,
    #[serde(default = "default_replacement")]
    replacement: String,
}

fn default_replacement() -> String {
    "***".into()
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.is_empty() {
            return Err("the configuration is empty; expected {\"direction\", \"mask_fields\"}".into());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if raw.mask_fields.is_empty() {
            return Err("mask_fields is empty: nothing to mask".into());
        }
        let paths = raw
            .mask_fields
            .iter()
            .map(|field| {
                let path: Vec<String> = field.split('.').map(str::to_string).collect();
                if path.iter().any(String::is_empty) {
                    return Err(format!("mask_fields: {field:?} has an empty path segment"));
                }
                Ok(path)
            })
            .collect::<Result<_, _>>()?;
        Ok(Config {
            direction: raw.direction,
            paths,
            replacement: Value::String(raw.replacement),
        })
    }

    pub fn requests(&self) -> bool {
        matches!(self.direction, Direction::Request | Direction::Both)
    }

    pub fn responses(&self) -> bool {
        matches!(self.direction, Direction::Response | Direction::Both)
    }

    /// The body with every configured field replaced, or None when it is not JSON or holds none of the fields (the
    /// body then passes unchanged, byte for byte).
    pub fn mask(&self, body: &[u8]) -> Option<Vec<u8>> {
        let mut document: Value = serde_json::from_slice(body).ok()?;
        let mut masked = false;
        for path in &self.paths {
            masked |= mask_path(&mut document, path, &self.replacement);
        }
        if masked {
            serde_json::to_vec(&document).ok()
        } else {
            None
        }
    }
}

/// Replaces the field at `path` below `value`; an array on the way applies the rest of the path to each element.
fn mask_path(value: &mut Value, path: &[String], replacement: &Value) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    match value {
        Value::Object(fields) => match fields.get_mut(first) {
            Some(field) if rest.is_empty() => {
                *field = replacement.clone();
                true
            }
            Some(field) => mask_path(field, rest, replacement),
            None => false,
        },
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |masked, item| mask_path(item, path, replacement) | masked),
        _ => false,
    }
}

/// `application/json` or a `+json` type such as `application/problem+json`, parameters ignored.
pub fn is_json(content_type: &str) -> bool {
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    media_type == "application/json" || (media_type.starts_with("application/") && media_type.ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(fields: &[&str]) -> Config {
        let json = json!({"direction": "both", "mask_fields": fields}).to_string();
        Config::parse(json.as_bytes()).unwrap()
    }

    fn masked(config: &Config, body: Value) -> Option<Value> {
        config
            .mask(body.to_string().as_bytes())
            .map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn masks_top_level_and_nested_fields() {
        let c = config(&["password", "card.number"]);
        let body = json!({"user": "a", "password": "hunter2", "card": {"number": "4111", "exp": "12/30"}});
        assert_eq!(
            masked(&c, body),
            Some(json!({"user": "a", "password": "***", "card": {"number": "***", "exp": "12/30"}}))
        );
    }

    #[test]
    fn walks_arrays_of_objects_at_any_level() {
        let c = config(&["cards.number", "token"]);
        let body = json!({"cards": [{"number": "1"}, {"number": "2", "cvv": 3}, "not an object"]});
        assert_eq!(
            masked(&c, body),
            Some(json!({"cards": [{"number": "***"}, {"number": "***", "cvv": 3}, "not an object"]}))
        );
        let top_level_array = json!([{"token": "a"}, {"other": 1}]);
        assert_eq!(
            masked(&c, top_level_array),
            Some(json!([{"token": "***"}, {"other": 1}]))
        );
    }

    #[test]
    fn masks_whole_subtrees_and_uses_the_configured_replacement() {
        let c = Config::parse(br#"{"direction": "request", "mask_fields": ["card"], "replacement": "[redacted]"}"#)
            .unwrap();
        assert_eq!(
            masked(&c, json!({"card": {"number": "1"}})),
            Some(json!({"card": "[redacted]"}))
        );
        assert!(c.requests() && !c.responses());
    }

    #[test]
    fn leaves_other_bodies_alone() {
        let c = config(&["password", "card.number"]);
        assert_eq!(c.mask(b"not json"), None);
        assert_eq!(c.mask(br#"{"password": "x""#), None);
        assert_eq!(c.mask(b""), None);
        assert_eq!(masked(&c, json!({"user": "a"})), None);
        assert_eq!(masked(&c, json!({"card": "4111"})), None);
        assert_eq!(masked(&c, json!("password")), None);
        assert_eq!(
            masked(&c, json!({"pass": {"password": "nested, not at the configured path"}})),
            None
        );
    }

    #[test]
    fn recognises_json_content_types() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/problem+json"));
        assert!(!is_json("text/json-ish"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }

    #[test]
    fn rejects_unusable_configs() {
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err(r#"{"direction": "sideways", "mask_fields": ["a"]}"#).contains("unknown variant `sideways`"));
        assert!(err(r#"{"direction": "both", "mask_fields": []}"#).contains("nothing to mask"));
        assert!(err(r#"{"direction": "both", "mask_fields": ["a..b"]}"#).contains("empty path segment"));
        assert!(err(r#"{"direction": "both", "mask_fields": ["a."]}"#).contains("empty path segment"));
        assert!(err(r#"{"mask_fields": ["a"]}"#).contains("missing field `direction`"));
        assert!(err(r#"{"direction": "both", "mask_fields": ["a"], "replacement": 0}"#).contains("invalid type"));
        assert_eq!(
            Config::parse(br#"{"direction": "response", "mask_fields": ["a"]}"#)
                .unwrap()
                .direction,
            Direction::Response
        );
    }
}
