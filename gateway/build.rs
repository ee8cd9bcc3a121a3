//! Compiles the config/admin schema in `proto/` with prost, without a system protoc.
use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let protos = ["proto/tollgate/config/v1/config.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"]).context("compiling the .proto files")?;
    prost_build::Config::new()
        .compile_fds(descriptors)
        .context("generating Rust code from the schema")?;
    Ok(())
}
