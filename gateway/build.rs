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
/// generator the tests load, built by the nested cargo `tollgate-ebpf-build`
/// defines (`cargo xtask build` runs the same command first, with its output
/// visible, and this one then finds everything fresh).
mod ebpf_object {
    use std::os::fd::AsFd;
    use std::path::{Path, PathBuf};
    use std::process::Stdio;

    use anyhow::{bail, Context};
    use tollgate_ebpf_build as ebpf;

    pub fn build() -> anyhow::Result<()> {
        let manifest_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
        let root = manifest_dir.parent().context("the gateway has no parent directory")?;
        let programs = root.join(ebpf::PROGRAMS_DIR);
        for input in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "src"] {
            println!("cargo:rerun-if-changed={}", programs.join(input).display());
        }
        for input in ["Cargo.toml", "src"] {
            println!(
                "cargo:rerun-if-changed={}",
                root.join(ebpf::COMMON_DIR).join(input).display()
            );
        }
        let mut cargo = ebpf::cargo(root, "build");
        // Cargo's messages go to this script's stderr, which cargo shows when the build fails.
        cargo.stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?));
        let status = cargo.status();
        if !matches!(&status, Ok(s) if s.success()) {
            bail!(
                "building the eBPF programs failed (`rustup run {} cargo build -Z build-std=core --target {} \
                 --release` in {}: {}); {}",
                ebpf::TOOLCHAIN,
                ebpf::TARGET,
                programs.display(),
                match status {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                },
                ebpf::missing_tools().unwrap_or("see cargo's output above")
            );
        }
        let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
        copy(
            &ebpf::built(root, ebpf::GUARD_BIN),
            &out_dir.join(format!("{}.o", ebpf::GUARD_BIN)),
        )?;
        let trafficgen = out_dir.join(format!("{}.o", ebpf::TRAFFICGEN_BIN));
        copy(&ebpf::built(root, ebpf::TRAFFICGEN_BIN), &trafficgen)?;
        // Read by tests/build.rs as DEP_TOLLGATE_EBPF_TRAFFICGEN (`links = "tollgate_ebpf"`).
        println!("cargo::metadata=trafficgen={}", trafficgen.display());
        Ok(())
    }

    fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
        std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    }
}
