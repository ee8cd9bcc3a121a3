//! Whole-config validation: every section converted to typed settings, every
//! host and route checked, cross references (clusters, unique names and
//! domains, the hosts and routes plugins name) resolved, plugin modules read. The result is a plan that building can no longer reject,
//! except for DNS. Nothing here has side effects.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::defaults;
use super::ebpf::EbpfSettings;
use super::error::{ConfigErrors, Errors};
use super::plugins::{self, route_name, PluginBudget, PluginContext, PluginSettings};
use super::proto;
use super::settings::{
    self, is_authority, is_host, optional_duration, statuses, AccessLogTarget, ClusterPlan, HttpSettings,
    ListenerSettings, RuntimeSettings,
};
use super::tls::{self, HostTlsPlan, ListenerTlsPlan};
use crate::route::{
    anchored, is_token, DirectRoute, Domain, HeaderMatch, HeaderValueMatch, PathMatch, RedirectRoute, RouteMatch,
};
use crate::tls::LoadedCertificate;

/// A valid config, converted; what `Snapshot::build` turns into live objects.
pub(crate) struct Checked {
    pub runtime: RuntimeSettings,
    pub admin_address: SocketAddr,
    pub access_log: AccessLogTarget,
    pub http: HttpSettings,
    pub ebpf: EbpfSettings,
    pub listeners: Vec<ListenerSettings>,
    pub listener_tls: Vec<ListenerTlsPlan>,
    pub certificates: HashMap<String, Arc<crate::tls::LoadedCertificate>>,
    pub clusters: Vec<ClusterPlan>,
    pub hosts: Vec<HostPlan>,
    pub plugin_budget: PluginBudget,
    /// Enabled plugins in run order.
    pub plugins: Vec<Arc<PluginSettings>>,
}

pub(crate) struct HostPlan {
    pub name: Arc<str>,
    pub domains: Vec<Domain>,
    pub routes: Vec<RoutePlan>,
    /// The certificate served for the host's domains, when it has one.
    pub tls: Option<HostTlsPlan>,
    /// The Strict-Transport-Security value of every route of the host.
    pub hsts: Option<Arc<str>>,
}

pub(crate) struct RoutePlan {
    pub name: Arc<str>,
    pub matcher: RouteMatch,
    pub max_body_bytes: Option<u64>,
    pub action: ActionPlan,
}

pub(crate) enum ActionPlan {
    Proxy(ProxyPlan),
    Redirect(RedirectRoute),
    Direct(DirectRoute),
}

pub(crate) struct ProxyPlan {
    pub cluster: String,
    pub prefix_rewrite: Option<String>,
    pub host_rewrite: Option<String>,
    pub read_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    /// Before capping at the cluster's endpoints minus one.
    pub max_retries: u32,
    pub retry_on_statuses: Vec<u16>,
}

/// Validates a config without building anything (no DNS): what
/// `tollgate check` needs besides endpoint resolution.
pub fn validate(config: &proto::Config) -> Result<(), ConfigErrors> {
    check(config).map(|_| ())
}

