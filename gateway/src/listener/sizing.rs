//! Worker sizing: how many workers to start and which CPUs to pin them to,
//! from the affinity mask and the cgroup CPU quota, never the host core count
//! (a 255-core host running a 2-CPU container must start 2 workers).
//!
//! The cgroup is found through /proc/self/cgroup and /proc/self/mountinfo;
//! both v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`) and v2 (`cpu.max`) are
//! read, and every ancestor up to the mount root counts, since a parent's
//! quota limits its children too.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// How many workers to run and where.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerPlan {
    pub count: usize,
    /// CPU ids to pin worker i to: `cpus[i % cpus.len()]`.
    pub cpus: Vec<usize>,
    /// CPUs in the process's affinity mask.
    pub affinity_cpus: usize,
    /// The smallest cgroup CPU quota along the process's cgroup path, in CPUs.
    pub cgroup_quota: Option<f64>,
    /// The decision and its inputs, for the start-up log.
    pub explanation: String,
}

/// Plans the workers: `setting` None means auto, min(affinity CPUs, the
/// cgroup quota rounded up); an explicit count overrides.
pub fn plan_workers(setting: Option<usize>) -> WorkerPlan {
    let affinity = affinity_cpus();
    let quota = cgroup_quota(Path::new("/"));
    plan(setting, affinity, quota)
}

/// A CPU quota and the cgroup directory that sets it.
#[derive(Debug, Clone, PartialEq)]
struct Quota {
    cpus: f64,
    dir: PathBuf,
}

fn plan(setting: Option<usize>, affinity: Vec<usize>, quota: Option<Quota>) -> WorkerPlan {
    let affinity_cpus = affinity.len().max(1);
    let quota_cpus = quota.as_ref().map(|q| q.cpus);
    let mut explanation = String::new();
    let count = match setting {
        Some(count) => {
            let _ = write!(explanation, "workers: {count} (configured)");
            count.max(1)
        }
        None => {
            let by_quota = quota_cpus.map(|cpus| (cpus.ceil() as usize).max(1));
            let count = by_quota.map_or(affinity_cpus, |n| n.min(affinity_cpus));
            let _ = write!(explanation, "workers: auto = {count}");
            count
        }
    };
    let _ = write!(explanation, "; affinity: {affinity_cpus} CPUs {affinity:?}");
    match &quota {
        Some(q) => {
            let _ = write!(explanation, "; cgroup CPU quota: {} CPUs ({})", q.cpus, q.dir.display());
        }
        None => explanation.push_str("; cgroup CPU quota: none"),
    }
    let mut cpus = if affinity.is_empty() { vec![0] } else { affinity };
    cpus.truncate(count.max(1));
    WorkerPlan {
        count,
        cpus,
        affinity_cpus,
        cgroup_quota: quota_cpus,
        explanation,
    }
}

fn affinity_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, usize::from)).collect(),
    }
}

/// The smallest CPU quota on the process's cgroup paths (v1 cpu and v2),
/// reading /proc and the cgroup mounts under `root` ("/" outside tests).
fn cgroup_quota(root: &Path) -> Option<Quota> {
    let cgroups = fs::read_to_string(root.join("proc/self/cgroup")).ok()?;
    let mountinfo = fs::read_to_string(root.join("proc/self/mountinfo")).ok()?;
    let mut best: Option<Quota> = None;
    for mount in mountinfo.lines().filter_map(Mount::parse) {
        let Some(path) = cgroup_path(&cgroups, mount.version) else {
            continue;
        };
        let Some(relative) = relative_to_mount_root(path, &mount.root) else {
            continue;
        };
        let top = root.join(mount.point.trim_start_matches('/'));
        let mut dir = top.join(relative.trim_start_matches('/'));
        loop {
            let quota = match mount.version {
                Version::V1 => read_v1_quota(&dir),
                Version::V2 => read_v2_quota(&dir),
            };
            if let Some(cpus) = quota {
                if best.as_ref().is_none_or(|b| cpus < b.cpus) {
                    best = Some(Quota { cpus, dir: dir.clone() });
                }
            }
            if dir == top || !dir.pop() {
                break;
            }
        }
    }
    best
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    /// A v1 hierarchy with the cpu controller.
    V1,
    V2,
}

struct Mount {
    version: Version,
    /// The path inside the hierarchy that is mounted (not "/" in containers).
    root: String,
    point: String,
}

