//! `Gateway`: the one way tests run the `tollgate` binary. It writes the
//! config into a temp dir, allocates the ports the config asks for, spawns
//! `tollgate run --config <file>` (optionally behind a wrapper such as
//! `taskset`, or inside a cgroup), captures stdout (the access log) and stderr
//! into files, and waits until every listener accepts and `/readyz` says 200.
//!
//! Port placeholders: `${NAME}` anywhere in the YAML becomes a free loopback
//! port, the same one for the same NAME across `start` and `reload`
//! (`"127.0.0.1:${http}"`).
//! When the YAML has no top-level `admin:` key the harness adds one on a free
//! port, so parallel tests never share the default 9901. Likewise, without an
//! `ebpf:` key it adds `ebpf: {pin_path: ...}` with a directory of its own
//! under /sys/fs/bpf (removed when the gateway is dropped): as root the
//! gateway loads its eBPF programs by default, and parallel gateways must not
//! share the default pinned maps.
//!
//! With `GatewayOptions::netns` the gateway runs inside that network namespace
//! (`nsenter --net`, outside any wrapper) and every connection the harness
//! makes to it (readiness, admin, metrics) is made from inside it too.

use std::collections::HashMap;
use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::client::{self, request};
use crate::netns::Netns;
use crate::ports::free_port;

/// How long `start` waits for the gateway to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Extra ways to launch the gateway.
#[derive(Clone, Debug, Default)]
pub struct GatewayOptions {
    /// Command words placed before the binary, e.g. `["taskset", "-c", "0"]`.
    pub wrapper: Vec<String>,
    /// A `cgroup.procs` file the process joins before it execs the gateway.
    pub cgroup_procs: Option<PathBuf>,
    /// The network namespace to run in (its listeners and admin address are
    /// addresses of that namespace).
    pub netns: Option<Netns>,
}

/// A running gateway process; killed when dropped.
pub struct Gateway {
    dir: tempfile::TempDir,
    child: Child,
    exit: Option<ExitStatus>,
    config_path: PathBuf,
    ports: HashMap<String, u16>,
    listeners: HashMap<String, SocketAddr>,
    admin: SocketAddr,
    netns: Option<Netns>,
    /// The pin directory the harness chose (configs without `ebpf:`).
    pin_path: PathBuf,
}

/// `<target>/debug/tollgate`, found from this test binary's own path
/// (`<target>/debug/deps/<test>-<hash>`).
pub fn tollgate_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in <target>/debug/deps");
    let bin = debug.join("tollgate");
    assert!(
        bin.is_file(),
        "{} is missing: run cargo build -p tollgate first; cargo xtask test does it",
        bin.display()
    );
    bin
}

/// Replaces every `${NAME}` with a port from (or newly added to) `ports`.
fn expand_ports(yaml: &str, ports: &mut HashMap<String, u16>) -> String {
    let mut out = String::with_capacity(yaml.len());
    let mut rest = yaml;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').expect("unterminated ${NAME} placeholder");
        let name = after[..end].trim().to_string();
        let port = *ports.entry(name).or_insert_with(free_port);
        out.push_str(&port.to_string());
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// A bpffs directory no other gateway of this or another test process uses.
fn unique_pin_path() -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/tge-{}-gw{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// (config text as written, listener name → address, admin address).
/// `pin_path` is the `ebpf.pin_path` added when the YAML has no `ebpf:`.
fn prepare(
    yaml: &str,
    ports: &mut HashMap<String, u16>,
    pin_path: &Path,
) -> (String, HashMap<String, SocketAddr>, SocketAddr) {
    let mut text = expand_ports(yaml, ports);
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("test config is not YAML ({e}):\n{text}"));
    if doc.get("ebpf").is_none() {
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&format!("ebpf: {{pin_path: \"{}\"}}\n", pin_path.display()));
    }
    let admin = match doc.get("admin").and_then(|a| a.get("address")).and_then(|a| a.as_str()) {
        Some(a) => a.parse().unwrap_or_else(|e| panic!("admin.address {a:?}: {e}")),
        None => {
            let port = *ports.entry("admin".into()).or_insert_with(free_port);
            if !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&format!("admin: {{address: \"127.0.0.1:{port}\"}}\n"));
            SocketAddr::from(([127, 0, 0, 1], port))
        }
    };
    let mut listeners = HashMap::new();
    if let Some(list) = doc.get("listeners").and_then(|l| l.as_sequence()) {
        for l in list {
            let name = l.get("name").and_then(|v| v.as_str()).unwrap_or_default().to_string();
            let addr = l
                .get("address")
                .and_then(|v| v.as_str())
                .expect("listener without address");
            listeners.insert(
                name,
                addr.parse()
                    .unwrap_or_else(|e| panic!("listener address {addr:?}: {e}")),
            );
        }
    }
    (text, listeners, admin)
}

