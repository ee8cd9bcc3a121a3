//! Host functions that steer the current HTTP stream: local responses,
//! resume (continue) and close. As in Envoy, these act on the stream of the
//! effective context and are a no-op returning Ok when there is none (a root
//! context); Tollgate has no TCP streams, so the downstream/upstream stream
//! types answer Unimplemented.

use super::{deserialize_map, unimplemented, HostResult, Status};
use crate::plugin::instance::{LocalResponse, StreamData};
use crate::plugin::vm::Caller;

const STREAM_REQUEST: u32 = 0;
const STREAM_RESPONSE: u32 = 1;
const STREAM_DOWNSTREAM: u32 = 2;
const STREAM_UPSTREAM: u32 = 3;

/// Runs `f` on the current stream, if there is one.
fn on_stream(c: &Caller, f: impl FnOnce(&mut StreamData)) -> HostResult {
    if let Some(stream) = c.state()?.stream_mut() {
        f(stream);
    }
    Ok(())
}

/// Checks a stream type: request/response are Tollgate's; the TCP ones are not.
fn http_stream(c: &Caller, kind: u32, name: &str) -> Result<u32, Status> {
    match kind {
        STREAM_REQUEST | STREAM_RESPONSE => Ok(kind),
        STREAM_DOWNSTREAM | STREAM_UPSTREAM => unimplemented(c, name, Status::Unimplemented).map(|_| kind),
        _ => Err(Status::BadArgument),
    }
}

/// proxy_send_local_response(status, details, body, headers, grpc_status):
/// recorded on the stream; the lead answers with it instead of the upstream.
/// Header names are lower-cased and whitespace in details becomes `_` (Envoy).
#[allow(clippy::too_many_arguments)]
pub(super) fn send_local_response(
    c: &Caller,
    status: u32,
    dp: u32,
    dl: u32,
    bp: u32,
    bl: u32,
    hp: u32,
    hl: u32,
    _grpc: u32,
) -> HostResult {
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (100..=999).contains(s))
        .ok_or(Status::BadArgument)?;
    let details: String = String::from_utf8_lossy(&c.read(dp, dl)?)
        .chars()
        .map(|ch| if ch.is_whitespace() { '_' } else { ch })
        .collect();
    let body = c.read(bp, bl)?;
    let mut headers = deserialize_map(&c.read(hp, hl)?).ok_or(Status::BadArgument)?;
    for (name, _) in &mut headers {
        name.make_ascii_lowercase();
    }
    on_stream(c, |stream| {
        stream.local_response = Some(LocalResponse {
            status,
            headers,
            body,
            details,
        })
    })
}

fn resume(c: &Caller, kind: u32) -> HostResult {
    on_stream(c, |stream| match kind {
        STREAM_REQUEST => stream.resume_request = true,
        _ => stream.resume_response = true,
    })
}

/// proxy_continue_stream(stream_type).
pub(super) fn continue_stream(c: &Caller, kind: u32) -> HostResult {
    let kind = http_stream(c, kind, "proxy_continue_stream for a TCP stream")?;
    resume(c, kind)
}

/// proxy_close_stream(stream_type): the lead drops the client connection.
pub(super) fn close_stream(c: &Caller, kind: u32) -> HostResult {
    http_stream(c, kind, "proxy_close_stream for a TCP stream")?;
    on_stream(c, |stream| stream.close = true)
}

/// ABI 0.2.0's proxy_continue_request.
pub(super) fn continue_request(c: &Caller) -> HostResult {
    resume(c, STREAM_REQUEST)
}

/// ABI 0.2.0's proxy_continue_response.
pub(super) fn continue_response(c: &Caller) -> HostResult {
    resume(c, STREAM_RESPONSE)
}

/// proxy_clear_route_cache: Tollgate routes before the plugin chain runs and
/// does not re-route; accepted so plugins that call it keep working.
pub(super) fn clear_route_cache(_c: &Caller) -> HostResult {
    Ok(())
}
