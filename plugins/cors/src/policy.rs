//! The CORS policy: which origins, methods and headers are allowed, the answer to a preflight, and the headers an
//! allowed cross-origin response carries. Pure code, tested on the host.

use serde::Deserialize;

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    origins: Vec<OriginPattern>,
    /// Upper-case, as methods are compared case-sensitively and sent upper-case by browsers.
    methods: Vec<String>,
    /// Lower-case; `None` means "*": whatever the preflight asks for.
    headers: Option<Vec<String>>,
    expose_headers: Vec<String>,
    max_age: Option<u64>,
    allow_credentials: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum OriginPattern {
    Any,
    Exact(String),
    /// "https://*.example.com": the scheme plus "://", and the suffix ".example.com" after at least one label.
    Subdomains {
        scheme: String,
        suffix: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    max_age: Option<u64>,
    #[serde(default)]
    allow_credentials: bool,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

impl Config {
    pub fn parse(bytes: &[u8]) -> Result<Config, String> {
        if bytes.is_empty() {
            return Err("the configuration is empty; expected {\"allow_origins\": [...]}".into());
        }
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if raw.allow_origins.is_empty() {
            return Err("allow_origins is empty: no cross-origin request could ever be allowed".into());
        }
        let origins = raw
            .allow_origins
            .iter()
            .map(|o| origin_pattern(o))
            .collect::<Result<_, _>>()?;
        let methods = raw
            .allow_methods
            .iter()
            .map(|m| {
                if is_token(m) {
                    Ok(m.to_ascii_uppercase())
                } else {
                    Err(format!("allow_methods: {m:?} is not a method"))
                }
            })
            .collect::<Result<_, _>>()?;
        let header_list = |field: &str, names: &[String]| -> Result<Vec<String>, String> {
            names
                .iter()
                .map(|n| {
                    if is_token(n) {
                        Ok(n.to_ascii_lowercase())
                    } else {
                        Err(format!("{field}: {n:?} is not a header name"))
                    }
                })
                .collect()
        };
        let headers = if raw.allow_headers.iter().any(|h| h == "*") {
            None
        } else {
            Some(header_list("allow_headers", &raw.allow_headers)?)
        };
        Ok(Config {
            origins,
            methods,
            headers,
            expose_headers: header_list("expose_headers", &raw.expose_headers)?,
            max_age: raw.max_age,
            allow_credentials: raw.allow_credentials,
        })
    }

    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.to_ascii_lowercase();
        self.origins.iter().any(|pattern| match pattern {
            OriginPattern::Any => true,
            OriginPattern::Exact(allowed) => *allowed == origin,
            OriginPattern::Subdomains { scheme, suffix } => origin
                .strip_prefix(scheme.as_str())
                .and_then(|host| host.strip_suffix(suffix.as_str()))
                .is_some_and(|label| !label.is_empty() && !label.contains('/')),
        })
    }

    /// The headers of the 204 answering a preflight from `origin` asking for `method` and the comma-separated
    /// `requested_headers`, or None when any of them is not allowed (answered with 403).
    pub fn preflight(
        &self,
        origin: &str,
        method: &str,
        requested_headers: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        if !self.origin_allowed(origin) || !self.methods.iter().any(|m| m == method.trim()) {
            return None;
        }
        let requested: Vec<String> = requested_headers
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let allow_headers = match &self.headers {
            None => requested,
            Some(allowed) => {
                if !requested.iter().all(|h| allowed.contains(h)) {
                    return None;
                }
                allowed.clone()
            }
        };
        let mut out = self.origin_headers(origin);
        out.push(("access-control-allow-methods".into(), self.methods.join(", ")));
        if !allow_headers.is_empty() {
            out.push(("access-control-allow-headers".into(), allow_headers.join(", ")));
        }
        if let Some(max_age) = self.max_age {
            out.push(("access-control-max-age".into(), max_age.to_string()));
        }
        Some(out)
    }

    /// The headers added to the response of an actual request from an allowed `origin`.
    pub fn response_headers(&self, origin: &str) -> Vec<(String, String)> {
        let mut out = self.origin_headers(origin);
        if !self.expose_headers.is_empty() {
            out.push(("access-control-expose-headers".into(), self.expose_headers.join(", ")));
        }
        out
    }

    /// The origin is always echoed rather than answered with "*": that is valid with credentials too, and `Vary`
    /// keeps caches from serving one origin's answer to another.
    fn origin_headers(&self, origin: &str) -> Vec<(String, String)> {
        let mut out = vec![
            ("access-control-allow-origin".into(), origin.to_string()),
            ("vary".into(), "Origin".into()),
        ];
        if self.allow_credentials {
            out.push(("access-control-allow-credentials".into(), "true".into()));
        }
        out
    }
}

fn origin_pattern(origin: &str) -> Result<OriginPattern, String> {
    if origin == "*" {
        return Ok(OriginPattern::Any);
    }
    let lower = origin.to_ascii_lowercase();
    let (scheme, host) = lower
        .split_once("://")
        .filter(|(scheme, host)| !scheme.is_empty() && !host.is_empty() && !host.contains('/'))
        .ok_or_else(|| format!("allow_origins: {origin:?} is not \"*\" or scheme://host[:port]"))?;
    match host.strip_prefix('*') {
        Some(suffix) if suffix.starts_with('.') && suffix.len() > 1 && !suffix.contains('*') => {
            Ok(OriginPattern::Subdomains {
                scheme: format!("{scheme}://"),
                suffix: suffix.to_string(),
            })
        }
        Some(_) => Err(format!(
            "allow_origins: {origin:?}: a wildcard must be a whole leading label (*.example.com)"
        )),
        None if host.contains('*') => Err(format!("allow_origins: {origin:?}: a wildcard must lead the host")),
        None => Ok(OriginPattern::Exact(lower)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
    }

    const FULL: &str = r#"{"allow_origins": ["https://a.example", "https://*.b.example"],
        "allow_methods": ["GET", "post"], "allow_headers": ["Content-Type", "x-req"],
        "expose_headers": ["X-Total"], "max_age": 600, "allow_credentials": true}"#;

    #[test]
    fn matches_exact_wildcard_and_subdomain_origins() {
        let c = config(FULL);
        assert!(c.origin_allowed("https://a.example"));
        assert!(c.origin_allowed("HTTPS://A.example"));
        assert!(!c.origin_allowed("http://a.example"));
        assert!(!c.origin_allowed("https://a.example:8443"));
        assert!(c.origin_allowed("https://x.b.example"));
        assert!(c.origin_allowed("https://x.y.b.example"));
        assert!(!c.origin_allowed("https://b.example"));
        assert!(!c.origin_allowed("https://evil-b.example"));
        assert!(!c.origin_allowed("null"));
        assert!(config(r#"{"allow_origins": ["*"]}"#).origin_allowed("null"));
    }

    #[test]
    fn answers_allowed_preflights() {
        let c = config(FULL);
        assert_eq!(
            c.preflight("https://a.example", "POST", Some("content-type, X-Req")),
            Some(pairs(&[
                ("access-control-allow-origin", "https://a.example"),
                ("vary", "Origin"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET, POST"),
                ("access-control-allow-headers", "content-type, x-req"),
                ("access-control-max-age", "600"),
            ]))
        );
    }

    #[test]
    fn refuses_preflights_outside_the_policy() {
        let c = config(FULL);
        assert_eq!(c.preflight("https://other.example", "GET", None), None);
        assert_eq!(c.preflight("https://a.example", "DELETE", None), None);
        assert_eq!(c.preflight("https://a.example", "get", None), None);
        assert_eq!(c.preflight("https://a.example", "GET", Some("authorization")), None);
    }

    #[test]
    fn a_star_header_list_echoes_what_was_asked() {
        let c = config(r#"{"allow_origins": ["*"], "allow_headers": ["*"]}"#);
        assert_eq!(
            c.preflight("https://x.example", "HEAD", Some("X-One,x-two")),
            Some(pairs(&[
                ("access-control-allow-origin", "https://x.example"),
                ("vary", "Origin"),
                ("access-control-allow-methods", "GET, HEAD, POST"),
                ("access-control-allow-headers", "x-one, x-two"),
            ]))
        );
    }

    #[test]
    fn actual_responses_carry_origin_credentials_and_exposed_headers() {
        assert_eq!(
            config(FULL).response_headers("https://a.example"),
            pairs(&[
                ("access-control-allow-origin", "https://a.example"),
                ("vary", "Origin"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-total"),
            ])
        );
        assert_eq!(
            config(r#"{"allow_origins": ["*"]}"#).response_headers("https://z.example"),
            pairs(&[("access-control-allow-origin", "https://z.example"), ("vary", "Origin")])
        );
    }

    #[test]
    fn rejects_unusable_configs() {
        let err = |json: &str| Config::parse(json.as_bytes()).unwrap_err();
        assert!(err("").contains("empty"));
        assert!(err(r#"{"allow_origins": []}"#).contains("allow_origins is empty"));
        assert!(err(r#"{"allow_origins": ["a.example"]}"#).contains("scheme://host"));
        assert!(err(r#"{"allow_origins": ["https://a.example/path"]}"#).contains("scheme://host"));
        assert!(err(r#"{"allow_origins": ["https://*example.com"]}"#).contains("whole leading label"));
        assert!(err(r#"{"allow_origins": ["https://a.*.example"]}"#).contains("must lead the host"));
        assert!(err(r#"{"allow_origins": ["*"], "allow_methods": ["GE T"]}"#).contains("allow_methods"));
        assert!(err(r#"{"allow_origins": ["*"], "allow_headers": ["a b"]}"#).contains("allow_headers"));
        assert!(err(r#"{"allow_origins": ["*"], "expose_headers": [""]}"#).contains("expose_headers"));
        assert!(err(r#"{"allow_origins": ["*"], "max_age": -1}"#).contains("invalid value"));
        assert!(err(r#"{"allow_origins": ["*"], "allow_origin": ["*"]}"#).contains("unknown field"));
    }
}
