//! Hands the tests the traffic generator eBPF object (`tollgate-trafficgen`,
//! never embedded in the gateway) as the compile-time variable
//! `TOLLGATE_TRAFFICGEN_OBJECT` (read it with `env!`).
//!
//! With feature `gateway` (the default: every `cargo test`) the path is the
//! one the gateway's build script just built, received as links metadata
//! (`DEP_TOLLGATE_EBPF_TRAFFICGEN`, from `links = "tollgate_ebpf"` in
//! gateway/Cargo.toml). Without it (xtask's build of this crate) it is where
//! `cargo xtask build` puts the object: xtask builds it before using it.

use std::path::Path;

fn main() {
    const METADATA: &str = "DEP_TOLLGATE_EBPF_TRAFFICGEN";
    println!("cargo:rerun-if-env-changed={METADATA}");
    let path = match std::env::var(METADATA) {
        Ok(path) => path,
        Err(_) if std::env::var_os("CARGO_FEATURE_GATEWAY").is_some() => {
            panic!("{METADATA} is not set: tests/Cargo.toml must depend on the tollgate package directly")
        }
        Err(_) => {
            let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
            let root = Path::new(&manifest_dir)
                .parent()
                .expect("tests/ lives inside the repository");
            tollgate_ebpf_build::built(root, tollgate_ebpf_build::TRAFFICGEN_BIN)
                .display()
                .to_string()
        }
    };
    println!("cargo:rustc-env=TOLLGATE_TRAFFICGEN_OBJECT={path}");
}
