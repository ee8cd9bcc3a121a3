//! One proxied exchange: pick an endpoint, send the request head and stream
//! the body upstream, read the response head and stream it back. Retries
//! happen here, and only while the request can still be replayed (see
//! LIFECYCLE.md beside this file).

use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use super::codec::{parse_response, BodyFraming, RequestHead, ResponseHead};
use super::io::{read_more, write_all, write_range, READ_CHUNK};
use super::proxy::{ClientConn, Exchange};
use super::{ChunkedDecoder, HttpError};
use crate::route::ProxyRoute;
use crate::upstream::{Endpoint, UpstreamConn};

/// Hop-by-hop headers (RFC 9110 §7.6.1) never forwarded as they are.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
];

/// Replays of a request after pooled connections turned out closed.
const MAX_STALE_REPLAYS: u32 = 2;

/// Upstream response heads may be as large as request heads.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How the exchange ended, for logs, metrics and the connection loop.
#[derive(Default)]
pub struct Forwarded {
    pub status: u16,
    pub bytes_sent: u64,
    /// Request body bytes received from the client.
    pub request_body_bytes: u64,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    /// The client connection may carry another request.
    pub keep_client: bool,
    /// The upstream connection finished cleanly and may go back to the pool.
    pub reuse_upstream: bool,
    /// The upstream agreed to switch protocols: the caller tunnels the streams.
    pub upgraded: bool,
}

/// Where the request body stands in the client's buffer.
pub(super) struct RequestBody {
    framing: BodyFraming,
    /// Content-Length bytes not yet forwarded.
    remaining: u64,
    decoder: ChunkedDecoder,
    /// Bytes of `ClientConn::buf` that hold the whole body, when it is all there.
    buffered_len: Option<usize>,
    pub(super) received: u64,
    /// Set when plugins see the body while it streams upstream.
    pub(super) filtered: Option<FilteredBody>,
}

/// A request body that passes the plugins' body callbacks on its way
/// upstream because it was larger than the route lets plugins buffer.
pub struct FilteredBody {
    /// What the body callbacks already let through, sent right after the head.
    pub passed: Vec<u8>,
    /// The client's framing, still being decoded from `ClientConn::buf`.
    pub client: BodyFraming,
    /// Content-Length bytes the client has not sent yet.
    pub client_remaining: u64,
    pub decoder: ChunkedDecoder,
    /// The length the upstream head declares; None: sent chunked.
    pub upstream_length: Option<u64>,
}

impl RequestBody {
    /// Checks the body bytes already received. A malformed chunked body that
    /// is visible now never reaches the upstream.
    fn inspect(head: &RequestHead, buf: &[u8], limit: Option<u64>) -> Result<RequestBody, HttpError> {
        let mut body = RequestBody {
            framing: head.framing,
            remaining: 0,
            decoder: ChunkedDecoder::new(),
            buffered_len: None,
            received: 0,
            filtered: None,
        };
        match head.framing {
            BodyFraming::None | BodyFraming::UntilClose => body.buffered_len = Some(0),
            BodyFraming::ContentLength(length) => {
                if limit.is_some_and(|limit| length > limit) {
                    return Err(HttpError::PayloadTooLarge);
                }
                body.remaining = length;
                if buf.len() as u64 >= length {
                    body.buffered_len = Some(length as usize);
                }
            }
            BodyFraming::Chunked => {
                let mut probe = ChunkedDecoder::new();
                let mut data = 0u64;
                let decoded = probe.decode(buf, |range| data += range.len() as u64)?;
                if limit.is_some_and(|limit| data > limit) {
                    return Err(HttpError::PayloadTooLarge);
                }
                if decoded.done {
                    body.buffered_len = Some(decoded.consumed);
                }
            }
        }
        Ok(body)
    }

    fn wire_bytes(&self) -> u64 {
        self.buffered_len.map_or(self.received, |len| len as u64)
    }

    fn is_replayable(&self) -> bool {
        self.buffered_len.is_some()
    }
}

/// What went wrong with an endpoint, for its metrics.
#[derive(Clone, Copy)]
enum FailureKind {
    Connect,
    Timeout,
    /// Reset, closed or malformed after the request was sent.
    Response,
}

impl FailureKind {
    fn of(error: &HttpError) -> FailureKind {
        if *error == HttpError::GatewayTimeout {
            FailureKind::Timeout
        } else {
            FailureKind::Response
        }
    }
}

