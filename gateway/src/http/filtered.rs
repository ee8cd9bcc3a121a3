//! The exchange of a request whose route runs plugins. Headers become a
//! proxy-wasm header map (with `:method`, `:path`, `:authority`, `:scheme`)
//! the plugins read and rewrite. The request body passes through the body
//! callbacks chunk by chunk; what they let through is held up to the route's
//! `max_buffered_body_bytes` and, when the whole body fits, sent upstream
//! with an exact Content-Length (so the request stays replayable for
//! retries). A larger body that no plugin is holding streams on through the
//! callbacks to the upstream, framed by the Content-Length the plugins kept or
//! chunked. The response streams the same way to the client.
//! See LIFECYCLE.md beside this file.

use std::io::Write as _;
use std::net::SocketAddr;

use super::codec::{BodyFraming, ResponseHead};
use super::forward::{
    self, definite_upstream, finish_response_head, is_hop_by_hop, read_more_body, request_write_failure,
    write_request_head, Failure, FilteredBody, Forwarded, RequestBody,
};
use super::io::{read_more, write_all};
use super::proxy::{answer, answer_error, ClientConn, Exchange};
use super::respond::{self, Generated};
use super::{ChunkedDecoder, HttpError};
use crate::config::Snapshot;
use crate::listener::Worker;
use crate::plugin::{CallTargets, Direction, HeaderMap, LocalResponse, StreamChain, Verdict};
use crate::route::ProxyRoute;
use crate::upstream::UpstreamConn;

/// Where plugin calls from a worker go: the cluster's balancer on this worker.
pub struct WorkerTargets<'a> {
    pub worker: &'a Worker,
    pub snapshot: &'a Snapshot,
}

impl CallTargets for WorkerTargets<'_> {
    fn endpoint(&self, cluster: &str) -> Option<SocketAddr> {
        let cluster = self.snapshot.clusters.get(cluster)?;
        let endpoint = self.worker.balancer.borrow_mut().pick(cluster, 0, &[])?;
        Some(endpoint.addr)
    }
}

/// The request headers as plugins see them: pseudo-headers first, then the
/// client's end-to-end headers with lower-case names.
pub fn request_header_map(ex: &Exchange<'_>) -> HeaderMap {
    let raw = ex.raw;
    let head = ex.head;
    let mut map = Vec::with_capacity(head.headers.len() + 4);
    map.push((b":method".to_vec(), head.method(raw).as_bytes().to_vec()));
    map.push((b":path".to_vec(), head.path_and_query(raw).as_bytes().to_vec()));
    map.push((b":authority".to_vec(), ex.host.as_bytes().to_vec()));
    map.push((b":scheme".to_vec(), ex.scheme.as_bytes().to_vec()));
    for header in &head.headers {
        let name = header.name(raw);
        if is_hop_by_hop(name, &head.connection.listed) || name.eq_ignore_ascii_case(b"host") {
            continue;
        }
        map.push((name.to_ascii_lowercase(), header.value(raw).to_vec()));
    }
    map
}

fn pseudo<'m>(map: &'m HeaderMap, name: &[u8]) -> Option<&'m [u8]> {
    map.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice())
}

/// Runs the request side through the plugins and proxies what they produce.
pub async fn proxy(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    route: &ProxyRoute,
) -> (Forwarded, Option<UpstreamConn>) {
    let targets = WorkerTargets {
        worker: ex.worker,
        snapshot: ex.snapshot,
    };
    let has_body = ex.head.framing != BodyFraming::None;
    let verdict = {
        let chain = ex.plugins.as_mut().expect("a filtered exchange has a plugin chain");
        match chain.start_failure() {
            Some(verdict) => verdict,
            None => chain.request_headers(&targets, !has_body).await,
        }
    };
    if !matches!(verdict, Verdict::Continue) {
        return (answer_verdict(ex, conn, verdict).await, None);
    }
    let body = if has_body {
        match filter_request_body(ex, conn, &targets).await {
            Ok(body) => body,
            Err(verdict) => return (answer_verdict(ex, conn, verdict).await, None),
        }
    } else {
        RequestBodyStart::Whole(Vec::new())
    };
    match body {
        RequestBodyStart::Whole(body) => {
            let head = upstream_head(ex, conn, route, UpstreamFraming::Length(body.len() as u64, has_body));
            let body_len = body.len();
            conn.buf.splice(0..0, body);
            match forward::proxy_buffered(ex, conn, route, head, body_len).await {
                Ok(done) => done,
                Err(error) => (answer_error(ex, conn, error).await, None),
            }
        }
        RequestBodyStart::Streaming(mut filtered) => {
            // The plugins kept a Content-Length: they promise the body keeps its size.
            let kept = content_length(&ex.plugins.as_ref().expect("chain").data.request_headers);
            filtered.upstream_length = kept;
            let framing = match kept {
                Some(length) => UpstreamFraming::Length(length, true),
                None => UpstreamFraming::Chunked,
            };
            let head = upstream_head(ex, conn, route, framing);
            match forward::proxy_filtered(ex, conn, route, head, filtered).await {
                Ok(done) => done,
                Err(error) => (answer_error(ex, conn, error).await, None),
            }
        }
    }
}

