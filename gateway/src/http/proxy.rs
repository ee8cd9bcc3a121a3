//! The client connection loop: read a request head, route it, answer it
//! (direct response, redirect, or proxy through `forward`), log it, and go
//! round again while keep-alive allows. Pipelined requests wait in the read
//! buffer and are served in order.

use std::cell::Cell;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, Splitable};
use monoio::net::TcpStream;

use super::codec::{parse_request, RequestHead, RequestLimits, MAX_HEADERS};
use super::filtered;
use super::forward::{self, Forwarded};
use super::io::{ClientStream, READ_CHUNK};
use super::respond::{self, Generated};
use super::{BodyFraming, HttpError};
use crate::accesslog::AccessEntry;
use crate::config::{ListenerSettings, Snapshot};
use crate::listener::Worker;
use crate::plugin::{StreamChain, StreamData, StreamProperties, TlsInfo};
use crate::route::{Route, RouteAction};
use crate::upstream::UpstreamConn;

/// A client connection's stream and buffers, reused across its requests.
pub struct ClientConn {
    pub stream: ClientStream,
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: Option<SocketAddr>,
    /// The client's socket (inside `stream`, which keeps it open), for socket
    /// options read while the connection is served.
    fd: RawFd,
    /// `SO_INCOMING_CPU`, read at the first access-log line (see `incoming_cpu`).
    incoming_cpu: Cell<Option<Option<u32>>>,
    /// Bytes received and not consumed yet: body bytes, pipelined requests.
    pub buf: Vec<u8>,
    /// Scratch for what is written to either side.
    pub out: Vec<u8>,
    /// Bytes read from the upstream of the current exchange.
    pub upstream_buf: Vec<u8>,
}

impl ClientConn {
    /// The CPU that received the connection's packets. Read once per
    /// connection, not per request: a flow stays on one receive queue, and
    /// the access log of a keep-alive connection should not cost a syscall
    /// per line.
    fn incoming_cpu(&self) -> Option<u32> {
        if let Some(known) = self.incoming_cpu.get() {
            return known;
        }
        // SAFETY: `self.stream` owns the socket `self.fd` and lives as long as `self`.
        let cpu = unsafe { crate::ebpf::incoming_cpu(self.fd) };
        self.incoming_cpu.set(Some(cpu));
        cpu
    }
}

/// What one request needs while it is being served.
pub struct Exchange<'a> {
    pub worker: &'a Worker,
    pub snapshot: &'a Snapshot,
    pub head: &'a RequestHead,
    /// The request head's bytes; `head` holds ranges into them.
    pub raw: &'a [u8],
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub request_id: &'a str,
    /// "https" when the client connection is TLS.
    pub scheme: &'static str,
    /// Strict-Transport-Security value, set only for TLS connections.
    pub hsts: Option<&'a str>,
    pub max_body_bytes: Option<u64>,
    pub client_timeout: Duration,
    /// The client may send another request after this one.
    pub client_keep_alive: bool,
    /// The plugins this request runs through, when its route has any.
    pub plugins: Option<StreamChain>,
}

/// How long a closing TLS connection may take to send close_notify.
const CLOSE_NOTIFY_TIMEOUT: Duration = Duration::from_secs(1);

enum NextHead {
    Request(RequestHead),
    Closed,
    Invalid(HttpError),
}

