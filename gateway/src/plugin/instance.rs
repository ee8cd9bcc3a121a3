//! One plugin instance: a WAMR instance of a plugin module plus its
//! proxy-wasm root context, and the typed lifecycle the pool and the chain
//! drive (start, stream callbacks, http/redis answers, ticks, queues). Also
//! the host-side stream view ([`StreamData`]) the host functions read and
//! write while a callback runs. Every call into wasm is watched by the
//! watchdog; a trap, a memory cap hit or an overrun turns into a [`Fault`] and
//! poisons the instance.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::abi::{self, HostState, RedisSettings};
use super::vm::{Func, Instance, InstanceConfig, PluginModule};
use super::watchdog;

pub use super::abi::set_known_clusters;

/// How one instance is started.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    pub plugin_name: String,
    /// proxy-wasm root_id; "" by default.
    pub root_id: String,
    /// Bytes for proxy_on_vm_start.
    pub vm_configuration: Vec<u8>,
    /// Bytes for proxy_on_configure (the plugin's JSON/YAML config).
    pub plugin_configuration: Vec<u8>,
    /// Linear memory cap, rounded down to 64 KiB pages (at least one page).
    pub max_memory_bytes: u64,
    /// Watchdog deadline per call into wasm.
    pub max_call_time: Duration,
    /// WASI environment variables (name, value).
    pub environment: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Continue,
    /// StopIteration / StopAllIterationAndBuffer / StopAllIterationAndWatermark.
    Pause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAction {
    Continue,
    /// StopIterationNoBuffer.
    Pause,
    /// StopIterationAndBuffer / StopIterationAndWatermark: keep accumulating.
    Buffer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Trap,
    Timeout,
    Memory,
}

/// A failed call into the plugin. After a fault the instance is poisoned:
/// every later call returns a fault too; drop it.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub message: String,
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            FaultKind::Trap => "trap",
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory limit",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

pub type HeaderMap = Vec<(Vec<u8>, Vec<u8>)>;

/// Host-side view of one HTTP stream. The lead fills it; the host functions
/// read and write it while a callback of its context runs.
#[derive(Default, Debug)]
pub struct StreamData {
    /// Lower-case names. Request maps carry Envoy's pseudo-headers first:
    /// `:method`, `:path` (with query), `:authority`, `:scheme`; the response
    /// map carries `:status`. Order preserved; duplicates allowed.
    pub request_headers: HeaderMap,
    /// What the current/last request body callback sees (get/set_buffer_bytes).
    pub request_body: Vec<u8>,
    pub request_trailers: HeaderMap,
    pub response_headers: HeaderMap,
    pub response_body: Vec<u8>,
    pub response_trailers: HeaderMap,
    pub properties: StreamProperties,
    /// Set by proxy_send_local_response.
    pub local_response: Option<LocalResponse>,
    /// proxy_continue_stream / proxy_continue_request / proxy_continue_response.
    pub resume_request: bool,
    pub resume_response: bool,
    /// proxy_close_stream: the lead drops the client connection.
    pub close: bool,
    /// http_call / redis_call issued by this stream's context.
    pub pending: Vec<PendingCall>,
}

#[derive(Clone, Debug)]
pub struct StreamProperties {
    pub request_id: String,
    /// "HTTP/1.1" by default.
    pub protocol: &'static str,
    pub scheme: &'static str,
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
    /// Shared with the route and cluster: no copy per stream.
    pub route_name: Arc<str>,
    pub cluster_name: Arc<str>,
    /// Virtual host name.
    pub host_name: Arc<str>,
    pub tls: Option<TlsInfo>,
    pub start_time: SystemTime,
}

impl Default for StreamProperties {
    fn default() -> Self {
        StreamProperties {
            request_id: String::new(),
            protocol: "HTTP/1.1",
            scheme: "http",
            source: None,
            destination: None,
            route_name: empty_name(),
            cluster_name: empty_name(),
            host_name: empty_name(),
            tls: None,
            start_time: SystemTime::UNIX_EPOCH,
        }
    }
}

/// An empty name without an allocation: a stream's data is moved out and
/// back for every callback, leaving a default in its place each time.
fn empty_name() -> Arc<str> {
    thread_local! {
        static EMPTY: Arc<str> = Arc::from("");
    }
    EMPTY.with(Arc::clone)
}

#[derive(Default, Clone, Debug)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub sni: String,
    pub peer_subject: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub details: String,
}

