//! Hands the tests the eBPF objects the gateway's build script built: the
//! traffic generator (`tollgate-trafficgen`, never embedded in the gateway)
//! arrives as links metadata (`DEP_TOLLGATE_EBPF_TRAFFICGEN`, from
//! `links = "tollgate_ebpf"` in gateway/Cargo.toml) and leaves as the
//! compile-time variable `TOLLGATE_TRAFFICGEN_OBJECT` (read it with `env!`).

fn main() {
    const METADATA: &str = "DEP_TOLLGATE_EBPF_TRAFFICGEN";
    println!("cargo:rerun-if-env-changed={METADATA}");
    let Some(path) = std::env::var_os(METADATA) else {
        panic!("{METADATA} is not set: tests/Cargo.toml must depend on the tollgate package directly");
    };
    let path = path.into_string().expect("the traffic generator's path is UTF-8");
    println!("cargo:rustc-env=TOLLGATE_TRAFFICGEN_OBJECT={path}");
}