pub(super) enum Failure {
    /// The request was not (completely) sent; another endpoint may take it.
    NotSent(HttpError),
    /// A pooled connection turned out closed before any response byte.
    Stale,
    /// Sent, then failed: retry only if the request may be repeated.
    Upstream(HttpError),
    /// The client broke the exchange: close without a response.
    Client,
    /// The route's body limit was crossed while streaming.
    TooLarge,
    /// The response status is one the route retries.
    RetryStatus,
    /// A plugin stopped the request body midway: answer with its error.
    Plugin(HttpError),
}

/// Proxies the request; on a protocol switch also returns the upstream
/// connection to tunnel to.
pub async fn proxy(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    route: &ProxyRoute,
) -> Result<(Forwarded, Option<UpstreamConn>), HttpError> {
    let body = RequestBody::inspect(ex.head, &conn.buf, ex.max_body_bytes)?;
    let request_head = build_request_head(ex, conn, route);
    send(ex, conn, route, body, request_head).await
}

/// Proxies a request whose plugins produced the head and the whole body; the
/// body is the first `body_len` bytes of `conn.buf`.
pub async fn proxy_buffered(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    route: &ProxyRoute,
    request_head: Vec<u8>,
    body_len: usize,
) -> Result<(Forwarded, Option<UpstreamConn>), HttpError> {
    let body = RequestBody {
        framing: BodyFraming::ContentLength(body_len as u64),
        remaining: body_len as u64,
        decoder: ChunkedDecoder::new(),
        buffered_len: Some(body_len),
        received: body_len as u64,
        filtered: None,
    };
    send(ex, conn, route, body, request_head).await
}

/// Proxies a request whose body streams through the plugins: the head is
/// the plugins' version, the body continues from `ClientConn::buf`.
pub async fn proxy_filtered(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    route: &ProxyRoute,
    request_head: Vec<u8>,
    filtered: FilteredBody,
) -> Result<(Forwarded, Option<UpstreamConn>), HttpError> {
    // Framing and decoding live in `filtered`; these fields stay unused.
    let body = RequestBody {
        framing: filtered.client,
        remaining: 0,
        decoder: ChunkedDecoder::new(),
        buffered_len: None,
        received: filtered.passed.len() as u64,
        filtered: Some(filtered),
    };
    send(ex, conn, route, body, request_head).await
}

