//! Compiles the config/admin schema in `proto/` with prost, without a system
//! protoc, and builds the eBPF programs in `../ebpf/programs` (see `ebpf_object`).
//!
//! Every config message also derives `serde::Deserialize` so the YAML file maps
//! onto the schema 1:1: unknown keys are errors (a typo must not be ignored) and
//! missing keys take the proto default. Enum fields are `i32` in prost, so they
//! get deserializers that accept the enum's names (see `config::proto::de`).
use anyhow::Context;

const PACKAGE: &str = ".tollgate.config.v1";

fn main() -> anyhow::Result<()> {
    ebpf_object::build()?;
    let protos = ["proto/tollgate/config/v1/config.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"]).context("compiling the .proto files")?;
    let mut config = prost_build::Config::new();
    // Ordered maps: a resource's content hash is its prost encoding, which
    // must not depend on hash-map iteration order.
    config.btree_map(["."]);
    config.message_attribute(
        PACKAGE,
        "#[derive(serde::Deserialize)]\n#[serde(default, deny_unknown_fields)]",
    );
    let custom_fields = [
        ("Runtime.workers", "workers"),
        ("Runtime.io", "io_driver"),
        ("Cluster.lb_policy", "lb_policy"),
        ("Cluster.endpoints", "endpoints"),
        ("ListenerTls.unknown_sni", "unknown_sni"),
        ("Plugins.vm_memory_budget", "size"),
        ("Plugin.configuration", "plugin_bytes"),
        ("Plugin.vm_configuration", "plugin_bytes"),
        ("Plugin.fail_strategy", "fail_strategy"),
        ("Plugin.max_memory", "size"),
        ("Ebpf.mode", "ebpf_mode"),
    ];
    for (field, helper) in custom_fields {
        config.field_attribute(
            format!("{PACKAGE}.{field}"),
            format!("#[serde(deserialize_with = \"crate::config::proto::de::{helper}\")]"),
        );
    }
    config
        .compile_fds(descriptors)
        .context("generating Rust code from the schema")?;
    Ok(())
}

/// The eBPF object the gateway embeds (`src/ebpf/object.rs`) and the traffic
/// generator the tests load. `ebpf/programs` is its own workspace (nightly,
/// `bpfel-unknown-none`, bpf-linker), built by a nested cargo. `cargo xtask
/// build` runs the same command first, so its output is visible and this one
/// finds everything fresh.
mod ebpf_object {
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    use anyhow::{bail, Context};

    const TOOLCHAIN: &str = "nightly";
    const TARGET: &str = "bpfel-unknown-none";
    /// The binaries of ebpf/programs: the embedded object and the traffic generator.
    const GUARD_BIN: &str = "tollgate-ebpf";
    const TRAFFICGEN_BIN: &str = "tollgate-trafficgen";

    pub fn build() -> anyhow::Result<()> {
        let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
        let root = manifest_dir.parent().context("the gateway has no parent directory")?;
        let programs = root.join("ebpf/programs");
        for input in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "src"] {
            println!("cargo:rerun-if-changed={}", programs.join(input).display());
        }
        for input in ["Cargo.toml", "src"] {
            println!(
                "cargo:rerun-if-changed={}",
                root.join("ebpf/common").join(input).display()
            );
        }
        // One target directory for every build of the gateway (debug, release,
        // clippy, fuzz) and for `cargo xtask build`: the object is built once.
        // Not cargo's own target/<profile>, which the outer build holds locked.
        let target_dir = root.join("target/ebpf");
        let mut cargo = Command::new("rustup");
        cargo
            .args([
                "run",
                TOOLCHAIN,
                "cargo",
                "build",
                "-Z",
                "build-std=core",
                "--target",
                TARGET,
                "--release",
            ])
            .arg("--target-dir")
            .arg(&target_dir)
            .current_dir(&programs)
            // Cargo's messages go to this script's stderr, which cargo shows when the build fails.
            .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?));
        isolate(&mut cargo);
        let status = cargo.status();
        if !matches!(&status, Ok(s) if s.success()) {
            bail!(
                "building the eBPF programs failed (`rustup run {TOOLCHAIN} cargo build -Z build-std=core --target {TARGET} \
                 --release` in {}: {}); {}",
                programs.display(),
                match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                },
                missing_tools().unwrap_or("see cargo's output above")
            );
        }
        let built = target_dir.join(TARGET).join("release");
        let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        copy(&built.join(GUARD_BIN), &out_dir.join(format!("{GUARD_BIN}.o")))?;
        let trafficgen = out_dir.join(format!("{TRAFFICGEN_BIN}.o"));
        copy(&built.join(TRAFFICGEN_BIN), &trafficgen)?;
        // Read by tests/build.rs as DEP_TOLLGATE_EBPF_TRAFFICGEN (`links = "tollgate_ebpf"`).
        println!("cargo::metadata=trafficgen={}", trafficgen.display());
        Ok(())
    }

    /// Keeps the outer build's settings away from the nested one: the outer
    /// cargo exports its compiler, wrappers (clippy-driver, sccache), flags
    /// (cargo-fuzz's sanitizers), target, profile and toolchain to build
    /// scripts, and each of them would break a `bpfel` build. The build-script
    /// variables (HOST, TARGET, ...) go too: the nested cargo fingerprints
    /// them for aya-ebpf's build scripts, and any difference from
    /// `cargo xtask build`'s environment would make each rebuild the other's
    /// object. Cargo's home, network and registry settings pass through.
    /// xtask/src/build.rs strips the same set.
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

    /// What `cargo xtask setup` would install, when that is why the build failed.
    fn missing_tools() -> Option<&'static str> {
        let works = |cmd: &mut Command| {
            isolate(cmd);
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !works(Command::new("rustup").args(["run", TOOLCHAIN, "rustc", "--version"])) {
            return Some("the nightly toolchain is missing: run `cargo xtask setup`");
        }
        let mut print_sysroot = Command::new("rustup");
        print_sysroot.args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"]);
        isolate(&mut print_sysroot);
        let sysroot = print_sysroot
            .output()
            .ok()
            .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        if !sysroot.is_some_and(|root| root.join("lib/rustlib/src/rust/library").is_dir()) {
            return Some("the nightly rust-src component is missing: run `cargo xtask setup`");
        }
        if !works(Command::new("bpf-linker").arg("--version")) {
            return Some("bpf-linker is missing: run `cargo xtask setup`");
        }
        None
    }

    fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    }
}
