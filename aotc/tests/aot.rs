//! End to end: the built `tollgate-aotc` binary compiles a hand-assembled
//! module, and the runtime the gateway uses (wamr-sys) loads and runs the
//! result: calls, software bounds checks, a spinning loop stopped by
//! `wasm_runtime_terminate` from another thread (the suspend-check patch),
//! the stamp the gateway requires, and refusal of an AOT file whose format
//! version was altered. This test binary links only the runtime; the
//! compiler runs as its own process.

use std::ffi::{c_char, CStr};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{mpsc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use wamr_sys::*;

/// ```wat
/// (module
///   (memory 1)   ;; not shared: the case WAMR 2.4.3 emitted no suspend checks for
///   (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add)
///   (func (export "spin") (loop br 0))
///   (func (export "load") (param i32) (result i32) local.get 0 i32.load))
/// ```
const MODULE: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x0f, 0x03, // types: 3
    0x60, 0x02, 0x7f, 0x7f, 0x01, 0x7f, // (i32 i32) -> i32
    0x60, 0x00, 0x00, // () -> ()
    0x60, 0x01, 0x7f, 0x01, 0x7f, // (i32) -> i32
    0x03, 0x04, 0x03, 0x00, 0x01, 0x02, // functions
    0x05, 0x03, 0x01, 0x00, 0x01, // memory: min 1 page, not shared
    0x07, 0x15, 0x03, // exports: 3
    0x03, b'a', b'd', b'd', 0x00, 0x00, // "add" func 0
    0x04, b's', b'p', b'i', b'n', 0x00, 0x01, // "spin" func 1
    0x04, b'l', b'o', b'a', b'd', 0x00, 0x02, // "load" func 2
    0x0a, 0x19, 0x03, // code: 3 bodies
    0x07, 0x00, 0x20, 0x00, 0x20, 0x01, 0x6a, 0x0b, // add
    0x07, 0x00, 0x03, 0x40, 0x0c, 0x00, 0x0b, 0x0b, // spin: loop br 0 end
    0x07, 0x00, 0x20, 0x00, 0x28, 0x02, 0x00, 0x0b, // load: i32.load offset=0
];

/// What rustc's wasm32 output uses beyond the MVP, so a compiler option
/// missing for it fails here rather than on the first real plugin:
/// ```wat
/// (module
///   (type $t (func (result i32)))
///   (table 1 funcref) (memory 1) (elem (i32.const 0) $seven)
///   (func $seven (type $t) i32.const 7)
///   (func (export "fill_and_call") (result i32)
///     (memory.fill (i32.const 0) (i32.const 0xab) (i32.const 16))    ;; bulk-memory-opt
///     (call_indirect (type $t) (i32.const 0))    ;; table index as LEB 0x80 0x00, as wasm-ld writes it
///     (i32.load8_u (i32.const 15)) i32.add))     ;; 7 + 0xab
/// ```
const RUSTC_FEATURES: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f, // types: () -> i32
    0x03, 0x03, 0x02, 0x00, 0x00, // functions
    0x04, 0x04, 0x01, 0x70, 0x00, 0x01, // table: funcref, min 1
    0x05, 0x03, 0x01, 0x00, 0x01, // memory: min 1 page
    0x07, 0x11, 0x01, 0x0d, b'f', b'i', b'l', b'l', b'_', b'a', b'n', b'd', b'_', b'c', b'a', b'l', b'l', 0x00,
    0x01, // export "fill_and_call" func 1
    0x09, 0x07, 0x01, 0x00, 0x41, 0x00, 0x0b, 0x01, 0x00, // elem: table 0 at 0: func 0
    0x0a, 0x1f, 0x02, // code: 2 bodies
    0x04, 0x00, 0x41, 0x07, 0x0b, // seven
    0x18, 0x00, // fill_and_call, no locals
    0x41, 0x00, 0x41, 0xab, 0x01, 0x41, 0x10, 0xfc, 0x0b, 0x00, // memory.fill
    0x41, 0x00, 0x11, 0x00, 0x80, 0x00, // call_indirect type 0, table 0 (overlong)
    0x41, 0x0f, 0x2d, 0x00, 0x00, 0x6a, 0x0b, // i32.load8_u, i32.add
];

