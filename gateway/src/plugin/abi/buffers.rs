//! Buffer host functions: the current stream's request/response body, the
//! http_call and redis answers, and the VM/plugin configuration bytes.

use super::{buffer_type, HostResult, HostState, Status};
use crate::plugin::vm::Caller;

/// Bound on a body a plugin writes, so a looping plugin cannot grow host
/// memory without limit.
const MAX_BODY_BYTES: usize = 64 << 20;

/// A copy of `buffer[start..start + max]`; NotFound when the buffer does not
/// exist here.
fn slice_of(state: &mut HostState, kind: u32, start: usize, max: usize) -> Result<Vec<u8>, Status> {
    let take = |b: &[u8]| -> Result<Vec<u8>, Status> {
        if start > b.len() {
            return Err(Status::BadArgument);
        }
        let end = start.saturating_add(max).min(b.len());
        Ok(b[start..end].to_vec())
    };
    match kind {
        buffer_type::REQUEST_BODY => take(&state.stream_mut().ok_or(Status::NotFound)?.request_body),
        buffer_type::RESPONSE_BODY => take(&state.stream_mut().ok_or(Status::NotFound)?.response_body),
        buffer_type::HTTP_CALL_RESPONSE_BODY => take(&state.http_response.as_ref().ok_or(Status::NotFound)?.body),
        buffer_type::VM_CONFIGURATION => take(&state.vm_configuration),
        buffer_type::PLUGIN_CONFIGURATION => take(&state.plugin_configuration),
        buffer_type::REDIS_CALL_RESPONSE => take(state.redis_response.as_deref().ok_or(Status::NotFound)?),
        buffer_type::DOWNSTREAM_DATA
        | buffer_type::UPSTREAM_DATA
        | buffer_type::GRPC_RECEIVE
        | buffer_type::CALL_DATA => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn buffer_len(state: &mut HostState, kind: u32) -> Result<usize, Status> {
    slice_of(state, kind, 0, 0)?;
    Ok(match kind {
        buffer_type::REQUEST_BODY => state.stream_mut().map_or(0, |s| s.request_body.len()),
        buffer_type::RESPONSE_BODY => state.stream_mut().map_or(0, |s| s.response_body.len()),
        buffer_type::HTTP_CALL_RESPONSE_BODY => state.http_response.as_ref().map_or(0, |r| r.body.len()),
        buffer_type::VM_CONFIGURATION => state.vm_configuration.len(),
        buffer_type::PLUGIN_CONFIGURATION => state.plugin_configuration.len(),
        buffer_type::REDIS_CALL_RESPONSE => state.redis_response.as_ref().map_or(0, Vec::len),
        _ => 0,
    })
}

/// proxy_get_buffer_bytes(type, start, max_size): an empty result is Ok with a
/// null pointer (the SDKs read that as "no bytes").
pub(super) fn get_bytes(c: &Caller, kind: u32, start: u32, max: u32, rpp: u32, rsp: u32) -> HostResult {
    let bytes = slice_of(&mut *c.state()?, kind, start as usize, max as usize)?;
    c.return_bytes(&bytes, rpp, rsp)
}

/// proxy_set_buffer_bytes(type, start, size, data): replaces `size` bytes at
/// `start` with `data` (start 0, size 0 prepends; start at the end appends;
/// start 0 with size >= length replaces everything). Bodies only.
pub(super) fn set_bytes(c: &Caller, kind: u32, start: u32, size: u32, p: u32, l: u32) -> HostResult {
    let data = c.read(p, l)?;
    let mut state = c.state()?;
    let stream = state.stream_mut().ok_or(Status::NotFound)?;
    let body = match kind {
        buffer_type::REQUEST_BODY => &mut stream.request_body,
        buffer_type::RESPONSE_BODY => &mut stream.response_body,
        _ => return Err(Status::BadArgument),
    };
    let start = (start as usize).min(body.len());
    let end = start.saturating_add(size as usize).min(body.len());
    if body.len() - (end - start) + data.len() > MAX_BODY_BYTES {
        return Err(Status::BadArgument);
    }
    body.splice(start..end, data);
    Ok(())
}

/// ABI 0.1.0's proxy_get_buffer_status(type, length, flags).
pub(super) fn get_status(c: &Caller, kind: u32, lp: u32, fp: u32) -> HostResult {
    let len = buffer_len(&mut *c.state()?, kind)?;
    c.write_u32(lp, len as u32)?;
    c.write_u32(fp, 0)
}

/// ABI 0.1.0's proxy_get_configuration: the plugin configuration.
pub(super) fn get_configuration(c: &Caller, rpp: u32, rsp: u32) -> HostResult {
    let bytes = c.state()?.plugin_configuration.clone();
    c.return_bytes(&bytes, rpp, rsp)
}