/// Validates and converts a whole config, loading every certificate.
pub(crate) fn check(config: &proto::Config) -> Result<Checked, ConfigErrors> {
    let mut errors = Errors::default();
    let runtime = settings::runtime(&mut errors, config.runtime.as_ref());
    let admin_address = settings::admin_address(&mut errors, config.admin.as_ref());
    let access_log = settings::access_log(config.access_log.as_ref());
    let http = settings::http(&mut errors, config.http.as_ref());
    let ebpf = super::ebpf::ebpf(&mut errors, config.ebpf.as_ref());
    let listeners = settings::listeners(&mut errors, &config.listeners, admin_address);
    let certificate_names: std::collections::HashSet<&str> =
        config.certificates.iter().map(|c| c.name.as_str()).collect();
    let hosts_have_certificates = config
        .hosts
        .iter()
        .any(|host| host.tls.as_ref().is_some_and(|tls| !tls.certificate.is_empty()));
    let has_certificate = |name: &str| certificate_names.contains(name);
    let listener_tls = tls::listeners(
        &mut errors,
        &config.listeners,
        &has_certificate,
        hosts_have_certificates,
    );
    let certificates = tls::certificates(&mut errors, &config.certificates, &config.hosts);
    let clusters = settings::clusters(&mut errors, &config.clusters);
    let cluster_names: std::collections::HashSet<&str> = clusters.iter().map(|plan| plan.name.as_str()).collect();
    let context = HostContext {
        has_cluster: &|name| cluster_names.contains(name),
        status_page: status_page(&listeners),
        has_certificate: &has_certificate,
        certificate: &|name| certificates.get(name).cloned(),
    };
    let hosts = hosts(&mut errors, &config.hosts, &context);
    let (plugin_budget, plugins) = match &config.plugins {
        Some(section) => check_plugins(&mut errors, section, &config.hosts),
        None => (PluginBudget::default(), Vec::new()),
    };
    errors.into_result(Checked {
        runtime,
        admin_address,
        access_log,
        http,
        ebpf,
        listeners,
        listener_tls,
        certificates,
        clusters,
        hosts,
        plugin_budget,
        plugins,
    })
}

/// The plugins section of a whole file, against the file's hosts.
fn check_plugins(
    errors: &mut Errors,
    section: &proto::Plugins,
    hosts: &[proto::VirtualHost],
) -> (PluginBudget, Vec<Arc<PluginSettings>>) {
    // Hosts by name, only when some plugin names one.
    let names_hosts = section
        .plugins
        .iter()
        .any(|plugin| !plugin.hosts.is_empty() || !plugin.routes.is_empty());
    let index: HashMap<String, &proto::VirtualHost> = if names_hosts {
        hosts
            .iter()
            .enumerate()
            .map(|(index, host)| (host_name(index, host), host))
            .collect()
    } else {
        HashMap::new()
    };
    let by_name = |name: &str| index.get(name).copied();
    let has_host = |name: &str| by_name(name).is_some();
    let has_route = |host: &str, route: &str| {
        by_name(host).is_some_and(|host| {
            host.routes
                .iter()
                .enumerate()
                .any(|(index, candidate)| route_name(index, candidate) == route)
        })
    };
    let context = PluginContext {
        has_host: &has_host,
        has_route: &has_route,
        previous: None,
    };
    plugins::check(
        errors,
        section,
        &|index, _| format!("plugins.plugins[{index}]"),
        &context,
    )
}

/// The built-in status page: the version and every listener.
pub(crate) fn status_page(listeners: &[ListenerSettings]) -> Bytes {
    let mut page = format!("tollgate {}\n\nlisteners:\n", env!("CARGO_PKG_VERSION"));
    for listener in listeners {
        let _ = writeln!(page, "  {} {}", listener.name, listener.address);
    }
    Bytes::from(page)
}

/// What checking one host needs to know about the rest of the config; as
/// lookups, so a change set can answer from the snapshot's own maps.
pub(crate) struct HostContext<'a> {
    pub has_cluster: &'a dyn Fn(&str) -> bool,
    pub status_page: Bytes,
    /// Whether a certificate of this name is configured (loaded or not).
    pub has_certificate: &'a dyn Fn(&str) -> bool,
    /// The loaded certificate of this name (a failed one is reported on the
    /// certificate, not again on the hosts).
    pub certificate: &'a dyn Fn(&str) -> Option<Arc<LoadedCertificate>>,
}

/// The name a host is known by: its own, else its first domain.
pub(super) fn host_name(index: usize, host: &proto::VirtualHost) -> String {
    if !host.name.is_empty() {
        host.name.clone()
    } else {
        host.domains
            .first()
            .cloned()
            .unwrap_or_else(|| format!("hosts[{index}]"))
    }
}