/// How far reading the request body through the plugins got before the
/// exchange with the upstream starts.
enum RequestBodyStart {
    /// The whole body, as the plugins left it.
    Whole(Vec<u8>),
    /// More than `max_buffered_body_bytes` and no plugin holding any of it:
    /// the rest streams through the plugins while it goes upstream.
    Streaming(FilteredBody),
}

fn content_length(map: &HeaderMap) -> Option<u64> {
    pseudo(map, b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the request body from the client through the body callbacks. A
/// body the plugins let through within `max_buffered_body_bytes` comes back
/// whole; a larger one, when no plugin is holding part of it, continues as a
/// stream. `conn.buf` keeps the bytes not decoded yet.
async fn filter_request_body(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    targets: &WorkerTargets<'_>,
) -> Result<RequestBodyStart, Verdict> {
    if ex.head.expect_continue {
        conn.out.clear();
        conn.out.extend_from_slice(respond::CONTINUE);
        if conn.stream.write_all(&mut conn.out, ex.client_timeout).await.is_err() {
            return Err(Verdict::Close);
        }
    }
    let limit = ex.plugins.as_ref().map_or(0, StreamChain::max_buffered);
    let mut body = FilteredBody {
        passed: Vec::new(),
        client: ex.head.framing,
        client_remaining: match ex.head.framing {
            BodyFraming::ContentLength(length) => length,
            _ => 0,
        },
        decoder: ChunkedDecoder::keeping_trailers(),
        upstream_length: None,
    };
    let mut received = 0u64;
    loop {
        let (data, done) = next_request_data(&mut body, &mut conn.buf).map_err(|error| Verdict::Fail {
            status: error.status(),
            reason: error.to_string(),
        })?;
        received += data.len() as u64;
        if ex.max_body_bytes.is_some_and(|max| received > max) {
            return Err(Verdict::Fail {
                status: 413,
                reason: "request body larger than the route's max_body_bytes".into(),
            });
        }
        if !data.is_empty() || done {
            let chain = ex.plugins.as_mut().expect("a filtered exchange has a plugin chain");
            let out = chain.body(targets, Direction::Request, data, done).await?;
            body.passed.extend_from_slice(&out);
            if done {
                // The plugins see the trailers; a body sent with Content-Length
                // cannot carry them upstream (RFC 9112 §7.1.2 lets them go).
                request_trailers(chain, targets, &mut body.decoder).await?;
                return Ok(RequestBodyStart::Whole(body.passed));
            }
        }
        let holding = ex
            .plugins
            .as_ref()
            .is_some_and(|chain| chain.holds_body(Direction::Request));
        if body.passed.len() as u64 > limit && !holding {
            return Ok(RequestBodyStart::Streaming(body));
        }
        match conn.stream.read_more(&mut conn.buf, ex.client_timeout).await {
            Ok(0) | Err(_) => return Err(Verdict::Close),
            Ok(_) => {}
        }
    }
}

/// Takes the body bytes `buf` holds (decoding chunked framing); true when
/// the body ended.
fn next_request_data(body: &mut FilteredBody, buf: &mut Vec<u8>) -> Result<(Vec<u8>, bool), HttpError> {
    let mut data = Vec::new();
    let done = match body.client {
        BodyFraming::ContentLength(_) => {
            let take = (buf.len() as u64).min(body.client_remaining) as usize;
            data.extend(buf.drain(..take));
            body.client_remaining -= take as u64;
            body.client_remaining == 0
        }
        BodyFraming::Chunked => {
            let decoded = body.decoder.decode(buf, |range| data.extend_from_slice(&buf[range]))?;
            buf.drain(..decoded.consumed);
            decoded.done
        }
        BodyFraming::None | BodyFraming::UntilClose => true,
    };
    Ok((data, done))
}

/// Streams the rest of a request body through the plugins to the upstream.
pub(super) async fn stream_request_body(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    upstream: &mut UpstreamConn,
    body: &mut RequestBody,
    route: &ProxyRoute,
) -> Result<(), Failure> {
    let targets = WorkerTargets {
        worker: ex.worker,
        snapshot: ex.snapshot,
    };
    let filtered = body.filtered.as_mut().expect("a filtered request body");
    let mut sent = filtered.passed.len() as u64;
    loop {
        let (data, done) = next_request_data(filtered, &mut conn.buf).map_err(|_| Failure::Client)?;
        body.received += data.len() as u64;
        if ex.max_body_bytes.is_some_and(|max| body.received > max) {
            return Err(Failure::TooLarge);
        }
        if !data.is_empty() || done {
            let chain = ex.plugins.as_mut().expect("a filtered exchange has a plugin chain");
            let out = chain
                .body(&targets, Direction::Request, data, done)
                .await
                .map_err(|verdict| Failure::Plugin(verdict_error(verdict)))?;
            sent += out.len() as u64;
            if let Some(length) = filtered.upstream_length {
                if sent > length || (done && sent != length) {
                    return Err(Failure::Plugin(HttpError::Plugin {
                        status: 502,
                        reason: "a plugin changed the request body's size but kept its Content-Length".into(),
                    }));
                }
            }
            if done {
                request_trailers(chain, &targets, &mut filtered.decoder)
                    .await
                    .map_err(|verdict| Failure::Plugin(verdict_error(verdict)))?;
            }
            conn.out.clear();
            match filtered.upstream_length {
                Some(_) => conn.out.extend_from_slice(&out),
                None => encode_chunk(&mut conn.out, &out, done.then_some(&chain.data.request_trailers)),
            }
            write_all(&mut upstream.stream, &mut conn.out, route.send_timeout)
                .await
                .map_err(request_write_failure)?;
        }
        if done {
            return Ok(());
        }
        read_more_body(ex, conn).await?;
    }
}

/// Runs the request trailers the chunked body carried (if any) through the plugins.
async fn request_trailers(
    chain: &mut StreamChain,
    targets: &WorkerTargets<'_>,
    decoder: &mut ChunkedDecoder,
) -> Result<(), Verdict> {
    let trailers = decoder.take_trailers();
    if trailers.is_empty() {
        return Ok(());
    }
    chain.data.request_trailers = trailers;
    match chain.trailers(targets, Direction::Request).await {
        Verdict::Continue => Ok(()),
        verdict => Err(verdict),
    }
}

/// Appends `data` as one chunk (none when empty); with `last`, then the last
/// chunk and these trailer fields.
pub(super) fn encode_chunk(out: &mut Vec<u8>, data: &[u8], last: Option<&HeaderMap>) {
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(trailers) = last {
        out.extend_from_slice(b"0\r\n");
        for (name, value) in trailers {
            let splits = name.is_empty() || name.iter().chain(value).any(|&b| b == b'\r' || b == b'\n');
            if !splits && name.first() != Some(&b':') {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The error a plugin verdict becomes once the upstream exchange has begun.
fn verdict_error(verdict: Verdict) -> HttpError {
    match verdict {
        Verdict::Fail { status, reason } => HttpError::Plugin { status, reason },
        Verdict::Respond(local) => HttpError::Plugin {
            status: local.status,
            reason: format!(
                "a plugin answered after the request started upstream: {}",
                local.details
            ),
        },
        Verdict::Continue | Verdict::Close => HttpError::Plugin {
            status: 400,
            reason: "a plugin closed the stream".into(),
        },
    }
}

/// How the upstream head frames the body.
enum UpstreamFraming {
    /// This length; the bool says whether to write it even when 0.
    Length(u64, bool),
    Chunked,
}

/// The upstream request head from the plugins' header map: `:method`,
/// `:path` (the route's prefix rewrite still applies) and `:authority`
/// (unless the route rewrites the host), and the body's framing.
fn upstream_head(ex: &Exchange<'_>, conn: &ClientConn, route: &ProxyRoute, framing: UpstreamFraming) -> Vec<u8> {
    let map = &ex
        .plugins
        .as_ref()
        .expect("a filtered exchange has a plugin chain")
        .data
        .request_headers;
    let method = pseudo(map, b":method").unwrap_or(b"GET");
    let path = String::from_utf8_lossy(pseudo(map, b":path").unwrap_or(b"/")).into_owned();
    let target = match path.split_once('?') {
        Some((path, query)) => format!("{}?{query}", route.upstream_path(path)),
        None => route.upstream_path(&path).into_owned(),
    };
    let authority = String::from_utf8_lossy(pseudo(map, b":authority").unwrap_or(ex.host.as_bytes())).into_owned();
    let host = route.host_rewrite.as_deref().unwrap_or(&authority);
    let (name, value) = match framing {
        UpstreamFraming::Length(0, false) => (&b""[..], String::new()),
        UpstreamFraming::Length(length, _) => (&b"content-length"[..], length.to_string()),
        UpstreamFraming::Chunked => (&b"transfer-encoding"[..], "chunked".to_string()),
    };
    let framing_header = (!name.is_empty()).then_some((name, value.as_bytes()));
    let headers = map
        .iter()
        .filter(|(name, value)| {
            name.first() != Some(&b':')
                && !name.eq_ignore_ascii_case(b"content-length")
                && !name.eq_ignore_ascii_case(b"transfer-encoding")
                && !name.iter().chain(value).any(|&b| b == b'\r' || b == b'\n')
        })
        .map(|(name, value)| (name.as_slice(), value.as_slice()))
        .chain(framing_header);
    let mut out = Vec::with_capacity(512);
    write_request_head(&mut out, ex, conn, route, method, &target, host, headers);
    out
}

/// A response Tollgate generates (direct response, redirect) on a route with
/// plugins: the request head passes the request callbacks (its body is not
/// read, as for any generated response), the response the response callbacks.
pub async fn answer_generated(ex: &mut Exchange<'_>, conn: &mut ClientConn, response: Generated<'_>) -> Forwarded {
    let targets = WorkerTargets {
        worker: ex.worker,
        snapshot: ex.snapshot,
    };
    let has_request_body = ex.head.framing != BodyFraming::None;
    let chain = ex.plugins.as_mut().expect("a filtered exchange has a plugin chain");
    let verdict = match chain.start_failure() {
        Some(verdict) => verdict,
        None => chain.request_headers(&targets, !has_request_body).await,
    };
    if !matches!(verdict, Verdict::Continue) {
        return answer_verdict(ex, conn, verdict).await;
    }
    let mut map: HeaderMap = vec![
        (b":status".to_vec(), response.status.to_string().into_bytes()),
        (b"content-type".to_vec(), response.content_type.as_bytes().to_vec()),
        (b"server".to_vec(), b"tollgate".to_vec()),
        (
            ex.snapshot.http.request_id_header.to_ascii_lowercase().into_bytes(),
            ex.request_id.as_bytes().to_vec(),
        ),
    ];
    if let Some(location) = response.location {
        map.push((b"location".to_vec(), location.as_bytes().to_vec()));
    }
    chain.data.response_headers = map;
    let verdict = chain.response_headers(&targets, response.body.is_empty()).await;
    if !matches!(verdict, Verdict::Continue) {
        return answer_verdict(ex, conn, verdict).await;
    }
    let body = if response.body.is_empty() {
        Vec::new()
    } else {
        match chain
            .body(&targets, Direction::Response, response.body.to_vec(), true)
            .await
        {
            Ok(body) => body,
            Err(verdict) => return answer_verdict(ex, conn, verdict).await,
        }
    };
    let status = response_status(&chain.data.response_headers, response.status);
    let keep = ex.client_keep_alive && !has_request_body;
    write_filtered_head(ex, conn, status, ClientFraming::Length(body.len() as u64), !keep);
    let head_only = ex.head.method(ex.raw) == "HEAD";
    if !head_only {
        conn.out.extend_from_slice(&body);
    }
    let written = conn.stream.write_all(&mut conn.out, ex.client_timeout).await.is_ok();
    Forwarded {
        status,
        bytes_sent: if written && !head_only { body.len() as u64 } else { 0 },
        keep_client: keep && written,
        ..Forwarded::default()
    }
}

/// The status the plugins left in `:status`, if it is a valid final status.
fn response_status(map: &HeaderMap, original: u16) -> u16 {
    pseudo(map, b":status")
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok())
        .filter(|s| (200..=599).contains(s))
        .unwrap_or(original)
}

/// Answers the client for a verdict that ends the stream early.
async fn answer_verdict(ex: &Exchange<'_>, conn: &mut ClientConn, verdict: Verdict) -> Forwarded {
    match verdict {
        Verdict::Continue => unreachable!("a continuing stream is not answered here"),
        Verdict::Respond(local) => answer_local(ex, conn, &local).await,
        Verdict::Fail { status, reason } => {
            tracing::debug!(status, %reason, "plugin chain failed the request");
            answer_error(ex, conn, HttpError::Plugin { status, reason }).await
        }
        Verdict::Close => Forwarded {
            status: 499,
            ..Forwarded::default()
        },
    }
}

/// Writes a plugin's `send_local_response`.
async fn answer_local(ex: &Exchange<'_>, conn: &mut ClientConn, local: &LocalResponse) -> Forwarded {
    let content_type = local
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(b"content-type"))
        .and_then(|(_, value)| std::str::from_utf8(value).ok())
        .unwrap_or(respond::TEXT_PLAIN);
    let status = if (200..=599).contains(&local.status) {
        local.status
    } else {
        500
    };
    let response = Generated {
        head_only: ex.head.method(ex.raw) == "HEAD",
        extra_headers: &local.headers,
        ..Generated::new(status, content_type, &local.body)
    };
    let mut done = answer(ex, conn, response).await;
    // The request body (if any) was not read: the connection cannot go on.
    if ex.head.framing != BodyFraming::None {
        done.keep_client = false;
    }
    done
}

/// How the response body travels to the client after the plugins saw the head.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientFraming {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// Runs the response through the plugins on its way to the client.
pub(super) async fn forward_response(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    upstream: &mut UpstreamConn,
    response: &ResponseHead,
    route: &ProxyRoute,
) -> Result<Forwarded, Failure> {
    let targets = WorkerTargets {
        worker: ex.worker,
        snapshot: ex.snapshot,
    };
    let has_body = response.framing != BodyFraming::None;
    let verdict = {
        let chain = ex.plugins.as_mut().expect("a filtered exchange has a plugin chain");
        let raw = &conn.upstream_buf;
        let mut map = Vec::with_capacity(response.headers.len() + 1);
        map.push((b":status".to_vec(), response.status.to_string().into_bytes()));
        for header in &response.headers {
            let name = header.name(raw);
            if !is_hop_by_hop(name, &response.connection.listed) {
                map.push((name.to_ascii_lowercase(), header.value(raw).to_vec()));
            }
        }
        chain.data.response_headers = map;
        chain.response_headers(&targets, !has_body).await
    };
    if !matches!(verdict, Verdict::Continue) {
        let mut done = answer_verdict(ex, conn, verdict).await;
        done.reuse_upstream = false;
        return Ok(done);
    }
    let client_1_0 = ex.head.minor_version == 0;
    let is_head = ex.head.method(ex.raw) == "HEAD";
    let (status, framing) = {
        let map = &ex.plugins.as_ref().expect("chain").data.response_headers;
        let status = response_status(map, response.status);
        let length = pseudo(map, b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let framing = match (has_body, length) {
            (false, _) => ClientFraming::None,
            (true, Some(length)) => ClientFraming::Length(length),
            (true, None) if client_1_0 => ClientFraming::UntilClose,
            (true, None) => ClientFraming::Chunked,
        };
        (status, framing)
    };
    let keep_client = framing != ClientFraming::UntilClose && ex.client_keep_alive;
    write_filtered_head(ex, conn, status, framing, !keep_client);
    let head_len = conn.out.len();
    let mut head_pending = true;
    let mut sent_body = 0u64;
    let mut pos = response.len;
    let mut remaining = match response.framing {
        BodyFraming::ContentLength(length) => length,
        _ => 0,
    };
    let mut decoder = ChunkedDecoder::keeping_trailers();
    let mut finished = !has_body;
    loop {
        let available = &conn.upstream_buf[pos..];
        let mut data = Vec::new();
        match response.framing {
            BodyFraming::None => {}
            BodyFraming::ContentLength(_) => {
                let take = (available.len() as u64).min(remaining) as usize;
                remaining -= take as u64;
                finished = remaining == 0;
                data.extend_from_slice(&available[..take]);
                pos += take;
            }
            BodyFraming::Chunked => {
                let decoded = decoder
                    .decode(available, |range| data.extend_from_slice(&available[range]))
                    .map_err(|_| Failure::Upstream(HttpError::BadGateway("malformed chunked response")))?;
                finished = decoded.done;
                pos += decoded.consumed;
            }
            BodyFraming::UntilClose => {
                data.extend_from_slice(available);
                pos += available.len();
            }
        }
        if has_body && (!data.is_empty() || finished) {
            let chain = ex.plugins.as_mut().expect("a filtered exchange has a plugin chain");
            match chain.body(&targets, Direction::Response, data, finished).await {
                Ok(out) => {
                    sent_body += out.len() as u64;
                    if finished {
                        let trailers = decoder.take_trailers();
                        if !trailers.is_empty() {
                            chain.data.response_trailers = trailers;
                            // The head is out or about to be: only the trailers can still change.
                            let verdict = chain.trailers(&targets, Direction::Response).await;
                            if !matches!(verdict, Verdict::Continue) {
                                tracing::debug!(?verdict, "plugin chain stopped at the response trailers");
                            }
                        }
                    }
                    if !is_head {
                        match framing {
                            ClientFraming::None => {}
                            ClientFraming::Length(_) | ClientFraming::UntilClose => conn.out.extend_from_slice(&out),
                            ClientFraming::Chunked => {
                                let last = finished.then_some(&chain.data.response_trailers);
                                encode_chunk(&mut conn.out, &out, last);
                            }
                        }
                    }
                }
                Err(verdict) => {
                    tracing::debug!(?verdict, "plugin chain stopped the response body");
                    if head_pending {
                        // Nothing reached the client yet: it gets the plugin's answer instead.
                        conn.out.clear();
                        let mut done = answer_verdict(ex, conn, verdict).await;
                        done.keep_client = false;
                        return Ok(done);
                    }
                    // The head is out already: all that is left is to cut the client off.
                    return Ok(Forwarded {
                        status,
                        ..Forwarded::default()
                    });
                }
            }
        }
        // The head waits for the first body bytes the plugins let through, so
        // a plugin buffering the body can still answer instead.
        let flush = if head_pending {
            finished || conn.out.len() > head_len
        } else {
            !conn.out.is_empty()
        };
        if flush {
            head_pending = false;
            if conn.stream.write_all(&mut conn.out, ex.client_timeout).await.is_err() {
                return Err(Failure::Client);
            }
            conn.out.clear();
        }
        if finished {
            break;
        }
        conn.upstream_buf.clear();
        pos = 0;
        match read_more(&mut upstream.stream, &mut conn.upstream_buf, route.read_timeout).await {
            Ok(0) if response.framing == BodyFraming::UntilClose => finished = true,
            Ok(0) | Err(_) => {
                return Ok(Forwarded {
                    status,
                    bytes_sent: sent_body,
                    ..Forwarded::default()
                })
            }
            Ok(_) => {}
        }
    }
    // A plugin that rewrote the body but kept a Content-Length that no longer
    // matches leaves the client unable to find the next response.
    let length_kept = match framing {
        ClientFraming::Length(length) => is_head || length == sent_body,
        _ => true,
    };
    Ok(Forwarded {
        status,
        bytes_sent: sent_body,
        keep_client: keep_client && length_kept,
        reuse_upstream: definite_upstream(response) && pos == conn.upstream_buf.len(),
        ..Forwarded::default()
    })
}

/// Writes the response head from the plugins' header map into `conn.out`.
fn write_filtered_head(ex: &Exchange<'_>, conn: &mut ClientConn, status: u16, framing: ClientFraming, close: bool) {
    let map = &ex
        .plugins
        .as_ref()
        .expect("a filtered exchange has a plugin chain")
        .data
        .response_headers;
    let out = &mut conn.out;
    out.clear();
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", respond::reason(status));
    let (mut has_date, mut has_hsts) = (false, false);
    for (name, value) in map {
        if name.first() == Some(&b':')
            || name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"connection")
            || name.iter().chain(value).any(|&b| b == b'\r' || b == b'\n')
        {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        has_hsts |= name.eq_ignore_ascii_case(b"strict-transport-security");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ClientFraming::Length(length) => {
            let _ = write!(out, "Content-Length: {length}\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientFraming::None | ClientFraming::UntilClose => {}
    }
    finish_response_head(out, ex, has_date, has_hsts, close, false);
}
