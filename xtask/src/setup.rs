//! `cargo xtask setup`: makes a fresh Debian machine ready to build, test and
//! bench Tollgate. Idempotent: every requirement is probed first and only the
//! missing ones are installed, so a ready machine prints one line.
//! To need something new, add one line to the lists below.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

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
    "bpftool",      // inspecting loaded eBPF programs and maps (debugging the guard)
    "ethtool",      // e2e/bench: checksum offload off on veths (XDP native mode + TCP)
    "nftables",     // bench xdp: the nftables drop rule the XDP guard is measured against
    "iputils-ping", // e2e: reachability checks across the namespace pair
];

/// Extra rustup toolchains, installed with the minimal profile.
const TOOLCHAINS: &[&str] = &[
    "nightly", // cargo fuzz (sanitizers), -Z build-std and bpf-linker's LLVM for eBPF
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

/// bpf-linker links the eBPF programs (ebpf/programs). It is built against the
/// nightly toolchain's own libLLVM (the one rustc emits bitcode for), found
/// through a prefix directory of symlinks; the installed binary keeps reading
/// libLLVM from there (rpath), so the prefix lives in `$CARGO_HOME`.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_PREFIX: &str = "bpf-linker-llvm";

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

    if !cmd::succeeds(Command::new("bpf-linker").arg("--version")) {
        install_bpf_linker()?;
        installed.push(format!("cargo:bpf-linker@{BPF_LINKER_VERSION}"));
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

/// `<prefix>/lib/` gets `libLLVM.so` and the library's own file name, both
/// pointing at the nightly sysroot's libLLVM; bpf-linker is then built with
/// `LLVM_PREFIX=<prefix>` and the llvm-sys feature of that LLVM's major version.
fn install_bpf_linker() -> Result<()> {
    let sysroot =
        cmd::output(Command::new("rustup").args(["run", BPF_LINKER_TOOLCHAIN, "rustc", "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let (libllvm, major) = nightly_libllvm(&sysroot_lib)?;
    let prefix = cargo_home()?.join(BPF_LINKER_PREFIX);
    let prefix_lib = prefix.join("lib");
    std::fs::create_dir_all(&prefix_lib).with_context(|| format!("creating {}", prefix_lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = prefix_lib.join(name);
        // A link left by an older nightly points at a library that is gone.
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).with_context(|| format!("removing {}", link.display()))?;
        }
        std::os::unix::fs::symlink(sysroot_lib.join(&libllvm), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    cmd::run(cmd::cargo().env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
        // Reached only when the installed binary does not run (e.g. its libLLVM
        // went away with an old nightly): rebuild it even if cargo lists it.
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{major}"),
    ]))
}

/// The file name of the nightly's libLLVM (`libLLVM.so.<major>.<minor>-rust-…`)
/// and its major version.
fn nightly_libllvm(sysroot_lib: &Path) -> Result<(String, u32)> {
    const STEM: &str = "libLLVM.so.";
    let entries = std::fs::read_dir(sysroot_lib).with_context(|| format!("reading {}", sysroot_lib.display()))?;
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some(version) = name.strip_prefix(STEM) else {
            continue;
        };
        if let Some(major) = version.split('.').next().and_then(|m| m.parse().ok()) {
            return Ok((name, major));
        }
    }
    bail!(
        "no {STEM}<version> in {}: is the {BPF_LINKER_TOOLCHAIN} toolchain complete?",
        sysroot_lib.display()
    )
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = std::env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
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

#[cfg(test)]
mod tests {
    use super::nightly_libllvm;

    #[test]
    fn finds_the_versioned_libllvm_and_its_major() {
        let dir = std::env::temp_dir().join(format!("xtask-libllvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A nightly sysroot's lib/ holds both names; the soname-style one is what bpf-linker links.
        for name in [
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "librustc_driver.so",
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        let found = nightly_libllvm(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.unwrap(), ("libLLVM.so.22.1-rust-1.97.0-nightly".to_string(), 22));
    }

    #[test]
    fn a_sysroot_without_libllvm_is_an_error() {
        let dir = std::env::temp_dir().join(format!("xtask-no-libllvm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let found = nightly_libllvm(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(found.unwrap_err().to_string().contains("no libLLVM.so."));
    }
}