async fn send(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    route: &ProxyRoute,
    mut body: RequestBody,
    request_head: Vec<u8>,
) -> Result<(Forwarded, Option<UpstreamConn>), HttpError> {
    let cluster = &route.cluster;
    let hash_key = request_hash(ex, conn, cluster);
    let idempotent = ex.head.is_idempotent(ex.raw);
    let max_attempts = 1 + route.max_retries;
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempts = 0;
    let mut stale_retries = 0u32;
    let mut last_error = HttpError::NoHealthyUpstream;
    loop {
        let Some(endpoint) = ex.worker.balancer.borrow_mut().pick(cluster, hash_key, &tried) else {
            return Err(last_error);
        };
        attempts += 1;
        let started = Instant::now();
        let pooled = ex
            .worker
            .pools
            .borrow_mut()
            .take(endpoint.addr, &cluster.settings.keepalive);
        let (mut upstream, reused) = match pooled {
            Some(pooled) => (pooled, true),
            None => match connect(endpoint.addr, cluster.settings.connect_timeout).await {
                Ok(stream) => (UpstreamConn::new(stream, endpoint.addr), false),
                Err(error) => {
                    let kind = if error == HttpError::GatewayTimeout {
                        FailureKind::Timeout
                    } else {
                        FailureKind::Connect
                    };
                    ex.note_upstream_failure(&endpoint, cluster, kind);
                    tried.push(endpoint.addr);
                    last_error = error;
                    if attempts < max_attempts {
                        ex.note_retry(cluster);
                        continue;
                    }
                    return Err(last_error);
                }
            },
        };
        ex.note_upstream_connection(cluster, reused);
        let may_retry = attempts < max_attempts && has_alternative(cluster, endpoint.addr, &tried);
        ex.worker.balancer.borrow_mut().request_started(endpoint.addr);
        let outcome = exchange(
            ex,
            conn,
            &mut upstream,
            &request_head,
            &mut body,
            route,
            idempotent,
            may_retry,
        )
        .await;
        ex.worker.balancer.borrow_mut().request_finished(endpoint.addr);
        let upstream_time = started.elapsed();
        let failure = match outcome {
            Ok(mut forwarded) => {
                endpoint.record_success();
                ex.note_upstream_latency(cluster, upstream_time);
                forwarded.upstream = Some(endpoint.addr);
                forwarded.upstream_time = Some(upstream_time);
                forwarded.request_body_bytes = body.wire_bytes();
                if forwarded.upgraded {
                    return Ok((forwarded, Some(upstream)));
                }
                if forwarded.reuse_upstream {
                    ex.worker.pools.borrow_mut().put(upstream, &cluster.settings.keepalive);
                }
                return Ok((forwarded, None));
            }
            Err(failure) => failure,
        };
        // A pooled connection the upstream closed while idle is not the
        // endpoint's fault: replay on a fresh connection, a bounded number of times.
        if matches!(failure, Failure::Stale) && body.is_replayable() && stale_retries < MAX_STALE_REPLAYS {
            stale_retries += 1;
            attempts -= 1;
            continue;
        }
        let error = match failure {
            Failure::Client => {
                let forwarded = Forwarded {
                    status: 499,
                    upstream: Some(endpoint.addr),
                    upstream_time: Some(upstream_time),
                    ..Forwarded::default()
                };
                return Ok((forwarded, None));
            }
            Failure::TooLarge => return Err(HttpError::PayloadTooLarge),
            Failure::Plugin(error) => return Err(error),
            Failure::RetryStatus => {
                ex.note_retry(cluster);
                tried.push(endpoint.addr);
                continue;
            }
            Failure::Stale => {
                ex.note_upstream_failure(&endpoint, cluster, FailureKind::Response);
                HttpError::BadGateway("upstream closed the connection")
            }
            Failure::NotSent(error) => {
                ex.note_upstream_failure(&endpoint, cluster, FailureKind::of(&error));
                if may_retry {
                    // Nothing of the request left Tollgate: any request may go elsewhere.
                    ex.note_retry(cluster);
                    tried.push(endpoint.addr);
                    last_error = error;
                    continue;
                }
                error
            }
            Failure::Upstream(error) => {
                ex.note_upstream_failure(&endpoint, cluster, FailureKind::of(&error));
                if error != HttpError::GatewayTimeout && may_retry && idempotent && body.is_replayable() {
                    ex.note_retry(cluster);
                    tried.push(endpoint.addr);
                    last_error = error;
                    continue;
                }
                error
            }
        };
        return Err(error);
    }
}

/// Whether an available endpoint other than `current` and those already
/// tried could take a retry.
fn has_alternative(cluster: &crate::upstream::Cluster, current: SocketAddr, tried: &[SocketAddr]) -> bool {
    cluster
        .endpoints()
        .endpoints
        .iter()
        .any(|e| e.addr != current && !tried.contains(&e.addr) && e.is_available())
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, HttpError> {
    match monoio::time::timeout(timeout, TcpStream::connect_addr(addr)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(_)) => Err(HttpError::BadGateway("upstream connection refused")),
        Err(_) => Err(HttpError::GatewayTimeout),
    }
}

fn request_hash(ex: &Exchange<'_>, conn: &ClientConn, cluster: &crate::upstream::Cluster) -> u64 {
    use crate::upstream::LbPolicy;
    if cluster.settings.lb_policy != LbPolicy::ConsistentHash {
        return 0;
    }
    let header_value = cluster
        .settings
        .hash_header
        .as_deref()
        .and_then(|name| ex.head.header(ex.raw, name));
    match (header_value, conn.peer.ip()) {
        (Some(value), _) => xxhash_rust::xxh3::xxh3_64(value),
        (None, std::net::IpAddr::V4(ip)) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
        (None, std::net::IpAddr::V6(ip)) => xxhash_rust::xxh3::xxh3_64(&ip.octets()),
    }
}

/// The head sent upstream: origin-form target (rewritten when the route says
/// so), end-to-end headers, Host, X-Forwarded-*, the request id, framing.
fn build_request_head(ex: &Exchange<'_>, conn: &ClientConn, route: &ProxyRoute) -> Vec<u8> {
    let head = ex.head;
    let raw = ex.raw;
    let target = match ex.query {
        Some(query) => format!("{}?{query}", route.upstream_path(ex.path)),
        None => route.upstream_path(ex.path).into_owned(),
    };
    let headers = head.headers.iter().map(|header| (header.name(raw), header.value(raw)));
    let host = match (&route.host_rewrite, ex.host) {
        (Some(rewrite), _) => rewrite.as_str(),
        (None, host) => host,
    };
    let mut out = Vec::with_capacity(head.len + 256);
    write_request_head(
        &mut out,
        ex,
        conn,
        route,
        head.method(raw).as_bytes(),
        &target,
        host,
        headers,
    );
    out
}