#[derive(Debug, Clone, Default)]
pub struct HttpCallResponse {
    /// With `:status`.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub trailers: HeaderMap,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingCall {
    Http {
        token: u32,
        context_id: u32,
        cluster: String,
        /// With `:method`, `:path`, `:authority`.
        headers: HeaderMap,
        body: Vec<u8>,
        trailers: HeaderMap,
        timeout: Duration,
    },
    /// Higress `proxy_redis_call`: `query` is the RESP-encoded command the
    /// plugin built. Credentials: [`PluginInstance::redis_settings`].
    Redis {
        token: u32,
        context_id: u32,
        cluster: String,
        query: Vec<u8>,
        timeout: Duration,
    },
}

#[derive(Debug, Clone)]
pub enum RedisFailure {
    Timeout,
    Network(String),
}

/// Status passed to `proxy_on_redis_call_response`: 0 is success (Higress);
/// the failure numbers are Tollgate's (plugins test for non-zero).
const REDIS_STATUS_OK: u32 = 0;
const REDIS_STATUS_NETWORK: u32 = 1;
const REDIS_STATUS_TIMEOUT: u32 = 2;

/// proxy_get_status during the answer to a failed http_call (Envoy's
/// `WasmResult::BrokenConnection`).
const BROKEN_CONNECTION: u32 = 11;

/// Indexes into `abi::CALLBACKS` (same order).
mod cb {
    pub const CONTEXT_CREATE: usize = 0;
    pub const VM_START: usize = 1;
    pub const CONFIGURE: usize = 2;
    pub const TICK: usize = 3;
    pub const QUEUE_READY: usize = 4;
    pub const REQUEST_HEADERS: usize = 5;
    pub const REQUEST_BODY: usize = 6;
    pub const REQUEST_TRAILERS: usize = 7;
    pub const RESPONSE_HEADERS: usize = 8;
    pub const RESPONSE_BODY: usize = 9;
    pub const RESPONSE_TRAILERS: usize = 10;
    pub const DONE: usize = 11;
    pub const LOG: usize = 12;
    pub const DELETE: usize = 13;
    pub const HTTP_CALL_RESPONSE: usize = 14;
    pub const REDIS_CALL_RESPONSE: usize = 15;
}

/// Watchdog limit for the calls of [`PluginInstance::start`], when the
/// plugin's own limit is lower.
const STARTUP_CALL_TIME: Duration = Duration::from_secs(1);

static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

/// A started plugin instance. `Send`, not `Sync`: the pool wraps it in a lock.
pub struct PluginInstance {
    vm: Instance,
    /// Time inside wasm not yet reported by `take_busy_time`.
    busy: Duration,
    callbacks: Vec<Option<Func>>,
    plugin_name: String,
    max_call_time: Duration,
    id: u64,
    root_context: u32,
    next_context: u32,
    /// Set by the first fault; every later call fails with it.
    poisoned: Option<Fault>,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("plugin", &self.plugin_name)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl PluginInstance {
    /// Instantiates, runs `_initialize` (or `_start`), creates the root
    /// context and runs `proxy_on_vm_start` and `proxy_on_configure`.
    pub fn start(module: &Arc<PluginModule>, settings: &InstanceSettings) -> Result<PluginInstance, String> {
        let id = NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed);
        let output = abi::wasi::output_fd(&settings.plugin_name)?;
        let mut state = HostState::new(
            settings.plugin_name.clone(),
            settings.root_id.clone(),
            settings.vm_configuration.clone(),
            settings.plugin_configuration.clone(),
        );
        state.instance_id = id;
        state.abi = module.abi_version();
        let config = InstanceConfig {
            max_memory_bytes: settings.max_memory_bytes,
            program_name: &settings.plugin_name,
            stdin_fd: abi::wasi::stdin_fd()?,
            stdout_fd: output,
            stderr_fd: output,
            environment: &settings.environment,
        };
        let vm = Instance::new(module, &config, state)?;
        let callbacks = abi::CALLBACKS.iter().map(|c| vm.lookup(c.name)).collect();
        let mut instance = PluginInstance {
            vm,
            busy: Duration::ZERO,
            callbacks,
            plugin_name: settings.plugin_name.clone(),
            // Start-up (module init, parsing the configuration) runs off the
            // request path and may be slower than a stream callback.
            max_call_time: settings.max_call_time.max(STARTUP_CALL_TIME),
            id,
            root_context: 1,
            next_context: 2,
            poisoned: None,
        };
        let fail = |stage: &str, fault: Fault| format!("{stage} failed: {fault}");
        instance.initialize().map_err(|f| fail("module initialisation", f))?;
        let root = instance.root_context;
        instance
            .invoke(cb::CONTEXT_CREATE, &[root, 0])
            .map_err(|f| fail("creating the root context", f))?;
        let vm_len = settings.vm_configuration.len() as u32;
        if instance
            .invoke(cb::VM_START, &[root, vm_len])
            .map_err(|f| fail("proxy_on_vm_start", f))?
            == Some(0)
        {
            return Err("plugin rejected its VM configuration (proxy_on_vm_start returned false)".into());
        }
        let len = settings.plugin_configuration.len() as u32;
        if instance
            .invoke(cb::CONFIGURE, &[root, len])
            .map_err(|f| fail("proxy_on_configure", f))?
            == Some(0)
        {
            return Err("plugin rejected its configuration".into());
        }
        instance.max_call_time = settings.max_call_time;
        Ok(instance)
    }

