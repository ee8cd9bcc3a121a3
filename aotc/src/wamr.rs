//! The only unsafe code of tollgate-aotc: WAMR's AOT compiler (`aot_export.h`,
//! built by build.rs) behind one safe function, [`compile`].
//!
//! Invariants kept here:
//! - WAMR's runtime and compiler state are process-global and not
//!   re-entrant: [`compile`] holds a process-wide lock from init to destroy,
//!   so two calls never overlap.
//! - Objects are destroyed in reverse order of creation, each exactly once,
//!   by guards declared in creation order (Rust drops them in reverse).
//! - The buffer given to `wasm_runtime_load` is an owned copy that outlives
//!   the module (WAMR keeps pointers into it and may modify it).
//! - The strings in `AOTCompOption` (and its `custom_sections` array) are
//!   `CString`s or static `CStr`s that outlive the compilation context.
//! - `aot_get_last_error` returns a NUL-terminated static buffer; it is
//!   copied before the next WAMR call.
//! - The AOT buffer from `aot_emit_aot_file_buf` is copied out and freed with
//!   `wasm_runtime_free` (2.4.3 declares `aot_destroy_aot_file` but does not
//!   define it).

use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;

use crate::stamp;

/// bindgen output over aot_export.h and the wasm_export.h calls used here.
mod ffi {
    #![allow(non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code)]
    include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
}

/// What the caller may choose; everything else is fixed by the project.
pub struct Options {
    /// LLVM CPU name for x86_64, e.g. `x86-64-v2`.
    pub target_cpu: String,
    /// 0–3, as LLVM's -O.
    pub opt_level: u32,
    /// 0–3, LLVM code size level; 3 (small code model) is wamrc's default on x86-64 Linux.
    pub size_level: u32,
}

/// Always x86_64 Linux; the CPU is never the build host's (see README).
const TARGET_ARCH: &CStr = c"x86_64";

static WAMR: Mutex<()> = Mutex::new(());

