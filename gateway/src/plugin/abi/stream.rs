//! Host functions that steer the current HTTP stream: local responses,
//! resume (continue) and close.

use super::{deserialize_map, HostResult, Status};
use crate::plugin::instance::LocalResponse;
use crate::plugin::vm::Caller;

const STREAM_REQUEST: u32 = 0;
const STREAM_RESPONSE: u32 = 1;

/// proxy_send_local_response(status, details, body, headers, grpc_status):
/// recorded on the stream; the lead answers with it instead of the upstream.
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
    let details = String::from_utf8_lossy(&c.read(dp, dl)?).into_owned();
    let body = c.read(bp, bl)?;
    let mut headers = deserialize_map(&c.read(hp, hl)?).ok_or(Status::BadArgument)?;
    for (name, _) in &mut headers {
        name.make_ascii_lowercase();
    }
    let mut state = c.state()?;
    let stream = state.stream_mut().ok_or(Status::BadArgument)?;
    stream.local_response = Some(LocalResponse {
        status,
        headers,
        body,
        details,
    });
    Ok(())
}

fn resume(c: &Caller, kind: u32) -> HostResult {
    let mut state = c.state()?;
    let stream = state.stream_mut().ok_or(Status::BadArgument)?;
    match kind {
        STREAM_REQUEST => stream.resume_request = true,
        STREAM_RESPONSE => stream.resume_response = true,
        _ => return Err(Status::BadArgument),
    }
    Ok(())
}

/// proxy_continue_stream(stream_type): HTTP request or response only
/// (Tollgate has no TCP filters).
pub(super) fn continue_stream(c: &Caller, kind: u32) -> HostResult {
    resume(c, kind)
}

/// proxy_close_stream(stream_type): the lead drops the client connection.
pub(super) fn close_stream(c: &Caller, kind: u32) -> HostResult {
    if kind != STREAM_REQUEST && kind != STREAM_RESPONSE {
        return Err(Status::BadArgument);
    }
    let mut state = c.state()?;
    state.stream_mut().ok_or(Status::BadArgument)?.close = true;
    Ok(())
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
