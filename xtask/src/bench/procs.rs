//! The processes a bench starts (peers, the gateway) and their cleanup. Each
//! one runs in its own process group so that nginx's workers die with their
//! master; the group is killed when the guard drops, when xtask gets
//! SIGINT/SIGTERM/SIGHUP, and (via PR_SET_PDEATHSIG) when xtask itself is killed.

use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// Process groups to kill from the signal handler (0 = free slot). A fixed
/// array because a signal handler may not allocate or lock.
static GROUPS: [AtomicI32; 16] = [const { AtomicI32::new(0) }; 16];

extern "C" fn on_signal(signal: libc::c_int) {
    for slot in &GROUPS {
        let pgid = slot.load(Ordering::SeqCst);
        if pgid > 0 {
            // SAFETY: kill(2) is async-signal-safe; a negative pid names a group.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
    // SAFETY: _exit(2) is async-signal-safe and skips non-reentrant cleanup.
    unsafe { libc::_exit(128 + signal) };
}

/// Processes started by one bench, killed (with their children) on drop.
pub struct Procs {
    dir: PathBuf,
    children: Vec<(String, Child)>,
}

impl Procs {
    /// A guard with a fresh scratch directory target/bench/tmp/<bench>.
    pub fn new(bench: &str) -> Result<Self> {
        let dir = cmd::repo_root().join("target/bench/tmp").join(bench);
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot clear {}", dir.display()))?;
        }
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: the handler only touches atomics and async-signal-safe calls.
            unsafe { libc::signal(signal, on_signal as *const () as libc::sighandler_t) };
        }
        Ok(Procs {
            dir,
            children: Vec::new(),
        })
    }

    /// Scratch directory for configs, logs, pid and temp files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts `program args` pinned to `cpu` with output in <dir>/<name>.log,
    /// inside the cgroup whose `cgroup.procs` file is given (before exec, so
    /// every process it forks is inside too).
    pub fn spawn(&mut self, name: &str, cpu: u32, program: &Path, args: &[&str], cgroup: Option<&Path>) -> Result<()> {
        let log_path = self.log_path(name);
        let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
        let mut command = pinned(cpu, program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        die_with_parent(&mut command);
        if let Some(procs_file) = cgroup {
            join_cgroup(&mut command, procs_file)?;
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start `{}`", cmd::display(&command)))?;
        let pgid = i32::try_from(child.id()).context("pid out of range")?;
        let slot = GROUPS
            .iter()
            .find(|s| s.compare_exchange(0, pgid, Ordering::SeqCst, Ordering::SeqCst).is_ok());
        self.children.push((name.to_owned(), child));
        if slot.is_none() {
            bail!("more than {} bench processes", GROUPS.len());
        }
        Ok(())
    }

    /// Waits until `name` accepts connections on `addr`; fails early, with its
    /// log, if it exits.
    pub fn wait_listening(&mut self, name: &str, addr: SocketAddr) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child(name)?.try_wait()? {
                bail!(
                    "{name} exited ({status}) before listening on {addr}\n{}",
                    self.log_tail(name)
                );
            }
            if Instant::now() > deadline {
                bail!("{name} is not listening on {addr} after 15 s\n{}", self.log_tail(name));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of the program started as `name`: taskset execs it, so it is the child's own.
    pub fn pid(&mut self, name: &str) -> Result<u32> {
        Ok(self.child(name)?.id())
    }

    fn child(&mut self, name: &str) -> Result<&mut Child> {
        let (_, child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no bench process {name}"))?;
        Ok(child)
    }

    /// Fails, with the log, if any process has exited: a peer that died mid-run
    /// makes every number after it meaningless.
    pub fn check_running(&mut self) -> Result<()> {
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                let name = name.clone();
                bail!("{name} exited ({status}) during the bench\n{}", self.log_tail(&name));
            }
        }
        Ok(())
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.log"))
    }

    /// The last lines of a process's log, for error messages.
    pub fn log_tail(&self, name: &str) -> String {
        let path = self.log_path(name);
        let text = fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!(
            "--- last lines of {} ---\n{}",
            path.display(),
            lines[lines.len().saturating_sub(20)..].join("\n")
        )
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let Ok(pgid) = i32::try_from(child.id()) else { continue };
            // SAFETY: plain syscall; the group exists until we reap its leader below.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            for slot in &GROUPS {
                let _ = slot.compare_exchange(pgid, 0, Ordering::SeqCst, Ordering::SeqCst);
            }
        }
    }
}

/// Makes the kernel SIGKILL the child when xtask exits, however it exits.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: prctl is async-signal-safe, as required between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Moves the child into a cgroup between fork and exec ("0" names the writer).
fn join_cgroup(command: &mut Command, procs_file: &Path) -> Result<()> {
    let path = std::ffi::CString::new(procs_file.as_os_str().as_encoded_bytes())
        .with_context(|| format!("bad path {}", procs_file.display()))?;
    // SAFETY: open, write and close are async-signal-safe; the path was allocated before fork.
    unsafe {
        command.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(error);
            }
            Ok(())
        });
    }
    Ok(())
}

/// `taskset -c <cpu> <program>`.
pub fn pinned(cpu: u32, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", &cpu.to_string()]).arg(program);
    command
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// One HTTP/1.1 answer as [`http_get`] reads it.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// `GET path` with extra request headers over a fresh connection: checks that a
/// proxy really proxies before load is put on it, and reads admin endpoints.
pub fn http_get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse_response(&String::from_utf8_lossy(&bytes)).with_context(|| format!("GET {path} from {addr}"))
}

pub fn parse_response(text: &str) -> Result<Response> {
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(Response {
        status,
        headers,
        body: body.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_with_lower_cased_header_names() {
        let ok =
            parse_response("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX-Bench-Resp:  1 \r\n\r\nhello world\n").unwrap();
        assert_eq!(ok.status, 200);
        assert_eq!(ok.header("x-bench-resp"), Some("1"));
        assert_eq!(ok.header("content-length"), Some("12"));
        assert_eq!(ok.body, "hello world\n");
        let empty = parse_response("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert_eq!((empty.status, empty.body.as_str()), (503, ""));
        assert!(parse_response("garbage").is_err());
    }
}
