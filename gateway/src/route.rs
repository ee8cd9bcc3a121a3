//! Compiled routing: virtual hosts looked up by host name through hash maps
//! (exact names, then wildcard suffixes walked label by label, then the
//! default host), and per-host route tables matched in config order (first
//! match wins) with a hash-map fast path when no route needs ordered
//! evaluation. Built by `config::Snapshot`; read by the workers.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::Ipv6Addr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::metrics::RouteStats;
use crate::upstream::Cluster;

/// Host name → virtual host. Every collection is persistent (imbl), so a
/// router with a few hosts changed is a cheap copy sharing everything else
/// with the one it came from: `with_changes` costs what it changes.
#[derive(Clone, Default)]
pub struct Router {
    exact: imbl::HashMap<Box<str>, Arc<VirtualHost>>,
    /// Keyed by the suffix after "*." ("example.com" for "*.example.com").
    wildcard: imbl::HashMap<Box<str>, Arc<VirtualHost>>,
    default: Option<Arc<VirtualHost>>,
    /// By host name.
    hosts: imbl::OrdMap<Arc<str>, Arc<VirtualHost>>,
}

impl Router {
    /// Indexes the hosts' domains. Validation guarantees each domain appears
    /// once; should one repeat anyway, the first host keeps it.
    pub fn new(hosts: Vec<Arc<VirtualHost>>) -> Router {
        Router::default().with_changes([], hosts)
    }

    /// This router without the hosts named in `remove` and with `add`
    /// (replacing any host of the same name). Costs what it changes: a
    /// replaced host's unchanged domains are overwritten in place, only the
    /// domains it gave up are removed.
    pub fn with_changes<'a>(&self, remove: impl IntoIterator<Item = &'a str>, add: Vec<Arc<VirtualHost>>) -> Router {
        let mut router = self.clone();
        for name in remove {
            if let Some(old) = router.hosts.remove(name) {
                router.release(&old, |_| true);
            }
        }
        // Every replaced host gives up its dropped domains before any host
        // claims, so a domain can move between hosts in one change.
        let replaced: Vec<Option<Arc<VirtualHost>>> = add
            .iter()
            .map(|host| {
                let old = router.hosts.get(&host.name).cloned()?;
                router.release(&old, |domain| !host.domains.contains(domain));
                Some(old)
            })
            .collect();
        for (host, old) in add.into_iter().zip(replaced) {
            // Free, or held by this host's previous version.
            let claimable = |holder: &Arc<VirtualHost>| old.as_ref().is_some_and(|old| Arc::ptr_eq(holder, old));
            for domain in &host.domains {
                if *domain == Domain::Any {
                    if router.default.as_ref().is_none_or(claimable) {
                        router.default = Some(Arc::clone(&host));
                    }
                    continue;
                }
                claim_domain(&mut router.exact, &mut router.wildcard, domain, &host, claimable);
            }
            router.hosts.insert(Arc::clone(&host.name), host);
        }
        router
    }

    /// Drops the domains of `old` that `drop` selects, where `old` holds them.
    fn release(&mut self, old: &Arc<VirtualHost>, drop: impl Fn(&Domain) -> bool) {
        let held = |map: &imbl::HashMap<Box<str>, Arc<VirtualHost>>, key: &str| {
            map.get(key).is_some_and(|host| Arc::ptr_eq(host, old))
        };
        for domain in old.domains.iter().filter(|domain| drop(domain)) {
            match domain {
                Domain::Exact(name) if held(&self.exact, name) => {
                    self.exact.remove(name);
                }
                Domain::Wildcard(suffix) if held(&self.wildcard, suffix) => {
                    self.wildcard.remove(suffix);
                }
                Domain::Any if self.default.as_ref().is_some_and(|host| Arc::ptr_eq(host, old)) => {
                    self.default = None;
                }
                _ => {}
            }
        }
    }

    /// Every virtual host, by name.
    pub fn hosts(&self) -> impl ExactSizeIterator<Item = &Arc<VirtualHost>> {
        self.hosts.values()
    }

    /// The virtual host of this name.
    pub fn named(&self, name: &str) -> Option<&Arc<VirtualHost>> {
        self.hosts.get(name)
    }

    /// The host holding this domain pattern (not: the host a request for it
    /// would reach).
    pub fn owner(&self, domain: &Domain) -> Option<&Arc<VirtualHost>> {
        match domain {
            Domain::Exact(name) => self.exact.get(name),
            Domain::Wildcard(suffix) => self.wildcard.get(suffix),
            Domain::Any => self.default.as_ref(),
        }
    }

    /// The virtual host serving `host` (a Host header value: any case, may
    /// carry a port, may be a bracketed IPv6 literal).
    pub fn host(&self, host: &str) -> Option<&VirtualHost> {
        let name = normalize_host(host);
        let found = self.exact.get(name.as_ref()).or_else(|| {
            // Walking the dots left to right tries the longest suffix first.
            name.match_indices('.')
                .find_map(|(dot, _)| self.wildcard.get(&name[dot + 1..]))
                .or(self.default.as_ref())
        })?;
        Some(found)
    }

    /// The route for a request. `path` excludes the query string.
    pub fn route(&self, host: &str, path: &str, headers: &[httparse::Header<'_>]) -> Option<&Route> {
        self.host(host)?.routes.find(path, headers)
    }
}

