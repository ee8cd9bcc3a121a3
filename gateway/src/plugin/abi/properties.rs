//! proxy_get_property / proxy_set_property. A path arrives as its segments
//! separated by NUL bytes (the SDKs' serialisation); segments are joined
//! with '.' and matched against Envoy's attribute names. Encodings follow
//! Envoy: strings as bytes, integers (ports, response.code) as 8-byte
//! little-endian i64, request.time as 8-byte nanoseconds since the epoch,
//! booleans as one byte, maps (request.headers) in the header-map wire
//! format. Unknown paths are NotFound. Values a plugin sets are kept per
//! context and read back by the same path.

use std::time::UNIX_EPOCH;

use super::{serialize_map, HostResult, HostState, Status};
use crate::plugin::instance::StreamData;
use crate::plugin::vm::Caller;

/// Bounds on the values a plugin sets per context.
const MAX_PROPERTIES: usize = 256;
const MAX_PROPERTY_BYTES: usize = 64 << 10;

fn parse_path(raw: &[u8]) -> Result<String, Status> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    let segments: Vec<&str> = raw
        .split(|&b| b == 0)
        .map(std::str::from_utf8)
        .collect::<Result<_, _>>()
        .map_err(|_| Status::BadArgument)?;
    if segments.iter().all(|s| s.is_empty()) {
        return Err(Status::BadArgument);
    }
    Ok(segments.join("."))
}

fn int(value: i64) -> Vec<u8> {
    value.to_le_bytes().to_vec()
}

fn header<'a>(map: &'a [(Vec<u8>, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_slice())
}

/// A stream attribute; None when unknown or absent.
fn stream_attribute(s: &StreamData, path: &str) -> Option<Vec<u8>> {
    let p = &s.properties;
    let req = |name: &str| header(&s.request_headers, name).map(<[u8]>::to_vec);
    if let Some(name) = path.strip_prefix("request.headers.") {
        return req(name);
    }
    if let Some(name) = path.strip_prefix("response.headers.") {
        return header(&s.response_headers, name).map(<[u8]>::to_vec);
    }
    if let Some(name) = path.strip_prefix("response.trailers.") {
        return header(&s.response_trailers, name).map(<[u8]>::to_vec);
    }
    let tls = p.tls.as_ref();
    Some(match path {
        "request.path" => req(":path")?,
        "request.url_path" => {
            let path = req(":path")?;
            let end = path.iter().position(|&b| b == b'?').unwrap_or(path.len());
            path[..end].to_vec()
        }
        "request.query" => {
            let path = req(":path")?;
            let start = path.iter().position(|&b| b == b'?')? + 1;
            path[start..].to_vec()
        }
        "request.host" => req(":authority")?,
        "request.scheme" => req(":scheme").unwrap_or_else(|| p.scheme.as_bytes().to_vec()),
        "request.method" => req(":method")?,
        "request.headers" => serialize_map(&s.request_headers),
        "request.referer" => req("referer")?,
        "request.useragent" => req("user-agent")?,
        "request.id" => {
            if p.request_id.is_empty() {
                req("x-request-id")?
            } else {
                p.request_id.as_bytes().to_vec()
            }
        }
        "request.protocol" => p.protocol.as_bytes().to_vec(),
        "request.time" => int(p.start_time.duration_since(UNIX_EPOCH).ok()?.as_nanos() as i64),
        "response.code" => {
            let code = header(&s.response_headers, ":status")?;
            int(std::str::from_utf8(code).ok()?.parse().ok()?)
        }
        "response.headers" => serialize_map(&s.response_headers),
        "response.trailers" => serialize_map(&s.response_trailers),
        "source.address" => p.source?.to_string().into_bytes(),
        "source.port" => int(i64::from(p.source?.port())),
        "destination.address" => p.destination?.to_string().into_bytes(),
        "destination.port" => int(i64::from(p.destination?.port())),
        "connection.mtls" => vec![u8::from(tls?.peer_subject.is_some())],
        "connection.requested_server_name" => tls?.sni.clone().into_bytes(),
        "connection.tls_version" => tls?.version.clone().into_bytes(),
        "connection.cipher" => tls?.cipher.clone().into_bytes(),
        "connection.subject_peer_certificate" => tls?.peer_subject.clone()?.into_bytes(),
        "route_name" | "xds.route_name" => p.route_name.as_bytes().to_vec(),
        "cluster_name" | "xds.cluster_name" => p.cluster_name.as_bytes().to_vec(),
        "xds.virtual_host_name" => p.host_name.as_bytes().to_vec(),
        _ => return None,
    })
}