impl Mount {
    /// A mountinfo line: `id parent dev root point options [optional...] - fstype source superoptions`.
    fn parse(line: &str) -> Option<Mount> {
        let (left, right) = line.split_once(" - ")?;
        let fields: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        let fstype = right.next()?;
        let superoptions = right.nth(1).unwrap_or("");
        let version = match fstype {
            "cgroup2" => Version::V2,
            "cgroup" if superoptions.split(',').any(|option| option == "cpu") => Version::V1,
            _ => return None,
        };
        Some(Mount {
            version,
            root: unescape(fields.get(3)?),
            point: unescape(fields.get(4)?),
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The process's path in the v1 cpu hierarchy or the v2 hierarchy, from
/// /proc/self/cgroup lines `id:controllers:path`.
fn cgroup_path(cgroups: &str, version: Version) -> Option<&str> {
    cgroups.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let id = parts.next()?;
        let controllers = parts.next()?;
        let path = parts.next()?;
        let matches = match version {
            Version::V2 => id == "0" && controllers.is_empty(),
            Version::V1 => controllers.split(',').any(|c| c == "cpu"),
        };
        matches.then_some(path)
    })
}

/// The process's cgroup path below the mounted part of the hierarchy; None
/// when the process is outside it (then the mount says nothing about us).
fn relative_to_mount_root<'a>(path: &'a str, mount_root: &str) -> Option<&'a str> {
    if mount_root == "/" {
        return Some(path);
    }
    let rest = path.strip_prefix(mount_root)?;
    (rest.is_empty() || rest.starts_with('/')).then_some(rest)
}

