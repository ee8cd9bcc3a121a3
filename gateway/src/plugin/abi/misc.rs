//! Host functions for logging, time, ticks, the effective context, and the
//! calls Tollgate answers with an error status: foreign functions, gRPC and
//! Higress's upstream-host extensions.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::level_filters::LevelFilter;

use super::{unimplemented, HostResult, Status};
use crate::plugin::vm::Caller;

/// proxy_log(level, message): into the gateway's log at the matching level.
pub(super) fn log(c: &Caller, level: u32, ptr: u32, len: u32) -> HostResult {
    let message = c.read(ptr, len)?;
    let message = String::from_utf8_lossy(&message);
    let state = c.state()?;
    let plugin = state.plugin_name.as_str();
    match level {
        0 => tracing::trace!(target: "plugin", plugin, "{message}"),
        1 => tracing::debug!(target: "plugin", plugin, "{message}"),
        2 => tracing::info!(target: "plugin", plugin, "{message}"),
        3 => tracing::warn!(target: "plugin", plugin, "{message}"),
        4 | 5 => tracing::error!(target: "plugin", plugin, "{message}"),
        _ => return Err(Status::BadArgument),
    }
    Ok(())
}

/// proxy_get_log_level: the most verbose level the gateway's log keeps.
pub(super) fn get_log_level(c: &Caller, ret: u32) -> HostResult {
    let level = match LevelFilter::current() {
        LevelFilter::TRACE => 0,
        LevelFilter::DEBUG => 1,
        LevelFilter::INFO => 2,
        LevelFilter::WARN => 3,
        LevelFilter::ERROR => 4,
        _ => 5,
    };
    c.write_u32(ret, level)
}

pub(super) fn current_time(c: &Caller, ret: u32) -> HostResult {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    c.write_u64(ret, nanos)
}

/// proxy_set_tick_period_milliseconds: 0 stops ticks.
pub(super) fn set_tick_period(c: &Caller, ms: u32) -> HostResult {
    c.state()?.tick_period = (ms > 0).then(|| Duration::from_millis(u64::from(ms)));
    Ok(())
}

/// proxy_set_effective_context: the root, the stream whose callback runs,
/// or another live stream (whose data is not at hand: stream calls then
/// find no stream).
pub(super) fn set_effective_context(c: &Caller, ctx: u32) -> HostResult {
    let mut state = c.state()?;
    if ctx == state.root_context || ctx == state.stream_context || state.live_contexts.contains(&ctx) {
        state.effective_context = ctx;
        Ok(())
    } else {
        Err(Status::BadArgument)
    }
}

/// proxy_done: Tollgate never defers a context's deletion, so there is
/// nothing to finish.
pub(super) fn done(_c: &Caller) -> HostResult {
    Ok(())
}

pub(super) fn call_foreign_function(
    c: &Caller,
    np: u32,
    nl: u32,
    _ap: u32,
    _al: u32,
    _rpp: u32,
    _rsp: u32,
) -> HostResult {
    // The name is read only to validate the pointer; it stays out of the
    // log-once key so a plugin cannot grow that set without bound.
    c.read(np, nl)?;
    unimplemented(c, "proxy_call_foreign_function", Status::NotFound)
}

/// proxy_get_status: during the answer to a failed http_call, Envoy's
/// BrokenConnection (11) and "reset"; otherwise 0 and no message.
pub(super) fn get_status(c: &Caller, code: u32, mpp: u32, msp: u32) -> HostResult {
    let (status, message) = c.state()?.call_status.clone().unwrap_or_default();
    c.write_u32(code, status)?;
    c.return_bytes(&message, mpp, msp)
}

// gRPC: the SDKs accept InternalFailure from grpc_call/grpc_stream and
// NotFound from send/cancel/close (Rust SDK 0.2.5 panics on Unimplemented).
#[allow(clippy::too_many_arguments)]
pub(super) fn grpc_call(
    c: &Caller,
    _a: u32,
    _b: u32,
    _c2: u32,
    _d: u32,
    _e: u32,
    _f: u32,
    _g: u32,
    _h: u32,
    _i: u32,
    _j: u32,
    _t: u32,
    _tok: u32,
) -> HostResult {
    unimplemented(c, "proxy_grpc_call", Status::InternalFailure)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn grpc_stream(
    c: &Caller,
    _a: u32,
    _b: u32,
    _c2: u32,
    _d: u32,
    _e: u32,
    _f: u32,
    _g: u32,
    _h: u32,
    _tok: u32,
) -> HostResult {
    unimplemented(c, "proxy_grpc_stream", Status::InternalFailure)
}

pub(super) fn grpc_send(c: &Caller, _tok: u32, _p: u32, _l: u32, _end: u32) -> HostResult {
    unimplemented(c, "proxy_grpc_send", Status::NotFound)
}

pub(super) fn grpc_token(c: &Caller, _tok: u32) -> HostResult {
    unimplemented(c, "proxy_grpc_cancel/proxy_grpc_close", Status::NotFound)
}

// Higress extensions the Higress Go SDK imports.
pub(super) fn inject_encoded_data(c: &Caller, _p: u32, _l: u32, _end: u32) -> HostResult {
    unimplemented(c, "proxy_inject_encoded_data_to_filter_chain", Status::Unimplemented)
}

pub(super) fn get_upstream_hosts(c: &Caller, _rpp: u32, _rsp: u32) -> HostResult {
    unimplemented(c, "proxy_get_upstream_hosts", Status::Unimplemented)
}

pub(super) fn set_upstream_override_host(c: &Caller, _p: u32, _l: u32) -> HostResult {
    unimplemented(c, "proxy_set_upstream_override_host", Status::Unimplemented)
}
