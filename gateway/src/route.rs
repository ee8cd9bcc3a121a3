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

/// Host name → virtual host.
pub struct Router {
    exact: HashMap<Box<str>, usize>,
    /// Keyed by the suffix after "*." ("example.com" for "*.example.com").
    wildcard: HashMap<Box<str>, usize>,
    default: Option<usize>,
    hosts: Vec<Arc<VirtualHost>>,
}

impl Router {
    /// Indexes the hosts' domains. Validation guarantees each domain appears
    /// once; should one repeat anyway, the first host keeps it.
    pub fn new(hosts: Vec<Arc<VirtualHost>>) -> Router {
        let mut router = Router {
            exact: HashMap::new(),
            wildcard: HashMap::new(),
            default: None,
            hosts: Vec::new(),
        };
        for (index, host) in hosts.iter().enumerate() {
            for domain in &host.domains {
                match domain {
                    Domain::Exact(name) => {
                        router.exact.entry(name.clone()).or_insert(index);
                    }
                    Domain::Wildcard(suffix) => {
                        router.wildcard.entry(suffix.clone()).or_insert(index);
                    }
                    Domain::Any => {
                        router.default.get_or_insert(index);
                    }
                }
            }
        }
        router.hosts = hosts;
        router
    }

    /// Every virtual host, in config order.
    pub fn hosts(&self) -> &[Arc<VirtualHost>] {
        &self.hosts
    }

    /// The virtual host serving `host` (a Host header value: any case, may
    /// carry a port, may be a bracketed IPv6 literal).
    pub fn host(&self, host: &str) -> Option<&VirtualHost> {
        let name = normalize_host(host);
        let index = self.exact.get(name.as_ref()).copied().or_else(|| {
            // Walking the dots left to right tries the longest suffix first.
            name.match_indices('.')
                .find_map(|(dot, _)| self.wildcard.get(&name[dot + 1..]).copied())
                .or(self.default)
        })?;
        Some(&self.hosts[index])
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
