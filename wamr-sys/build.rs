//! Builds WAMR 2.4.3's runtime library (`libiwasm.a`: AOT loader + fast
//! interpreter + WASI) with CMake and generates its bindings with bindgen.
//! The C sources are the patched copy `wamr-source` makes in OUT_DIR (from
//! the crates.io package `wamrx-sys` =0.3.0, see wamr-source/README.md). The
//! flags are the ones verified in WAMR-NOTES.md; changing one changes what the
//! AOT files built against this runtime must look like.

use std::env;
use std::path::PathBuf;

/// (CMake variable, value). SIMD stays off: WAMR's CMake would download SIMDe.
/// Hardware bound checks are off so an instance reserves only its own memory
/// and threads need no signal environment; AOT files must then be compiled
/// with software bounds checks. Custom sections are kept (as pointers into
/// the loader's buffer) so `wasm_runtime_get_custom_section` can read the
/// stamp tollgate-aotc writes into every AOT file.
const CMAKE_DEFINES: &[(&str, &str)] = &[
    ("CMAKE_POSITION_INDEPENDENT_CODE", "ON"),
    ("WAMR_BUILD_AOT", "1"),
    ("WAMR_BUILD_INTERP", "1"),
    ("WAMR_BUILD_FAST_INTERP", "1"),
    ("WAMR_BUILD_LIBC_WASI", "1"),
    ("WAMR_BUILD_LIBC_BUILTIN", "0"),
    ("WAMR_BUILD_THREAD_MGR", "1"),
    ("WAMR_BUILD_SIMD", "0"),
    ("WAMR_BUILD_BULK_MEMORY", "1"),
    ("WAMR_BUILD_REF_TYPES", "1"),
    ("WAMR_DISABLE_HW_BOUND_CHECK", "1"),
    ("WAMR_BUILD_LOAD_CUSTOM_SECTION", "1"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wamr = wamr_source::prepare(&out);
    // The stamp AOT files must carry, for src/lib.rs (one definition, in wamr-source).
    wamr_source::export_aot_stamp();

    let mut config = cmake::Config::new(&wamr);
    config.profile("Release");
    for (name, value) in CMAKE_DEFINES {
        config.define(name, value);
    }
    let dst = config.build();
    println!("cargo:rustc-link-search=native={}", dst.join("lib").display());
    println!("cargo:rustc-link-lib=static=iwasm");
    for lib in ["pthread", "m", "dl"] {
        println!("cargo:rustc-link-lib=dylib={lib}");
    }

    let include = wamr.join("core/iwasm/include");
    bindgen::Builder::default()
        .header(include.join("wasm_export.h").display().to_string())
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_function("wasm_.*")
        .allowlist_type("(wasm_|WASM|NativeSymbol|RuntimeInitArgs|MemAllocOption|mem_alloc_type_t).*")
        .allowlist_var("(WASM|wasm)_.*")
        .default_enum_style(bindgen::EnumVariation::ModuleConsts)
        .derive_default(true)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen over wasm_export.h failed (is libclang-dev installed?): {e}"))
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
