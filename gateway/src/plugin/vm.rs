//! The safe wrapper over `wamr_sys` (WAMR 2.4.3): the process-wide runtime,
//! loaded modules (`.wasm` for the fast interpreter, `.aot` for AOT code),
//! instances with their one exec env, guest-memory access for host functions
//! and the re-entrant call into the guest's allocator. Apart from the
//! one-line glue that turns a host function's raw exec env into a [`Caller`]
//! (abi/mod.rs), every `unsafe` over WAMR lives here.
//!
//! Invariants this module keeps (each `unsafe` block names the one it relies on):
//!
//! 1. **Runtime once.** `wasm_runtime_full_init` runs once per process, inside a
//!    `OnceLock`, with the system allocator, before any other WAMR call; the
//!    runtime is never destroyed (modules may live until exit).
//! 2. **Natives before modules, forever.** Every `env` host function is
//!    registered by [`init_runtime`] before [`PluginModule::load`] can run (load
//!    calls it first). The `NativeSymbol` array and its strings are leaked:
//!    WAMR sorts the array in place and keeps pointers into it for the
//!    process's life.
//! 3. **Module bytes outlive the module.** The loader keeps pointers into (and
//!    may patch) the buffer given to `wasm_runtime_load`; `PluginModule` owns
//!    that buffer and unloads the module in `Drop` before the buffer is freed.
//!    Instances hold an `Arc<PluginModule>`, so a module outlives its instances.
//! 4. **One thread at a time per instance.** An [`Instance`] (module instance
//!    and exec env) is `Send`, not `Sync`: all calls go through `&mut self`. WAMR
//!    2.4.3 without hardware bound checks re-reads the calling thread's handle
//!    and native stack boundary on every `wasm_runtime_call_wasm`
//!    (`wasm_call_function` → `wasm_exec_env_set_thread_info`), so moving an
//!    instance between threads between calls is correct; the test
//!    `calls_from_two_threads` checks it.
//! 5. **Teardown order.** Exec env, then instance, then (when the last `Arc`
//!    drops) module, each exactly once, in `Drop`.
//! 6. **Host state reachable from the exec env only.** The exec env's user
//!    data points at the instance's boxed [`HostShared`], which lives (boxed,
//!    never moved) as long as the exec env; host functions reach it through
//!    that pointer only, never through a global.
//! 7. **Guest memory is bounds-checked.** Host functions read and write guest
//!    memory only through [`Caller`], which checks `offset + len` against the
//!    default memory's current size (no WAMR call that would raise an
//!    exception) and re-reads the base address after every call into the
//!    guest (`memory.grow` may move it).
//! 8. **Termination.** Only the watchdog calls `wasm_runtime_terminate`, on an
//!    instance registered for a call in progress whose entry it has marked
//!    `Terminating`; unregistering such an entry waits until terminate has
//!    returned, so the instance cannot be destroyed while the watchdog touches
//!    it. The exec env is created with `wasm_runtime_create_exec_env`, which
//!    registers a thread-manager cluster, so terminate reaches the running
//!    call (and, for a blocking WASI call, signals its thread with SIGUSR1:
//!    WAMR installs a no-op SIGUSR1 handler at init, so the gateway must not
//!    use that signal).

use std::cell::{Cell, RefCell, RefMut};
use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::{Mutex, OnceLock, PoisonError};

use wamr_sys as sys;

use super::abi::{self, HostState, Status};

/// Bytes of the operand/frame stack WAMR gives each exec env (the guest's own
/// shadow stack lives in its linear memory).
const WASM_STACK_BYTES: u32 = 64 * 1024;
const ERROR_BUF: usize = 256;
const WASM_PAGE: u64 = 64 * 1024;

/// The proxy-wasm ABI version a module exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_1_0 => "0.1.0",
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }
}

static RUNTIME: OnceLock<Result<(), String>> = OnceLock::new();

/// Initialises the process-wide WAMR runtime and registers every host
/// function under `env`. Idempotent; every later call returns the first
/// outcome.
pub fn init_runtime() -> Result<(), String> {
    RUNTIME.get_or_init(init_once).clone()
}