    /// WASI reactors export `_initialize`; commands (TinyGo) export `_start`,
    /// which may end with `proc_exit(0)`.
    fn initialize(&mut self) -> Result<(), Fault> {
        if let Some(init) = self.vm.lookup("_initialize") {
            return self.call(init, &[]).map(|_| ());
        }
        let Some(start) = self.vm.lookup("_start") else {
            return Ok(());
        };
        match self.call(start, &[]) {
            Ok(_) => Ok(()),
            Err(fault) if fault.message.contains("wasi proc exit") => match self.vm.wasi_exit_code() {
                0 => {
                    self.poisoned = None;
                    Ok(())
                }
                code => Err(Fault {
                    kind: FaultKind::Trap,
                    message: format!("_start exited with code {code}"),
                }),
            },
            Err(fault) => Err(fault),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn plugin_name(&self) -> &str {
        &self.plugin_name
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_some()
    }

    /// Current linear memory size in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.vm.memory().0
    }

    pub fn is_aot(&self) -> bool {
        self.vm.module().is_aot()
    }

    /// The period the plugin asked for with proxy_set_tick_period_milliseconds.
    pub fn tick_period(&self) -> Option<Duration> {
        self.vm.state().tick_period
    }

    /// Credentials and timeout the plugin gave proxy_redis_init for `cluster`.
    pub fn redis_settings(&self, cluster: &str) -> Option<RedisSettings> {
        self.vm.state().redis.get(cluster).cloned()
    }

    /// Calls made by the root context (on_configure, on_tick, root http
    /// answers) that the pool performs.
    pub fn take_root_pending(&mut self) -> Vec<PendingCall> {
        std::mem::take(&mut self.vm.state().root_pending)
    }

    /// A new stream context: `proxy_on_context_create(id, root)`.
    pub fn create_stream(&mut self) -> Result<u32, Fault> {
        let ctx = {
            let state = self.vm.state();
            let mut ctx = self.next_context;
            while ctx == 0 || ctx == self.root_context || state.live_contexts.contains(&ctx) {
                ctx = ctx.wrapping_add(1);
            }
            ctx
        };
        self.next_context = ctx.wrapping_add(1);
        self.invoke(cb::CONTEXT_CREATE, &[ctx, self.root_context])?;
        self.vm.state().live_contexts.insert(ctx);
        Ok(ctx)
    }

    pub fn on_request_headers(&mut self, ctx: u32, s: &mut StreamData, end_of_stream: bool) -> Result<Action, Fault> {
        let args = [ctx, s.request_headers.len() as u32, end_of_stream as u32];
        self.with_stream(ctx, s, |this| this.invoke(cb::REQUEST_HEADERS, &args))
            .map(headers_action)
    }

    pub fn on_request_body(&mut self, ctx: u32, s: &mut StreamData, end_of_stream: bool) -> Result<BodyAction, Fault> {
        let args = [ctx, s.request_body.len() as u32, end_of_stream as u32];
        self.with_stream(ctx, s, |this| this.invoke(cb::REQUEST_BODY, &args))
            .map(body_action)
    }

    pub fn on_request_trailers(&mut self, ctx: u32, s: &mut StreamData) -> Result<Action, Fault> {
        let args = [ctx, s.request_trailers.len() as u32];
        self.with_stream(ctx, s, |this| this.invoke(cb::REQUEST_TRAILERS, &args))
            .map(headers_action)
    }

    pub fn on_response_headers(&mut self, ctx: u32, s: &mut StreamData, end_of_stream: bool) -> Result<Action, Fault> {
        let args = [ctx, s.response_headers.len() as u32, end_of_stream as u32];
        self.with_stream(ctx, s, |this| this.invoke(cb::RESPONSE_HEADERS, &args))
            .map(headers_action)
    }

    pub fn on_response_body(&mut self, ctx: u32, s: &mut StreamData, end_of_stream: bool) -> Result<BodyAction, Fault> {
        let args = [ctx, s.response_body.len() as u32, end_of_stream as u32];
        self.with_stream(ctx, s, |this| this.invoke(cb::RESPONSE_BODY, &args))
            .map(body_action)
    }

    pub fn on_response_trailers(&mut self, ctx: u32, s: &mut StreamData) -> Result<Action, Fault> {
        let args = [ctx, s.response_trailers.len() as u32];
        self.with_stream(ctx, s, |this| this.invoke(cb::RESPONSE_TRAILERS, &args))
            .map(headers_action)
    }

    /// proxy_on_done, proxy_on_log, proxy_on_delete (Envoy's order). The
    /// context is gone afterwards even when a call faults.
    /// Ends the root context when the plugin version is retired (removed or
    /// replaced, and its last stream done): `proxy_on_done`, then
    /// `proxy_on_delete`, as Envoy does when it tears a VM down.
    pub fn shutdown(&mut self) -> Result<(), Fault> {
        if self.is_poisoned() {
            return Ok(());
        }
        let root = self.root_context;
        self.invoke(cb::DONE, &[root])?;
        self.invoke(cb::DELETE, &[root]).map(|_| ())
    }

    /// Time spent inside wasm since the last call of this method, for the
    /// plugin's metrics (read from the watchdog's clock, no clock read of its own).
    pub fn take_busy_time(&mut self) -> Duration {
        std::mem::take(&mut self.busy)
    }

    pub fn finish_stream(&mut self, ctx: u32, s: &mut StreamData) -> Result<(), Fault> {
        let result = self.with_stream(ctx, s, |this| {
            this.invoke(cb::DONE, &[ctx])?;
            this.invoke(cb::LOG, &[ctx])?;
            this.invoke(cb::DELETE, &[ctx])
        });
        let mut state = self.vm.state();
        state.live_contexts.remove(&ctx);
        state.properties.remove(&ctx);
        result.map(|_| ())
    }

    /// Delivers an http_call answer (None: failed or timed out) to the context
    /// that made the call; `s` is that stream's data, None for the root.
    pub fn on_http_call_response(
        &mut self,
        ctx: u32,
        token: u32,
        s: Option<&mut StreamData>,
        response: Option<HttpCallResponse>,
    ) -> Result<(), Fault> {
        // The callouts belong to the root context (proxy-wasm-cpp-host issues
        // http_call on `root_context()`): its id goes to the guest, whose SDK
        // (C++, Go) finds the waiting stream by token. The stream's data is
        // installed all the same, so the answer can act on it.
        let root = self.root_context;
        let args = match &response {
            Some(r) => [
                root,
                token,
                r.headers.len() as u32,
                r.body.len() as u32,
                r.trailers.len() as u32,
            ],
            None => [root, token, 0, 0, 0],
        };
        {
            let mut state = self.vm.state();
            state.call_status = response.is_none().then(|| (BROKEN_CONNECTION, b"reset".to_vec()));
            state.http_response = response;
        }
        self.with_optional_stream(ctx, s, |this| this.invoke(cb::HTTP_CALL_RESPONSE, &args))
    }

    /// Delivers a redis answer to `proxy_on_redis_call_response(ctx, token,
    /// status, size)`; the reply is buffer type 9 during the call.
    pub fn on_redis_call_response(
        &mut self,
        ctx: u32,
        token: u32,
        s: Option<&mut StreamData>,
        response: Result<Vec<u8>, RedisFailure>,
    ) -> Result<(), Fault> {
        let (status, reply) = match response {
            Ok(reply) => (REDIS_STATUS_OK, reply),
            Err(RedisFailure::Network(_)) => (REDIS_STATUS_NETWORK, Vec::new()),
            Err(RedisFailure::Timeout) => (REDIS_STATUS_TIMEOUT, Vec::new()),
        };
        // Higress delivers Redis answers to the plugin (root) context too.
        let args = [self.root_context, token, status, reply.len() as u32];
        self.vm.state().redis_response = Some(reply);
        self.with_optional_stream(ctx, s, |this| this.invoke(cb::REDIS_CALL_RESPONSE, &args))
    }

    pub fn on_tick(&mut self) -> Result<(), Fault> {
        self.invoke(cb::TICK, &[self.root_context]).map(|_| ())
    }

    pub fn on_queue_ready(&mut self, queue_id: u32) -> Result<(), Fault> {
        self.invoke(cb::QUEUE_READY, &[self.root_context, queue_id]).map(|_| ())
    }

    fn with_optional_stream(
        &mut self,
        ctx: u32,
        s: Option<&mut StreamData>,
        f: impl FnOnce(&mut Self) -> Result<Option<u32>, Fault>,
    ) -> Result<(), Fault> {
        let result = match s {
            Some(s) => self.with_stream(ctx, s, f),
            None => {
                self.vm.state().effective_context = ctx;
                let result = f(self);
                self.vm.state().effective_context = self.root_context;
                result
            }
        };
        let mut state = self.vm.state();
        state.http_response = None;
        state.redis_response = None;
        state.call_status = None;
        result.map(|_| ())
    }

    /// Runs `f` with the stream's data moved into the host state (so host
    /// functions reach it through the exec env) and moves it back afterwards,
    /// whatever `f` returned.
    fn with_stream<T>(
        &mut self,
        ctx: u32,
        s: &mut StreamData,
        f: impl FnOnce(&mut Self) -> Result<T, Fault>,
    ) -> Result<T, Fault> {
        {
            let mut state = self.vm.state();
            state.stream = Some(std::mem::take(s));
            state.stream_context = ctx;
            state.effective_context = ctx;
        }
        let result = f(self);
        let mut state = self.vm.state();
        *s = state.stream.take().unwrap_or_default();
        state.stream_context = 0;
        state.effective_context = self.root_context;
        result
    }

    /// Calls callback `which` if the module exports it: Ok(None) when it does
    /// not, Ok(Some(result)) otherwise (0 for callbacks without a result).
    fn invoke(&mut self, which: usize, args: &[u32]) -> Result<Option<u32>, Fault> {
        match self.callbacks[which] {
            Some(func) => self.call(func, args).map(Some),
            None => Ok(None),
        }
    }

    /// One watched call into wasm.
    fn call(&mut self, func: Func, args: &[u32]) -> Result<u32, Fault> {
        if let Some(fault) = &self.poisoned {
            return Err(Fault {
                kind: fault.kind,
                message: format!("instance was poisoned by an earlier fault ({fault})"),
            });
        }
        let guard = watchdog::register(self.vm.terminate_handle(), self.max_call_time);
        let result = self.vm.call(func, args);
        let (overran, elapsed) = guard.finish();
        self.busy += elapsed;
        let fault = match result {
            Ok(value) if !overran => return Ok(value),
            _ if overran => Fault {
                kind: FaultKind::Timeout,
                message: format!(
                    "call exceeded its {} ms limit and was terminated",
                    self.max_call_time.as_millis()
                ),
            },
            Ok(_) => unreachable!("handled above"),
            Err(message) => self.classify(message),
        };
        // A terminate that raced the call's own return leaves an exception behind.
        self.vm.take_exception();
        self.poisoned = Some(fault.clone());
        Err(fault)
    }

    /// Trap or memory exhaustion: WAMR's "allocate memory failed", or an
    /// `unreachable` trap (the guest allocator's abort) after `memory.grow`
    /// failed in the same call.
    fn classify(&self, message: String) -> Fault {
        let message = message
            .strip_prefix("Exception: ")
            .map(str::to_string)
            .unwrap_or(message);
        let (size, cap) = self.vm.memory();
        let memory = message.contains("allocate memory failed")
            || (self.vm.memory_grow_failed() && message.contains("unreachable"));
        Fault {
            kind: if memory { FaultKind::Memory } else { FaultKind::Trap },
            message: if memory {
                format!("{message} (linear memory {size} of {cap} bytes)")
            } else {
                message
            },
        }
    }
}

fn headers_action(result: Option<u32>) -> Action {
    // Envoy FilterHeadersStatus: 0 Continue, 1 StopIteration, 2
    // ContinueAndDontEndStream, 3 StopAllIterationAndBuffer, 4 ...AndWatermark.
    match result {
        None | Some(0) | Some(2) => Action::Continue,
        Some(_) => Action::Pause,
    }
}

fn body_action(result: Option<u32>) -> BodyAction {
    // Envoy FilterDataStatus: 0 Continue, 1 StopIterationAndBuffer, 2
    // StopIterationAndWatermark, 3 StopIterationNoBuffer.
    match result {
        None | Some(0) => BodyAction::Continue,
        Some(1) | Some(2) => BodyAction::Buffer,
        Some(_) => BodyAction::Pause,
    }
}
