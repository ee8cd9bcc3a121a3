//! Performs the calls plugins dispatch to clusters: `proxy_http_call` as one
//! HTTP/1.1 exchange on a fresh connection (`Connection: close`), and
//! Higress's `proxy_redis_call` as one RESP command with its reply, over
//! connections kept idle per thread (a rate-limit plugin calls Redis on every
//! request). Both run on a monoio runtime (a worker for stream contexts, the
//! plugin housekeeping thread for root contexts) and are bounded by the
//! plugin's timeout and a size cap, so a slow or hostile cluster costs one
//! stream, never a worker.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::abi::RedisSettings;
use super::instance::{Fault, HeaderMap, HttpCallResponse, PendingCall, PluginInstance, RedisFailure, StreamData};
use crate::http::io::{read_more, READ_CHUNK};
use crate::http::{parse_response, BodyFraming, ChunkedDecoder};

/// Largest http_call response (head + body) handed to a plugin.
const MAX_CALL_RESPONSE: usize = 16 * 1024 * 1024;
/// Largest Redis reply handed to a plugin.
const MAX_REDIS_REPLY: usize = 16 * 1024 * 1024;

/// Headers never copied from a plugin's call: the callout sets its own framing.
const SKIPPED: &[&[u8]] = &[
    b"connection",
    b"content-length",
    b"transfer-encoding",
    b"keep-alive",
    b"upgrade",
    b"te",
    b"host",
];

/// A finished call, ready to be delivered to the context that dispatched it.
pub enum Answer {
    Http {
        context_id: u32,
        token: u32,
        response: Option<HttpCallResponse>,
    },
    Redis {
        context_id: u32,
        token: u32,
        reply: Result<Vec<u8>, RedisFailure>,
    },
}

impl Answer {
    /// Calls the plugin's response callback (`s`: the stream when the call
    /// came from a stream context).
    pub fn deliver(self, instance: &mut PluginInstance, s: Option<&mut StreamData>) -> Result<(), Fault> {
        match self {
            Answer::Http {
                context_id,
                token,
                response,
            } => instance.on_http_call_response(context_id, token, s, response),
            Answer::Redis {
                context_id,
                token,
                reply,
            } => instance.on_redis_call_response(context_id, token, s, reply),
        }
    }
}

/// Performs a call a plugin dispatched. `endpoint` finds an address in the
/// call's cluster; `redis_settings` what the plugin gave `proxy_redis_init`
/// for it.
pub async fn perform(
    call: PendingCall,
    endpoint: impl FnOnce(&str) -> Option<SocketAddr>,
    redis_settings: impl FnOnce(&str) -> Option<RedisSettings>,
) -> Answer {
    match call {
        PendingCall::Http {
            token,
            context_id,
            cluster,
            headers,
            body,
            timeout,
            ..
        } => {
            let response = match endpoint(&cluster) {
                Some(addr) => http_call(addr, &headers, &body, timeout).await,
                None => None,
            };
            Answer::Http {
                context_id,
                token,
                response,
            }
        }
        PendingCall::Redis {
            token,
            context_id,
            cluster,
            query,
            timeout,
        } => {
            let reply = match (endpoint(&cluster), redis_settings(&cluster)) {
                (Some(addr), Some(settings)) => redis_call(addr, &settings, &query, timeout).await,
                (None, _) => Err(RedisFailure::Network(format!("no available endpoint in {cluster}"))),
                (_, None) => Err(RedisFailure::Network(format!(
                    "redis cluster {cluster} not initialized"
                ))),
            };
            Answer::Redis {
                context_id,
                token,
                reply,
            }
        }
    }
}

/// Sends the plugin's request to `addr` and reads the whole response; None
/// when the call failed (connect, timeout, malformed or oversized answer),
/// which proxy-wasm reports to the plugin as a response with no headers.
async fn http_call(addr: SocketAddr, headers: &HeaderMap, body: &[u8], timeout: Duration) -> Option<HttpCallResponse> {
    let request = encode_http_request(headers, body)?;
    match monoio::time::timeout(timeout, http_exchange(addr, request)).await {
        Ok(Ok(response)) => Some(response),
        Ok(Err(error)) => {
            tracing::debug!(%addr, %error, "plugin http_call failed");
            None
        }
        Err(_) => {
            tracing::debug!(%addr, "plugin http_call timed out");
            None
        }
    }
}

