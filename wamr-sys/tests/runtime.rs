//! Proves the linked WAMR runtime works end to end through the raw bindings:
//! init with the system allocator, load and instantiate a hand-assembled
//! module, call an export, survive a trap. WAMR's init is process-global, so
//! everything runs in one test function (this file is its own process).

use std::ffi::{c_char, CStr};

use wamr_sys::*;

/// `(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
///          (func (export "boom") unreachable))`
const MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x0a, 0x02, 0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f, 0x60, 0x00, 0x00, // types: (i32 i32)->i32, ()->()
    0x03, 0x03, 0x02, 0x00, 0x01, // functions: type 0, type 1
    0x07, 0x0e, 0x02, 0x03, b'a', b'd', b'd', 0x00, 0x00, 0x04, b'b', b'o', b'o', b'm', 0x00, 0x01, // exports
    0x0a, 0x0d, 0x02, // code: 2 bodies
    0x07, 0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b, // add: local.get 0, local.get 1, i32.add
    0x03, 0x00, 0x00, 0x0b, // boom: unreachable
];

const STACK: u32 = 64 * 1024;

fn c_text(buf: &[c_char]) -> String {
    // SAFETY: WAMR writes a NUL-terminated message into the zeroed buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// Calls `add(a, b)`; Err carries the instance's exception text.
///
/// # Safety
/// `env` and `add` belong to `inst`, all alive, used by this thread only.
unsafe fn call_add(
    env: wasm_exec_env_t,
    inst: wasm_module_inst_t,
    add: wasm_function_inst_t,
    a: i32,
    b: i32,
) -> Result<i32, String> {
    let mut argv = [a as u32, b as u32];
    // SAFETY: argv holds both i32 arguments and room for the i32 result.
    if unsafe { wasm_runtime_call_wasm(env, add, 2, argv.as_mut_ptr()) } {
        Ok(argv[0] as i32)
    } else {
        Err(unsafe { exception(inst) }.unwrap_or_default())
    }
}

/// # Safety
/// `inst` is alive and not used by another thread.
unsafe fn exception(inst: wasm_module_inst_t) -> Option<String> {
    // SAFETY: the string is owned by the instance and copied before any other call.
    let text = unsafe { wasm_runtime_get_exception(inst) };
    (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned())
}

#[test]
fn runtime_calls_an_export_and_survives_a_trap() {
    let mut init = RuntimeInitArgs {
        mem_alloc_type: mem_alloc_type_t::Alloc_With_System_Allocator,
        ..Default::default()
    };
    // SAFETY: the only runtime init in this process; destroyed at the end after every object.
    assert!(
        unsafe { wasm_runtime_full_init(&mut init) },
        "wasm_runtime_full_init failed"
    );

    // The loader may patch the buffer in place and keeps pointers into it: an
    // owned copy that outlives the module.
    let mut bytes = MODULE.to_vec();
    let mut err = [0 as c_char; 128];
    // SAFETY: `bytes` outlives the module (unloaded below, before `bytes` drops).
    let module = unsafe { wasm_runtime_load(bytes.as_mut_ptr(), bytes.len() as u32, err.as_mut_ptr(), 128) };
    assert!(!module.is_null(), "load: {}", c_text(&err));

    // SAFETY: `module` is loaded; the instance is destroyed before it.
    let inst = unsafe { wasm_runtime_instantiate(module, STACK, STACK, err.as_mut_ptr(), 128) };
    assert!(!inst.is_null(), "instantiate: {}", c_text(&err));
    // SAFETY: `inst` is alive; the exec env is destroyed before it.
    let env = unsafe { wasm_runtime_create_exec_env(inst, STACK) };
    assert!(!env.is_null(), "create_exec_env");

    // SAFETY: NUL-terminated names, `inst` alive.
    let add = unsafe { wasm_runtime_lookup_function(inst, c"add".as_ptr()) };
    let boom = unsafe { wasm_runtime_lookup_function(inst, c"boom".as_ptr()) };
    assert!(!add.is_null() && !boom.is_null(), "exports add and boom");
    let missing = unsafe { wasm_runtime_lookup_function(inst, c"nope".as_ptr()) };
    assert!(missing.is_null(), "an unknown export is not found");

    // SAFETY (all calls below): env, inst and the functions are alive and used by this thread only.
    assert_eq!(unsafe { call_add(env, inst, add, 40, 2) }, Ok(42));
    assert_eq!(unsafe { call_add(env, inst, add, -5, 3) }, Ok(-2));
    assert_eq!(
        unsafe { call_add(env, inst, add, i32::MAX, 1) },
        Ok(i32::MIN),
        "i32.add wraps"
    );

    let mut no_args = [0u32; 1];
    assert!(
        !unsafe { wasm_runtime_call_wasm(env, boom, 0, no_args.as_mut_ptr()) },
        "unreachable must fail the call"
    );
    let trap = unsafe { exception(inst) }.expect("a trap leaves an exception");
    assert!(trap.contains("unreachable"), "exception text: {trap}");

    unsafe { wasm_runtime_clear_exception(inst) };
    assert_eq!(unsafe { exception(inst) }, None, "cleared");
    assert_eq!(
        unsafe { call_add(env, inst, add, 1, 2) },
        Ok(3),
        "usable after clearing"
    );

    // SAFETY: reverse order of creation, each exactly once; nothing is used afterwards.
    unsafe {
        wasm_runtime_destroy_exec_env(env);
        wasm_runtime_deinstantiate(inst);
        wasm_runtime_unload(module);
        wasm_runtime_destroy();
    }
    drop(bytes);
}