/// Strips the port and a trailing dot, and lower-cases (allocating only when
/// the name has upper-case letters).
fn normalize_host(host: &str) -> Cow<'_, str> {
    let name = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        match host.rfind(':') {
            Some(colon) if !host[..colon].contains(':') => &host[..colon],
            _ => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// Domain → entry maps of a virtual-host table (the router, the SNI table).
pub(crate) type DomainMap<V> = imbl::HashMap<Box<str>, Arc<V>>;

/// Puts `value` under an exact or wildcard `domain` unless a holder that
/// `claimable` refuses keeps it. `Domain::Any` has no map: callers handle it.
pub(crate) fn claim_domain<V>(
    exact: &mut DomainMap<V>,
    wildcard: &mut DomainMap<V>,
    domain: &Domain,
    value: &Arc<V>,
    claimable: impl Fn(&Arc<V>) -> bool,
) {
    let slot = match domain {
        Domain::Exact(name) => exact.entry(name.clone()),
        Domain::Wildcard(suffix) => wildcard.entry(suffix.clone()),
        Domain::Any => return,
    };
    match slot {
        imbl::hashmap::Entry::Vacant(slot) => {
            slot.insert(Arc::clone(value));
        }
        imbl::hashmap::Entry::Occupied(mut slot) if claimable(slot.get()) => {
            slot.insert(Arc::clone(value));
        }
        imbl::hashmap::Entry::Occupied(_) => {}
    }
}

/// One domain pattern of a virtual host, normalized (lower case, IPv6 in brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    Exact(Box<str>),
    /// "*.example.com", stored as "example.com": matches any name ending in
    /// ".example.com", not "example.com" itself.
    Wildcard(Box<str>),
    /// "*": the default host.
    Any,
}

impl Domain {
    pub fn parse(domain: &str) -> Result<Domain, String> {
        if domain == "*" {
            return Ok(Domain::Any);
        }
        if let Some(suffix) = domain.strip_prefix("*.") {
            let suffix = suffix.strip_suffix('.').unwrap_or(suffix);
            if suffix.contains('*') || !is_dns_name(suffix) {
                return Err(format!(
                    "invalid wildcard domain \"{domain}\": expected \"*\" or \"*.suffix\""
                ));
            }
            return Ok(Domain::Wildcard(suffix.to_ascii_lowercase().into()));
        }
        if domain.contains('*') {
            return Err(format!(
                "invalid wildcard domain \"{domain}\": expected \"*\" or \"*.suffix\""
            ));
        }
        let bare = domain
            .strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .unwrap_or(domain);
        if let Ok(ip) = bare.parse::<Ipv6Addr>() {
            return Ok(Domain::Exact(format!("[{ip}]").into()));
        }
        let name = domain.strip_suffix('.').unwrap_or(domain);
        if !is_dns_name(name) {
            return Err(format!("invalid domain \"{domain}\""));
        }
        Ok(Domain::Exact(name.to_ascii_lowercase().into()))
    }
}

