//! The Higress Redis host ABI, which the proxy-wasm SDK does not cover: the `proxy_redis_init` and
//! `proxy_redis_call` imports, the `proxy_on_redis_call_response` export, and the table that routes each answer back
//! to the stream that asked (the SDK dispatches its own exports and cannot see these calls).
//!
//! Signatures as Higress declares them (higress-group/proxy-wasm-go-sdk, proxywasm/internal/abi_hostcalls.go,
//! abi_callback_l7.go and abi_enums.go): every pointer/size pair is an i32 pair, statuses are proxy-wasm statuses,
//! and the reply is read with `proxy_get_buffer_bytes` from buffer type 9, valid only during the callback.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ptr::null_mut;

use proxy_wasm::hostcalls;

/// Higress's buffer type for a redis call's reply; proxy-wasm's own `BufferType` stops at 8.
const REDIS_CALL_RESPONSE: u32 = 9;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_redis_init(
        cluster_data: *const u8,
        cluster_size: usize,
        username_data: *const u8,
        username_size: usize,
        password_data: *const u8,
        password_size: usize,
        timeout_milliseconds: u32,
    ) -> u32;

    fn proxy_redis_call(
        cluster_data: *const u8,
        cluster_size: usize,
        query_data: *const u8,
        query_size: usize,
        return_token: *mut u32,
    ) -> u32;

    // The SDK imports this too, typed with its closed `BufferType` enum that cannot name buffer 9.
    #[link_name = "proxy_get_buffer_bytes"]
    fn get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
}

/// Registers the cluster (a Redis server the gateway knows by this name) with the host. Err is the host's status.
pub fn init(cluster: &str, username: &str, password: &str, timeout_ms: u32) -> Result<(), u32> {
    // SAFETY: every pointer/length pair describes a live borrowed slice; the host only reads them during the call.
    let status = unsafe {
        proxy_redis_init(
            cluster.as_ptr(),
            cluster.len(),
            username.as_ptr(),
            username.len(),
            password.as_ptr(),
            password.len(),
            timeout_ms,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(status)
    }
}

/// Sends a RESP-encoded query; the answer arrives later through `proxy_on_redis_call_response` with the returned
/// token. Err is the host's status.
pub fn call(cluster: &str, query: &[u8]) -> Result<u32, u32> {
    let mut token = 0;
    // SAFETY: the slices are live for the call and `token` is a valid place for the host to write a u32.
    let status = unsafe { proxy_redis_call(cluster.as_ptr(), cluster.len(), query.as_ptr(), query.len(), &mut token) };
    if status == 0 {
        Ok(token)
    } else {
        Err(status)
    }
}

/// What to do with a call's answer: the reply bytes, or why there are none. Runs with the asking stream as the
/// effective context, so it may resume the stream or answer it locally.
pub type Handler = Box<dyn FnOnce(Result<Vec<u8>, String>)>;

thread_local! {
    /// token → (HTTP context that made the call, its handler).
    static PENDING: RefCell<HashMap<u32, (u32, Handler)>> = RefCell::new(HashMap::new());
}

pub fn expect(token: u32, context_id: u32, handler: Handler) {
    PENDING.with(|pending| pending.borrow_mut().insert(token, (context_id, handler)));
}

/// Drops the handlers of a stream that is going away, so a late answer finds nothing to resume.
pub fn forget(context_id: u32) {
    PENDING.with(|pending| pending.borrow_mut().retain(|_, (owner, _)| *owner != context_id));
}

fn reply(size: usize) -> Result<Vec<u8>, String> {
    let mut data = null_mut();
    let mut len = 0;
    // SAFETY: both out-pointers are valid places for the host to write to.
    let status = unsafe { get_buffer_bytes(REDIS_CALL_RESPONSE, 0, size, &mut data, &mut len) };
    match status {
        0 if data.is_null() => Ok(Vec::new()),
        // SAFETY: the host allocated `len` bytes at `data` through the SDK's exported `proxy_on_memory_allocate`,
        // which hands out a boxed slice of exactly that length: ownership passes to us, as in the SDK's get_buffer.
        0 => Ok(unsafe { Vec::from_raw_parts(data, len, len) }),
        status => Err(format!("reading the redis reply failed with status {status}")),
    }
}

/// The host's callback for `proxy_redis_call`. The first argument is the plugin (root) context in Higress; the
/// token alone identifies the call, as in the SDK's own `proxy_on_http_call_response`.
#[no_mangle]
pub extern "C" fn proxy_on_redis_call_response(_root_context_id: u32, token: u32, status: u32, response_size: usize) {
    let Some((context_id, handler)) = PENDING.with(|pending| pending.borrow_mut().remove(&token)) else {
        return;
    };
    if hostcalls::set_effective_context(context_id).is_err() {
        return;
    }
    let result = match status {
        0 => reply(response_size),
        status => Err(format!("redis call failed with status {status}")),
    };
    handler(result);
}