/// The request line and headers from proxy-wasm pseudo-headers; None without `:path`.
fn encode_http_request(headers: &HeaderMap, body: &[u8]) -> Option<Vec<u8>> {
    let pseudo = |name: &[u8]| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
    let method = pseudo(b":method").unwrap_or(b"GET");
    let path = pseudo(b":path")?;
    let authority = pseudo(b":authority").unwrap_or(b"localhost");
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(authority);
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name.first() == Some(&b':') || SKIPPED.iter().any(|skip| name.eq_ignore_ascii_case(skip)) {
            continue;
        }
        // A plugin may not smuggle a second header or request through a value.
        if name.iter().chain(value).any(|&b| b == b'\r' || b == b'\n') {
            return None;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || !matches!(method, b"GET" | b"HEAD" | b"DELETE" | b"OPTIONS") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(body);
    Some(out)
}

async fn http_exchange(addr: SocketAddr, request: Vec<u8>) -> std::io::Result<HttpCallResponse> {
    let mut stream = TcpStream::connect_addr(addr).await?;
    let _ = stream.set_nodelay(true);
    let (result, _) = stream.write_all(request).await;
    result?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    let head = loop {
        if let Some(head) = parse_response(&buf, 64 * 1024, false).map_err(invalid)? {
            break head;
        }
        if read_into(&mut stream, &mut buf).await? == 0 {
            return Err(invalid("closed before the response head"));
        }
    };
    let mut response = HttpCallResponse {
        headers: vec![(b":status".to_vec(), head.status.to_string().into_bytes())],
        body: Vec::new(),
        trailers: Vec::new(),
    };
    for header in &head.headers {
        let name = header.name(&buf).to_ascii_lowercase();
        response.headers.push((name, header.value(&buf).to_vec()));
    }
    let mut pos = head.len;
    let mut decoder = ChunkedDecoder::new();
    loop {
        let available = &buf[pos..];
        let finished = match head.framing {
            BodyFraming::None => true,
            BodyFraming::ContentLength(length) => {
                let missing = length as usize - response.body.len();
                let take = available.len().min(missing);
                response.body.extend_from_slice(&available[..take]);
                pos += take;
                response.body.len() as u64 == length
            }
            BodyFraming::Chunked => {
                let body = &mut response.body;
                let decoded = decoder
                    .decode(available, |range| body.extend_from_slice(&available[range]))
                    .map_err(|_| invalid("malformed chunked response"))?;
                pos += decoded.consumed;
                decoded.done
            }
            BodyFraming::UntilClose => {
                response.body.extend_from_slice(available);
                pos = buf.len();
                false
            }
        };
        if finished {
            return Ok(response);
        }
        if response.body.len() > MAX_CALL_RESPONSE {
            return Err(invalid("response larger than 16 MiB"));
        }
        buf.drain(..pos);
        pos = 0;
        if read_into(&mut stream, &mut buf).await? == 0 {
            return match head.framing {
                BodyFraming::UntilClose => Ok(response),
                _ => Err(invalid("closed inside the response body")),
            };
        }
    }
}

/// Sends one RESP command (as the plugin encoded it) and returns the raw
/// reply, which Higress plugins parse themselves.
async fn redis_call(
    addr: SocketAddr,
    auth: &RedisSettings,
    query: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, RedisFailure> {
    match monoio::time::timeout(timeout, redis_exchange(addr, auth, query)).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(error)) => Err(RedisFailure::Network(error.to_string())),
        Err(_) => Err(RedisFailure::Timeout),
    }
}

/// Idle Redis connections per (address, credentials), per thread: callouts
/// run on the thread's monoio runtime, so connections never cross threads.
type IdleKey = (SocketAddr, String, String);

thread_local! {
    static IDLE_REDIS: RefCell<HashMap<IdleKey, Vec<TcpStream>>> = RefCell::new(HashMap::new());
}