pub async fn serve_connection(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, listener: Arc<str>) {
    let tracker = worker.track_connection(&stream);
    let local = stream.local_addr().ok();
    let fd = stream.as_raw_fd();
    let listener_tls = worker.snapshot().listener_tls.get(&*listener).cloned();
    let stream = match listener_tls {
        None => ClientStream::Plain(stream),
        Some(tls) => {
            let started = Instant::now();
            match crate::tls::accept(stream, &tls).await {
                Ok(stream) => {
                    tls.stats
                        .record_handshake(worker.index, stream.protocol_label(), "ok", started.elapsed());
                    ClientStream::Tls(Box::new(stream))
                }
                Err(error) => {
                    tls.stats
                        .record_handshake(worker.index, "none", error.result_label(), started.elapsed());
                    tracing::debug!(%peer, listener = %listener, %error, "TLS handshake failed");
                    return;
                }
            }
        }
    };
    let mut conn = ClientConn {
        stream,
        peer,
        local,
        fd,
        incoming_cpu: Cell::new(None),
        buf: Vec::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(READ_CHUNK),
        upstream_buf: Vec::with_capacity(READ_CHUNK),
    };
    let mut raw = Vec::new();
    let mut served: u32 = 0;
    loop {
        let snapshot = worker.snapshot();
        let Some(settings) = snapshot.listeners.iter().find(|l| *l.name == *listener) else {
            break;
        };
        tracker.set_idle(conn.buf.is_empty());
        let head = match read_head(&worker, &mut conn, settings, served == 0).await {
            NextHead::Request(head) => head,
            NextHead::Closed => break,
            NextHead::Invalid(error) => {
                worker.stats.http_error(error.status());
                conn.out.clear();
                respond::error(error.status(), &error.to_string(), &mut conn.out);
                let _ = conn.stream.write_all(&mut conn.out, settings.body_timeout).await;
                break;
            }
        };
        tracker.set_idle(false);
        // The head moves to `raw` so `buf` can take body bytes and further reads.
        raw.clear();
        raw.extend_from_slice(&conn.buf[..head.len]);
        conn.buf.drain(..head.len);
        served += 1;
        let last = served >= settings.keepalive_requests || worker.is_draining();
        let outcome = serve_request(&worker, &snapshot, settings, &mut conn, &head, &raw, last).await;
        match outcome {
            Served::KeepAlive => {}
            Served::Close => break,
            Served::Tunnel(upstream) => {
                tunnel(conn, upstream).await;
                return;
            }
        }
    }
    if let ClientStream::Tls(stream) = &mut conn.stream {
        stream.close(CLOSE_NOTIFY_TIMEOUT).await;
    }
}

async fn read_head(worker: &Worker, conn: &mut ClientConn, settings: &ListenerSettings, first: bool) -> NextHead {
    let limits = RequestLimits {
        max_header_bytes: settings.max_request_header_bytes,
        max_uri_bytes: settings.max_uri_bytes,
    };
    let mut deadline: Option<Instant> = None;
    loop {
        if !conn.buf.is_empty() {
            match parse_request(&conn.buf, &limits) {
                Ok(Some(head)) => return NextHead::Request(head),
                Ok(None) => {}
                Err(error) => return NextHead::Invalid(error),
            }
            deadline.get_or_insert_with(|| Instant::now() + settings.header_timeout);
        } else if worker.is_draining() {
            return NextHead::Closed;
        }
        let timeout = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None if first => settings.header_timeout,
            None => settings.keepalive_timeout,
        };
        match conn.stream.read_more(&mut conn.buf, timeout).await {
            Ok(0) | Err(_) => return NextHead::Closed,
            Ok(_) => {}
        }
    }
}

enum Served {
    KeepAlive,
    Close,
    Tunnel(UpstreamConn),
}