/// Writes the upstream request head from its parts: `headers` are the
/// client's (or a plugin's version of them); hop-by-hop ones, Host and Expect
/// are dropped here, Transfer-Encoding kept for the body framing.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_request_head<'h>(
    out: &mut Vec<u8>,
    ex: &Exchange<'_>,
    conn: &ClientConn,
    route: &ProxyRoute,
    method: &[u8],
    target: &str,
    host: &str,
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
) {
    let head = ex.head;
    let raw = ex.raw;
    out.extend_from_slice(method);
    out.push(b' ');
    if !target.starts_with('/') && target != "*" {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    // An HTTP/1.0 client may send no Host; HTTP/1.1 upstreams require one, so
    // name the cluster as nginx names the upstream group ($proxy_host).
    let host = if host.is_empty() { &*route.cluster.name } else { host };
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n");
    let forwarded = ex.snapshot.http.forwarded_headers;
    let mut forwarded_for: Option<Vec<u8>> = None;
    for (name, value) in headers {
        let is = |other: &str| name.eq_ignore_ascii_case(other.as_bytes());
        if is("host") || is("expect") || is_hop_by_hop(name, &head.connection.listed) {
            if is("transfer-encoding") {
                out.extend_from_slice(b"Transfer-Encoding: ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
            continue;
        }
        if forwarded && is("x-forwarded-for") {
            let list = forwarded_for.get_or_insert_with(Vec::new);
            if !list.is_empty() {
                list.extend_from_slice(b", ");
            }
            list.extend_from_slice(value);
            continue;
        }
        if forwarded && (is("x-forwarded-proto") || is("x-forwarded-host")) {
            continue;
        }
        if is(&ex.snapshot.http.request_id_header) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if forwarded {
        out.extend_from_slice(b"X-Forwarded-For: ");
        if let Some(list) = forwarded_for {
            out.extend_from_slice(&list);
            out.extend_from_slice(b", ");
        }
        let _ = write!(out, "{}", conn.peer.ip());
        out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
        out.extend_from_slice(ex.scheme.as_bytes());
        out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
        out.extend_from_slice(ex.host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(ex.snapshot.http.request_id_header.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(ex.request_id.as_bytes());
    // RFC 9110 §7.6.3: a gateway MUST add Via to requests it forwards inbound
    // (after any the client sent, which pass through unchanged).
    let _ = write!(out, "\r\nVia: 1.{} tollgate\r\n", head.minor_version);
    if let Some(upgrade) = &head.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(&raw[upgrade.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

pub(super) fn is_hop_by_hop(name: &[u8], listed: &[Vec<u8>]) -> bool {
    HOP_BY_HOP.iter().any(|hop| name.eq_ignore_ascii_case(hop.as_bytes()))
        || listed.iter().any(|listed| name.eq_ignore_ascii_case(listed))
}

#[allow(clippy::too_many_arguments)]
async fn exchange(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    upstream: &mut UpstreamConn,
    request_head: &[u8],
    body: &mut RequestBody,
    route: &ProxyRoute,
    idempotent: bool,
    may_retry: bool,
) -> Result<Forwarded, Failure> {
    let reused = upstream.is_reused();
    upstream.requests += 1;
    // Head and whatever body bytes are already here go out in one write.
    conn.out.clear();
    conn.out.extend_from_slice(request_head);
    let first_body_bytes = match (&body.filtered, body.buffered_len) {
        (Some(filtered), _) => {
            match filtered.upstream_length {
                Some(_) => conn.out.extend_from_slice(&filtered.passed),
                None => super::filtered::encode_chunk(&mut conn.out, &filtered.passed, None),
            }
            0
        }
        (None, Some(len)) => len,
        (None, None) => match body.framing {
            BodyFraming::ContentLength(_) => conn.buf.len(),
            _ => 0,
        },
    };
    conn.out.extend_from_slice(&conn.buf[..first_body_bytes]);
    if let Err(error) = write_all(&mut upstream.stream, &mut conn.out, route.send_timeout).await {
        return Err(if reused {
            Failure::Stale
        } else if error.kind() == std::io::ErrorKind::TimedOut {
            Failure::NotSent(HttpError::GatewayTimeout)
        } else {
            Failure::NotSent(HttpError::BadGateway("upstream reset the connection"))
        });
    }
    if body.filtered.is_some() {
        super::filtered::stream_request_body(ex, conn, upstream, body, route).await?;
    } else if body.buffered_len.is_none() {
        if let BodyFraming::ContentLength(_) = body.framing {
            body.remaining -= first_body_bytes as u64;
            body.received += first_body_bytes as u64;
            conn.buf.clear();
        }
        stream_request_body(ex, conn, upstream, body, route).await?;
    }

    // Response head, after any interim 1xx responses.
    conn.upstream_buf.clear();
    let is_head = ex.head.method(ex.raw) == "HEAD";
    let response = loop {
        let response = read_response_head(conn, upstream, route.read_timeout, is_head, reused).await?;
        if (100..200).contains(&response.status) && response.status != 101 {
            if ex.head.minor_version == 1 && response.status != 100 {
                let len = response.len;
                conn.stream
                    .write_range(&mut conn.upstream_buf, 0..len, ex.client_timeout)
                    .await
                    .map_err(|_| Failure::Client)?;
            }
            conn.upstream_buf.drain(..response.len);
            continue;
        }
        break response;
    };
    if route.retry_on_statuses.contains(&response.status) && may_retry && idempotent && body.is_replayable() {
        return Err(Failure::RetryStatus);
    }
    if let Some(len) = body.buffered_len {
        conn.buf.drain(..len);
    }
    if response.status == 101 {
        if ex.head.upgrade.is_none() {
            return Err(Failure::Upstream(HttpError::BadGateway(
                "upstream switched protocols unasked",
            )));
        }
        write_response_head(ex, conn, &response, false, true);
        conn.out.extend_from_slice(&conn.upstream_buf[response.len..]);
        conn.stream
            .write_all(&mut conn.out, ex.client_timeout)
            .await
            .map_err(|_| Failure::Client)?;
        return Ok(Forwarded {
            status: 101,
            bytes_sent: conn.out.len() as u64,
            upgraded: true,
            ..Forwarded::default()
        });
    }
    if ex.plugins.is_some() {
        return super::filtered::forward_response(ex, conn, upstream, &response, route).await;
    }
    forward_response(ex, conn, upstream, &response, route).await
}

/// Forwards the request body that is not yet buffered, reading from the
/// client as it arrives.
async fn stream_request_body(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    upstream: &mut UpstreamConn,
    body: &mut RequestBody,
    route: &ProxyRoute,
) -> Result<(), Failure> {
    if ex.head.expect_continue {
        conn.out.clear();
        conn.out.extend_from_slice(super::respond::CONTINUE);
        conn.stream
            .write_all(&mut conn.out, ex.client_timeout)
            .await
            .map_err(|_| Failure::Client)?;
    }
    loop {
        // Forward what the buffer holds of the body.
        let (forward, done) = match body.framing {
            BodyFraming::ContentLength(_) => {
                let take = (conn.buf.len() as u64).min(body.remaining) as usize;
                body.remaining -= take as u64;
                body.received += take as u64;
                (take, body.remaining == 0)
            }
            BodyFraming::Chunked => {
                let mut data = 0u64;
                let decoded = body
                    .decoder
                    .decode(&conn.buf, |range| data += range.len() as u64)
                    .map_err(|_| Failure::Client)?;
                body.received += data;
                (decoded.consumed, decoded.done)
            }
            BodyFraming::None | BodyFraming::UntilClose => (0, true),
        };
        if ex.max_body_bytes.is_some_and(|limit| body.received > limit) {
            return Err(Failure::TooLarge);
        }
        write_range(&mut upstream.stream, &mut conn.buf, 0..forward, route.send_timeout)
            .await
            .map_err(request_write_failure)?;
        conn.buf.drain(..forward);
        if done {
            return Ok(());
        }
        read_more_body(ex, conn).await?;
    }
}

/// What a failed write of request body bytes to the upstream means.
pub(super) fn request_write_failure(error: std::io::Error) -> Failure {
    match error.kind() {
        std::io::ErrorKind::TimedOut => Failure::Upstream(HttpError::GatewayTimeout),
        _ => Failure::Upstream(HttpError::BadGateway("upstream stopped reading the request")),
    }
}

/// Reads more of the request body from the client; its end or a timeout
/// before the body is complete breaks the exchange.
pub(super) async fn read_more_body(ex: &Exchange<'_>, conn: &mut ClientConn) -> Result<(), Failure> {
    match conn.stream.read_more(&mut conn.buf, ex.client_timeout).await {
        Ok(0) | Err(_) => Err(Failure::Client),
        Ok(_) => Ok(()),
    }
}

async fn read_response_head(
    conn: &mut ClientConn,
    upstream: &mut UpstreamConn,
    timeout: Duration,
    is_head: bool,
    reused: bool,
) -> Result<ResponseHead, Failure> {
    loop {
        if !conn.upstream_buf.is_empty() {
            match parse_response(&conn.upstream_buf, MAX_RESPONSE_HEAD, is_head) {
                Ok(Some(response)) => return Ok(response),
                Ok(None) => {}
                Err(error) => return Err(Failure::Upstream(error)),
            }
        }
        match read_more(&mut upstream.stream, &mut conn.upstream_buf, timeout).await {
            Ok(0) if conn.upstream_buf.is_empty() && reused => return Err(Failure::Stale),
            Ok(0) => {
                return Err(Failure::Upstream(HttpError::BadGateway(
                    "upstream closed before responding",
                )))
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::TimedOut => {
                return Err(Failure::Upstream(HttpError::GatewayTimeout))
            }
            Err(_) if conn.upstream_buf.is_empty() && reused => return Err(Failure::Stale),
            Err(_) => {
                return Err(Failure::Upstream(HttpError::BadGateway(
                    "upstream reset the connection",
                )))
            }
        }
    }
}

/// Writes the response head for the client into `conn.out`.
fn write_response_head(ex: &Exchange<'_>, conn: &mut ClientConn, response: &ResponseHead, close: bool, upgrade: bool) {
    let raw = &conn.upstream_buf;
    let out = &mut conn.out;
    out.clear();
    let _ = write!(out, "HTTP/1.1 {} ", response.status);
    out.extend_from_slice(&raw[response.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    let pass_chunked = ex.head.minor_version == 1;
    let (mut has_date, mut has_hsts) = (false, false);
    for header in &response.headers {
        let name = header.name(raw);
        if is_hop_by_hop(name, &response.connection.listed) {
            let keep = (name.eq_ignore_ascii_case(b"transfer-encoding") && pass_chunked)
                || (upgrade && name.eq_ignore_ascii_case(b"upgrade"));
            if !keep {
                continue;
            }
        }
        has_date |= name.eq_ignore_ascii_case(b"date");
        has_hsts |= name.eq_ignore_ascii_case(b"strict-transport-security");
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value(raw));
        out.extend_from_slice(b"\r\n");
    }
    finish_response_head(out, ex, has_date, has_hsts, close, upgrade);
}

/// Ends a response head for the client: Date when the upstream sent none,
/// the host's HSTS unless the upstream set its own, the connection header,
/// the blank line.
pub(super) fn finish_response_head(
    out: &mut Vec<u8>,
    ex: &Exchange<'_>,
    has_date: bool,
    has_hsts: bool,
    close: bool,
    upgrade: bool,
) {
    // RFC 9110 §6.6.1: a response forwarded without Date gets the time it arrived.
    if !has_date {
        let _ = write!(
            out,
            "Date: {}\r\n",
            httpdate::fmt_http_date(std::time::SystemTime::now())
        );
    }
    if let Some(hsts) = ex.hsts.filter(|_| !has_hsts) {
        out.extend_from_slice(b"Strict-Transport-Security: ");
        out.extend_from_slice(hsts.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if ex.head.minor_version == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

async fn forward_response(
    ex: &mut Exchange<'_>,
    conn: &mut ClientConn,
    upstream: &mut UpstreamConn,
    response: &ResponseHead,
    route: &ProxyRoute,
) -> Result<Forwarded, Failure> {
    let client_1_0 = ex.head.minor_version == 0;
    let dechunk = client_1_0 && response.framing == BodyFraming::Chunked;
    let definite = match response.framing {
        BodyFraming::UntilClose => false,
        BodyFraming::Chunked => !client_1_0,
        _ => true,
    };
    let keep_client = definite && ex.client_keep_alive;
    write_response_head(ex, conn, response, !keep_client, false);
    let head_bytes = conn.out.len() as u64;
    let mut bytes_sent = 0u64;
    let mut pos = response.len;
    let mut remaining = match response.framing {
        BodyFraming::ContentLength(length) => length,
        _ => 0,
    };
    let mut decoder = ChunkedDecoder::new();
    let mut finished = response.framing == BodyFraming::None;
    let client_timeout = ex.client_timeout;
    loop {
        // Move the body bytes at upstream_buf[pos..] into `out`, up to the body's end.
        let available = &conn.upstream_buf[pos..];
        let used = match response.framing {
            BodyFraming::None => 0,
            BodyFraming::ContentLength(_) => {
                let take = (available.len() as u64).min(remaining) as usize;
                remaining -= take as u64;
                finished = remaining == 0;
                conn.out.extend_from_slice(&available[..take]);
                take
            }
            BodyFraming::Chunked => {
                let out = &mut conn.out;
                let decoded = decoder
                    .decode(available, |range| {
                        if dechunk {
                            out.extend_from_slice(&available[range]);
                        }
                    })
                    .map_err(|_| Failure::Upstream(HttpError::BadGateway("malformed chunked response")))?;
                if !dechunk {
                    out.extend_from_slice(&available[..decoded.consumed]);
                }
                finished = decoded.done;
                decoded.consumed
            }
            BodyFraming::UntilClose => {
                conn.out.extend_from_slice(available);
                available.len()
            }
        };
        pos += used;
        if !conn.out.is_empty() {
            bytes_sent += conn.out.len() as u64;
            if conn.stream.write_all(&mut conn.out, client_timeout).await.is_err() {
                return Err(Failure::Client);
            }
            conn.out.clear();
        }
        if finished {
            break;
        }
        conn.upstream_buf.clear();
        pos = 0;
        if conn.upstream_buf.capacity() < READ_CHUNK * 4 {
            conn.upstream_buf.reserve(READ_CHUNK * 4);
        }
        match read_more(&mut upstream.stream, &mut conn.upstream_buf, route.read_timeout).await {
            Ok(0) if response.framing == BodyFraming::UntilClose => break,
            // Headers are gone already: all that is left is to cut the client off.
            Ok(0) | Err(_) => {
                return Ok(Forwarded {
                    status: response.status,
                    bytes_sent,
                    ..Forwarded::default()
                })
            }
            Ok(_) => {}
        }
    }
    Ok(Forwarded {
        status: response.status,
        bytes_sent: bytes_sent.saturating_sub(head_bytes),
        keep_client,
        reuse_upstream: definite_upstream(response) && pos == conn.upstream_buf.len(),
        ..Forwarded::default()
    })
}

/// Whether the upstream connection can carry another request after this response.
pub(super) fn definite_upstream(response: &ResponseHead) -> bool {
    response.framing != BodyFraming::UntilClose
        && !response.connection.close
        && (response.minor_version == 1 || response.connection.keep_alive)
}

impl Exchange<'_> {
    fn note_upstream_failure(&self, endpoint: &Endpoint, cluster: &crate::upstream::Cluster, kind: FailureKind) {
        match kind {
            FailureKind::Connect => cluster.stats.connect_failure(self.worker.index),
            FailureKind::Timeout => cluster.stats.timeout(self.worker.index),
            FailureKind::Response => cluster.stats.bad_response(self.worker.index),
        }
        // Like nginx with a lone server: passive ejection never empties a
        // cluster; only active health checks can say every endpoint is down.
        let may_eject = has_alternative(cluster, endpoint.addr, &[]);
        if endpoint.record_failure(&cluster.settings, may_eject) {
            cluster.stats.ejection(self.worker.index);
            tracing::warn!(cluster = %cluster.name, endpoint = %endpoint.addr, "endpoint ejected after consecutive failures");
        }
    }

    fn note_retry(&self, cluster: &crate::upstream::Cluster) {
        cluster.stats.retry(self.worker.index);
    }

    fn note_upstream_connection(&self, cluster: &crate::upstream::Cluster, reused: bool) {
        if reused {
            cluster.stats.reused_connection(self.worker.index);
        } else {
            cluster.stats.new_connection(self.worker.index);
        }
    }

    fn note_upstream_latency(&self, cluster: &crate::upstream::Cluster, latency: Duration) {
        cluster.stats.record_upstream(self.worker.index, latency);
    }
}
