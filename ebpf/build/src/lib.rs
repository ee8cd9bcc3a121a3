//! The one way the eBPF programs in `ebpf/programs` are built, shared by
//! `gateway/build.rs` (every gateway build, which embeds the object) and
//! `cargo xtask build` / `clippy` (the same build with its output visible).
//! Both use the same command, environment and target directory, so whichever
//! runs first builds the object and the other finds it fresh.
//!
//! `ebpf/programs` is its own workspace: nightly, `-Z build-std=core`, target
//! `bpfel-unknown-none`, linked by bpf-linker; its `.cargo/config.toml` adds
//! the BTF flags.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

pub const TOOLCHAIN: &str = "nightly";
pub const TARGET: &str = "bpfel-unknown-none";
/// The eBPF workspace, relative to the repository root.
pub const PROGRAMS_DIR: &str = "ebpf/programs";
/// Inputs of the build besides `PROGRAMS_DIR`: the shared types.
pub const COMMON_DIR: &str = "ebpf/common";
/// Relative to the repository root. Not cargo's own target/<profile>, which
/// the outer build holds locked while build scripts run.
pub const TARGET_DIR: &str = "target/ebpf";
/// The object the gateway embeds: `tollgate_guard`, `tollgate_steer`, their maps.
pub const GUARD_BIN: &str = "tollgate-ebpf";
/// The traffic generator for tests and benches; never embedded in the gateway.
pub const TRAFFICGEN_BIN: &str = "tollgate-trafficgen";

/// `rustup run nightly cargo <subcommand> -Z build-std=core --target
/// bpfel-unknown-none --release --target-dir <root>/target/ebpf` in
/// `ebpf/programs`, with the outer build's environment stripped (`isolate`).
pub fn cargo(repo_root: &Path, subcommand: &str) -> Command {
    let mut cargo = Command::new("rustup");
    cargo
        .args([
            "run",
            TOOLCHAIN,
            "cargo",
            subcommand,
            "-Z",
            "build-std=core",
            "--target",
            TARGET,
        ])
        .arg("--release")
        .arg("--target-dir")
        .arg(repo_root.join(TARGET_DIR))
        .current_dir(repo_root.join(PROGRAMS_DIR));
    isolate(&mut cargo);
    cargo
}

/// Where `cargo(root, "build")` leaves the binary `bin`.
pub fn built(repo_root: &Path, bin: &str) -> PathBuf {
    repo_root.join(TARGET_DIR).join(TARGET).join("release").join(bin)
}

/// Keeps the outer build's settings away from the nested one: cargo exports
/// its compiler, wrappers (clippy-driver, sccache), flags (cargo-fuzz's
/// sanitizers), target, profile and toolchain to build scripts and to xtask,
/// and each of them would break a `bpfel` build. The build-script variables
/// (HOST, TARGET, ...) go too: the nested cargo fingerprints them for
/// aya-ebpf's build scripts, and any difference between the two callers'
/// environments would make each rebuild the other's object. Cargo's home,
/// network and registry settings pass through.
pub fn isolate(cmd: &mut Command) {
    const KEEP: [&str; 5] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
    ];
    const BUILD_SCRIPT: [&str; 9] = [
        "RUSTFLAGS",
        "RUSTUP_TOOLCHAIN",
        "HOST",
        "TARGET",
        "OUT_DIR",
        "OPT_LEVEL",
        "PROFILE",
        "DEBUG",
        "NUM_JOBS",
    ];
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let outer = name.starts_with("CARGO") || name.starts_with("RUSTC") || name.starts_with("RUSTDOC");
        if (outer && !KEEP.iter().any(|keep| name.starts_with(keep))) || BUILD_SCRIPT.contains(&name) {
            cmd.env_remove(name);
        }
    }
}

/// What `cargo xtask setup` would install, when a missing tool is why the
/// build failed.
pub fn missing_tools() -> Option<&'static str> {
    let quiet = |mut cmd: Command| {
        isolate(&mut cmd);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    let succeeds = |cmd: Command| quiet(cmd).status().is_ok_and(|s| s.success());
    let rustc = |args: &[&str]| {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", TOOLCHAIN, "rustc"]).args(args);
        cmd
    };
    if !succeeds(rustc(&["--version"])) {
        return Some("the nightly toolchain is missing: run `cargo xtask setup`");
    }
    let sysroot = quiet(rustc(&["--print", "sysroot"]))
        .stdout(Stdio::piped())
        .output()
        .ok()
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    if !sysroot.is_some_and(|root| root.join("lib/rustlib/src/rust/library").is_dir()) {
        return Some("the nightly rust-src component is missing: run `cargo xtask setup`");
    }
    let mut linker = Command::new("bpf-linker");
    linker.arg("--version");
    if !succeeds(linker) {
        return Some("bpf-linker is missing: run `cargo xtask setup`");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_builds_in_the_programs_workspace_into_the_shared_target_dir() {
        let root = Path::new("/repo");
        let cmd = cargo(root, "clippy");
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(cmd.get_program(), "rustup");
        assert_eq!(&args[..4], ["run", "nightly", "cargo", "clippy"]);
        assert!(args.windows(2).any(|w| w == ["--target", TARGET]), "{args:?}");
        assert!(
            args.windows(2).any(|w| w == ["--target-dir", "/repo/target/ebpf"]),
            "{args:?}"
        );
        assert_eq!(cmd.get_current_dir(), Some(Path::new("/repo/ebpf/programs")));
        assert_eq!(
            built(root, GUARD_BIN),
            Path::new("/repo/target/ebpf/bpfel-unknown-none/release/tollgate-ebpf")
        );
    }

    #[test]
    fn outer_compiler_settings_are_removed_and_cargo_home_kept() {
        // Only variables the test process has can be checked: cargo sets
        // CARGO_MANIFEST_DIR and CARGO_PKG_NAME for every test binary.
        let cmd = cargo(Path::new("/repo"), "build");
        let removed: Vec<_> = cmd
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        assert!(removed.iter().any(|n| n == "CARGO_MANIFEST_DIR"), "{removed:?}");
        assert!(removed.iter().any(|n| n == "CARGO_PKG_NAME"), "{removed:?}");
        assert!(!removed.iter().any(|n| n.starts_with("CARGO_HOME")), "{removed:?}");
    }
}
