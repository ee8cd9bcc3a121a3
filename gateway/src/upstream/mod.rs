//! Upstream clusters: endpoints (static or DNS-resolved), their shared health
//! state, load balancing, per-worker keep-alive pools and active health checks.
//!
//! Shared state (`Cluster`, `Endpoint` health) is read by every worker through
//! atomics only; pools and balancer counters are worker-local.

use std::net::SocketAddr;
use std::time::Duration;

/// Load-balancing policy of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    /// Hash of a request header, or of the client IP when `hash_header` is None.
    ConsistentHash,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeepaliveSettings {
    pub max_idle: usize,
    pub max_requests: u32,
    pub idle_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckSettings {
    pub path: String,
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Empty means 200-399.
    pub expected_statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierSettings {
    /// 0 disables passive ejection.
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
}

/// A cluster's settings with every default applied (built by `config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSettings {
    pub lb_policy: LbPolicy,
    /// Lower-case header name for consistent hashing; None hashes the client IP.
    pub hash_header: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub send_timeout: Duration,
    pub dns_refresh: Duration,
    pub keepalive: KeepaliveSettings,
    pub health_check: Option<HealthCheckSettings>,
    pub outlier: OutlierSettings,
}

#[cfg(test)]
impl ClusterSettings {
    /// Round robin, the documented timeouts and pool sizes, passive ejection
    /// off: a cluster whose behaviour a unit test can predict.
    pub(crate) fn for_tests() -> ClusterSettings {
        ClusterSettings {
            lb_policy: LbPolicy::RoundRobin,
            hash_header: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(3),
            send_timeout: Duration::from_secs(3),
            dns_refresh: Duration::from_secs(30),
            keepalive: KeepaliveSettings {
                max_idle: 200,
                max_requests: 10_000,
                idle_timeout: Duration::from_secs(100),
            },
            health_check: None,
            outlier: OutlierSettings {
                consecutive_failures: 0,
                ejection_time: Duration::from_secs(30),
            },
        }
    }
}

/// One configured endpoint: an address literal or a DNS name, with a weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// "10.0.0.1:8080", "[::1]:8080" or "name.internal:80".
    pub address: String,
    pub weight: u32,
}

pub type ResolvedAddrs = Vec<SocketAddr>;

mod cluster;
pub use cluster::{Cluster, Endpoint, EndpointSet};

pub mod health;
mod lb;
mod pool;
pub use lb::Balancer;
pub use pool::{Pools, UpstreamConn};