async fn serve_request(
    worker: &Worker,
    snapshot: &Snapshot,
    settings: &ListenerSettings,
    conn: &mut ClientConn,
    head: &RequestHead,
    raw: &[u8],
    last: bool,
) -> Served {
    let started = Instant::now();
    let path_and_query = head.path_and_query(raw);
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let host = head.host(raw);
    let route = {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        for (slot, header) in slots.iter_mut().zip(&head.headers) {
            *slot = httparse::Header {
                name: std::str::from_utf8(header.name(raw)).unwrap_or(""),
                value: header.value(raw),
            };
        }
        snapshot.router.route(host, path, &slots[..head.headers.len()])
    };
    let generated_id;
    let request_id = match head
        .header(raw, &snapshot.http.request_id_header)
        .and_then(|v| std::str::from_utf8(v).ok())
    {
        Some(id) if !id.is_empty() => id,
        _ => {
            generated_id = worker.next_request_id();
            &generated_id
        }
    };
    let mut ex = Exchange {
        worker,
        snapshot,
        head,
        raw,
        host,
        path,
        query,
        request_id,
        scheme: if conn.stream.is_tls() { "https" } else { "http" },
        hsts: route.and_then(|r| r.hsts.as_deref()).filter(|_| conn.stream.is_tls()),
        max_body_bytes: route.and_then(|r| r.max_body_bytes),
        client_timeout: settings.body_timeout,
        client_keep_alive: head.wants_keep_alive() && !last,
        plugins: None,
    };
    if let Some(route) = route {
        ex.plugins = start_plugins(&ex, conn, route);
    }
    worker.stats.request();
    let (result, tunnel) = match route {
        None => (answer_error(&ex, conn, HttpError::NotFound).await, None),
        Some(route) => dispatch(&mut ex, conn, route).await,
    };
    match route {
        None => worker.stats.http_error(result.status),
        Some(route) => route.stats.record(
            worker.index,
            result.status,
            (raw.len() as u64) + result.request_body_bytes,
            result.bytes_sent,
        ),
    }
    worker.log_access(|| AccessEntry {
        time: SystemTime::now(),
        client: conn.peer,
        host,
        method: head.method(raw),
        path,
        status: result.status,
        bytes: result.bytes_sent,
        upstream: result.upstream,
        upstream_time: result.upstream_time,
        total_time: started.elapsed(),
        request_id,
        incoming_cpu: conn.incoming_cpu(),
    });
    match tunnel {
        Some(upstream) => Served::Tunnel(upstream),
        None if result.keep_client => Served::KeepAlive,
        None => Served::Close,
    }
}

/// The plugin chain of a request on a proxy route that has plugins.
fn start_plugins(ex: &Exchange<'_>, conn: &ClientConn, route: &Route) -> Option<StreamChain> {
    let plugins = ex.snapshot.plugin_config.route(&route.host_name, &route.name)?;
    let cluster_name = match &route.action {
        RouteAction::Proxy(proxy) => Arc::clone(&proxy.cluster.name),
        RouteAction::Direct(_) | RouteAction::Redirect(_) => Arc::from(""),
    };
    let tls = match &conn.stream {
        ClientStream::Tls(stream) => {
            let (version, cipher, sni) = stream.session_facts();
            Some(TlsInfo {
                version: version.to_string(),
                cipher,
                sni,
                peer_subject: None,
            })
        }
        ClientStream::Plain(_) => None,
    };
    let data = StreamData {
        request_headers: filtered::request_header_map(ex),
        properties: StreamProperties {
            request_id: ex.request_id.to_string(),
            protocol: if ex.head.minor_version == 0 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            },
            scheme: ex.scheme,
            source: Some(conn.peer),
            destination: conn.local,
            route_name: Arc::clone(&route.name),
            cluster_name,
            host_name: Arc::clone(&route.host_name),
            tls,
            start_time: SystemTime::now(),
        },
        ..StreamData::default()
    };
    Some(StreamChain::start(
        ex.snapshot.plugins.for_route(plugins),
        ex.worker.index,
        data,
        plugins.max_buffered_body_bytes,
    ))
}

