//! Raw FFI to the WAMR 2.4.3 runtime (`wasm_export.h`), built from source by
//! build.rs as a static library: AOT loader, fast interpreter and WASI, SIMD
//! off, hardware bound checks off. Nothing here is safe; the project's safe
//! wrapper owns these invariants, which every caller must keep:
//!
//! - The runtime is process-global: `wasm_runtime_full_init` once before any
//!   other call, `wasm_runtime_destroy` only after every module, instance and
//!   exec env is gone. Concurrent init/destroy from two threads is undefined.
//! - Native symbols are registered before the modules that import them are
//!   loaded, and the `NativeSymbol` array and every string it points to live
//!   for the rest of the process.
//! - The byte buffer given to `wasm_runtime_load` must outlive the module
//!   (WAMR keeps pointers into it) and may be modified by the loader.
//! - An instance and its exec envs are used by one thread at a time; a
//!   thread that calls wasm needs no signal environment because hardware
//!   bound checks are compiled out, so AOT files must carry software bounds
//!   checks or they read out of bounds silently.
//! - After a trap, the instance holds an exception: read it with
//!   `wasm_runtime_get_exception` (a C string owned by the instance, valid
//!   until the exception is cleared or the instance destroyed), clear it, and
//!   treat the instance as poisoned.
//! - Objects are destroyed in reverse order of creation: exec env, instance,
//!   module, and each exactly once.
//! - Custom sections are kept: `wasm_runtime_get_custom_section` returns a
//!   pointer into the module's load buffer, valid while the module is loaded.

/// The WAMR release this runtime is built from.
pub const WAMR_VERSION: &str = env!("TOLLGATE_WAMR_VERSION");

/// The stamp every AOT file from the tollgate-aotc of this tree carries (WAMR
/// release, the project's patch set, the compiled-in checks; defined in
/// wamr-source). Loaders must refuse an AOT file whose custom section
/// [`AOT_STAMP_SECTION`] does not hold exactly these bytes: the AOT loader
/// itself checks only the format version, target and features.
pub const AOT_STAMP: &str = env!("TOLLGATE_AOT_STAMP");

/// The custom section name that holds [`AOT_STAMP`].
pub const AOT_STAMP_SECTION: &str = env!("TOLLGATE_AOT_STAMP_SECTION");

/// The bindgen output over `wasm_export.h`, names kept as in C.
mod bindings {
    #![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

pub use bindings::*;
