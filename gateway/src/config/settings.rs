//! Typed settings with every default applied, converted from the proto
//! messages. Each conversion also validates: a bad field is recorded with its
//! path and the default stands in, so one pass finds every error.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::defaults;
use super::error::Errors;
use super::proto;
use crate::route::{is_dns_name, is_token};
use crate::upstream::{
    ClusterSettings, EndpointSpec, HealthCheckSettings, KeepaliveSettings, LbPolicy, OutlierSettings,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkersSetting {
    /// Sized from the CPU affinity mask and the cgroup CPU quota.
    Auto,
    Count(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoDriver {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    IoUring,
    Epoll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeSettings {
    pub workers: WorkersSetting,
    pub io: IoDriver,
    pub drain_timeout: Duration,
    pub pin_workers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Off,
    Stdout,
    /// Appended to.
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Lower case.
    pub request_id_header: String,
    pub forwarded_headers: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSettings {
    pub name: String,
    pub address: SocketAddr,
    pub max_request_header_bytes: usize,
    pub max_uri_bytes: usize,
    pub keepalive_timeout: Duration,
    pub keepalive_requests: u32,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub backlog: u32,
}

/// Smallest accepted request-head and URI limits: below these no real client works.
const MIN_HEADER_BYTES: u32 = 1024;
const MIN_URI_BYTES: u32 = 64;
/// Each unit of weight costs ring points on consistent-hash clusters.
const MAX_WEIGHT: u32 = 1000;

/// Parses a humantime duration; unset takes `default`. Zero is refused unless
/// `allow_zero`, because a zero timeout or interval is never what was meant.
pub(crate) fn duration(
    errors: &mut Errors,
    path: impl FnOnce() -> String,
    value: &str,
    default: Duration,
    allow_zero: bool,
) -> Duration {
    if value.is_empty() {
        return default;
    }
    match humantime::parse_duration(value) {
        Ok(parsed) if parsed.is_zero() && !allow_zero => {
            errors.add(path(), format!("duration \"{value}\" must be greater than zero"));
            default
        }
        Ok(parsed) => parsed,
        Err(error) => {
            errors.add(
                path(),
                format!("invalid duration \"{value}\" ({error}); examples: \"3s\", \"100ms\", \"1m 30s\""),
            );
            default
        }
    }
}

/// An optional duration: None when unset.
pub(crate) fn optional_duration(errors: &mut Errors, path: impl FnOnce() -> String, value: &str) -> Option<Duration> {
    (!value.is_empty()).then(|| duration(errors, path, value, Duration::ZERO, false))
}

fn socket_addr(errors: &mut Errors, path: &str, value: &str) -> Option<SocketAddr> {
    value
        .parse()
        .map_err(|_| {
            errors.add(
                path,
                format!("invalid address \"{value}\": expected IP:port such as 0.0.0.0:8080 or [::]:8080"),
            )
        })
        .ok()
}

pub(crate) fn runtime(errors: &mut Errors, runtime: Option<&proto::Runtime>) -> RuntimeSettings {
    let default = proto::Runtime::default();
    let runtime = runtime.unwrap_or(&default);
    let workers = match runtime.workers.as_str() {
        "" | defaults::WORKERS_AUTO => WorkersSetting::Auto,
        value => match value.parse::<usize>() {
            Ok(count) if (1..=defaults::MAX_WORKERS).contains(&count) => WorkersSetting::Count(count),
            _ => {
                errors.add(
                    "runtime.workers",
                    format!(
                        "invalid workers \"{value}\": expected \"auto\" or a number from 1 to {}",
                        defaults::MAX_WORKERS
                    ),
                );
                WorkersSetting::Auto
            }
        },
    };
    let io = match proto::IoDriver::try_from(runtime.io) {
        Ok(proto::IoDriver::Auto) => IoDriver::Auto,
        Ok(proto::IoDriver::IoUring) => IoDriver::IoUring,
        Ok(proto::IoDriver::Epoll) => IoDriver::Epoll,
        Err(_) => {
            errors.add("runtime.io", format!("unknown io driver {}", runtime.io));
            IoDriver::Auto
        }
    };
    RuntimeSettings {
        workers,
        io,
        drain_timeout: duration(
            errors,
            || "runtime.drain_timeout".into(),
            &runtime.drain_timeout,
            defaults::DRAIN_TIMEOUT,
            true,
        ),
        pin_workers: runtime.pin_workers.unwrap_or(defaults::PIN_WORKERS),
    }
}

pub(crate) fn admin_address(errors: &mut Errors, admin: Option<&proto::Admin>) -> SocketAddr {
    match admin.map_or("", |admin| admin.address.as_str()) {
        "" => defaults::ADMIN_ADDRESS,
        address => socket_addr(errors, "admin.address", address).unwrap_or(defaults::ADMIN_ADDRESS),
    }
}

pub(crate) fn access_log(access_log: Option<&proto::AccessLog>) -> AccessLogTarget {
    match access_log.map_or("", |log| log.path.as_str()) {
        "" | defaults::ACCESS_LOG => AccessLogTarget::Stdout,
        "off" => AccessLogTarget::Off,
        path => AccessLogTarget::File(PathBuf::from(path)),
    }
}

pub(crate) fn http(errors: &mut Errors, http: Option<&proto::HttpOptions>) -> HttpSettings {
    let default = proto::HttpOptions::default();
    let http = http.unwrap_or(&default);
    let request_id_header = match http.request_id_header.as_str() {
        "" => defaults::REQUEST_ID_HEADER.to_owned(),
        name if is_token(name) => name.to_ascii_lowercase(),
        name => {
            errors.add("http.request_id_header", format!("invalid header name \"{name}\""));
            defaults::REQUEST_ID_HEADER.to_owned()
        }
    };
    HttpSettings {
        request_id_header,
        forwarded_headers: http.forwarded_headers.unwrap_or(defaults::FORWARDED_HEADERS),
    }
}

/// Converts every listener and checks names and addresses are unique, also
/// against the admin listener.
pub(crate) fn listeners(
    errors: &mut Errors,
    listeners: &[proto::Listener],
    admin_address: SocketAddr,
) -> Vec<ListenerSettings> {
    if listeners.is_empty() {
        errors.add("listeners", "at least one listener is required");
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
    let mut settings = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners.iter().enumerate() {
        let path = format!("listeners[{index}]");
        if listener.name.is_empty() {
            errors.add(format!("{path}.name"), "must not be empty");
        } else if let Some(first) = names.insert(&listener.name, index) {
            errors.add(
                format!("{path}.name"),
                format!(
                    "duplicate listener name \"{}\" (also listeners[{first}])",
                    listener.name
                ),
            );
        }
        let address = if listener.address.is_empty() {
            errors.add(format!("{path}.address"), "must not be empty");
            None
        } else {
            socket_addr(errors, &format!("{path}.address"), &listener.address)
        };
        if let Some(address) = address {
            if let Some(first) = addresses.insert(address, index) {
                errors.add(
                    format!("{path}.address"),
                    format!("duplicate listener address {address} (also listeners[{first}])"),
                );
            } else if address == admin_address {
                errors.add(
                    format!("{path}.address"),
                    format!("address {address} is also the admin address"),
                );
            }
        }
        // Only reported errors leave the address unset, and then nothing is built.
        let address = address.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let max_request_header_bytes = match listener.max_request_header_bytes {
            0 => defaults::MAX_REQUEST_HEADER_BYTES,
            bytes if bytes < MIN_HEADER_BYTES => {
                errors.add(
                    format!("{path}.max_request_header_bytes"),
                    format!("{bytes} is too small; at least {MIN_HEADER_BYTES}"),
                );
                defaults::MAX_REQUEST_HEADER_BYTES
            }
            bytes => bytes as usize,
        };
        let max_uri_bytes = match listener.max_uri_bytes {
            0 => defaults::MAX_URI_BYTES,
            bytes if bytes < MIN_URI_BYTES => {
                errors.add(
                    format!("{path}.max_uri_bytes"),
                    format!("{bytes} is too small; at least {MIN_URI_BYTES}"),
                );
                defaults::MAX_URI_BYTES
            }
            bytes => bytes as usize,
        };
        settings.push(ListenerSettings {
            name: listener.name.clone(),
            address,
            max_request_header_bytes,
            max_uri_bytes,
            keepalive_timeout: duration(
                errors,
                || format!("{path}.keepalive_timeout"),
                &listener.keepalive_timeout,
                defaults::KEEPALIVE_TIMEOUT,
                false,
            ),
            keepalive_requests: nonzero_or(listener.keepalive_requests, defaults::KEEPALIVE_REQUESTS),
            header_timeout: duration(
                errors,
                || format!("{path}.header_timeout"),
                &listener.header_timeout,
                defaults::HEADER_TIMEOUT,
                false,
            ),
            body_timeout: duration(
                errors,
                || format!("{path}.body_timeout"),
                &listener.body_timeout,
                defaults::BODY_TIMEOUT,
                false,
            ),
            backlog: nonzero_or(listener.backlog, defaults::BACKLOG),
        });
    }
    settings
}

/// proto3 cannot tell 0 from unset: 0 means the default.
fn nonzero_or(value: u32, default: u32) -> u32 {
    if value == 0 {
        default
    } else {
        value
    }
}

/// A cluster ready to be built (resolved) once the whole config is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClusterPlan {
    pub name: String,
    pub settings: ClusterSettings,
    pub specs: Vec<EndpointSpec>,
}

pub(crate) fn clusters(errors: &mut Errors, clusters: &[proto::Cluster]) -> Vec<ClusterPlan> {
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut plans = Vec::with_capacity(clusters.len());
    for (index, cluster) in clusters.iter().enumerate() {
        let path = format!("clusters[{index}]");
        if cluster.name.is_empty() {
            errors.add(format!("{path}.name"), "must not be empty");
        } else if let Some(first) = names.insert(&cluster.name, index) {
            errors.add(
                format!("{path}.name"),
                format!("duplicate cluster name \"{}\" (also clusters[{first}])", cluster.name),
            );
        }
        plans.push(ClusterPlan {
            name: cluster.name.clone(),
            settings: cluster_settings(errors, &path, cluster),
            specs: endpoints(errors, &path, &cluster.endpoints),
        });
    }
    plans
}

fn cluster_settings(errors: &mut Errors, path: &str, cluster: &proto::Cluster) -> ClusterSettings {
    let lb_policy = match proto::LbPolicy::try_from(cluster.lb_policy) {
        Ok(proto::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(proto::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        Ok(proto::LbPolicy::ConsistentHash) => LbPolicy::ConsistentHash,
        Err(_) => {
            errors.add(
                format!("{path}.lb_policy"),
                format!("unknown lb policy {}", cluster.lb_policy),
            );
            LbPolicy::RoundRobin
        }
    };
    let hash_header = match cluster.hash_header.as_str() {
        "" => None,
        _ if lb_policy != LbPolicy::ConsistentHash => {
            errors.add(
                format!("{path}.hash_header"),
                "only used with lb_policy consistent_hash",
            );
            None
        }
        name if is_token(name) => Some(name.to_ascii_lowercase()),
        name => {
            errors.add(format!("{path}.hash_header"), format!("invalid header name \"{name}\""));
            None
        }
    };
    let keepalive = cluster.keepalive.clone().unwrap_or_default();
    let outlier = cluster.outlier_detection.clone().unwrap_or_default();
    ClusterSettings {
        lb_policy,
        hash_header,
        connect_timeout: duration(
            errors,
            || format!("{path}.connect_timeout"),
            &cluster.connect_timeout,
            defaults::CONNECT_TIMEOUT,
            false,
        ),
        read_timeout: duration(
            errors,
            || format!("{path}.read_timeout"),
            &cluster.read_timeout,
            defaults::READ_TIMEOUT,
            false,
        ),
        send_timeout: duration(
            errors,
            || format!("{path}.send_timeout"),
            &cluster.send_timeout,
            defaults::SEND_TIMEOUT,
            false,
        ),
        dns_refresh: duration(
            errors,
            || format!("{path}.dns_refresh"),
            &cluster.dns_refresh,
            defaults::DNS_REFRESH,
            false,
        ),
        keepalive: KeepaliveSettings {
            max_idle: keepalive.max_idle.map_or(defaults::POOL_MAX_IDLE, |idle| idle as usize),
            max_requests: nonzero_or(keepalive.max_requests, defaults::POOL_MAX_REQUESTS),
            idle_timeout: duration(
                errors,
                || format!("{path}.keepalive.idle_timeout"),
                &keepalive.idle_timeout,
                defaults::POOL_IDLE_TIMEOUT,
                false,
            ),
        },
        health_check: cluster
            .health_check
            .as_ref()
            .map(|check| health_check(errors, &format!("{path}.health_check"), check)),
        outlier: OutlierSettings {
            consecutive_failures: outlier
                .consecutive_failures
                .unwrap_or(defaults::OUTLIER_CONSECUTIVE_FAILURES),
            ejection_time: duration(
                errors,
                || format!("{path}.outlier_detection.ejection_time"),
                &outlier.ejection_time,
                defaults::OUTLIER_EJECTION_TIME,
                false,
            ),
        },
    }
}

fn health_check(errors: &mut Errors, path: &str, check: &proto::HealthCheck) -> HealthCheckSettings {
    let probe_path = match check.path.as_str() {
        "" => defaults::HEALTH_PATH.to_owned(),
        value if value.starts_with('/') && !value.bytes().any(|b| b <= b' ' || b == 0x7f) => value.to_owned(),
        value => {
            errors.add(
                format!("{path}.path"),
                format!("invalid path \"{value}\": must start with '/' and hold no spaces or control characters"),
            );
            defaults::HEALTH_PATH.to_owned()
        }
    };
    let host = match check.host.as_str() {
        "" => None,
        value if is_authority(value) => Some(value.to_owned()),
        value => {
            errors.add(format!("{path}.host"), format!("invalid host \"{value}\""));
            None
        }
    };
    let interval = duration(
        errors,
        || format!("{path}.interval"),
        &check.interval,
        defaults::HEALTH_INTERVAL,
        false,
    );
    let timeout = duration(
        errors,
        || format!("{path}.timeout"),
        &check.timeout,
        // A short interval implies a short probe: unset, the timeout never
        // exceeds the interval.
        defaults::HEALTH_TIMEOUT.min(interval),
        false,
    );
    if timeout > interval {
        errors.add(
            format!("{path}.timeout"),
            format!(
                "timeout {} is longer than the interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
    }
    let expected_statuses = statuses(errors, &format!("{path}.expected_statuses"), &check.expected_statuses);
    HealthCheckSettings {
        path: probe_path,
        host,
        interval,
        timeout,
        healthy_threshold: nonzero_or(check.healthy_threshold, defaults::HEALTHY_THRESHOLD),
        unhealthy_threshold: nonzero_or(check.unhealthy_threshold, defaults::UNHEALTHY_THRESHOLD),
        expected_statuses,
    }
}

/// HTTP statuses, each 100..=599.
pub(crate) fn statuses(errors: &mut Errors, path: &str, values: &[u32]) -> Vec<u16> {
    values
        .iter()
        .enumerate()
        .filter_map(|(index, &status)| match u16::try_from(status) {
            Ok(status) if (100..=599).contains(&status) => Some(status),
            _ => {
                errors.add(
                    format!("{path}[{index}]"),
                    format!("invalid HTTP status {status}: expected 100 to 599"),
                );
                None
            }
        })
        .collect()
}

fn endpoints(errors: &mut Errors, path: &str, endpoints: &[proto::Endpoint]) -> Vec<EndpointSpec> {
    if endpoints.is_empty() {
        errors.add(format!("{path}.endpoints"), "at least one endpoint is required");
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut specs = Vec::with_capacity(endpoints.len());
    for (index, endpoint) in endpoints.iter().enumerate() {
        let endpoint_path = format!("{path}.endpoints[{index}]");
        if let Err(message) = check_host_port(&endpoint.address) {
            errors.add(format!("{endpoint_path}.address"), message);
        } else if let Some(first) = seen.insert(&endpoint.address, index) {
            errors.add(
                format!("{endpoint_path}.address"),
                format!("duplicate endpoint \"{}\" (also endpoints[{first}])", endpoint.address),
            );
        }
        let weight = match endpoint.weight {
            0 => defaults::ENDPOINT_WEIGHT,
            weight if weight > MAX_WEIGHT => {
                errors.add(
                    format!("{endpoint_path}.weight"),
                    format!("weight {weight} is too large; at most {MAX_WEIGHT}"),
                );
                defaults::ENDPOINT_WEIGHT
            }
            weight => weight,
        };
        specs.push(EndpointSpec {
            address: endpoint.address.clone(),
            weight,
        });
    }
    specs
}

/// "10.0.0.1:8080", "[::1]:8080" or "name.internal:80", port 1..=65535.
fn check_host_port(address: &str) -> Result<(), String> {
    let expected = || {
        format!(
            "invalid endpoint \"{address}\": expected host:port such as 10.0.0.1:8080, [::1]:8080 or name.internal:80"
        )
    };
    let (host, port) = address.rsplit_once(':').ok_or_else(expected)?;
    match port.parse::<u16>() {
        Ok(port) if port != 0 => {}
        _ => return Err(expected()),
    }
    if is_host(host) {
        Ok(())
    } else {
        Err(expected())
    }
}

/// A Host header value: a DNS name or IP literal, optionally with ":port".
pub(crate) fn is_authority(value: &str) -> bool {
    let (host, port) = match value.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => (host, Some(port)),
        _ => (value, None),
    };
    if port.is_some_and(|port| port.parse::<u16>().is_err()) {
        return false;
    }
    is_host(host)
}

/// A host name or IP literal (IPv6 in brackets), without a port.
pub(crate) fn is_host(value: &str) -> bool {
    match value.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ip) => ip.parse::<Ipv6Addr>().is_ok(),
        None => is_dns_name(value),
    }
}
