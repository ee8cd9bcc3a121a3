//! nginx as a bench peer: the main block, temp paths, the reverse-proxy config and the 12-byte
//! upstream every bench shares, started pinned (and optionally capped, or inside a namespace
//! through a command prefix) like the gateway it is compared with.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};

use super::procs::Procs;
use crate::cmd;

const NGINX: &str = "/usr/sbin/nginx";
/// The body of every answer of [`upstream_conf`]'s server.
pub(super) const BODY: &str = "hello world\n";

/// Fails early, with the fix, when nginx is not installed.
pub(super) fn require() -> Result<()> {
    if !Path::new(NGINX).exists() {
        anyhow::bail!("{NGINX} not found: run `cargo xtask setup`");
    }
    Ok(())
}

/// Starts nginx on `conf` as bench process `name`, pinned to `cpu` (and in
/// `cgroup`), and waits until it listens on `addr`.
pub(super) fn start_nginx(
    procs: &mut Procs,
    name: &str,
    cpu: u32,
    conf: &str,
    addr: SocketAddr,
    cgroup: Option<&Path>,
) -> Result<()> {
    spawn_nginx(procs, name, cpu, conf, &[], cgroup)?;
    procs.wait_listening(name, addr)
}

/// Writes `conf` to `<name>.conf` in the scratch directory and starts nginx
/// on it as bench process `name`, pinned to `cpu` (and in `cgroup`), run by
/// `prefix` when it is not empty: the words of a command that runs the rest,
/// e.g. `Netns::nsenter_words` for nginx inside a namespace. Returns without
/// waiting, so a caller can wait where the listen address is reachable.
pub(super) fn spawn_nginx(
    procs: &mut Procs,
    name: &str,
    cpu: u32,
    conf: &str,
    prefix: &[String],
    cgroup: Option<&Path>,
) -> Result<()> {
    let dir = procs.dir().to_path_buf();
    let conf_path = dir.join(format!("{name}.conf"));
    write(&conf_path, conf)?;
    let error_log = dir.join(format!("{name}.error.log"));
    let mut words: Vec<&str> = prefix.iter().map(String::as_str).collect();
    words.extend([
        NGINX,
        "-e",
        error_log.to_str().context("non-UTF-8 path")?,
        "-c",
        conf_path.to_str().context("non-UTF-8 path")?,
    ]);
    procs.spawn(name, cpu, Path::new(words[0]), &words[1..], cgroup)
}

/// Settings every nginx instance shares: foreground, one worker, every path in
/// the scratch directory (nginx runs as root in CI and must not touch /var).
pub(super) fn nginx_main(dir: &Path, name: &str) -> String {
    let d = dir.display();
    let user = if cmd::is_root() { "user root;\n" } else { "" };
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\n{user}pid {d}/{name}.pid;\n\
         error_log {d}/{name}.error.log warn;\nevents {{ worker_connections 4096; }}\n"
    )
}

pub(super) fn nginx_http_paths(dir: &Path, name: &str) -> String {
    let d = dir.display();
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {d}/{name}-{t};\n"))
        .collect()
}

pub(super) fn upstream_conf(dir: &Path, listen: SocketAddr) -> String {
    format!(
        "{main}http {{\n  access_log off;\n{paths}  keepalive_requests 10000;\n  server {{\n    listen {listen};\n    \
         location / {{ default_type text/plain; return 200 \"hello world\\n\"; }}\n  }}\n}}\n",
        main = nginx_main(dir, "upstream"),
        paths = nginx_http_paths(dir, "upstream"),
    )
}

/// nginx as the peer proxy, tuned like Tollgate's defaults: pooled upstream connections (200 idle, 10,000
/// requests) and 10,000 requests per client connection.
pub(super) fn proxy_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    format!(
        "{main}http {{\n  access_log off;\n{paths}  keepalive_requests 10000;\n  keepalive_timeout 75s;\n  \
         upstream up {{ server {upstream}; keepalive 200; keepalive_requests 10000; keepalive_timeout 100s; }}\n  \
         server {{\n    listen {listen};\n    location / {{\n      proxy_pass http://up;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n  }}\n}}\n",
        main = nginx_main(dir, "nginx"),
        paths = nginx_http_paths(dir, "nginx"),
    )
}

pub(super) fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