fn write_atomically(path: &Path, text: &str) {
    // A file watcher must never see half a config.
    let tmp = path.with_extension("yaml.tmp");
    fs::write(&tmp, text).expect("write config");
    fs::rename(&tmp, path).expect("rename config");
}

impl Gateway {
    /// Starts the gateway with `yaml` and waits until it is ready.
    pub fn start(yaml: &str) -> Gateway {
        Gateway::start_with(yaml, GatewayOptions::default())
    }

    /// Starts with a wrapper and/or cgroup; waits until ready.
    pub fn start_with(yaml: &str, opts: GatewayOptions) -> Gateway {
        let mut gw = Gateway::spawn(yaml, &opts);
        gw.wait_ready();
        gw
    }

    /// Spawns without waiting (for configs expected to fail).
    pub fn spawn(yaml: &str, opts: &GatewayOptions) -> Gateway {
        let bin = tollgate_bin();
        let dir = tempfile::Builder::new()
            .prefix("tollgate-e2e-")
            .tempdir()
            .expect("temp dir");
        let mut ports = HashMap::new();
        let pin_path = unique_pin_path();
        let (text, listeners, admin) = prepare(yaml, &mut ports, &pin_path);
        let config_path = dir.path().join("tollgate.yaml");
        write_atomically(&config_path, &text);
        let stdout = fs::File::create(dir.path().join("stdout.log")).expect("stdout file");
        let stderr = fs::File::create(dir.path().join("stderr.log")).expect("stderr file");
        // nsenter goes first: a wrapper may drop the capabilities setns needs.
        let mut words: Vec<String> = opts.netns.as_ref().map(Netns::nsenter_words).unwrap_or_default();
        words.extend(opts.wrapper.iter().cloned());
        words.push(bin.display().to_string());
        words.extend([
            "run".to_string(),
            "--config".to_string(),
            config_path.display().to_string(),
        ]);
        let mut cmd = match &opts.cgroup_procs {
            Some(procs) => {
                // The shell joins the cgroup, then execs: the gateway keeps its pid
                // and starts inside the cgroup, before its first thread exists.
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("echo $$ > \"$0\" && exec \"$@\"")
                    .arg(procs)
                    .args(&words);
                c
            }
            None => {
                let mut c = Command::new(&words[0]);
                c.args(&words[1..]);
                c
            }
        };
        cmd.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env(
                "TOLLGATE_LOG",
                std::env::var("TOLLGATE_E2E_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1");
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {words:?}: {e}"));
        Gateway {
            dir,
            child,
            exit: None,
            config_path,
            ports,
            listeners,
            admin,
            netns: opts.netns.clone(),
            pin_path,
        }
    }

    /// Runs `f` where the gateway's addresses are reachable: inside its
    /// network namespace, or right here.
    fn in_ns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.netns {
            Some(ns) => ns.run(f),
            None => f(),
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                panic!("tollgate exited during start-up ({status}); stderr:\n{}", self.stderr());
            }
            let listening = self.in_ns(|| {
                self.listeners
                    .values()
                    .all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok())
            });
            if listening && self.try_admin_get("/readyz").is_some_and(|(s, _)| s == 200) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "tollgate not ready within {READY_TIMEOUT:?} (listeners {:?}, admin {}); stderr:\n{}",
                    self.listeners,
                    self.admin,
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address of listener `name` as configured.
    pub fn addr(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners))
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// The network namespace the gateway runs in, if not the test's own.
    pub fn netns(&self) -> Option<&Netns> {
        self.netns.as_ref()
    }

    /// The port allocated for placeholder `{{port:NAME}}`.
    pub fn port(&self, name: &str) -> u16 {
        *self
            .ports
            .get(name)
            .unwrap_or_else(|| panic!("no placeholder {{{{port:{name}}}}}"))
    }

    fn try_admin_get(&self, path: &str) -> Option<(u16, String)> {
        let req = request("GET", &self.admin.to_string(), path, &[("Connection", "close")], None);
        self.in_ns(|| client::raw_request(self.admin, &req).ok())
            .map(|r| (r.status, r.body_str()))
    }

    /// GET on the admin listener: (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        self.try_admin_get(path)
            .unwrap_or_else(|| panic!("admin GET {path} failed; stderr:\n{}", self.stderr()))
    }

    /// The Prometheus text of /metrics (asserting 200).
    pub fn metrics(&self) -> String {
        let (status, body) = self.admin_get("/metrics");
        assert_eq!(status, 200, "/metrics: {body}");
        body
    }

    /// Rewrites the config file with `yaml` (placeholders keep their ports)
    /// and sends SIGHUP. Does not wait for the new config to apply.
    pub fn reload(&mut self, yaml: &str) {
        let (text, listeners, admin) = prepare(yaml, &mut self.ports, &self.pin_path);
        write_atomically(&self.config_path, &text);
        self.listeners = listeners;
        self.admin = admin;
        self.signal(libc::SIGHUP);
    }

    /// Rewrites the config file without signalling (file-watch reloads).
    pub fn write_config(&mut self, yaml: &str) {
        let (text, _, _) = prepare(yaml, &mut self.ports, &self.pin_path);
        write_atomically(&self.config_path, &text);
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(self.pid(), sig) };
        assert_eq!(
            rc,
            0,
            "kill({}, {sig}): {}",
            self.pid(),
            std::io::Error::last_os_error()
        );
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("try_wait");
        }
        self.exit
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!("tollgate did not exit within {timeout:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.try_exit().is_none()
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
    }

    /// The JSON lines of stdout (the access log when `access_log.path` is stdout).
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Resident set size in KiB, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Targets of the process's open file descriptors (`/proc/<pid>/fd`),
    /// e.g. "anon_inode:[io_uring]", "anon_inode:[eventpoll]", "socket:[123]".
    pub fn fd_targets(&self) -> Vec<String> {
        let Ok(dir) = fs::read_dir(format!("/proc/{}/fd", self.pid())) else {
            return Vec::new();
        };
        dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .map(|t| t.display().to_string())
            .collect()
    }

    /// Number of threads, from /proc/<pid>/status.
    pub fn threads(&self) -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Threads in /proc/<pid>/status")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Exists only when the gateway loaded its eBPF programs (as root).
        let _ = fs::remove_dir_all(&self.pin_path);
    }
}