async fn dispatch(ex: &mut Exchange<'_>, conn: &mut ClientConn, route: &Route) -> (Forwarded, Option<UpstreamConn>) {
    match &route.action {
        RouteAction::Proxy(proxy) if ex.plugins.is_some() => filtered::proxy(ex, conn, proxy).await,
        RouteAction::Proxy(proxy) => match forward::proxy(ex, conn, proxy).await {
            Ok(done) => done,
            Err(error) => (answer_error(ex, conn, error).await, None),
        },
        RouteAction::Direct(direct) => {
            let response = Generated {
                head_only: ex.head.method(ex.raw) == "HEAD",
                ..Generated::new(direct.status, &direct.content_type, &direct.body)
            };
            (answer_generated(ex, conn, response).await, None)
        }
        RouteAction::Redirect(redirect) => {
            let location = redirect.location(ex.scheme, ex.host, ex.path, ex.query);
            let body = format!("Redirecting to {location}\n");
            let response = Generated {
                location: Some(&location),
                head_only: ex.head.method(ex.raw) == "HEAD",
                ..Generated::new(redirect.status(), respond::TEXT_PLAIN, body.as_bytes())
            };
            (answer_generated(ex, conn, response).await, None)
        }
    }
}

/// A direct response or redirect, through the route's plugins when it has any.
async fn answer_generated(ex: &mut Exchange<'_>, conn: &mut ClientConn, response: Generated<'_>) -> Forwarded {
    if ex.plugins.is_some() {
        filtered::answer_generated(ex, conn, response).await
    } else {
        answer(ex, conn, response).await
    }
}

/// Writes a generated response. The connection stays open only when the
/// request carried no body, which Tollgate would otherwise have to drain.
pub(super) async fn answer(ex: &Exchange<'_>, conn: &mut ClientConn, mut response: Generated<'_>) -> Forwarded {
    let keep = ex.client_keep_alive && ex.head.framing == BodyFraming::None;
    response.close = !keep;
    response.keep_alive_1_0 = keep && ex.head.minor_version == 0;
    response.request_id = Some((&ex.snapshot.http.request_id_header, ex.request_id));
    response.hsts = ex.hsts;
    conn.out.clear();
    response.write_to(&mut conn.out);
    let body_bytes = if response.head_only {
        0
    } else {
        response.body.len() as u64
    };
    let written = conn.stream.write_all(&mut conn.out, ex.client_timeout).await.is_ok();
    Forwarded {
        status: response.status,
        bytes_sent: if written { body_bytes } else { 0 },
        keep_client: keep && written,
        ..Forwarded::default()
    }
}

pub(super) async fn answer_error(ex: &Exchange<'_>, conn: &mut ClientConn, error: HttpError) -> Forwarded {
    let status = error.status();
    let body = respond::error_body(status, &error.to_string());
    let response = Generated::new(status, respond::TEXT_PLAIN, body.as_bytes());
    let mut done = answer(ex, conn, response).await;
    // After a failed exchange the request body may be half read: never reuse.
    if status >= 500 || status == 413 {
        done.keep_client = false;
    }
    done
}

