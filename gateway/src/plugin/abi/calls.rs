//! Outbound calls a plugin asks for: proxy_http_call (and ABI 0.1.0's
//! proxy_dispatch_http_call), and Higress's proxy_redis_init /
//! proxy_redis_call. The host function only validates and queues a
//! [`PendingCall`] with a fresh token; the lead performs it and delivers the
//! answer through `PluginInstance::on_http_call_response` /
//! `on_redis_call_response`.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use super::{deserialize_map, HostResult, RedisSettings, Status};
use crate::plugin::instance::PendingCall;
use crate::plugin::vm::Caller;

/// What an http_call timeout of 0 ("none" in Envoy) becomes: Tollgate
/// bounds every call.
const NO_TIMEOUT: Duration = Duration::from_secs(60);

fn known() -> &'static RwLock<Arc<HashSet<String>>> {
    static KNOWN: OnceLock<RwLock<Arc<HashSet<String>>>> = OnceLock::new();
    KNOWN.get_or_init(Default::default)
}

/// Which clusters exist: http_call and redis_init fail with BadArgument for
/// others. The lead sets it per config snapshot.
pub fn set_known_clusters(names: Arc<HashSet<String>>) {
    *known().write().unwrap_or_else(std::sync::PoisonError::into_inner) = names;
}

fn is_known(cluster: &str) -> bool {
    known()
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .contains(cluster)
}

/// proxy_http_call(cluster, headers, body, trailers, timeout_ms) → token.
/// Envoy's rules: the cluster must exist, the headers carry :method, :path
/// and :authority, and the timeout is not negative, else BadArgument; a
/// timeout of 0 means none (here: [`NO_TIMEOUT`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn http_call(
    c: &Caller,
    up: u32,
    ul: u32,
    hp: u32,
    hl: u32,
    bp: u32,
    bl: u32,
    tp: u32,
    tl: u32,
    timeout: u32,
    tok: u32,
) -> HostResult {
    let cluster = c.read_string(up, ul)?;
    let mut headers = deserialize_map(&c.read(hp, hl)?).ok_or(Status::BadArgument)?;
    let body = c.read(bp, bl)?;
    let trailers = deserialize_map(&c.read(tp, tl)?).ok_or(Status::BadArgument)?;
    for (k, _) in &mut headers {
        k.make_ascii_lowercase();
    }
    // Envoy: a negative (as i32) timeout is BadArgument, 0 means none.
    if timeout > i32::MAX as u32 {
        return Err(Status::BadArgument);
    }
    let timeout = if timeout == 0 {
        NO_TIMEOUT
    } else {
        Duration::from_millis(u64::from(timeout))
    };
    if !is_known(&cluster) {
        return Err(Status::BadArgument);
    }
    for required in [&b":method"[..], b":path", b":authority"] {
        if !headers.iter().any(|(k, v)| k == required && !v.is_empty()) {
            return Err(Status::BadArgument);
        }
    }
    let token = {
        let mut state = c.state()?;
        let token = state.token();
        let context_id = state.effective_context;
        state.queue(PendingCall::Http {
            token,
            context_id,
            cluster,
            headers,
            body,
            trailers,
            timeout,
        })?;
        token
    };
    c.write_u32(tok, token)
}

/// Higress proxy_redis_init(cluster, username, password, timeout_ms): the
/// cluster must be known; the settings are kept per instance.
#[allow(clippy::too_many_arguments)]
pub(super) fn redis_init(c: &Caller, cp: u32, cl: u32, up: u32, ul: u32, pp: u32, pl: u32, timeout: u32) -> HostResult {
    let cluster = c.read_string(cp, cl)?;
    let username = c.read_string(up, ul)?;
    let password = c.read_string(pp, pl)?;
    // Higress accepts "cluster?option=value" (connection-pool options); the
    // options do not apply to Tollgate's client.
    let cluster = cluster.split('?').next().unwrap_or_default().to_string();
    if !is_known(&cluster) {
        return Err(Status::BadArgument);
    }
    let settings = RedisSettings {
        username,
        password,
        timeout: Duration::from_millis(u64::from(timeout.max(1))),
    };
    c.state()?.redis.insert(cluster, settings);
    Ok(())
}

/// Higress proxy_redis_call(cluster, query) → token; the cluster must have
/// been initialised with proxy_redis_init.
pub(super) fn redis_call(c: &Caller, cp: u32, cl: u32, qp: u32, ql: u32, tok: u32) -> HostResult {
    let cluster = c.read_string(cp, cl)?;
    let cluster = cluster.split('?').next().unwrap_or_default().to_string();
    let query = c.read(qp, ql)?;
    if query.is_empty() {
        return Err(Status::BadArgument);
    }
    let token = {
        let mut state = c.state()?;
        let timeout = state.redis.get(&cluster).ok_or(Status::BadArgument)?.timeout;
        let token = state.token();
        let context_id = state.effective_context;
        state.queue(PendingCall::Redis {
            token,
            context_id,
            cluster,
            query,
            timeout,
        })?;
        token
    };
    c.write_u32(tok, token)
}