/// Runs `tollgate check` on `yaml`: (exit code, stdout + stderr).
pub fn check(yaml: &str) -> (Option<i32>, String) {
    check_in(None, yaml)
}

/// `check` run inside network namespace `netns` (where the interfaces the
/// config names exist), or here when None.
pub fn check_in(netns: Option<&Netns>, yaml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).expect("writing the config");
    let mut cmd = match netns {
        Some(ns) => ns.command(tollgate_bin()),
        None => Command::new(tollgate_bin()),
    };
    let out = cmd
        .arg("check")
        .arg("--config")
        .arg(&path)
        .output()
        .expect("running tollgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_stable_and_admin_is_added() {
        let mut ports = HashMap::new();
        let pin = Path::new("/sys/fs/bpf/t");
        let y = "listeners: [{name: http, address: \"127.0.0.1:${http}\"}]\nx: ${http}";
        let (text, listeners, admin) = prepare(y, &mut ports, pin);
        let p = ports["http"];
        assert!(text.contains(&format!("x: {p}")));
        assert_eq!(listeners["http"].port(), p);
        assert_eq!(admin.port(), ports["admin"]);
        assert!(text.contains(&format!("admin: {{address: \"127.0.0.1:{}\"}}", ports["admin"])));
        assert!(text.contains("ebpf: {pin_path: \"/sys/fs/bpf/t\"}"), "{text}");
        let (_, l2, a2) = prepare(y, &mut ports, pin);
        assert_eq!(l2["http"].port(), p);
        assert_eq!(a2, admin);
    }
}
