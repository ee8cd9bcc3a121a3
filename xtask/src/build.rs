//! `cargo xtask build`: the eBPF programs first, with cargo's output on the
//! terminal, then every binary of the workspace. gateway/build.rs runs the same
//! eBPF build for every gateway build (silently unless it fails); run first
//! here, that one finds everything fresh.

use std::process::Command;

use anyhow::Result;

use crate::cmd;

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

/// The nested cargo gateway/build.rs runs too (`tollgate-ebpf-build`).
fn ebpf_cargo(subcommand: &str, extra: &[&str]) -> Command {
    let mut cargo = tollgate_ebpf_build::cargo(&cmd::repo_root(), subcommand);
    cargo.args(extra);
    cargo
}
