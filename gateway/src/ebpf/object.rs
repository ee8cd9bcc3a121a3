//! The compiled eBPF object embedded in the `tollgate` binary: programs
//! `tollgate_guard` (XDP) and `tollgate_steer` (SK_REUSEPORT) and their maps,
//! built from `ebpf/programs` by `build.rs`. Names and layouts are in
//! `tollgate-ebpf-common`.

/// The ELF object for `aya::EbpfLoader::load`, 8-byte aligned as aya requires.
pub fn guard_object() -> &'static [u8] {
    // Inside a function, not a static: the macro's aligned wrapper is a local
    // type, and the bytes stay in .rodata either way.
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tollgate-ebpf.o"))
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use aya::programs::{SkReuseport, Xdp, XdpMode};
    use aya::EbpfLoader;
    use tollgate_ebpf_common::{maps, programs};

    use super::guard_object;

    /// Every map, and whether the object pins it by name.
    const MAPS: [(&str, bool); 10] = [
        (maps::BLOCKLIST, true),
        (maps::ALLOWLIST, true),
        (maps::GUARD_CONFIG, false),
        (maps::SOURCES, true),
        (maps::GUARD_COUNTERS, true),
        (maps::CPU_MAP, false),
        (maps::REDIRECT_CPUS, false),
        (maps::STEER_LISTENERS, false),
        (maps::STEER_SOCKETS, false),
        (maps::STEER_COUNTERS, true),
    ];

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A private bpffs mount for the pinned maps, unmounted on drop.
    struct Bpffs(PathBuf);

    impl Bpffs {
        fn mount() -> Bpffs {
            let dir = std::env::temp_dir().join(format!("tollgate-object-test-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("creating the bpffs mount point");
            run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir));
            Bpffs(dir)
        }
    }

    impl Drop for Bpffs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    /// A network namespace with a veth pair (`veth0` ↔ `veth1`, both up), deleted on drop.
    struct Netns(String);

    impl Netns {
        fn create() -> Netns {
            let ns = Netns(format!("tollgate-object-{}", std::process::id()));
            run(Command::new("ip").args(["netns", "add", &ns.0]));
            run(Command::new("ip").args([
                "-n", &ns.0, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
            ]));
            for dev in ["veth0", "veth1"] {
                run(Command::new("ip").args(["-n", &ns.0, "link", "set", dev, "up"]));
            }
            ns
        }

        fn path(&self) -> PathBuf {
            Path::new("/run/netns").join(&self.0)
        }
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// The embedded object loads with aya, creates every map (pinning the
    /// pinned ones by name), both programs pass the verifier, and the guard
    /// attaches to a veth in native and in generic mode.
    #[test]
    fn guard_object_loads_and_verifies() {
        // SAFETY: geteuid has no preconditions.
        assert!(
            unsafe { libc::geteuid() } == 0,
            "loading eBPF programs needs root (CI runs tests as root); run with sudo or as root"
        );
        let pins = Bpffs::mount();
        let cpus = aya::util::nr_cpus().expect("reading the possible CPUs");
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&pins.0)
            // The kernel refuses a CPU map larger than its NR_CPUS build setting.
            .map_max_entries(maps::CPU_MAP, u32::try_from(cpus).expect("CPU count fits u32"))
            .load(guard_object())
            .expect("loading the embedded object");
        for (name, pinned) in MAPS {
            assert!(ebpf.map(name).is_some(), "map {name} is missing from the object");
            assert_eq!(pins.0.join(name).exists(), pinned, "pinning of map {name}");
        }

        let steer: &mut SkReuseport = ebpf
            .program_mut(programs::STEER)
            .expect("the steering program is in the object")
            .try_into()
            .expect("the steering program is SK_REUSEPORT");
        steer.load().expect("the steering program passes the verifier");

        let guard: &mut Xdp = ebpf
            .program_mut(programs::GUARD)
            .expect("the guard is in the object")
            .try_into()
            .expect("the guard is XDP");
        guard.load().expect("the guard passes the verifier");

        let ns = Netns::create();
        let netns_file = File::open(ns.path()).expect("opening the namespace");
        // A thread of its own enters the namespace, so the test's thread stays where it is.
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(&netns_file, nix::sched::CloneFlags::CLONE_NEWNET)
                        .expect("entering the namespace");
                    for mode in [XdpMode::Driver, XdpMode::Skb] {
                        let link = guard
                            .attach("veth0", mode)
                            .unwrap_or_else(|e| panic!("attaching the guard in {mode:?} mode: {e}"));
                        guard.detach(link).expect("detaching the guard");
                    }
                })
                .join()
                .expect("the attach thread panicked");
        });
    }
}