/// v1: `cpu.cfs_quota_us` (-1 = unlimited) over `cpu.cfs_period_us`.
fn read_v1_quota(dir: &Path) -> Option<f64> {
    let quota: i64 = fs::read_to_string(dir.join("cpu.cfs_quota_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let period: i64 = fs::read_to_string(dir.join("cpu.cfs_period_us"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (quota > 0 && period > 0).then(|| quota as f64 / period as f64)
}

/// v2: `cpu.max` is "$MAX $PERIOD", MAX being "max" when unlimited.
fn read_v2_quota(dir: &Path) -> Option<f64> {
    let text = fs::read_to_string(dir.join("cpu.max")).ok()?;
    let mut parts = text.split_whitespace();
    let quota: f64 = parts.next()?.parse().ok()?;
    let period: f64 = parts.next()?.parse().ok()?;
    (quota > 0.0 && period > 0.0).then(|| quota / period)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// A directory tree standing in for "/", removed when dropped.
    struct Fixture(PathBuf);

    impl Fixture {
        fn new(name: &str) -> Fixture {
            let dir = std::env::temp_dir().join(format!("tollgate-sizing-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Fixture(dir)
        }

        fn write(&self, path: &str, contents: &str) {
            let path = self.0.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, contents).unwrap();
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const V1_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn v1_takes_the_smallest_quota_up_the_hierarchy() {
        let fx = Fixture::new("v1");
        fx.write("proc/self/mountinfo", V1_MOUNTINFO);
        fx.write(
            "proc/self/cgroup",
            "3:cpuset:/\n2:cpu,cpuacct:/kubepods/pod1/c1\n0::/\n",
        );
        let base = "sys/fs/cgroup/cpu,cpuacct";
        fx.write(&format!("{base}/cpu.cfs_quota_us"), "-1\n");
        fx.write(&format!("{base}/cpu.cfs_period_us"), "100000\n");
        fx.write(&format!("{base}/kubepods/pod1/cpu.cfs_quota_us"), "150000\n");
        fx.write(&format!("{base}/kubepods/pod1/cpu.cfs_period_us"), "100000\n");
        fx.write(&format!("{base}/kubepods/pod1/c1/cpu.cfs_quota_us"), "-1\n");
        fx.write(&format!("{base}/kubepods/pod1/c1/cpu.cfs_period_us"), "100000\n");
        let quota = cgroup_quota(&fx.0).expect("the parent's quota applies");
        assert_eq!(quota.cpus, 1.5);
        assert!(quota.dir.ends_with("kubepods/pod1"), "{quota:?}");

        let plan = plan(None, (0..255).collect(), Some(quota));
        assert_eq!(plan.count, 2, "1.5 CPUs round up to 2, not 255 host cores");
        assert_eq!(plan.cpus, vec![0, 1]);
        assert_eq!(plan.affinity_cpus, 255);
        assert!(
            plan.explanation.contains("auto = 2") && plan.explanation.contains("1.5 CPUs"),
            "{}",
            plan.explanation
        );
    }

    #[test]
    fn v2_reads_cpu_max_below_a_container_mount_root() {
        let fx = Fixture::new("v2");
        // A container whose cgroup namespace root is /system.slice/app.scope.
        fx.write(
            "proc/self/mountinfo",
            "30 23 0:26 /system.slice/app.scope /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
        );
        fx.write("proc/self/cgroup", "0::/system.slice/app.scope/worker\n");
        fx.write("sys/fs/cgroup/cpu.max", "250000 100000\n");
        fx.write("sys/fs/cgroup/worker/cpu.max", "max 100000\n");
        let quota = cgroup_quota(&fx.0).expect("cpu.max at the mount root applies");
        assert_eq!(quota.cpus, 2.5);
        assert_eq!(plan(None, vec![0, 1, 2, 3, 4, 5, 6, 7], Some(quota)).count, 3);

        fx.write("sys/fs/cgroup/cpu.max", "max 100000\n");
        assert_eq!(cgroup_quota(&fx.0), None, "\"max\" everywhere means no limit");
        assert_eq!(plan(None, vec![0, 1, 2, 3], None).count, 4);
    }

    #[test]
    fn explicit_count_overrides_and_wraps_cpus() {
        let quota = Quota {
            cpus: 0.5,
            dir: PathBuf::from("/q"),
        };
        let plan = plan(Some(4), vec![2, 3], Some(quota));
        assert_eq!(plan.count, 4);
        assert_eq!(plan.cpus, vec![2, 3]);
        assert_eq!(plan.cgroup_quota, Some(0.5));
        assert!(
            plan.explanation.starts_with("workers: 4 (configured)"),
            "{}",
            plan.explanation
        );
    }

    const CHILD_ENV: &str = "TOLLGATE_SIZING_CHILD_CGROUP";

    /// Runs `child_plan` in a fresh process of this test binary, optionally
    /// under a wrapper (taskset), and returns its printed plan line.
    fn run_child(wrapper: &[&str], cgroup: Option<&Path>) -> String {
        let exe = std::env::current_exe().unwrap();
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(&exe);
                command
            }
            None => Command::new(&exe),
        };
        command.args([
            "--exact",
            "listener::sizing::tests::child_plan",
            "--nocapture",
            "--test-threads=1",
        ]);
        command.env(CHILD_ENV, cgroup.map_or(PathBuf::new(), Path::to_path_buf));
        let output = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "child failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // libtest prints the test name on the same line before the output.
        let start = stdout.find("PLAN ").unwrap_or_else(|| panic!("no plan in {stdout}"));
        stdout[start..].lines().next().unwrap_or_default().to_owned()
    }

    /// The child side of the real-machine tests: joins the cgroup named by the
    /// environment (if any), then prints its plan. Without the variable it
    /// checks that the real machine yields a usable plan.
    #[test]
    fn child_plan() {
        let Some(cgroup) = std::env::var_os(CHILD_ENV) else {
            let plan = plan_workers(None);
            assert!(plan.count >= 1 && plan.count <= plan.affinity_cpus, "{plan:?}");
            assert_eq!(plan.cpus.len(), plan.count.min(plan.affinity_cpus), "{plan:?}");
            return;
        };
        if !cgroup.is_empty() {
            fs::write(Path::new(&cgroup).join("cgroup.procs"), std::process::id().to_string()).unwrap();
        }
        let plan = plan_workers(None);
        println!(
            "PLAN count={} affinity={} quota={:?} cpus={:?}",
            plan.count, plan.affinity_cpus, plan.cgroup_quota, plan.cpus
        );
    }

    #[test]
    fn taskset_limits_workers_to_one() {
        if Command::new("taskset").arg("-V").output().is_err() {
            println!("skipped: taskset (util-linux) is not installed");
            return;
        }
        let line = run_child(&["taskset", "-c", "0"], None);
        assert!(
            line.starts_with("PLAN count=1 affinity=1 ") && line.ends_with("cpus=[0]"),
            "{line}"
        );
    }

    /// Removes the test cgroups (children first) when dropped.
    struct Cgroups(Vec<PathBuf>);

    impl Drop for Cgroups {
        fn drop(&mut self) {
            for dir in self.0.iter().rev() {
                let _ = fs::remove_dir(dir);
            }
        }
    }

    #[test]
    fn real_v1_cgroup_quota_limits_workers_to_one() {
        let base = Path::new("/sys/fs/cgroup/cpu");
        if !base.join("cpu.cfs_quota_us").exists() {
            println!(
                "skipped: the cgroup v1 cpu controller is not mounted at {}",
                base.display()
            );
            return;
        }
        let parent = base.join(format!("tollgate-test-{}", std::process::id()));
        let inner = parent.join("inner");
        let mut cleanup = Cgroups(Vec::new());
        match fs::create_dir(&parent) {
            Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
                println!("skipped: creating a cgroup needs root ({error})");
                return;
            }
            result => result.unwrap(),
        }
        cleanup.0.push(parent.clone());
        fs::write(parent.join("cpu.cfs_period_us"), "100000").unwrap();
        fs::write(parent.join("cpu.cfs_quota_us"), "50000").unwrap();
        // The child sits one level below the quota: the walk up must find it.
        fs::create_dir(&inner).unwrap();
        cleanup.0.push(inner.clone());

        let line = run_child(&[], Some(&inner));
        assert!(
            line.starts_with("PLAN count=1 ") && line.contains("quota=Some(0.5)"),
            "{line}"
        );
        drop(cleanup);
        assert!(!parent.exists(), "test cgroup removed");
    }
}
