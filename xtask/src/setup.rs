//! `cargo xtask setup`: makes a fresh Debian machine ready to build, test and
//! bench Tollgate. Idempotent: every requirement is probed first and only the
//! missing ones are installed, so a ready machine prints one line.
//! To need something new, add one line to the lists below.

use std::process::Command;

use anyhow::{bail, Result};

use crate::cmd;

/// Debian packages: peers for tests and benches and the tools that drive them.
const APT_PACKAGES: &[&str] = &[
    "nginx",        // reverse-proxy peer (bench, e2e) and upstream
    "wrk",          // load generator (bench)
    "curl",         // docs and smoke checks
    "redis-server", // plugin Redis host calls (tests)
    "util-linux",   // taskset (bench pinning, worker-sizing tests)
    "iproute2",     // ip netns (e2e)
    "g++",          // libfuzzer-sys compiles libFuzzer (C++)
    "cmake",        // wamr-sys builds the WAMR runtime with CMake
    "clang",        // wamr-sys: the C toolchain the WAMR recipe was verified with
    "libclang-dev", // bindgen (wamr-sys) loads libclang
    "llvm-19-dev",  // tollgate-aotc links WAMR's AOT compiler against LLVM 19
];

/// Extra rustup toolchains, installed with the minimal profile.
const TOOLCHAINS: &[&str] = &[
    "nightly", // cargo fuzz (sanitizers), later -Z build-std for eBPF
];

/// rustup components and targets: (toolchain, "component" or "target", name).
/// Toolchain "" is the one building the workspace (a minimal-profile install
/// lacks rustfmt and clippy).
const RUSTUP_ADDS: &[(&str, &str, &str)] = &[
    ("", "component", "rustfmt"),
    ("", "component", "clippy"),
    ("nightly", "component", "rust-src"),
    ("", "target", "wasm32-wasip1"), // plugins (cargo xtask plugins)
];

/// Cargo subcommands: (probe arguments to `cargo`, crate, version that builds on
/// the stable toolchain).
const CARGO_TOOLS: &[(&[&str], &str, &str)] = &[(&["fuzz", "--version"], "cargo-fuzz", "0.13.2")];

pub fn run() -> Result<()> {
    let mut installed = Vec::new();

    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if !missing.is_empty() {
        apt_install(&missing)?;
        installed.extend(missing.iter().map(|p| format!("apt:{p}")));
    }

    let toolchains = cmd::output(Command::new("rustup").args(["toolchain", "list"]))?;
    for tc in TOOLCHAINS {
        let present = toolchains.lines().any(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|name| name.starts_with(&format!("{tc}-")))
        });
        if !present {
            cmd::run(Command::new("rustup").args(["toolchain", "install", tc, "--profile", "minimal"]))?;
            installed.push(format!("toolchain:{tc}"));
        }
    }

    for (tc, kind, name) in RUSTUP_ADDS {
        let rustup = || {
            let mut c = Command::new("rustup");
            if !tc.is_empty() {
                c.arg(format!("+{tc}"));
            }
            c.arg(kind);
            c
        };
        let list = cmd::output(rustup().args(["list", "--installed"]))?;
        // Components carry the host triple ("rust-src" does not); targets never do.
        if !list.lines().any(|l| l == *name || l.starts_with(&format!("{name}-"))) {
            cmd::run(rustup().args(["add", name]))?;
            installed.push(format!("{kind}:{name}@{}", if tc.is_empty() { "active" } else { tc }));
        }
    }

    for (probe, krate, version) in CARGO_TOOLS {
        if !cmd::succeeds(cmd::cargo().args(*probe)) {
            cmd::run(cmd::cargo().args(["install", krate, "--locked", "--version", version]))?;
            installed.push(format!("cargo:{krate}"));
        }
    }

    if installed.is_empty() {
        println!("setup: all requirements present");
    } else {
        println!("setup: installed {}", installed.join(", "));
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    cmd::output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|status| status.trim() == "install ok installed")
}

/// One `apt-get update`, then one install of everything missing.
fn apt_install(packages: &[&str]) -> Result<()> {
    let privileged = |program: &str| {
        if cmd::is_root() {
            Command::new(program)
        } else {
            let mut c = Command::new("sudo");
            c.arg(program);
            c
        }
    };
    if !cmd::is_root() && !cmd::succeeds(Command::new("sudo").args(["-n", "true"])) {
        bail!(
            "missing apt packages ({}) and not root; install them or run setup as root",
            packages.join(" ")
        );
    }
    cmd::run(privileged("apt-get").args(["update", "-qq"]))?;
    // Through `env` so the variable survives sudo's environment reset.
    cmd::run(
        privileged("env")
            .args([
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
            ])
            .args(packages),
    )
}