fn init_once() -> Result<(), String> {
    let mut init = sys::RuntimeInitArgs {
        mem_alloc_type: sys::mem_alloc_type_t::Alloc_With_System_Allocator,
        ..Default::default()
    };
    // SAFETY (invariant 1): runs once, inside the OnceLock, before any other WAMR call.
    if !unsafe { sys::wasm_runtime_full_init(&mut init) } {
        return Err("the WAMR runtime failed to initialise".into());
    }
    // WAMR prints loader warnings (such as an import the host does not
    // provide, which traps when called) on stdout; keep them out of the
    // gateway's output.
    // SAFETY: a plain setter on the initialised runtime.
    unsafe { sys::wasm_runtime_set_log_level(sys::log_level_t::WASM_LOG_LEVEL_ERROR) };

    // SAFETY: a plain setter on the initialised runtime; the callback is a
    // 'static function that only touches the exec env's user data (invariant 6).
    unsafe { sys::wasm_runtime_set_enlarge_mem_error_callback(Some(memory_grow_failed), std::ptr::null_mut()) };

    let table = abi::native_table();
    let symbols: Vec<sys::NativeSymbol> = table
        .iter()
        .map(|n| sys::NativeSymbol {
            symbol: leak_cstr(n.name),
            func_ptr: n.func,
            signature: leak_cstr(n.signature),
            attachment: std::ptr::null_mut(),
        })
        .collect();
    let count = symbols.len() as u32;
    let symbols: &'static mut [sys::NativeSymbol] = Vec::leak(symbols);
    // SAFETY (invariant 2): the array and every string are leaked ('static), and
    // no module has been loaded yet (loading calls init_runtime first).
    let ok = unsafe { sys::wasm_runtime_register_natives(c"env".as_ptr(), symbols.as_mut_ptr(), count) };
    if !ok {
        return Err("registering the proxy-wasm host functions with WAMR failed".into());
    }
    Ok(())
}

/// WAMR calls this (on the thread running the guest) when `memory.grow`
/// fails; the instance records it so a trap that follows (the guest
/// allocator's abort) is reported as memory exhaustion.
unsafe extern "C" fn memory_grow_failed(
    _inc_pages: u32,
    _current_size: u64,
    _memory_index: u32,
    _reason: sys::enlarge_memory_error_reason_t::Type,
    _instance: sys::wasm_module_inst_t,
    exec_env: sys::wasm_exec_env_t,
    _user_data: *mut c_void,
) {
    if exec_env.is_null() {
        return;
    }
    // SAFETY: WAMR passes the exec env of the running call; it is live now.
    let data = unsafe { sys::wasm_runtime_get_user_data(exec_env) };
    if data.is_null() {
        // An exec env WAMR made itself (a start function during instantiation).
        return;
    }
    // SAFETY (invariant 6): a non-null user data is the instance's HostShared,
    // alive as long as the exec env; only the Cell is touched, from the thread
    // that runs the instance.
    unsafe { &*data.cast::<HostShared>() }.grow_failed.set(true);
}

fn leak_cstr(s: &str) -> *const c_char {
    Box::leak(CString::new(s).expect("native names have no NUL").into_boxed_c_str()).as_ptr()
}

/// The AOT format version this runtime loads (WAMR's `AOT_CURRENT_VERSION`).
pub fn aot_format_version() -> u32 {
    // SAFETY: a pure query of a compile-time constant.
    unsafe { sys::wasm_runtime_get_current_package_version(sys::package_type_t::Wasm_Module_AoT) }
}

/// One exported function's signature: parameter and result counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ExportSig {
    pub params: u32,
    pub results: u32,
}

/// A loaded module, shared by every instance of one plugin version.
pub struct PluginModule {
    raw: sys::wasm_module_t,
    aot: bool,
    abi: AbiVersion,
    exports: HashMap<String, ExportSig>,
    unlinked: Vec<String>,
    /// Serialises instantiation: WAMR does not document concurrent
    /// instantiation of one module as safe.
    instantiate_lock: Mutex<()>,
    /// Invariant 3: the loader's buffer, freed after `raw` is unloaded (Drop).
    _bytes: Box<[u8]>,
}