impl std::fmt::Display for Domain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Domain::Exact(name) => f.write_str(name),
            Domain::Wildcard(suffix) => write!(f, "*.{suffix}"),
            Domain::Any => f.write_str("*"),
        }
    }
}

/// Letters, digits, '-', '_' in non-empty dot-separated labels (IPv4 included).
pub(crate) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// An RFC 9110 token: the characters allowed in a header name.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

pub struct VirtualHost {
    pub name: Arc<str>,
    pub domains: Vec<Domain>,
    pub routes: RouteTable,
}

/// A host's routes in config order, with an index for the common case.
pub struct RouteTable {
    routes: Vec<Route>,
    /// Present when every route matches by exact path or prefix alone.
    index: Option<PathIndex>,
}

/// First-match-wins without a scan: the winner is the lowest route index among
/// the exact route for the path and the prefix routes that prefix it, and
/// there are only as many prefix candidates as distinct prefix lengths.
struct PathIndex {
    /// Path → index of the first route with that exact path.
    exact: HashMap<Box<str>, usize>,
    /// Prefix → index of the first route with that prefix.
    prefixes: HashMap<Box<str>, usize>,
    /// Distinct prefix lengths, ascending.
    prefix_lengths: Vec<usize>,
}

impl PathIndex {
    /// None when some route has a regex or header conditions.
    fn build(routes: &[Route]) -> Option<PathIndex> {
        let mut index = PathIndex {
            exact: HashMap::new(),
            prefixes: HashMap::new(),
            prefix_lengths: Vec::new(),
        };
        for (position, route) in routes.iter().enumerate() {
            if !route.matcher.headers.is_empty() {
                return None;
            }
            match &route.matcher.path {
                PathMatch::Exact(path) => {
                    index.exact.entry(path.clone()).or_insert(position);
                }
                PathMatch::Prefix(prefix) => {
                    index.prefixes.entry(prefix.clone()).or_insert(position);
                    index.prefix_lengths.push(prefix.len());
                }
                PathMatch::Regex(_) => return None,
            }
        }
        index.prefix_lengths.sort_unstable();
        index.prefix_lengths.dedup();
        Some(index)
    }
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        let index = PathIndex::build(&routes);
        RouteTable { routes, index }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route, in config order, matching the path and headers.
    pub fn find(&self, path: &str, headers: &[httparse::Header<'_>]) -> Option<&Route> {
        let Some(index) = &self.index else {
            return self.routes.iter().find(|route| route.matcher.matches(path, headers));
        };
        let mut best = index.exact.get(path).copied();
        for &length in &index.prefix_lengths {
            if length > path.len() {
                break;
            }
            if !path.is_char_boundary(length) {
                continue;
            }
            if let Some(&position) = index.prefixes.get(&path[..length]) {
                best = Some(best.map_or(position, |current| current.min(position)));
            }
        }
        best.map(|position| &self.routes[position])
    }
}

pub struct Route {
    pub name: Arc<str>,
    pub host_name: Arc<str>,
    pub matcher: RouteMatch,
    /// Largest request body accepted; None means no limit.
    pub max_body_bytes: Option<u64>,
    pub action: RouteAction,
    pub stats: Arc<RouteStats>,
    /// The `Strict-Transport-Security` value sent on responses over TLS
    /// (from the host's `tls.hsts`); None sends no header.
    pub hsts: Option<Arc<str>>,
}

/// What a route matches: a path condition and header conditions (all must hold).
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
}

#[derive(Debug, Clone)]
pub enum PathMatch {
    Prefix(Box<str>),
    Exact(Box<str>),
    /// Anchored: matches the whole path.
    Regex(regex::Regex),
}

#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lower case; compared case-insensitively.
    pub name: Box<str>,
    pub value: HeaderValueMatch,
    pub invert: bool,
}