/// Compiles a WebAssembly module to a WAMR 2.4.3 AOT file with software bounds
/// checks, stack bounds checks, auxiliary stack checks and the suspend checks
/// that let `wasm_runtime_terminate` stop its loops, stamped with
/// [`stamp::STAMP`]. Errors carry WAMR's text.
pub fn compile(wasm: &[u8], options: &Options) -> Result<Vec<u8>, String> {
    // Owned copy (the loader keeps pointers into it and may write to it),
    // with the stamp section appended. A module the stamp cannot be appended
    // to goes to WAMR unchanged, so its loader explains what is wrong; it is
    // refused after the load whatever WAMR says.
    let (mut bytes, unstampable) = match stamp::append(wasm) {
        Ok(stamped) => (stamped, None),
        Err(stamp::Refusal::Layout(why)) => (wasm.to_vec(), Some(why)),
        Err(stamp::Refusal::AlreadyStamped) => {
            return Err(format!(
                "load: the module already has a custom section named {:?}, which only tollgate-aotc writes",
                stamp::SECTION
            ))
        }
    };
    let wasm_len = u32::try_from(bytes.len()).map_err(|_| "the module is larger than 4 GiB".to_owned())?;
    let target_cpu = CString::new(options.target_cpu.as_str()).map_err(|_| "target CPU contains a NUL byte")?;
    let section = CString::new(stamp::SECTION).expect("the section name has no NUL");
    // A poisoned lock only means an earlier compile panicked after destroy ran in its guard's drop.
    let _serial = WAMR.lock().unwrap_or_else(|p| p.into_inner());

    let _runtime = Runtime::init()?;
    let mut err = [0 as c_char; 256];
    // SAFETY: `bytes` is declared before `module`, so it outlives it; the
    // error buffer length is its real size.
    let module = unsafe { ffi::wasm_runtime_load(bytes.as_mut_ptr(), wasm_len, err.as_mut_ptr(), err.len() as u32) };
    if module.is_null() {
        return Err(format!("load: {}", c_text(err.as_ptr())));
    }
    let module = Guard(module, |m| unsafe { ffi::wasm_runtime_unload(m) });
    if let Some(why) = unstampable {
        return Err(format!("load: {why}"));
    }

    // SAFETY: `module` is a loaded module, alive until after comp_data drops.
    let data = unsafe { ffi::aot_create_comp_data(module.0.cast(), TARGET_ARCH.as_ptr(), false) };
    if data.is_null() {
        return Err(format!("prepare: {}", last_error()));
    }
    let data = Guard(data, |d| unsafe { ffi::aot_destroy_comp_data(d) });

    let mut keep = [section.as_ptr().cast_mut()];
    let mut option = fixed_option(&target_cpu, options);
    // The stamp section goes into the AOT file as a raw custom section.
    option.custom_sections = keep.as_mut_ptr();
    option.custom_sections_count = keep.len() as u32;
    // SAFETY: a valid pointer to the option's own field.
    unsafe { ffi::aot_call_stack_features_init_default(&mut option.call_stack_features) };
    // SAFETY: `option`, `keep` and the strings they point to outlive the context.
    let context = unsafe { ffi::aot_create_comp_context(data.0, &mut option) };
    if context.is_null() {
        return Err(format!(
            "compiler setup for x86_64 {}: {}",
            options.target_cpu,
            last_error()
        ));
    }
    let context = Guard(context, |c| unsafe { ffi::aot_destroy_comp_context(c) });

    // SAFETY: context and data are alive.
    if !unsafe { ffi::aot_compile_wasm(context.0) } {
        return Err(format!("compile: {}", last_error()));
    }
    let mut size = 0u32;
    // SAFETY: context and data are alive; `size` receives the buffer length.
    let aot = unsafe { ffi::aot_emit_aot_file_buf(context.0, data.0, &mut size) };
    if aot.is_null() {
        return Err(format!("emit: {}", last_error()));
    }
    let aot = Guard(aot, |b| unsafe { ffi::wasm_runtime_free(b.cast()) });
    // SAFETY: WAMR returned a buffer of `size` bytes, alive until `aot` drops.
    let aot = unsafe { std::slice::from_raw_parts(aot.0, size as usize) }.to_vec();
    // WAMR skips a section to keep with only a log line when it cannot find it
    // (or keeps none when built without WAMR_BUILD_LOAD_CUSTOM_SECTION).
    if !stamp::emitted(&aot) {
        return Err(format!(
            "emit: WAMR did not keep the {:?} section in the AOT file",
            stamp::SECTION
        ));
    }
    Ok(aot)
}

/// The compiler options every AOT file gets, apart from the call-stack
/// features and the sections to keep (set by [`compile`]). The returned
/// option points into `target_cpu`, which must outlive it.
fn fixed_option(target_cpu: &CStr, options: &Options) -> ffi::AOTCompOption {
    ffi::AOTCompOption {
        target_arch: TARGET_ARCH.as_ptr().cast_mut(),
        target_cpu: target_cpu.as_ptr().cast_mut(),
        opt_level: options.opt_level,
        size_level: options.size_level,
        output_format: ffi::AOT_FORMAT_FILE,
        // 1 = on (2 would mean "platform default", which is off on x86-64
        // Linux: the runtime is built without hardware bound checks).
        bounds_checks: 1,
        stack_bounds_checks: 1,
        // What rustc's wasm32 targets emit by default (LLVM 19): memory.copy
        // and memory.fill (bulk-memory-opt), and call_indirect with a table
        // index (reference types' "overlong" encoding). WAMR drops each
        // feature a module does not use.
        enable_bulk_memory: true,
        enable_bulk_memory_opt: true,
        enable_ref_types: true,
        enable_call_indirect_overlong: true,
        // Emits the suspend/terminate checks (all modules, with the patch).
        enable_thread_mgr: true,
        enable_aux_stack_check: true,
        ..Default::default()
    }
}

/// Runtime and compiler initialised; destroyed on drop, after every other guard.
struct Runtime;

