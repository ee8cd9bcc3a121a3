//! Builds WAMR 2.4.3's AOT compilation library (cmake/CMakeLists.txt, over the
//! patched sources from `wamr-source`) against Debian's LLVM 19, links it into
//! the `tollgate-aotc` binary only, generates bindings over `aot_export.h`
//! plus the few `wasm_export.h` calls the driver needs, and passes the AOT
//! stamp from wamr-source to the crate.
//!
//! The libraries go to the binary through `rustc-link-arg-bins`, not
//! `rustc-link-lib`: the latter would also reach this package's integration
//! tests, which link the runtime from wamr-sys, and the two WAMR builds share
//! ~140 symbol names with different settings.

use std::env;
use std::path::PathBuf;

/// Where Debian's llvm-19-dev installs LLVM; `TOLLGATE_LLVM_DIR` overrides it.
const DEFAULT_LLVM: &str = "/usr/lib/llvm-19";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=cmake/CMakeLists.txt");
    println!("cargo:rerun-if-env-changed=TOLLGATE_LLVM_DIR");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wamr = wamr_source::prepare(&out);
    // The stamp every output carries, for src/stamp.rs (one definition, in wamr-source).
    wamr_source::export_aot_stamp();

    let llvm = env::var_os("TOLLGATE_LLVM_DIR").map_or_else(|| PathBuf::from(DEFAULT_LLVM), PathBuf::from);
    let llvm_cmake = llvm.join("lib/cmake/llvm");
    if !llvm_cmake.join("LLVMConfig.cmake").is_file() {
        panic!(
            "tollgate-aotc needs LLVM 19's development files in {}: `apt-get install llvm-19-dev` \
             (`cargo xtask setup` does it), or point TOLLGATE_LLVM_DIR at an LLVM 19 prefix",
            llvm.display()
        );
    }

    // Release whatever the cargo profile: the C side is the compiler's speed.
    let dst = cmake::Config::new("cmake")
        .profile("Release")
        .define("WAMR_ROOT_DIR", &wamr)
        .define("LLVM_DIR", &llvm_cmake)
        .build();

    // After the Rust objects: the archive, then what it needs. Debian's
    // libLLVM-19.so resolves at run time through /usr/lib/x86_64-linux-gnu;
    // the rpath covers a TOLLGATE_LLVM_DIR prefix outside the loader's path.
    let llvm_lib = llvm.join("lib");
    println!(
        "cargo:rustc-link-arg-bins={}",
        dst.join("lib/libtollgate_aotc_wamr.a").display()
    );
    println!("cargo:rustc-link-arg-bins=-L{}", llvm_lib.display());
    println!("cargo:rustc-link-arg-bins=-Wl,-rpath,{}", llvm_lib.display());
    for lib in ["LLVM-19", "stdc++", "pthread", "m", "dl"] {
        println!("cargo:rustc-link-arg-bins=-l{lib}");
    }

    let include = wamr.join("core/iwasm/include");
    bindgen::Builder::default()
        .header_contents("aotc.h", "#include <wasm_export.h>\n#include <aot_export.h>\n")
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function(
            "aot_(compiler_init|compiler_destroy|create_comp_data|destroy_comp_data|create_comp_context\
             |destroy_comp_context|compile_wasm|emit_aot_file_buf|get_last_error|call_stack_features_init_default)",
        )
        .allowlist_function("wasm_runtime_(full_init|destroy|load|unload|free|set_log_level)")
        .allowlist_type("AOTCompOption|RuntimeInitArgs")
        .allowlist_var("AOT_FORMAT_FILE")
        // An anonymous C enum: constants at top level rather than a `_bindgen_ty_N` module.
        .constified_enum("AOT_FORMAT_FILE")
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over aot_export.h failed (is libclang-dev installed?): {e}"))
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
