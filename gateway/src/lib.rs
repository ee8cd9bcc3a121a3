//! Tollgate: an edge gateway. A per-core HTTP/1.1 reverse proxy (monoio
//! workers), configured by one protobuf schema, observed through an admin
//! listener. See docs/ARCHITECTURE.md for the map of modules.

pub mod accesslog;
pub mod admin;
pub mod config;
pub mod control;
pub mod ebpf;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod plugin;
pub mod route;
pub mod tls;
pub mod upstream;
