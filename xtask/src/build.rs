//! `cargo xtask build`: the eBPF programs first, with cargo's output on the
//! terminal, then every binary of the workspace. gateway/build.rs runs the same
//! eBPF build for every gateway build (silently unless it fails); run first
//! here, that one finds everything fresh.

use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// The eBPF workspace, its toolchain and target: keep in step with gateway/build.rs.
const EBPF_DIR: &str = "ebpf/programs";
const EBPF_TOOLCHAIN: &str = "nightly";
const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Shared with gateway/build.rs, so the object is built once for both.
const EBPF_TARGET_DIR: &str = "target/ebpf";

pub fn run(release: bool) -> Result<()> {
    ebpf()?;
    let mut build = cmd::cargo();
    build
        .current_dir(cmd::repo_root())
        .args(["build", "--workspace", "--bins"]);
    if release {
        build.arg("--release");
    }
    cmd::run(&mut build)
}

/// Builds `tollgate-ebpf` (the object the gateway embeds) and `tollgate-trafficgen`
/// into target/ebpf/bpfel-unknown-none/release/.
pub fn ebpf() -> Result<()> {
    cmd::run(&mut ebpf_cargo("build", &[]))
}

/// Clippy on the eBPF programs, for the target they are built for (the code
/// behind `cfg(target_arch = "bpf")` in aya-ebpf only exists there).
pub fn ebpf_clippy() -> Result<()> {
    cmd::run(&mut ebpf_cargo("clippy", &["--", "-D", "warnings"]))
}

/// `cargo +nightly <subcommand> -Z build-std=core --target bpfel-unknown-none
/// --release` in ebpf/programs, whose .cargo/config.toml adds the BTF flags.
fn ebpf_cargo(subcommand: &str, extra: &[&str]) -> Command {
    let root = cmd::repo_root();
    let mut cargo = cmd::cargo_on(EBPF_TOOLCHAIN);
    cargo
        .current_dir(root.join(EBPF_DIR))
        .args([subcommand, "-Z", "build-std=core", "--target", EBPF_TARGET, "--release"])
        .arg("--target-dir")
        .arg(root.join(EBPF_TARGET_DIR))
        .args(extra);
    isolate(&mut cargo);
    cargo
}

/// The environment gateway/build.rs gives its nested build (see `isolate`
/// there, which strips the same set): without host flags, tools and build
/// script variables, which would change or break the `bpfel` build, and would
/// make the two builds rebuild each other's object.
fn isolate(cmd: &mut Command) {
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