/// Idle connections kept per key and thread.
const MAX_IDLE_REDIS: usize = 8;

async fn redis_exchange(addr: SocketAddr, auth: &RedisSettings, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let key = (addr, auth.username.clone(), auth.password.clone());
    let idle = IDLE_REDIS.with(|idle| idle.borrow_mut().get_mut(&key).and_then(Vec::pop));
    let mut buf = Vec::with_capacity(READ_CHUNK);
    if let Some(mut stream) = idle {
        match redis_roundtrip(&mut stream, &mut buf, query).await {
            Ok(reply) => {
                keep_idle(key, stream);
                return Ok(reply);
            }
            // Redis closed the idle connection before reading the command
            // (its `timeout`): nothing ran, so a fresh connection may send it.
            Err(error) if buf.is_empty() && is_closed(&error) => {}
            Err(error) => return Err(error),
        }
        buf.clear();
    }
    let mut stream = TcpStream::connect_addr(addr).await?;
    let _ = stream.set_nodelay(true);
    if !auth.password.is_empty() {
        let mut command: Vec<&[u8]> = vec![b"AUTH"];
        if !auth.username.is_empty() {
            command.push(auth.username.as_bytes());
        }
        command.push(auth.password.as_bytes());
        let reply = redis_roundtrip(&mut stream, &mut buf, &encode_command(&command)).await?;
        if !reply.starts_with(b"+OK") {
            return Err(invalid(format!(
                "redis refused AUTH: {}",
                String::from_utf8_lossy(&reply).trim_end()
            )));
        }
    }
    let reply = redis_roundtrip(&mut stream, &mut buf, query).await?;
    keep_idle(key, stream);
    Ok(reply)
}

async fn redis_roundtrip(stream: &mut TcpStream, buf: &mut Vec<u8>, command: &[u8]) -> std::io::Result<Vec<u8>> {
    let (result, _) = stream.write_all(command.to_vec()).await;
    result?;
    read_reply(stream, buf).await
}

fn keep_idle(key: IdleKey, stream: TcpStream) {
    IDLE_REDIS.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_REDIS {
            list.push(stream);
        }
    });
}

fn is_closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(
        error.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof
    )
}

/// Reads exactly one RESP2 reply from the stream.
async fn read_reply(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Vec<u8>> {
    loop {
        if !buf.is_empty() {
            match redis_protocol::resp2::decode::decode(buf) {
                Ok(Some((_, len))) => return Ok(buf.drain(..len).collect()),
                Ok(None) => {}
                Err(error) => return Err(invalid(format!("malformed redis reply: {error}"))),
            }
        }
        if buf.len() > MAX_REDIS_REPLY {
            return Err(invalid("redis reply larger than 16 MiB"));
        }
        if read_into(stream, buf).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection before replying",
            ));
        }
    }
}

/// A RESP array of bulk strings.
fn encode_command(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", parts.len()).into_bytes();
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The outer per-call timeout bounds every read; this one only satisfies `read_more`.
async fn read_into(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    read_more(stream, buf, Duration::from_secs(3600)).await
}

fn invalid(error: impl ToString) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn request_uses_pseudo_headers_and_drops_framing() {
        let request = encode_http_request(
            &headers(&[
                (":method", "POST"),
                (":path", "/auth?x=1"),
                (":authority", "idp"),
                ("content-length", "99"),
                ("x-a", "1"),
            ]),
            b"hi",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "POST /auth?x=1 HTTP/1.1\r\nHost: idp\r\nx-a: 1\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
        );
    }

    #[test]
    fn request_without_path_or_with_crlf_is_refused() {
        assert!(encode_http_request(&headers(&[(":method", "GET")]), b"").is_none());
        assert!(encode_http_request(&headers(&[(":path", "/"), ("x", "a\r\nEvil: 1")]), b"").is_none());
    }

    #[test]
    fn command_encoding_is_resp_array_of_bulk_strings() {
        assert_eq!(
            encode_command(&[b"AUTH", b"pw"]),
            b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n".to_vec()
        );
    }
}
