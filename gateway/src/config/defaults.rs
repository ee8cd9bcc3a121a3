//! The defaults of every unset config field, in one place. The values are the
//! ones documented in `proto/tollgate/config/v1/config.proto`; change both
//! together.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

pub const WORKERS_AUTO: &str = "auto";
pub const MAX_WORKERS: usize = 4096;
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub const PIN_WORKERS: bool = true;

pub const ADMIN_ADDRESS: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9901));
pub const ACCESS_LOG: &str = "stdout";

pub const REQUEST_ID_HEADER: &str = "x-request-id";
pub const FORWARDED_HEADERS: bool = true;

pub const MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_URI_BYTES: usize = 8 * 1024;
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(75);
pub const KEEPALIVE_REQUESTS: u32 = 10_000;
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(60);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);
pub const BACKLOG: u32 = 32_768;

/// TLS listeners; the minimum version defaults to "1.2".
pub const TICKET_LIFETIME: Duration = Duration::from_secs(12 * 60 * 60);
pub const SESSION_CACHE_SIZE: usize = 20_000;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HSTS_MAX_AGE: Duration = Duration::from_secs(365 * 24 * 60 * 60);

pub const REDIRECT_STATUS: u16 = 301;
pub const DIRECT_STATUS: u16 = 200;
pub const DIRECT_CONTENT_TYPE: &str = "text/plain; charset=utf-8";
pub const MAX_RETRIES: u32 = 1;

pub const ENDPOINT_WEIGHT: u32 = 1;
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub const READ_TIMEOUT: Duration = Duration::from_secs(3);
pub const SEND_TIMEOUT: Duration = Duration::from_secs(3);
pub const DNS_REFRESH: Duration = Duration::from_secs(30);
pub const POOL_MAX_IDLE: usize = 200;
pub const POOL_MAX_REQUESTS: u32 = 10_000;
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(100);

pub const HEALTH_PATH: &str = "/";
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const HEALTHY_THRESHOLD: u32 = 2;
pub const UNHEALTHY_THRESHOLD: u32 = 3;

pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
pub const OUTLIER_EJECTION_TIME: Duration = Duration::from_secs(30);

/// Routes: body held when a plugin buffers it (Envoy's per-connection buffer limit).
pub const MAX_BUFFERED_BODY_BYTES: u64 = 1024 * 1024;

/// Plugins. The default instance budget is min(workers, this) per enabled
/// plugin: one instance per worker up to 8 workers, so small machines never
/// share an instance, and at most 8 per plugin however many cores there are
/// (255 workers × 8 plugins: 64 instances, not 2,040).
pub const PLUGIN_INSTANCES_PER_PLUGIN: u64 = 8;
pub const PLUGIN_VM_MEMORY_BUDGET: u64 = 1024 * 1024 * 1024;
pub const PLUGIN_MAX_MEMORY: u64 = 32 * 1024 * 1024;
pub const PLUGIN_MAX_CALL_TIME: Duration = Duration::from_millis(100);
pub const PLUGIN_ENABLED: bool = true;

/// eBPF: where the pinned maps live, how many sources the guard tracks, and
/// whether steering is on unless the config says otherwise.
pub const EBPF_PIN_PATH: &str = "/sys/fs/bpf/tollgate";
pub const EBPF_TRACKED_SOURCES: u32 = tollgate_ebpf_common::DEFAULT_TRACKED_SOURCES;
pub const EBPF_STEERING: bool = true;
