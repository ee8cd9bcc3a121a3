//! A CPU-limited cgroup created by a test (v1 `cpu` controller at
//! /sys/fs/cgroup/cpu, or v2 with `cpu.max`), removed when dropped. `create`
//! returns Err with a reason when the machine cannot do it (not root, no cpu
//! controller), so a test can print the reason and skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct CpuCgroup {
    path: PathBuf,
}

impl CpuCgroup {
    /// A new cgroup named `tollgate-e2e-<pid>-<tag>` limited to
    /// `quota_us` per `period_us`.
    pub fn create(tag: &str, quota_us: u64, period_us: u64) -> Result<CpuCgroup, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("not root: cannot create a cgroup".into());
        }
        let name = format!("tollgate-e2e-{}-{tag}", std::process::id());
        let v1 = Path::new("/sys/fs/cgroup/cpu");
        if v1.join("cpu.cfs_quota_us").is_file() {
            let path = v1.join(&name);
            fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
            let cg = CpuCgroup { path };
            cg.write("cpu.cfs_period_us", &period_us.to_string())?;
            cg.write("cpu.cfs_quota_us", &quota_us.to_string())?;
            return Ok(cg);
        }
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers = fs::read_to_string(v2.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "cpu") {
            let subtree = fs::read_to_string(v2.join("cgroup.subtree_control")).unwrap_or_default();
            if !subtree.split_whitespace().any(|c| c == "cpu") {
                fs::write(v2.join("cgroup.subtree_control"), "+cpu")
                    .map_err(|e| format!("enable cpu controller in /sys/fs/cgroup: {e}"))?;
            }
            let path = v2.join(&name);
            fs::create_dir(&path).map_err(|e| format!("mkdir {}: {e}", path.display()))?;
            let cg = CpuCgroup { path };
            cg.write("cpu.max", &format!("{quota_us} {period_us}"))?;
            return Ok(cg);
        }
        Err("no cgroup cpu controller (neither v1 /sys/fs/cgroup/cpu nor v2 cpu.max)".into())
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        fs::write(self.path.join(file), value).map_err(|e| format!("write {value} to {file}: {e}"))
    }

    /// The file a process writes its pid into to join.
    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }
}

impl Drop for CpuCgroup {
    fn drop(&mut self) {
        // rmdir fails while a killed member is still being reaped; retry briefly.
        for _ in 0..50 {
            if fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
