//! Compiles the config/admin schema in `proto/` with prost, without a system protoc.
//!
//! Every config message also derives `serde::Deserialize` so the YAML file maps
//! onto the schema 1:1: unknown keys are errors (a typo must not be ignored) and
//! missing keys take the proto default. Enum fields are `i32` in prost, so they
//! get deserializers that accept the enum's names (see `config::proto::de`).
use anyhow::Context;

const PACKAGE: &str = ".tollgate.config.v1";

fn main() -> anyhow::Result<()> {
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