const STACK: u32 = 64 * 1024;
/// Bound on waiting for a terminated call (it returns within a millisecond).
const TERMINATE_PATIENCE: Duration = Duration::from_secs(10);

/// WAMR's runtime is process-global: initialised once, never destroyed (the
/// process ends), and the tests take turns.
fn runtime() -> MutexGuard<'static, ()> {
    static INIT: OnceLock<()> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    INIT.get_or_init(|| {
        let mut init = RuntimeInitArgs {
            mem_alloc_type: mem_alloc_type_t::Alloc_With_System_Allocator,
            ..Default::default()
        };
        // SAFETY: the only init in this process, guarded by the OnceLock.
        assert!(unsafe { wasm_runtime_full_init(&mut init) }, "wasm_runtime_full_init");
    });
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("aotc-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn aotc(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate-aotc"))
        .args(args)
        .output()
        .expect("running tollgate-aotc")
}

/// Compiles `wasm` with the default options and returns the AOT bytes.
fn compile(name: &str, wasm: &[u8]) -> Vec<u8> {
    let dir = scratch(name);
    let (input, output) = (dir.join("m.wasm"), dir.join("m.aot"));
    std::fs::write(&input, wasm).unwrap();
    let out = aotc(&[&input, Path::new("-o"), &output]);
    assert!(
        out.status.success(),
        "tollgate-aotc failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&output).unwrap()
}

fn c_text(buf: &[c_char]) -> String {
    // SAFETY: WAMR writes a NUL-terminated message into the zeroed buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned()
}

/// A loaded module and its bytes (the loader keeps pointers into them).
struct Module {
    raw: wasm_module_t,
    _bytes: Vec<u8>,
}

impl Module {
    fn load(mut bytes: Vec<u8>) -> Result<Module, String> {
        let mut err = [0 as c_char; 128];
        // SAFETY: runtime initialised; `bytes` moves into the Module and outlives `raw`.
        let raw = unsafe { wasm_runtime_load(bytes.as_mut_ptr(), bytes.len() as u32, err.as_mut_ptr(), 128) };
        if raw.is_null() {
            return Err(c_text(&err));
        }
        Ok(Module { raw, _bytes: bytes })
    }
}

// SAFETY: a loaded module is not modified by instantiation, and WAMR
// instantiates one module from several threads (each instance is then used by
// one thread); the terminate test instantiates on a second thread.
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: every instance of it was destroyed before (Instance borrows the Module).
        unsafe { wasm_runtime_unload(self.raw) };
    }
}

/// An instance with one exec env (which registers the thread-manager cluster
/// `wasm_runtime_terminate` signals).
struct Instance<'m> {
    inst: wasm_module_inst_t,
    env: wasm_exec_env_t,
    _module: &'m Module,
}