// SAFETY: after loading, WAMR only reads the module; the one mutating use
// (instantiation) is serialised by `instantiate_lock`, and unloading happens in
// Drop when no other reference exists.
unsafe impl Send for PluginModule {}
// SAFETY: see Send; shared access is read-only or behind `instantiate_lock`.
unsafe impl Sync for PluginModule {}

impl std::fmt::Debug for PluginModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginModule")
            .field("aot", &self.aot)
            .field("abi", &self.abi)
            .finish_non_exhaustive()
    }
}

impl PluginModule {
    /// Loads a `.wasm` (fast interpreter) or `.aot` (AOT) file. Errors are
    /// complete sentences naming the reason.
    pub fn load(bytes: Vec<u8>) -> Result<PluginModule, String> {
        init_runtime()?;
        let aot = match bytes.get(..4) {
            Some(b"\0asm") => false,
            Some(b"\0aot") => true,
            _ => return Err("not a wasm or AOT file (the first bytes are neither \\0asm nor \\0aot)".into()),
        };
        if aot {
            let want = aot_format_version();
            let got = bytes
                .get(4..8)
                .map(|v| u32::from_le_bytes(v.try_into().expect("4 bytes")))
                .ok_or("AOT file is truncated: it ends inside its header")?;
            if got != want {
                return Err(format!(
                    "AOT file built for WAMR AOT format version {got}, this runtime loads version {want} \
                     (WAMR {}): recompile it with tollgate-aotc",
                    sys::WAMR_VERSION
                ));
            }
        }
        let len = u32::try_from(bytes.len()).map_err(|_| "module is larger than 4 GiB".to_string())?;
        let mut bytes = bytes.into_boxed_slice();
        let mut err = [0 as c_char; ERROR_BUF];
        // SAFETY (invariants 2, 3): natives are registered (init_runtime above);
        // `bytes` is owned by the returned PluginModule and freed only after unload.
        let raw = unsafe { sys::wasm_runtime_load(bytes.as_mut_ptr(), len, err.as_mut_ptr(), ERROR_BUF as u32) };
        if raw.is_null() {
            let what = if aot { "AOT file" } else { "wasm module" };
            return Err(format!("{what} failed to load: {}", c_text(&err)));
        }
        let mut module = PluginModule {
            raw,
            aot,
            abi: AbiVersion::V0_2_1,
            exports: HashMap::new(),
            unlinked: Vec::new(),
            instantiate_lock: Mutex::new(()),
            _bytes: bytes,
        };
        if aot {
            // Before anything else reads the module; dropping it unloads it.
            module.check_aot_stamp()?;
        }
        module.exports = module.read_exports();
        module.abi = abi::check_exports(&module.exports)?;
        module.unlinked = module.read_unlinked_imports();
        if !module.unlinked.is_empty() {
            tracing::warn!(
                imports = %module.unlinked.join(", "),
                "plugin module imports functions the host does not provide (or with another signature); \
                 a call to one of them traps"
            );
        }
        Ok(module)
    }

    /// Refuses an AOT file without the stamp of this tree's tollgate-aotc. The
    /// AOT loader checks only the format version, target and features, so a
    /// file from another WAMR release with the same format version, from an
    /// unpatched compiler (no suspend checks: a runaway loop could not be
    /// stopped) or without bounds checks (this runtime has no hardware bound
    /// checks: out-of-bounds access would read host memory) would load.
    fn check_aot_stamp(&self) -> Result<(), String> {
        /// Enough of a foreign stamp to recognise it; a section can be large.
        const SHOWN: usize = 200;
        let name = CString::new(sys::AOT_STAMP_SECTION).expect("the section name has no NUL");
        let mut len = 0u32;
        // SAFETY (invariant 3): `raw` is loaded; a non-null result points at
        // `len` bytes inside the module's buffer, read here while it is alive.
        let found = unsafe {
            let content = sys::wasm_runtime_get_custom_section(self.raw, name.as_ptr(), &mut len);
            (!content.is_null()).then(|| std::slice::from_raw_parts(content, len as usize))
        };
        if found == Some(sys::AOT_STAMP.as_bytes()) {
            return Ok(());
        }
        let found = match found {
            None => "it has no stamp".to_string(),
            Some(stamp) => {
                let text = String::from_utf8_lossy(&stamp[..stamp.len().min(SHOWN)]);
                let more = if stamp.len() > SHOWN { "..." } else { "" };
                format!("its stamp is {text:?}{more}")
            }
        };
        Err(format!(
            "AOT file not built by tollgate-aotc for WAMR {} with Tollgate's options ({found}, this gateway \
             expects stamp {:?}): recompile it with tollgate-aotc",
            sys::WAMR_VERSION,
            sys::AOT_STAMP
        ))
    }