impl Runtime {
    fn init() -> Result<Runtime, String> {
        let mut init = ffi::RuntimeInitArgs {
            mem_alloc_type: ffi::mem_alloc_type_t::Alloc_With_System_Allocator,
            ..Default::default()
        };
        // SAFETY: serialised by WAMR's lock; destroyed in Drop.
        if !unsafe { ffi::wasm_runtime_full_init(&mut init) } {
            return Err("WAMR runtime init failed".into());
        }
        // Unresolved imports (WASI, proxy-wasm host calls) are normal at
        // compile time; WAMR would print a warning for each.
        unsafe { ffi::wasm_runtime_set_log_level(ffi::log_level_t::WASM_LOG_LEVEL_ERROR) };
        // SAFETY: the runtime is initialised.
        if !unsafe { ffi::aot_compiler_init() } {
            unsafe { ffi::wasm_runtime_destroy() };
            return Err(format!("AOT compiler init failed: {}", last_error()));
        }
        Ok(Runtime)
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: every module, data, context and buffer guard has dropped
        // (they were created after this guard).
        unsafe {
            ffi::aot_compiler_destroy();
            ffi::wasm_runtime_destroy();
        }
    }
}

/// A WAMR object and the function that frees it, called exactly once on drop.
struct Guard<T>(*mut T, fn(*mut T));

impl<T> Drop for Guard<T> {
    fn drop(&mut self) {
        (self.1)(self.0);
    }
}

fn last_error() -> String {
    // SAFETY: a static buffer inside WAMR, NUL-terminated; copied right away.
    let text = unsafe { ffi::aot_get_last_error() };
    if text.is_null() {
        return "unknown error".into();
    }
    match c_text(text) {
        t if t.is_empty() => "unknown error".into(),
        t => t,
    }
}

/// Copies a NUL-terminated C string (non-null).
fn c_text(text: *const c_char) -> String {
    // SAFETY: callers pass WAMR's NUL-terminated buffers.
    unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(module (func (export "f")))`
    const EMPTY_FUNC: &[u8] = &[
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x04, 0x01, 0x60, 0x00, 0x00, 0x03, 0x02, 0x01, 0x00,
        0x07, 0x05, 0x01, 0x01, b'f', 0x00, 0x00, 0x0a, 0x04, 0x01, 0x02, 0x00, 0x0b,
    ];

    fn options() -> Options {
        Options {
            target_cpu: "x86-64-v2".into(),
            opt_level: 3,
            size_level: 3,
        }
    }

    #[test]
    fn compiles_to_an_aot_file_repeatedly() {
        // Twice: init and destroy of the global state must pair up.
        for _ in 0..2 {
            let aot = compile(EMPTY_FUNC, &options()).unwrap();
            assert_eq!(&aot[..4], b"\0aot", "AOT magic");
            assert_eq!(
                u32::from_le_bytes(aot[4..8].try_into().unwrap()),
                6,
                "AOT version of WAMR 2.4.3"
            );
        }
    }

    #[test]
    fn invalid_module_is_refused_with_wamr_text() {
        let err = compile(&EMPTY_FUNC[..EMPTY_FUNC.len() - 3], &options()).unwrap_err();
        assert!(err.starts_with("load: ") && err.contains("unexpected end"), "{err}");
        let err = compile(b"not wasm", &options()).unwrap_err();
        assert!(
            err.starts_with("load: ") && err.contains("magic header not detected"),
            "{err}"
        );
    }

    #[test]
    fn output_carries_the_stamp_and_input_with_one_is_refused() {
        let aot = compile(EMPTY_FUNC, &options()).unwrap();
        assert!(stamp::emitted(&aot), "stamped");
        let stamped = stamp::append(EMPTY_FUNC).unwrap();
        let err = compile(&stamped, &options()).unwrap_err();
        assert!(
            err.contains("already has a custom section named \"tollgate-aot-stamp\""),
            "{err}"
        );
    }

    /// The stamp promises these checks to the runtime: turning one off here
    /// must come with a new stamp (wamr_source::AOT_CHECKS).
    #[test]
    fn the_stamp_names_the_checks_the_options_set() {
        let option = fixed_option(c"x86-64-v2", &options());
        let mut checks = Vec::new();
        if option.bounds_checks == 1 {
            checks.push("bounds");
        }
        if option.stack_bounds_checks == 1 {
            checks.push("stack-bounds");
        }
        if option.enable_aux_stack_check {
            checks.push("aux-stack");
        }
        if option.enable_thread_mgr {
            checks.push("suspend");
        }
        let named = format!(" checks:{}", checks.join(","));
        assert!(stamp::STAMP.ends_with(&named), "{} vs{named}", stamp::STAMP);
    }
}