#[derive(Debug, Clone)]
pub enum HeaderValueMatch {
    Present,
    Exact(Box<[u8]>),
    /// Anchored: matches the whole value.
    Regex(regex::bytes::Regex),
}

impl RouteMatch {
    pub fn matches(&self, path: &str, headers: &[httparse::Header<'_>]) -> bool {
        self.path.matches(path) && self.headers.iter().all(|header| header.matches(headers))
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(&**prefix),
            PathMatch::Exact(exact) => path == &**exact,
            PathMatch::Regex(regex) => regex.is_match(path),
        }
    }
}

impl HeaderMatch {
    /// A header that appears several times matches when any occurrence does.
    pub fn matches(&self, headers: &[httparse::Header<'_>]) -> bool {
        let mut values = headers
            .iter()
            .filter(|header| header.name.eq_ignore_ascii_case(&self.name))
            .map(|header| header.value);
        let found = match &self.value {
            HeaderValueMatch::Present => values.next().is_some(),
            HeaderValueMatch::Exact(expected) => values.any(|value| value == &**expected),
            HeaderValueMatch::Regex(regex) => values.any(|value| regex.is_match(value)),
        };
        found != self.invert
    }
}

/// Wraps a user regex so it must match the whole input.
pub(crate) fn anchored(regex: &str) -> String {
    format!("^(?:{regex})$")
}

pub enum RouteAction {
    Proxy(ProxyRoute),
    Redirect(RedirectRoute),
    Direct(DirectRoute),
}

pub struct ProxyRoute {
    pub cluster: Arc<Cluster>,
    /// Replaces `matched_prefix` at the start of the path.
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    /// The route's override, else the cluster's.
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    /// Retries after the first attempt; already capped at the cluster's endpoints minus one.
    pub max_retries: u32,
    pub retry_on_statuses: Vec<u16>,
    /// The route's prefix when it matches by prefix and rewrites it.
    pub matched_prefix: Option<Box<str>>,
}

impl ProxyRoute {
    /// The request target sent upstream. `target` is the path, with or without
    /// its query: only the matched prefix at its start is replaced.
    pub fn upstream_path<'a>(&self, target: &'a str) -> Cow<'a, str> {
        match (&self.matched_prefix, &self.prefix_rewrite) {
            (Some(prefix), Some(rewrite)) => match target.strip_prefix(&**prefix) {
                Some(rest) => Cow::Owned(format!("{rewrite}{rest}")),
                None => Cow::Borrowed(target),
            },
            _ => Cow::Borrowed(target),
        }
    }
}

/// A redirect; each unset part keeps the request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectRoute {
    pub status: u16,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub strip_query: bool,
}

impl RedirectRoute {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The Location header. `scheme` is the request's ("http"), `host` its Host
    /// header (may carry a port), `path` its path, `query` what followed '?'.
    ///
    /// The request's port is kept only when neither the host nor the scheme
    /// changes: an http→https redirect must not keep the plain-text port.
    /// A port that is the scheme's default is left out.
    pub fn location(&self, scheme: &str, host: &str, path: &str, query: Option<&str>) -> String {
        let new_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let (request_name, request_port) = split_host_port(host);
        let name = self.host.as_deref().unwrap_or(request_name);
        let port = match self.port {
            Some(port) => Some(port),
            None if self.host.is_none() && new_scheme.eq_ignore_ascii_case(scheme) => request_port,
            None => None,
        };
        let default_port = match new_scheme {
            "https" => Some(443),
            "http" => Some(80),
            _ => None,
        };
        let mut location = format!("{new_scheme}://{name}");
        if let Some(port) = port.filter(|port| Some(*port) != default_port) {
            location.push(':');
            location.push_str(&port.to_string());
        }
        location.push_str(self.path.as_deref().unwrap_or(path));
        if let Some(query) = query.filter(|_| !self.strip_query) {
            location.push('?');
            location.push_str(query);
        }
        location
    }
}