    /// `module.name` of every function import WAMR could not link.
    fn read_unlinked_imports(&self) -> Vec<String> {
        let mut unlinked = Vec::new();
        // SAFETY: `raw` is a loaded module; the import table is read-only.
        let count = unsafe { sys::wasm_runtime_get_import_count(self.raw) };
        for index in 0..count.max(0) {
            let mut import = sys::wasm_import_t::default();
            // SAFETY: index < count; WAMR fills `import` with pointers into the module.
            unsafe { sys::wasm_runtime_get_import_type(self.raw, index, &mut import) };
            if import.kind != sys::wasm_import_export_kind_t::WASM_IMPORT_EXPORT_KIND_FUNC || import.linked {
                continue;
            }
            if import.module_name.is_null() || import.name.is_null() {
                continue;
            }
            // SAFETY: NUL-terminated strings owned by the loaded module.
            let (module, name) = unsafe {
                (
                    CStr::from_ptr(import.module_name).to_string_lossy(),
                    CStr::from_ptr(import.name).to_string_lossy(),
                )
            };
            unlinked.push(format!("{module}.{name}"));
        }
        unlinked
    }

    /// Function imports the host does not provide; calling one traps.
    pub fn unlinked_imports(&self) -> &[String] {
        &self.unlinked
    }

    fn read_exports(&self) -> HashMap<String, ExportSig> {
        let mut exports = HashMap::new();
        // SAFETY: `raw` is a loaded module; the export table is read-only.
        let count = unsafe { sys::wasm_runtime_get_export_count(self.raw) };
        for index in 0..count.max(0) {
            let mut export = sys::wasm_export_t::default();
            // SAFETY: index < count; WAMR fills `export` with pointers into the module.
            unsafe { sys::wasm_runtime_get_export_type(self.raw, index, &mut export) };
            if export.kind != sys::wasm_import_export_kind_t::WASM_IMPORT_EXPORT_KIND_FUNC || export.name.is_null() {
                continue;
            }
            // SAFETY: a function export: `name` is a NUL-terminated string owned by the
            // module and `func_type` its type, both valid while the module is loaded.
            let (name, sig) = unsafe {
                let func_type = export.u.func_type;
                (
                    CStr::from_ptr(export.name).to_string_lossy().into_owned(),
                    ExportSig {
                        params: sys::wasm_func_type_get_param_count(func_type),
                        results: sys::wasm_func_type_get_result_count(func_type),
                    },
                )
            };
            exports.insert(name, sig);
        }
        exports
    }

    pub fn is_aot(&self) -> bool {
        self.aot
    }

    pub fn abi_version(&self) -> AbiVersion {
        self.abi
    }

    pub(super) fn export(&self, name: &str) -> Option<ExportSig> {
        self.exports.get(name).copied()
    }
}

impl Drop for PluginModule {
    fn drop(&mut self) {
        // SAFETY (invariants 3, 5): every instance holds an Arc to this module, so
        // none is left; the byte buffer is freed after this returns.
        unsafe { sys::wasm_runtime_unload(self.raw) };
    }
}