/// Relays bytes both ways after a protocol switch until both sides close.
///
/// One read stays in flight on each side and is never dropped before it
/// completes (a dropped io_uring read would lose its bytes); writes happen
/// between reads. For a TLS client, records are decrypted and encrypted here.
async fn tunnel(conn: ClientConn, upstream: UpstreamConn) {
    let ClientConn { stream, buf: early, .. } = conn;
    let (client_tcp, mut tls, client_ciphertext) = match stream {
        ClientStream::Plain(tcp) => (tcp, None, Vec::new()),
        ClientStream::Tls(stream) => {
            let (tcp, tls, incoming) = stream.into_parts();
            (tcp, Some(tls), incoming)
        }
    };
    let (client_read, mut client_write) = client_tcp.into_split();
    let (upstream_read, mut upstream_write) = upstream.stream.into_split();
    let mut to_upstream = early;
    let mut to_client = Vec::new();
    if let Some(tls) = tls.as_mut() {
        if tunnel_decrypt(tls, &client_ciphertext, &mut to_upstream, &mut to_client).is_err() {
            return;
        }
    }
    if tunnel_write(&mut upstream_write, &mut to_upstream).await.is_err()
        || tunnel_write(&mut client_write, &mut to_client).await.is_err()
    {
        return;
    }
    let mut from_client = std::pin::pin!(read_owned(client_read, Vec::with_capacity(READ_CHUNK)));
    let mut from_upstream = std::pin::pin!(read_owned(upstream_read, Vec::with_capacity(READ_CHUNK)));
    let (mut client_open, mut upstream_open) = (true, true);
    while client_open || upstream_open {
        monoio::select! {
            (reader, result, data) = &mut from_client, if client_open => {
                match result {
                    Ok(n) if n > 0 => {
                        let decoded = match tls.as_mut() {
                            Some(tls) => tunnel_decrypt(tls, &data, &mut to_upstream, &mut to_client),
                            None => {
                                to_upstream.extend_from_slice(&data);
                                Ok(())
                            }
                        };
                        if decoded.is_err()
                            || tunnel_write(&mut upstream_write, &mut to_upstream).await.is_err()
                            || tunnel_write(&mut client_write, &mut to_client).await.is_err()
                        {
                            return;
                        }
                        from_client.set(read_owned(reader, data));
                    }
                    _ => {
                        client_open = false;
                        let _ = AsyncWriteRent::shutdown(&mut upstream_write).await;
                    }
                }
            }
            (reader, result, data) = &mut from_upstream, if upstream_open => {
                match result {
                    Ok(n) if n > 0 => {
                        let encoded = match tls.as_mut() {
                            Some(tls) => tunnel_encrypt(tls, &data, &mut to_client),
                            None => {
                                to_client.extend_from_slice(&data);
                                Ok(())
                            }
                        };
                        if encoded.is_err() || tunnel_write(&mut client_write, &mut to_client).await.is_err() {
                            return;
                        }
                        from_upstream.set(read_owned(reader, data));
                    }
                    _ => {
                        upstream_open = false;
                        if let Some(tls) = tls.as_mut() {
                            tls.send_close_notify();
                            let _ = tunnel_encrypt(tls, &[], &mut to_client);
                            let _ = tunnel_write(&mut client_write, &mut to_client).await;
                        }
                        let _ = AsyncWriteRent::shutdown(&mut client_write).await;
                    }
                }
            }
        }
    }
}

type ReadHalf = monoio::io::OwnedReadHalf<TcpStream>;
type WriteHalf = monoio::io::OwnedWriteHalf<TcpStream>;

/// One read that owns its half and buffer, so it can stay pending across
/// loop iterations.
async fn read_owned(mut reader: ReadHalf, mut buf: Vec<u8>) -> (ReadHalf, std::io::Result<usize>, Vec<u8>) {
    buf.clear();
    let (result, buf) = reader.read(buf).await;
    (reader, result, buf)
}

async fn tunnel_write(writer: &mut WriteHalf, data: &mut Vec<u8>) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let (result, returned) = writer.write_all(std::mem::take(data)).await;
    *data = returned;
    data.clear();
    result.map(|_| ())
}

/// Feeds client ciphertext to rustls: plaintext goes to `plain`, any records
/// rustls must send back (alerts, key updates) to `records`.
fn tunnel_decrypt(
    tls: &mut rustls::ServerConnection,
    mut ciphertext: &[u8],
    plain: &mut Vec<u8>,
    records: &mut Vec<u8>,
) -> std::io::Result<()> {
    use std::io::Read;
    while !ciphertext.is_empty() {
        if tls.read_tls(&mut ciphertext)? == 0 {
            break;
        }
        let processed = tls.process_new_packets();
        while tls.wants_write() {
            tls.write_tls(records)?;
        }
        processed.map_err(|error| std::io::Error::new(std::io::ErrorKind::InvalidData, error))?;
        let mut chunk = [0u8; READ_CHUNK];
        loop {
            match tls.reader().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}

fn tunnel_encrypt(tls: &mut rustls::ServerConnection, mut plain: &[u8], records: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Write;
    loop {
        let taken = tls.writer().write(plain)?;
        plain = &plain[taken..];
        while tls.wants_write() {
            tls.write_tls(records)?;
        }
        if plain.is_empty() {
            return Ok(());
        }
    }
}
