//! Header-map host functions over the current stream's request/response
//! headers and trailers, and the http_call answer's headers and trailers.
//! Keys are matched case-insensitively and stored lower-case (Envoy's
//! LowerCaseString); a lookup returns the first value, as Envoy does.

use super::{deserialize_map, map_type, serialize_map, HostResult, HostState, Status};
use crate::plugin::instance::HeaderMap;
use crate::plugin::vm::AbiVersion;
use crate::plugin::vm::Caller;

/// Runs `f` on map `map` for reading; Ok(None) when it does not exist here.
fn read_map<T>(state: &mut HostState, map: u32, f: impl FnOnce(&HeaderMap) -> T) -> Result<Option<T>, Status> {
    Ok(match map {
        map_type::HTTP_CALL_RESPONSE_HEADERS => state.http_response.as_ref().map(|r| f(&r.headers)),
        map_type::HTTP_CALL_RESPONSE_TRAILERS => state.http_response.as_ref().map(|r| f(&r.trailers)),
        map_type::GRPC_INITIAL_METADATA | map_type::GRPC_TRAILING_METADATA => None,
        _ => match with_stream_map(state, map, |m| f(m)) {
            Ok(value) => Some(value),
            Err(Status::NotFound) => None,
            Err(status) => return Err(status),
        },
    })
}

/// Runs `f` on a stream map; BadArgument for an unknown map type, NotFound
/// when no stream is current.
fn with_stream_map<T>(state: &mut HostState, map: u32, f: impl FnOnce(&mut HeaderMap) -> T) -> Result<T, Status> {
    let stream = state.stream_mut().ok_or(Status::NotFound)?;
    let map = match map {
        map_type::REQUEST_HEADERS => &mut stream.request_headers,
        map_type::REQUEST_TRAILERS => &mut stream.request_trailers,
        map_type::RESPONSE_HEADERS => &mut stream.response_headers,
        map_type::RESPONSE_TRAILERS => &mut stream.response_trailers,
        _ => return Err(Status::BadArgument),
    };
    Ok(f(map))
}

/// A writable stream map; other maps (http call answer, gRPC) are read-only.
/// A write that may add `adds` bytes to a map already near [`MAX_MAP_BYTES`]
/// is refused, so a looping plugin cannot grow host memory without limit.
fn write_map(c: &Caller, map: u32, adds: usize, f: impl FnOnce(&mut HeaderMap)) -> HostResult {
    let mut state = c.state()?;
    with_stream_map(&mut state, map, |m| {
        if adds > 0 && map_bytes(m) + adds > MAX_MAP_BYTES {
            return Err(Status::BadArgument);
        }
        f(m);
        Ok(())
    })
    .map_err(|_| Status::BadArgument)?
}

/// Bound on one header map a plugin edits, counting 32 bytes per entry on
/// top of names and values.
const MAX_MAP_BYTES: usize = 1 << 20;

fn entry_bytes(key: &[u8], value: &[u8]) -> usize {
    key.len() + value.len() + 32
}

fn map_bytes(map: &HeaderMap) -> usize {
    map.iter().map(|(k, v)| entry_bytes(k, v)).sum()
}

fn lower(key: Vec<u8>) -> Vec<u8> {
    key.to_ascii_lowercase()
}

/// proxy_get_header_map_pairs: the whole map in the wire format; an empty map
/// where none exists (the SDKs accept only Ok here).
pub(super) fn get_pairs(c: &Caller, map: u32, rpp: u32, rsp: u32) -> HostResult {
    let bytes = read_map(&mut *c.state()?, map, |m| serialize_map(m))?.unwrap_or_else(|| serialize_map(&[]));
    c.return_bytes(&bytes, rpp, rsp)
}

pub(super) fn set_pairs(c: &Caller, map: u32, p: u32, l: u32) -> HostResult {
    let mut pairs = deserialize_map(&c.read(p, l)?).ok_or(Status::BadArgument)?;
    for (k, _) in &mut pairs {
        k.make_ascii_lowercase();
    }
    if map_bytes(&pairs) > MAX_MAP_BYTES {
        return Err(Status::BadArgument);
    }
    write_map(c, map, 0, |m| *m = pairs)
}

pub(super) fn get_value(c: &Caller, map: u32, kp: u32, kl: u32, rpp: u32, rsp: u32) -> HostResult {
    let key = c.read(kp, kl)?;
    let (found, abi) = {
        let mut state = c.state()?;
        let abi = state.abi;
        let found = read_map(&mut state, map, |m| {
            m.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(&key))
                .map(|(_, v)| v.clone())
        })?
        .flatten();
        (found, abi)
    };
    // Envoy answers a missing header with an empty value under ABI 0.1.0.
    let value = match found {
        Some(value) => value,
        None if abi == AbiVersion::V0_1_0 => Vec::new(),
        None => return Err(Status::NotFound),
    };
    c.return_bytes(&value, rpp, rsp)
}

/// Replaces the first entry's value and drops the others; adds when absent.
pub(super) fn replace_value(c: &Caller, map: u32, kp: u32, kl: u32, vp: u32, vl: u32) -> HostResult {
    let key = lower(c.read(kp, kl)?);
    let value = c.read(vp, vl)?;
    let adds = entry_bytes(&key, &value);
    write_map(c, map, adds, |m| {
        let mut value = Some(value);
        m.retain_mut(|(k, v)| {
            if !k.eq_ignore_ascii_case(&key) {
                return true;
            }
            match value.take() {
                Some(new) => {
                    *v = new;
                    true
                }
                None => false,
            }
        });
        if let Some(value) = value {
            m.push((key, value));
        }
    })
}

pub(super) fn add_value(c: &Caller, map: u32, kp: u32, kl: u32, vp: u32, vl: u32) -> HostResult {
    let key = lower(c.read(kp, kl)?);
    let value = c.read(vp, vl)?;
    let adds = entry_bytes(&key, &value);
    write_map(c, map, adds, |m| m.push((key, value)))
}

pub(super) fn remove_value(c: &Caller, map: u32, kp: u32, kl: u32) -> HostResult {
    let key = c.read(kp, kl)?;
    write_map(c, map, 0, |m| m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key)))
}

/// proxy_get_header_map_size: the bytes of all names and values (Envoy's
/// `HeaderMap::byteSize`) of a stream map.
pub(super) fn get_size(c: &Caller, map: u32, rsp: u32) -> HostResult {
    let size = {
        let mut state = c.state()?;
        with_stream_map(&mut state, map, |m| {
            m.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
        })
        .map_err(|_| Status::BadArgument)?
    };
    c.write_u32(rsp, size as u32)
}