/// What an instance needs besides the module.
pub(super) struct InstanceConfig<'a> {
    pub max_memory_bytes: u64,
    /// argv[0] for WASI.
    pub program_name: &'a str,
    /// Raw fds WASI uses for the guest's stdin, stdout and stderr.
    pub stdin_fd: i64,
    pub stdout_fd: i64,
    pub stderr_fd: i64,
    /// WASI environ entries as (name, value); names hold no '=' or NUL.
    pub environment: &'a [(String, String)],
}

/// Everything a host function reaches through the exec env's user data.
pub(super) struct HostShared {
    /// The guest allocator (`proxy_on_memory_allocate` or `malloc`), called
    /// re-entrantly from host functions to hand data to the guest.
    allocate: sys::wasm_function_inst_t,
    /// Set when `memory.grow` failed during the current call.
    grow_failed: Cell<bool>,
    pub state: RefCell<HostState>,
}

/// A guest-callable export.
#[derive(Clone, Copy)]
pub(super) struct Func {
    raw: sys::wasm_function_inst_t,
    pub params: u32,
    pub results: u32,
}

// SAFETY (invariant 4): a Func is a handle into one instance and is used only
// with that instance, through `Instance::call(&mut self)`; it moves between
// threads together with the instance.
unsafe impl Send for Func {}

/// Identifies an instance to the watchdog.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct TerminateHandle(usize);

impl TerminateHandle {
    /// Makes the running call of this instance stop with "terminated by user".
    ///
    /// # Safety
    /// The instance must be alive and stay alive until this returns: it is
    /// registered with the watchdog for a call in progress, and unregistering
    /// waits for this call to return (invariant 8).
    pub(super) unsafe fn terminate(self) {
        // SAFETY: the caller guarantees the instance is alive; WAMR's terminate is
        // meant to be called from another thread (it takes the exception lock).
        unsafe { sys::wasm_runtime_terminate(self.0 as sys::wasm_module_inst_t) };
    }
}

/// A module instance with its exec env and host state.
pub(super) struct Instance {
    inst: sys::wasm_module_inst_t,
    exec_env: sys::wasm_exec_env_t,
    shared: Box<HostShared>,
    module: std::sync::Arc<PluginModule>,
}

// SAFETY (invariant 4): the raw pointers are used only through `&mut self`, one
// thread at a time; WAMR re-reads the calling thread's info on every call.
unsafe impl Send for Instance {}