impl<'m> Instance<'m> {
    fn new(module: &'m Module) -> Instance<'m> {
        let mut err = [0 as c_char; 128];
        // SAFETY: the module is loaded and outlives the instance (borrow).
        let inst = unsafe { wasm_runtime_instantiate(module.raw, STACK, 0, err.as_mut_ptr(), 128) };
        assert!(!inst.is_null(), "instantiate: {}", c_text(&err));
        // SAFETY: `inst` is alive; the env is destroyed first in Drop.
        let env = unsafe { wasm_runtime_create_exec_env(inst, STACK) };
        assert!(!env.is_null(), "create_exec_env");
        Instance {
            inst,
            env,
            _module: module,
        }
    }

    /// Calls export `name` with i32 arguments; Ok(first result slot) or Err(exception).
    fn call(&self, name: &str, args: &[i32]) -> Result<i32, String> {
        let name = std::ffi::CString::new(name).unwrap();
        // SAFETY: NUL-terminated name; `inst` alive and used by this thread only.
        let func = unsafe { wasm_runtime_lookup_function(self.inst, name.as_ptr()) };
        assert!(!func.is_null(), "export {name:?}");
        let mut argv: Vec<u32> = args.iter().map(|&a| a as u32).collect();
        argv.push(0);
        // SAFETY: argv holds the arguments and room for one i32 result.
        if unsafe { wasm_runtime_call_wasm(self.env, func, args.len() as u32, argv.as_mut_ptr()) } {
            return Ok(argv[0] as i32);
        }
        // SAFETY: the exception string belongs to the instance and is copied at once.
        let text = unsafe { wasm_runtime_get_exception(self.inst) };
        let text = (!text.is_null()).then(|| unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned());
        unsafe { wasm_runtime_clear_exception(self.inst) };
        Err(text.unwrap_or_default())
    }
}

impl Drop for Instance<'_> {
    fn drop(&mut self) {
        // SAFETY: reverse order of creation, each once.
        unsafe {
            wasm_runtime_destroy_exec_env(self.env);
            wasm_runtime_deinstantiate(self.inst);
        }
    }
}

/// An instance handle another thread may pass to `wasm_runtime_terminate`,
/// which WAMR documents as callable from any thread.
struct Terminator(wasm_module_inst_t);
// SAFETY: only used for wasm_runtime_terminate while the instance is alive
// (the owning thread is joined before the instance drops).
unsafe impl Send for Terminator {}

#[test]
fn aot_output_runs_with_bounds_checks() {
    let aot = compile("runs", MODULE);
    assert_eq!(&aot[..4], b"\0aot");
    let _turn = runtime();
    let module = Module::load(aot).expect("the runtime loads the AOT file");
    let inst = Instance::new(&module);
    assert_eq!(inst.call("add", &[40, 2]), Ok(42));
    assert_eq!(inst.call("add", &[i32::MAX, 1]), Ok(i32::MIN));
    assert_eq!(inst.call("load", &[0]), Ok(0));
    // The runtime has no hardware bound checks: only the compiled-in software
    // checks stand between this load and the host's memory.
    let trap = inst.call("load", &[65_536]).unwrap_err();
    assert!(trap.contains("out of bounds memory access"), "{trap}");
    assert_eq!(
        inst.call("load", &[65_533]).map_err(|e| e.contains("out of bounds")),
        Err(true)
    );
    assert_eq!(
        inst.call("add", &[1, 2]),
        Ok(3),
        "still usable after the trap is cleared"
    );
}

#[test]
fn aot_compiles_what_rustc_emits() {
    let aot = compile("rustc", RUSTC_FEATURES);
    let _turn = runtime();
    let module = Module::load(aot).expect("the runtime loads the AOT file");
    let inst = Instance::new(&module);
    assert_eq!(inst.call("fill_and_call", &[]), Ok(7 + 0xab));
}