fn hosts(errors: &mut Errors, hosts: &[proto::VirtualHost], context: &HostContext<'_>) -> Vec<HostPlan> {
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut domains: HashMap<Domain, (usize, usize)> = HashMap::new();
    let mut plans = Vec::with_capacity(hosts.len());
    for (index, host) in hosts.iter().enumerate() {
        let path = format!("hosts[{index}]");
        let name = host_name(index, host);
        if let Some(first) = names.insert(name.clone(), index) {
            errors.add(
                format!("{path}.name"),
                format!("duplicate host name \"{name}\" (also hosts[{first}])"),
            );
        }
        let mut claim = |domain: &Domain, domain_index: usize| match domains.get(domain) {
            Some((other, other_domain)) => Err(format!(
                "domain \"{domain}\" is already used by hosts[{other}].domains[{other_domain}]"
            )),
            None => {
                domains.insert(domain.clone(), (index, domain_index));
                Ok(())
            }
        };
        plans.push(host_plan(errors, &path, name, host, context, &mut claim));
    }
    plans
}

/// Checks and converts one host. `claim` takes each of its domains for it,
/// or says which host holds it already.
pub(crate) fn host_plan(
    errors: &mut Errors,
    path: &str,
    name: String,
    host: &proto::VirtualHost,
    context: &HostContext<'_>,
    claim: &mut dyn FnMut(&Domain, usize) -> Result<(), String>,
) -> HostPlan {
    if host.domains.is_empty() {
        errors.add(
            format!("{path}.domains"),
            "at least one domain is required (\"*\" for any)",
        );
    }
    let mut parsed = Vec::with_capacity(host.domains.len());
    for (domain_index, domain) in host.domains.iter().enumerate() {
        match Domain::parse(domain).and_then(|domain| claim(&domain, domain_index).map(|()| domain)) {
            Ok(domain) => parsed.push(domain),
            Err(message) => errors.add(format!("{path}.domains[{domain_index}]"), message),
        }
    }
    if host.routes.is_empty() {
        errors.add(format!("{path}.routes"), "at least one route is required");
    }
    let mut route_names: HashMap<String, usize> = HashMap::new();
    let mut routes = Vec::with_capacity(host.routes.len());
    for (route_index, route) in host.routes.iter().enumerate() {
        let route_path = format!("{path}.routes[{route_index}]");
        let route_name = if route.name.is_empty() {
            route_index.to_string()
        } else {
            route.name.clone()
        };
        if let Some(first) = route_names.insert(route_name.clone(), route_index) {
            errors.add(
                format!("{route_path}.name"),
                format!("duplicate route name \"{route_name}\" (also routes[{first}])"),
            );
        }
        let matcher = route_match(errors, &route_path, route.r#match.as_ref());
        let action = action(errors, &route_path, route, matcher.as_ref(), context);
        if let (Some(matcher), Some(action)) = (matcher, action) {
            routes.push(RoutePlan {
                name: route_name.into(),
                matcher,
                max_body_bytes: (route.max_body_bytes != 0).then_some(route.max_body_bytes),
                action,
            });
        }
    }
    let (tls, hsts) = match &host.tls {
        Some(host_tls) => tls::host(errors, path, host_tls, context.has_certificate, context.certificate),
        None => (None, None),
    };
    HostPlan {
        name: name.into(),
        domains: parsed,
        routes,
        tls,
        hsts,
    }
}

/// Whether a route of the host renders the status page.
pub(crate) fn uses_status_page(host: &proto::VirtualHost) -> bool {
    host.routes
        .iter()
        .any(|route| route.direct_response.as_ref().is_some_and(|direct| direct.status_page))
}

fn route_match(errors: &mut Errors, path: &str, matcher: Option<&proto::RouteMatch>) -> Option<RouteMatch> {
    let default = proto::RouteMatch::default();
    let matcher = matcher.unwrap_or(&default);
    let set = [
        ("prefix", &matcher.prefix),
        ("exact", &matcher.exact),
        ("regex", &matcher.regex),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .collect::<Vec<_>>();
    let mut valid = true;
    let path_match = match set.as_slice() {
        [] => PathMatch::Prefix("/".into()),
        [("regex", regex)] => match regex::Regex::new(&anchored(regex)) {
            Ok(regex) => PathMatch::Regex(regex),
            Err(error) => {
                errors.add(format!("{path}.match.regex"), format!("invalid regex: {error}"));
                valid = false;
                PathMatch::Prefix("/".into())
            }
        },
        [(field, value)] => {
            if !value.starts_with('/') {
                errors.add(
                    format!("{path}.match.{field}"),
                    format!("path \"{value}\" must start with '/'"),
                );
                valid = false;
            }
            if *field == "exact" {
                PathMatch::Exact(value.as_str().into())
            } else {
                PathMatch::Prefix(value.as_str().into())
            }
        }
        several => {
            let fields = several.iter().map(|(field, _)| *field).collect::<Vec<_>>().join(", ");
            errors.add(
                format!("{path}.match"),
                format!("at most one of prefix, exact, regex may be set; found {fields}"),
            );
            valid = false;
            PathMatch::Prefix("/".into())
        }
    };
    let mut headers = Vec::with_capacity(matcher.headers.len());
    for (index, header) in matcher.headers.iter().enumerate() {
        let header_path = format!("{path}.match.headers[{index}]");
        if !is_token(&header.name) {
            errors.add(
                format!("{header_path}.name"),
                format!("invalid header name \"{}\"", header.name),
            );
            valid = false;
        }
        let value = match (header.exact.is_empty(), header.regex.is_empty()) {
            (true, true) => HeaderValueMatch::Present,
            (false, true) => HeaderValueMatch::Exact(header.exact.as_bytes().into()),
            (true, false) => match regex::bytes::Regex::new(&anchored(&header.regex)) {
                Ok(regex) => HeaderValueMatch::Regex(regex),
                Err(error) => {
                    errors.add(format!("{header_path}.regex"), format!("invalid regex: {error}"));
                    valid = false;
                    HeaderValueMatch::Present
                }
            },
            (false, false) => {
                errors.add(header_path.clone(), "at most one of exact, regex may be set");
                valid = false;
                HeaderValueMatch::Present
            }
        };
        headers.push(HeaderMatch {
            name: header.name.to_ascii_lowercase().into(),
            value,
            invert: header.invert,
        });
    }
    valid.then_some(RouteMatch {
        path: path_match,
        headers,
    })
}

fn action(
    errors: &mut Errors,
    path: &str,
    route: &proto::Route,
    matcher: Option<&RouteMatch>,
    context: &HostContext<'_>,
) -> Option<ActionPlan> {
    match (&route.proxy, &route.redirect, &route.direct_response) {
        (Some(proxy), None, None) => proxy_plan(errors, &format!("{path}.proxy"), proxy, matcher, context),
        (None, Some(redirect), None) => redirect_route(errors, &format!("{path}.redirect"), redirect),
        (None, None, Some(direct)) => direct_route(errors, &format!("{path}.direct_response"), direct, context),
        (None, None, None) => {
            errors.add(path, "a route needs one of proxy, redirect, direct_response");
            None
        }
        _ => {
            errors.add(path, "only one of proxy, redirect, direct_response may be set");
            None
        }
    }
}

fn proxy_plan(
    errors: &mut Errors,
    path: &str,
    proxy: &proto::ProxyAction,
    matcher: Option<&RouteMatch>,
    context: &HostContext<'_>,
) -> Option<ActionPlan> {
    let before = errors.len();
    if proxy.cluster.is_empty() {
        errors.add(format!("{path}.cluster"), "must name a cluster");
    } else if !(context.has_cluster)(&proxy.cluster) {
        errors.add(
            format!("{path}.cluster"),
            format!("unknown cluster \"{}\"", proxy.cluster),
        );
    }
    let prefix_rewrite = match proxy.prefix_rewrite.as_str() {
        "" => None,
        rewrite => {
            if !rewrite.starts_with('/') {
                errors.add(
                    format!("{path}.prefix_rewrite"),
                    format!("\"{rewrite}\" must start with '/'"),
                );
            }
            if matcher.is_some_and(|matcher| !matches!(matcher.path, PathMatch::Prefix(_))) {
                errors.add(
                    format!("{path}.prefix_rewrite"),
                    "only allowed on routes that match by prefix",
                );
            }
            Some(rewrite.to_owned())
        }
    };
    let host_rewrite = match proxy.host_rewrite.as_str() {
        "" => None,
        host if is_authority(host) => Some(host.to_owned()),
        host => {
            errors.add(format!("{path}.host_rewrite"), format!("invalid host \"{host}\""));
            None
        }
    };
    let read_timeout = optional_duration(errors, || format!("{path}.read_timeout"), &proxy.read_timeout);
    let send_timeout = optional_duration(errors, || format!("{path}.send_timeout"), &proxy.send_timeout);
    let retry = proxy.retry.clone().unwrap_or_default();
    let retry_on_statuses = statuses(errors, &format!("{path}.retry.on_statuses"), &retry.on_statuses);
    (errors.len() == before).then(|| {
        ActionPlan::Proxy(ProxyPlan {
            cluster: proxy.cluster.clone(),
            prefix_rewrite,
            host_rewrite,
            read_timeout,
            send_timeout,
            max_retries: retry.max_retries.unwrap_or(defaults::MAX_RETRIES),
            retry_on_statuses,
        })
    })
}

fn redirect_route(errors: &mut Errors, path: &str, redirect: &proto::RedirectAction) -> Option<ActionPlan> {
    let before = errors.len();
    let status = match redirect.status {
        0 => defaults::REDIRECT_STATUS,
        status @ (301 | 302 | 303 | 307 | 308) => status as u16,
        status => {
            errors.add(
                format!("{path}.status"),
                format!("invalid redirect status {status}: expected 301, 302, 303, 307 or 308"),
            );
            defaults::REDIRECT_STATUS
        }
    };
    let scheme = match redirect.scheme.as_str() {
        "" => None,
        "http" | "https" => Some(redirect.scheme.clone()),
        scheme => {
            errors.add(
                format!("{path}.scheme"),
                format!("invalid scheme \"{scheme}\": expected http or https"),
            );
            None
        }
    };
    let host = match redirect.host.as_str() {
        "" => None,
        // The port has its own field.
        host if is_host(host) => Some(host.to_owned()),
        host => {
            errors.add(format!("{path}.host"), format!("invalid host \"{host}\""));
            None
        }
    };
    let port = match redirect.port {
        0 => None,
        port => match u16::try_from(port) {
            Ok(port) => Some(port),
            Err(_) => {
                errors.add(format!("{path}.port"), format!("invalid port {port}"));
                None
            }
        },
    };
    let redirect_path = match redirect.path.as_str() {
        "" => None,
        value if value.starts_with('/') && !value.bytes().any(|b| b <= b' ' || b == 0x7f) => Some(value.to_owned()),
        value => {
            errors.add(
                format!("{path}.path"),
                format!("invalid path \"{value}\": must start with '/' and hold no spaces or control characters"),
            );
            None
        }
    };
    (errors.len() == before).then(|| {
        ActionPlan::Redirect(RedirectRoute {
            status,
            scheme,
            host,
            port,
            path: redirect_path,
            strip_query: redirect.strip_query,
        })
    })
}

fn direct_route(
    errors: &mut Errors,
    path: &str,
    direct: &proto::DirectResponse,
    context: &HostContext<'_>,
) -> Option<ActionPlan> {
    let before = errors.len();
    let status = match direct.status {
        0 => defaults::DIRECT_STATUS,
        status @ 100..=599 => status as u16,
        status => {
            errors.add(
                format!("{path}.status"),
                format!("invalid HTTP status {status}: expected 100 to 599"),
            );
            defaults::DIRECT_STATUS
        }
    };
    if direct.status_page && !direct.body.is_empty() {
        errors.add(format!("{path}.body"), "not allowed together with status_page");
    }
    let content_type = match direct.content_type.as_str() {
        "" => defaults::DIRECT_CONTENT_TYPE.to_owned(),
        value if value.bytes().all(|b| (b' '..0x7f).contains(&b)) => value.to_owned(),
        value => {
            errors.add(
                format!("{path}.content_type"),
                format!("invalid content type \"{value}\""),
            );
            String::new()
        }
    };
    let body = if direct.status_page {
        context.status_page.clone()
    } else {
        Bytes::from(direct.body.clone())
    };
    (errors.len() == before).then_some(ActionPlan::Direct(DirectRoute {
        status,
        content_type,
        body,
    }))
}