impl Instance {
    pub(super) fn new(
        module: &std::sync::Arc<PluginModule>,
        config: &InstanceConfig<'_>,
        state: HostState,
    ) -> Result<Instance, String> {
        let pages = (config.max_memory_bytes / WASM_PAGE).clamp(1, 65536) as u32;
        let program = CString::new(config.program_name.replace('\0', "")).expect("NULs removed");
        let mut argv = [program.as_ptr() as *mut c_char];
        let environ: Vec<CString> = config
            .environment
            .iter()
            .filter_map(|(name, value)| CString::new(format!("{name}={value}")).ok())
            .collect();
        let mut envp: Vec<*const c_char> = environ.iter().map(|entry| entry.as_ptr()).collect();
        let mut err = [0 as c_char; ERROR_BUF];
        let inst = {
            let _serial = module.instantiate_lock.lock().unwrap_or_else(PoisonError::into_inner);
            let mut args: *mut sys::InstantiationArgs2 = std::ptr::null_mut();
            // SAFETY: creates a WAMR-owned argument object, destroyed below.
            if !unsafe { sys::wasm_runtime_instantiation_args_create(&mut args) } {
                return Err("WAMR could not allocate instantiation arguments".into());
            }
            // SAFETY: `args` is live until destroyed; `argv`, `program`, `envp` and
            // `environ` outlive the instantiate call (WAMR copies WASI arguments and
            // environment into the instance);
            // `module.raw` is loaded and instantiation is serialised by the lock.
            unsafe {
                sys::wasm_runtime_instantiation_args_set_default_stack_size(args, WASM_STACK_BYTES);
                sys::wasm_runtime_instantiation_args_set_host_managed_heap_size(args, 0);
                sys::wasm_runtime_instantiation_args_set_max_memory_pages(args, pages);
                sys::wasm_runtime_instantiation_args_set_wasi_arg(args, argv.as_mut_ptr(), 1);
                sys::wasm_runtime_instantiation_args_set_wasi_env(args, envp.as_mut_ptr(), envp.len() as u32);
                sys::wasm_runtime_instantiation_args_set_wasi_stdio(
                    args,
                    config.stdin_fd,
                    config.stdout_fd,
                    config.stderr_fd,
                );
                let inst = sys::wasm_runtime_instantiate_ex2(module.raw, args, err.as_mut_ptr(), ERROR_BUF as u32);
                sys::wasm_runtime_instantiation_args_destroy(args);
                inst
            }
        };
        if inst.is_null() {
            return Err(format!("instantiating the module failed: {}", c_text(&err)));
        }
        // WAMR silently keeps the module's initial size when the cap is below it.
        // SAFETY: `inst` is live and owned here; the queries only read it.
        let initial = unsafe {
            let memory = sys::wasm_runtime_get_default_memory(inst);
            if memory.is_null() {
                0
            } else {
                sys::wasm_memory_get_cur_page_count(memory)
            }
        };
        if initial > u64::from(pages) {
            // SAFETY: `inst` is live, owned here and has no exec env yet.
            unsafe { sys::wasm_runtime_deinstantiate(inst) };
            return Err(format!(
                "the module starts with {} bytes of linear memory, more than the plugin's memory limit of {} bytes",
                initial * WASM_PAGE,
                u64::from(pages) * WASM_PAGE
            ));
        }
        // SAFETY: `inst` is live; the exec env is destroyed before it (Drop / below).
        let exec_env = unsafe { sys::wasm_runtime_create_exec_env(inst, WASM_STACK_BYTES) };
        if exec_env.is_null() {
            // SAFETY: `inst` is live and owned here.
            unsafe { sys::wasm_runtime_deinstantiate(inst) };
            return Err("WAMR could not create an execution environment for the instance".into());
        }
        let mut instance = Instance {
            inst,
            exec_env,
            shared: Box::new(HostShared {
                allocate: std::ptr::null_mut(),
                grow_failed: Cell::new(false),
                state: RefCell::new(state),
            }),
            module: module.clone(),
        };
        let allocate = instance
            .lookup("proxy_on_memory_allocate")
            .or_else(|| instance.lookup("malloc"))
            .ok_or("module exports neither proxy_on_memory_allocate nor malloc")?;
        if allocate.params != 1 || allocate.results != 1 {
            return Err(
                "the module's proxy_on_memory_allocate/malloc does not take one size and return a pointer".into(),
            );
        }
        instance.shared.allocate = allocate.raw;
        let shared: *mut HostShared = &mut *instance.shared;
        // SAFETY (invariant 6): the box lives as long as the exec env (both dropped
        // together in Drop, exec env first) and is never moved out of its box.
        unsafe { sys::wasm_runtime_set_user_data(instance.exec_env, shared.cast::<c_void>()) };
        Ok(instance)
    }

    pub(super) fn module(&self) -> &std::sync::Arc<PluginModule> {
        &self.module
    }

    pub(super) fn lookup(&self, name: &str) -> Option<Func> {
        let sig = self.module.export(name)?;
        let cname = CString::new(name).ok()?;
        // SAFETY: `inst` is live; the name is NUL-terminated.
        let raw = unsafe { sys::wasm_runtime_lookup_function(self.inst, cname.as_ptr()) };
        (!raw.is_null()).then_some(Func {
            raw,
            params: sig.params,
            results: sig.results,
        })
    }

    pub(super) fn terminate_handle(&self) -> TerminateHandle {
        TerminateHandle(self.inst as usize)
    }