/// "example.com:8080" → ("example.com", Some(8080)); "[::1]:80" → ("[::1]", Some(80)).
fn split_host_port(host: &str) -> (&str, Option<u16>) {
    let colon = if host.starts_with('[') {
        host.find(']').and_then(|end| host[end..].find(':').map(|c| end + c))
    } else {
        host.rfind(':')
    };
    match colon {
        Some(colon) => match host[colon + 1..].parse() {
            Ok(port) => (&host[..colon], Some(port)),
            Err(_) => (host, None),
        },
        None => (host, None),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectRoute {
    pub status: u16,
    pub content_type: String,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_yaml, Snapshot};

    fn snapshot(yaml: &str) -> Snapshot {
        let base = "listeners: [{name: http, address: 127.0.0.1:18080}]\n\
                    clusters: [{name: c, endpoints: ['127.0.0.1:1', '127.0.0.1:2', '127.0.0.1:3']}]\n";
        Snapshot::build(parse_yaml(&format!("{base}{yaml}")).unwrap(), None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn header<'a>(name: &'a str, value: &'a str) -> httparse::Header<'a> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    /// "host/route" of the route chosen, or "-" when none.
    fn routed(router: &Router, host: &str, path: &str, headers: &[httparse::Header<'_>]) -> String {
        router
            .route(host, path, headers)
            .map_or("-".to_owned(), |route| format!("{}/{}", route.host_name, route.name))
    }

    const HOSTS: &str = "
hosts:
  - {name: exact, domains: [api.example.com, '[::1]', 10.0.0.1], routes: [{direct_response: {}}]}
  - {name: wild, domains: ['*.example.com'], routes: [{direct_response: {}}]}
  - {name: deeper, domains: ['*.eu.example.com'], routes: [{direct_response: {}}]}
  - {name: default, domains: ['*'], routes: [{direct_response: {}}]}
";

    #[test]
    fn hosts_match_exact_then_longest_wildcard_then_default() {
        let router = snapshot(HOSTS).router;
        let cases = [
            ("api.example.com", "exact/0"),
            ("API.Example.COM:8443", "exact/0"),
            ("api.example.com.", "exact/0"),
            ("[::1]:80", "exact/0"),
            ("[::1]", "exact/0"),
            ("10.0.0.1:80", "exact/0"),
            ("www.example.com", "wild/0"),
            ("a.b.example.com", "wild/0"),
            ("x.eu.example.com", "deeper/0"),
            ("a.b.eu.example.com:80", "deeper/0"),
            ("eu.example.com", "wild/0"),
            ("example.com", "default/0"),
            ("other.org", "default/0"),
            ("[::2]:80", "default/0"),
            ("", "default/0"),
        ];
        for (host, expected) in cases {
            assert_eq!(routed(&router, host, "/", &[]), expected, "host {host:?}");
        }
        let without_default = snapshot(&HOSTS.replace("domains: ['*']", "domains: [only.test]")).router;
        assert_eq!(routed(&without_default, "other.org", "/", &[]), "-");
    }

    #[test]
    fn paths_match_by_prefix_exact_and_anchored_regex() {
        let router = snapshot(
            "
hosts:
  - domains: ['*']
    routes:
      - {name: exact, match: {exact: /exact}, direct_response: {}}
      - {name: regex, match: {regex: '/v[0-9]+'}, direct_response: {}}
      - {name: prefix, match: {prefix: /api/}, direct_response: {}}
",
        )
        .router;
        let cases = [
            ("/exact", "exact"),
            ("/exact/", "-"),
            ("/v12", "regex"),
            ("/v12/x", "-"),
            ("/xv1", "-"),
            ("/api/", "prefix"),
            ("/api/users", "prefix"),
            ("/api", "-"),
        ];
        for (path, expected) in cases {
            let expected = if expected == "-" {
                "-".to_owned()
            } else {
                format!("*/{expected}")
            };
            assert_eq!(routed(&router, "h", path, &[]), expected, "path {path}");
        }
    }

    #[test]
    fn headers_match_present_exact_regex_and_inverted() {
        let router = snapshot(
            "
hosts:
  - domains: ['*']
    routes:
      - {name: beta, match: {headers: [{name: X-Env, exact: beta}]}, direct_response: {}}
      - {name: mobile, match: {headers: [{name: user-agent, regex: '.*Mobile.*'}]}, direct_response: {}}
      - {name: traced, match: {headers: [{name: x-trace}, {name: x-debug, invert: true}]}, direct_response: {}}
      - {name: not-json, match: {headers: [{name: accept, exact: application/json, invert: true}]}, direct_response: {}}
      - {name: rest, direct_response: {}}
",
        )
        .router;
        let cases: [(&[httparse::Header<'_>], &str); 8] = [
            (&[header("x-env", "beta")], "beta"),
            (&[header("X-ENV", "beta")], "beta"),
            (&[header("x-env", "alpha"), header("x-env", "beta")], "beta"),
            (&[header("x-env", "Beta"), header("accept", "application/json")], "rest"),
            (
                &[
                    header("User-Agent", "Foo Mobile/1"),
                    header("accept", "application/json"),
                ],
                "mobile",
            ),
            (
                &[header("x-trace", "1"), header("accept", "application/json")],
                "traced",
            ),
            (
                &[
                    header("x-trace", "1"),
                    header("x-debug", "1"),
                    header("accept", "application/json"),
                ],
                "rest",
            ),
            (&[], "not-json"),
        ];
        for (headers, expected) in cases {
            assert_eq!(
                routed(&router, "h", "/", headers),
                format!("*/{expected}"),
                "{headers:?}"
            );
        }
    }

    #[test]
    fn first_match_wins_in_config_order() {
        let yaml = "
hosts:
  - domains: ['*']
    routes:
      - {name: api, match: {prefix: /api}, direct_response: {}}
      - {name: api-v1, match: {prefix: /api/v1}, direct_response: {}}
      - {name: exact-late, match: {exact: /api/v1/x}, direct_response: {}}
      - {name: exact, match: {exact: /health}, direct_response: {}}
      - {name: root, match: {prefix: /}, direct_response: {}}
      - {name: exact-dead, match: {exact: /health}, direct_response: {}}
";
        let indexed = snapshot(yaml).router;
        assert!(
            indexed.hosts().next().unwrap().routes.index.is_some(),
            "prefix/exact-only tables are indexed"
        );
        // The same table, forced into ordered evaluation by a header match that never applies.
        let ordered = snapshot(&format!(
            "{yaml}      - {{name: never, match: {{headers: [{{name: x-never}}]}}, direct_response: {{}}}}\n"
        ))
        .router;
        assert!(ordered.hosts().next().unwrap().routes.index.is_none());
        let cases = [
            ("/api/v1/x", "api"),
            ("/api", "api"),
            ("/health", "exact"),
            ("/healthz", "root"),
            ("/", "root"),
            ("/ap", "root"),
            ("/é/x", "root"),
        ];
        for router in [&indexed, &ordered] {
            for (path, expected) in cases {
                assert_eq!(routed(router, "h", path, &[]), format!("*/{expected}"), "path {path}");
            }
        }
        let no_root = snapshot(
            "
hosts:
  - domains: ['*']
    routes:
      - {name: exact, match: {exact: /a}, direct_response: {}}
      - {name: prefix, match: {prefix: /a}, direct_response: {}}
",
        )
        .router;
        assert_eq!(routed(&no_root, "h", "/a", &[]), "*/exact");
        assert_eq!(routed(&no_root, "h", "/ab", &[]), "*/prefix");
        assert_eq!(routed(&no_root, "h", "/b", &[]), "-");
    }

    #[test]
    fn proxy_routes_rewrite_prefix_and_carry_limits() {
        let snapshot = snapshot(
            "
hosts:
  - domains: ['*']
    routes:
      - name: rewrite
        match: {prefix: /old/}
        max_body_bytes: 1000
        proxy: {cluster: c, prefix_rewrite: /new/, host_rewrite: 'backend:8080', read_timeout: 10s, retry: {max_retries: 5, on_statuses: [502, 503]}}
      - name: plain
        match: {exact: /plain}
        proxy: {cluster: c, retry: {max_retries: 0}}
",
        );
        let route = snapshot.router.route("h", "/old/a/b", &[]).unwrap();
        assert_eq!(route.max_body_bytes, Some(1000));
        let RouteAction::Proxy(proxy) = &route.action else {
            panic!()
        };
        assert_eq!(proxy.upstream_path("/old/a/b"), "/new/a/b");
        assert_eq!(proxy.upstream_path("/old/?q=/old/"), "/new/?q=/old/");
        assert_eq!(proxy.host_rewrite.as_deref(), Some("backend:8080"));
        assert_eq!(proxy.read_timeout, Duration::from_secs(10));
        assert_eq!(proxy.send_timeout, Duration::from_secs(3), "the cluster's");
        assert_eq!(proxy.max_retries, 2, "capped at endpoints minus one");
        assert_eq!(proxy.retry_on_statuses, vec![502, 503]);

        let route = snapshot.router.route("h", "/plain", &[]).unwrap();
        assert_eq!(route.max_body_bytes, None);
        let RouteAction::Proxy(proxy) = &route.action else {
            panic!()
        };
        assert!(matches!(proxy.upstream_path("/plain?x"), Cow::Borrowed("/plain?x")));
        assert_eq!(proxy.max_retries, 0);
    }

    #[test]
    fn redirect_locations() {
        let redirect = |yaml: &str| {
            let snapshot = snapshot(&format!("hosts: [{{domains: ['*'], routes: [{{redirect: {yaml}}}]}}]"));
            let RouteAction::Redirect(redirect) = &snapshot.router.route("h", "/", &[]).unwrap().action else {
                panic!()
            };
            redirect.clone()
        };
        let https = redirect("{scheme: https}");
        assert_eq!(https.status(), 301);
        assert_eq!(
            https.location("http", "example.com:8080", "/a", Some("b=1")),
            "https://example.com/a?b=1"
        );
        let same = redirect("{status: 308, path: /new}");
        assert_eq!(same.status(), 308);
        assert_eq!(
            same.location("http", "example.com:8080", "/old", None),
            "http://example.com:8080/new"
        );
        assert_eq!(
            same.location("http", "[::1]:8080", "/old", None),
            "http://[::1]:8080/new"
        );
        let moved = redirect("{host: other.test, port: 8443, scheme: https, strip_query: true, status: 302}");
        assert_eq!(moved.status(), 302);
        assert_eq!(
            moved.location("http", "example.com", "/p", Some("q")),
            "https://other.test:8443/p"
        );
        let default_port = redirect("{host: other.test, port: 443, scheme: https}");
        assert_eq!(
            default_port.location("http", "example.com:80", "/p", None),
            "https://other.test/p"
        );
        let host_only = redirect("{host: other.test}");
        assert_eq!(
            host_only.location("http", "example.com:8080", "/p", Some("")),
            "http://other.test/p?"
        );
    }

    #[test]
    fn direct_responses_keep_status_type_and_body() {
        let snapshot = snapshot(
            "hosts: [{domains: ['*'], routes: [{direct_response: {status: 503, body: down, content_type: text/html}}]}]",
        );
        let RouteAction::Direct(direct) = &snapshot.router.route("h", "/", &[]).unwrap().action else {
            panic!()
        };
        assert_eq!(
            direct,
            &DirectRoute {
                status: 503,
                content_type: "text/html".into(),
                body: Bytes::from_static(b"down"),
            }
        );
    }

    #[test]
    fn domains_normalize() {
        assert_eq!(Domain::parse("*").unwrap(), Domain::Any);
        assert_eq!(
            Domain::parse("*.Example.COM").unwrap(),
            Domain::Wildcard("example.com".into())
        );
        assert_eq!(
            Domain::parse("Example.com.").unwrap(),
            Domain::Exact("example.com".into())
        );
        assert_eq!(Domain::parse("::1").unwrap(), Domain::Exact("[::1]".into()));
        assert_eq!(Domain::parse("[0:0::1]").unwrap(), Domain::Exact("[::1]".into()));
        for bad in ["*example.com", "a.*.com", "*.", "", "a..b", "a b", "*.*"] {
            assert!(Domain::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