#[test]
fn aot_loop_without_shared_memory_is_terminated_from_another_thread() {
    let aot = compile("terminate", MODULE);
    let _turn = runtime();
    let module = Module::load(aot).unwrap();
    let (started_tx, started_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::scope(|s| {
        let module = &module;
        s.spawn(move || {
            let inst = Instance::new(module);
            started_tx.send(Terminator(inst.inst)).unwrap();
            let t = Instant::now();
            let result = inst.call("spin", &[]);
            done_tx.send((result, t.elapsed())).unwrap();
        });
        let target = started_rx.recv().unwrap();
        // Long enough that the call is spinning, not about to start.
        std::thread::sleep(Duration::from_millis(100));
        let terminated_at = Instant::now();
        // SAFETY: the instance is alive until the spawned thread ends (scope).
        unsafe { wasm_runtime_terminate(target.0) };
        let Ok((result, spun)) = done_rx.recv_timeout(TERMINATE_PATIENCE) else {
            // The spinning thread cannot be stopped any other way: end the
            // process, past the harness's output capture so the reason shows.
            let _ = writeln!(
                std::io::stderr(),
                "FAILED: the AOT loop did not stop within {TERMINATE_PATIENCE:?} of wasm_runtime_terminate \
                 (suspend checks missing: is the wamr-source patch applied?)"
            );
            std::process::exit(1);
        };
        let latency = terminated_at.elapsed();
        eprintln!("spun {spun:?}; returned {latency:?} after wasm_runtime_terminate");
        let err = result.expect_err("a terminated call fails");
        assert!(err.contains("terminated by user"), "{err}");
        assert!(spun >= Duration::from_millis(90), "the call was spinning: {spun:?}");
    });
}

#[test]
fn aot_file_with_another_format_version_is_refused() {
    let aot = compile("version", MODULE);
    let version = u32::from_le_bytes(aot[4..8].try_into().unwrap());
    assert_eq!(version, 6, "WAMR 2.4.3 writes AOT format version 6");
    let _turn = runtime();
    for other in [version - 1, version + 1] {
        let mut altered = aot.clone();
        altered[4..8].copy_from_slice(&other.to_le_bytes());
        let err = Module::load(altered)
            .err()
            .expect("an AOT file of another version is refused");
        eprintln!("version {other}: {err}");
        assert!(err.contains("unknown binary version"), "{err}");
    }
    assert!(Module::load(aot).is_ok(), "the unaltered file loads");
}

/// What the gateway checks: the runtime finds the stamp section in the AOT
/// file, holding exactly the stamp wamr-sys expects.
#[test]
fn aot_file_carries_the_stamp_the_runtime_expects() {
    let aot = compile("stamp", MODULE);
    let _turn = runtime();
    let module = Module::load(aot).unwrap();
    let name = std::ffi::CString::new(AOT_STAMP_SECTION).unwrap();
    let mut len = 0u32;
    // SAFETY: the module is loaded; the content points into its buffer and is copied at once.
    let content = unsafe { wasm_runtime_get_custom_section(module.raw, name.as_ptr(), &mut len) };
    assert!(!content.is_null(), "no {AOT_STAMP_SECTION} section in the AOT file");
    let content = unsafe { std::slice::from_raw_parts(content, len as usize) }.to_vec();
    assert_eq!(String::from_utf8_lossy(&content), AOT_STAMP);
    assert!(
        AOT_STAMP.starts_with(&format!("tollgate-aotc WAMR {WAMR_VERSION} ")),
        "{AOT_STAMP}"
    );
}

#[test]
fn cli_errors_name_the_input_and_exit_nonzero() {
    let dir = scratch("cli");
    let (bad, out) = (dir.join("bad.wasm"), dir.join("bad.aot"));
    std::fs::write(&bad, &MODULE[..MODULE.len() - 4]).unwrap();
    let result = aotc(&[&bad, Path::new("-o"), &out]);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("tollgate-aotc: ") && stderr.contains("bad.wasm: load: "),
        "{stderr}"
    );
    assert!(!out.exists(), "no output on failure");

    let missing = aotc(&[&dir.join("none.wasm"), Path::new("-o"), &out]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("reading "));

    // LLVM would abort on an unknown CPU name; the command line refuses it first.
    let good = dir.join("good.wasm");
    std::fs::write(&good, MODULE).unwrap();
    let host_cpu = aotc(&[
        &good,
        Path::new("-o"),
        &out,
        Path::new("--target-cpu"),
        Path::new("znver3"),
    ]);
    assert_eq!(host_cpu.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&host_cpu.stderr).contains("x86-64-v2"));
    assert!(!out.exists());

    let same = dir.join("same.wasm");
    std::fs::write(&same, MODULE).unwrap();
    let clobber = aotc(&[&same, Path::new("-o"), &same]);
    assert_eq!(clobber.status.code(), Some(1));
    assert_eq!(std::fs::read(&same).unwrap(), MODULE, "input untouched");
}