    pub(super) fn state(&self) -> RefMut<'_, HostState> {
        self.shared.state.borrow_mut()
    }

    /// True when `memory.grow` failed since the last [`Instance::call`] began.
    pub(super) fn memory_grow_failed(&self) -> bool {
        self.shared.grow_failed.get()
    }

    /// Calls `func` with `args` (i32 values); returns its i32 result (0 when it
    /// has none) or the instance's exception text.
    pub(super) fn call(&mut self, func: Func, args: &[u32]) -> Result<u32, String> {
        self.shared.grow_failed.set(false);
        let mut argv = [0u32; 8];
        let argc = args.len().min(func.params as usize).min(argv.len());
        argv[..argc].copy_from_slice(&args[..argc]);
        // SAFETY (invariant 4): `&mut self` gives this thread exclusive use of the
        // instance; `func` belongs to it; argv holds the arguments and room for one
        // i32 result. No RefCell borrow of the host state is held across the call.
        let ok = unsafe { sys::wasm_runtime_call_wasm(self.exec_env, func.raw, argc as u32, argv.as_mut_ptr()) };
        if ok {
            Ok(argv[0])
        } else {
            Err(self
                .take_exception()
                .unwrap_or_else(|| "the call failed without an exception".into()))
        }
    }

    /// Reads and clears the pending exception, if any.
    pub(super) fn take_exception(&mut self) -> Option<String> {
        // SAFETY: `inst` is live and used by this thread only; the string is owned by
        // the instance and copied before the exception is cleared.
        unsafe {
            let text = sys::wasm_runtime_get_exception(self.inst);
            if text.is_null() {
                return None;
            }
            let message = CStr::from_ptr(text).to_string_lossy().into_owned();
            sys::wasm_runtime_clear_exception(self.inst);
            Some(message)
        }
    }

    /// The WASI exit code after `_start` called `proc_exit`.
    pub(super) fn wasi_exit_code(&self) -> u32 {
        // SAFETY: `inst` is live.
        unsafe { sys::wasm_runtime_get_wasi_exit_code(self.inst) }
    }

    /// Current linear memory size in bytes and its cap in bytes.
    pub(super) fn memory(&self) -> (u64, u64) {
        // SAFETY: `inst` is live; the memory queries only read the instance.
        unsafe {
            let memory = sys::wasm_runtime_get_default_memory(self.inst);
            if memory.is_null() {
                return (0, 0);
            }
            let page = sys::wasm_memory_get_bytes_per_page(memory);
            (
                sys::wasm_memory_get_cur_page_count(memory) * page,
                sys::wasm_memory_get_max_page_count(memory) * page,
            )
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY (invariant 5): exec env before instance, each once; the watchdog
        // no longer references the instance (calls unregister before returning).
        unsafe {
            sys::wasm_runtime_destroy_exec_env(self.exec_env);
            sys::wasm_runtime_deinstantiate(self.inst);
        }
    }
}

/// A host function's view of the calling instance: its memory, its allocator
/// and its host state. Exists only for the duration of one host call.
pub(super) struct Caller<'a> {
    exec_env: sys::wasm_exec_env_t,
    inst: sys::wasm_module_inst_t,
    shared: &'a HostShared,
}