fn lookup(state: &mut HostState, path: &str) -> Option<Vec<u8>> {
    let ctx = state.effective_context;
    if let Some(value) = state.properties.get(&ctx).and_then(|m| m.get(path)) {
        return Some(value.clone());
    }
    match path {
        "plugin_name" => return Some(state.plugin_name.clone().into_bytes()),
        "plugin_root_id" => return Some(state.root_id.clone().into_bytes()),
        "plugin_vm_id" => return Some(Vec::new()),
        _ => {}
    }
    stream_attribute(state.stream_mut()?, path)
}

/// proxy_get_property(path): NotFound for unknown paths and absent values.
pub(super) fn get(c: &Caller, pp: u32, pl: u32, rpp: u32, rsp: u32) -> HostResult {
    let path = parse_path(&c.read(pp, pl)?)?;
    let value = lookup(&mut *c.state()?, &path).ok_or(Status::NotFound)?;
    c.return_bytes(&value, rpp, rsp)
}

/// proxy_set_property(path, value): kept for the effective context (a
/// stream's values go when the stream ends).
pub(super) fn set(c: &Caller, pp: u32, pl: u32, vp: u32, vl: u32) -> HostResult {
    let path = parse_path(&c.read(pp, pl)?)?;
    let value = c.read(vp, vl)?;
    if path.len() + value.len() > MAX_PROPERTY_BYTES {
        return Err(Status::BadArgument);
    }
    let mut state = c.state()?;
    let ctx = state.effective_context;
    let properties = state.properties.entry(ctx).or_default();
    if properties.len() >= MAX_PROPERTIES && !properties.contains_key(&path) {
        return Err(Status::BadArgument);
    }
    properties.insert(path, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::plugin::instance::TlsInfo;

    fn stream() -> StreamData {
        let mut s = StreamData {
            request_headers: vec![
                (b":method".to_vec(), b"GET".to_vec()),
                (b":path".to_vec(), b"/a/b?x=1".to_vec()),
                (b":authority".to_vec(), b"example.com".to_vec()),
                (b"x-request-id".to_vec(), b"rid".to_vec()),
            ],
            response_headers: vec![(b":status".to_vec(), b"404".to_vec())],
            ..Default::default()
        };
        s.properties.source = Some("10.0.0.1:4242".parse().unwrap());
        s.properties.start_time = UNIX_EPOCH + Duration::from_nanos(1_500);
        s.properties.tls = Some(TlsInfo {
            version: "TLSv1.3".into(),
            sni: "example.com".into(),
            ..Default::default()
        });
        s
    }

    #[test]
    fn paths_are_nul_separated_and_joined_with_dots() {
        assert_eq!(parse_path(b"request\0path").unwrap(), "request.path");
        assert_eq!(parse_path(b"request\0headers\0x-a\0").unwrap(), "request.headers.x-a");
        assert_eq!(parse_path(b"route_name").unwrap(), "route_name");
        assert_eq!(parse_path(b""), Err(Status::BadArgument));
    }

    #[test]
    fn attributes_use_envoys_encodings() {
        let s = stream();
        let get = |p: &str| stream_attribute(&s, p);
        assert_eq!(get("request.path").unwrap(), b"/a/b?x=1");
        assert_eq!(get("request.url_path").unwrap(), b"/a/b");
        assert_eq!(get("request.query").unwrap(), b"x=1");
        assert_eq!(get("request.host").unwrap(), b"example.com");
        assert_eq!(get("request.id").unwrap(), b"rid");
        assert_eq!(get("request.headers.X-Request-Id").unwrap(), b"rid");
        assert_eq!(get("request.time").unwrap(), 1_500i64.to_le_bytes());
        assert_eq!(get("source.port").unwrap(), 4242i64.to_le_bytes());
        assert_eq!(get("source.address").unwrap(), b"10.0.0.1:4242");
        assert_eq!(get("response.code").unwrap(), 404i64.to_le_bytes());
        assert_eq!(get("connection.mtls").unwrap(), [0]);
        assert_eq!(get("connection.tls_version").unwrap(), b"TLSv1.3");
        assert_eq!(get("destination.port"), None);
        assert_eq!(get("no.such.thing"), None);
    }
}
