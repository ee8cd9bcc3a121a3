//! Builds WAMR 2.4.3's runtime library (`libiwasm.a`: AOT loader + fast
//! interpreter + WASI) with CMake and generates its bindings with bindgen.
//! The C sources come from the crates.io package `wamrx-sys` =0.3.0, used as a
//! file source only: cargo downloads it as a never-compiled dependency, this
//! script finds it with `cargo metadata` and copies `wasm-micro-runtime/` into
//! OUT_DIR, so the registry cache is never written to. The flags are the ones
//! verified in WAMR-NOTES.md; changing one changes what the AOT files built
//! against this runtime must look like.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

const SOURCE_PACKAGE: &str = "wamrx-sys";
const SOURCE_VERSION: &str = "0.3.0";

/// (CMake variable, value). SIMD stays off: WAMR's CMake would download SIMDe.
/// Hardware bound checks are off so an instance reserves only its own memory
/// and threads need no signal environment; AOT files must then be compiled
/// with software bounds checks.
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
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let wamr = out.join("wasm-micro-runtime");
    // A finished copy is reused: the sources are pinned by version, and
    // re-copying 11 MB would change every mtime and force a CMake rebuild.
    let stamp = out.join("wasm-micro-runtime.copied");
    if !stamp.exists() {
        let source = find_sources();
        if wamr.exists() {
            fs::remove_dir_all(&wamr).unwrap_or_else(|e| panic!("removing {}: {e}", wamr.display()));
        }
        copy_dir(&source, &wamr);
        fs::write(&stamp, source.display().to_string()).expect("writing the copy stamp");
    }

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

/// The `wasm-micro-runtime/` directory of the downloaded `wamrx-sys` package.
fn find_sources() -> PathBuf {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let help = format!(
        "wamr-sys needs WAMR's C sources from the crates.io package {SOURCE_PACKAGE} ={SOURCE_VERSION} \
         (a never-compiled dependency in wamr-sys/Cargo.toml); run `cargo fetch` with registry access once"
    );
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(manifest.join("Cargo.toml"))
        .output()
        .unwrap_or_else(|e| panic!("{help}: running {} metadata: {e}", Path::new(&cargo).display()));
    if !output.status.success() {
        panic!(
            "{help}: cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let metadata = String::from_utf8(output.stdout).expect("cargo metadata prints UTF-8");
    let manifest_path = package_manifest(&metadata)
        .unwrap_or_else(|| panic!("{help}: cargo metadata lists no {SOURCE_PACKAGE} {SOURCE_VERSION}"));
    let root = Path::new(&manifest_path)
        .parent()
        .expect("a manifest path has a directory")
        .join("wasm-micro-runtime");
    if !root.join("CMakeLists.txt").is_file() || !root.join("core/iwasm/include/wasm_export.h").is_file() {
        panic!("{help}: {} does not hold WAMR's sources", root.display());
    }
    root
}

/// `manifest_path` of the source package in `cargo metadata` JSON.
fn package_manifest(metadata: &str) -> Option<String> {
    let metadata: serde_json::Value = serde_json::from_str(metadata).ok()?;
    metadata["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == SOURCE_PACKAGE && p["version"] == SOURCE_VERSION)?["manifest_path"]
        .as_str()
        .map(str::to_owned)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}