impl<'a> Caller<'a> {
    /// # Safety
    /// `exec_env` is the exec env WAMR passed to a native function that is
    /// running now, and it belongs to an [`Instance`] (its user data is that
    /// instance's `HostShared`). The `Caller` must not outlive the host call.
    pub(super) unsafe fn from_exec_env(exec_env: sys::wasm_exec_env_t) -> Option<Caller<'a>> {
        // SAFETY: per the contract, the exec env is live during the host call.
        let (inst, data) = unsafe {
            (
                sys::wasm_runtime_get_module_inst(exec_env),
                sys::wasm_runtime_get_user_data(exec_env),
            )
        };
        if inst.is_null() || data.is_null() {
            return None;
        }
        // SAFETY (invariant 6): the user data is the instance's boxed HostShared,
        // alive as long as the exec env, which outlives this host call.
        let shared = unsafe { &*data.cast::<HostShared>() };
        Some(Caller { exec_env, inst, shared })
    }

    /// The host state, or InternalFailure when it is already borrowed (a host
    /// function re-entered from the guest allocator).
    pub(super) fn state(&self) -> Result<RefMut<'a, HostState>, Status> {
        self.shared.state.try_borrow_mut().map_err(|_| Status::InternalFailure)
    }

    /// (base, size) of the default memory right now.
    fn memory(&self) -> Option<(*mut u8, u64)> {
        // SAFETY: the instance is live during the host call; these only read it.
        unsafe {
            let memory = sys::wasm_runtime_get_default_memory(self.inst);
            if memory.is_null() {
                return None;
            }
            let size = sys::wasm_memory_get_cur_page_count(memory) * sys::wasm_memory_get_bytes_per_page(memory);
            let base = sys::wasm_memory_get_base_address(memory).cast::<u8>();
            (!base.is_null()).then_some((base, size))
        }
    }

    fn checked(&self, ptr: u32, len: u64) -> Result<*mut u8, Status> {
        let (base, size) = self.memory().ok_or(Status::InvalidMemoryAccess)?;
        if u64::from(ptr) + len > size {
            return Err(Status::InvalidMemoryAccess);
        }
        // SAFETY: ptr + len is inside the memory, checked just above.
        Ok(unsafe { base.add(ptr as usize) })
    }

    /// Copies `len` bytes of guest memory at `ptr`.
    pub(super) fn read(&self, ptr: u32, len: u32) -> Result<Vec<u8>, Status> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let src = self.checked(ptr, u64::from(len))?;
        // SAFETY (invariant 7): the range is inside guest memory (checked) and the
        // guest is suspended in this host call, so nothing writes it concurrently.
        Ok(unsafe { std::slice::from_raw_parts(src, len as usize) }.to_vec())
    }

    pub(super) fn read_string(&self, ptr: u32, len: u32) -> Result<String, Status> {
        String::from_utf8(self.read(ptr, len)?).map_err(|_| Status::BadArgument)
    }

    pub(super) fn write(&self, ptr: u32, data: &[u8]) -> Result<(), Status> {
        if data.is_empty() {
            return Ok(());
        }
        let dst = self.checked(ptr, data.len() as u64)?;
        // SAFETY (invariant 7): the range is inside guest memory (checked); `data`
        // is host memory, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        Ok(())
    }

    pub(super) fn write_u32(&self, ptr: u32, value: u32) -> Result<(), Status> {
        self.write(ptr, &value.to_le_bytes())
    }

    pub(super) fn write_u64(&self, ptr: u32, value: u64) -> Result<(), Status> {
        self.write(ptr, &value.to_le_bytes())
    }

    /// Hands `data` to the guest: allocates with the guest allocator, copies,
    /// and stores the pointer at `ptr_ptr` and the length at `size_ptr`. Empty
    /// data stores a null pointer and 0 without allocating. Must not be called
    /// while the host state is borrowed (the guest may call back in).
    pub(super) fn return_bytes(&self, data: &[u8], ptr_ptr: u32, size_ptr: u32) -> Result<(), Status> {
        // Check the out-pointers before allocating, so a bad pointer leaks nothing.
        self.checked(ptr_ptr, 4)?;
        self.checked(size_ptr, 4)?;
        if data.is_empty() {
            self.write_u32(ptr_ptr, 0)?;
            return self.write_u32(size_ptr, 0);
        }
        let len = u32::try_from(data.len()).map_err(|_| Status::BadArgument)?;
        let mut argv = [len, 0];
        // SAFETY: re-entrant call into the guest on the exec env of the running
        // call (WAMR supports calls from native functions); `allocate` was looked
        // up in this instance and takes one i32 and returns one i32.
        let ok = unsafe { sys::wasm_runtime_call_wasm(self.exec_env, self.shared.allocate, 1, argv.as_mut_ptr()) };
        if !ok {
            // The exception stays set: the outer call fails with it.
            return Err(Status::InternalFailure);
        }
        let addr = argv[0];
        if addr == 0 {
            return Err(Status::InternalFailure);
        }
        // The allocator may have grown memory: `write` re-reads base and size.
        self.write(addr, data)?;
        self.write_u32(ptr_ptr, addr)?;
        self.write_u32(size_ptr, len)
    }
}

fn c_text(buf: &[c_char]) -> String {
    let bytes: Vec<u8> = buf.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
    String::from_utf8_lossy(&bytes).trim().to_string()
}
