//! The client connection loop: read a request head, route it, answer it
//! (direct response, redirect, or proxy through `forward`), log it, and go
//! round again while keep-alive allows. Pipelined requests wait in the read
//! buffer and are served in order.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::io::Splitable;
use monoio::net::TcpStream;

use super::codec::{parse_request, RequestHead, RequestLimits, MAX_HEADERS};
use super::forward::{self, Forwarded};
use super::io::{read_more, write_all, READ_CHUNK};
use super::respond::{self, Generated};
use super::{BodyFraming, HttpError};
use crate::accesslog::AccessEntry;
use crate::config::{ListenerSettings, Snapshot};
use crate::listener::Worker;
use crate::route::{Route, RouteAction};
use crate::upstream::UpstreamConn;

/// A client connection's stream and buffers, reused across its requests.
pub struct ClientConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// Bytes received and not consumed yet: body bytes, pipelined requests.
    pub buf: Vec<u8>,
    /// Scratch for what is written to either side.
    pub out: Vec<u8>,
    /// Bytes read from the upstream of the current exchange.
    pub upstream_buf: Vec<u8>,
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
    pub max_body_bytes: Option<u64>,
    pub client_timeout: Duration,
    /// The client may send another request after this one.
    pub client_keep_alive: bool,
}

enum NextHead {
    Request(RequestHead),
    Closed,
    Invalid(HttpError),
}

pub async fn serve_connection(worker: Rc<Worker>, stream: TcpStream, peer: SocketAddr, listener: Arc<str>) {
    let tracker = worker.track_connection(&stream);
    let mut conn = ClientConn {
        stream,
        peer,
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
                let _ = write_all(&mut conn.stream, &mut conn.out, settings.body_timeout).await;
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
        match read_more(&mut conn.stream, &mut conn.buf, timeout).await {
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
        max_body_bytes: route.and_then(|r| r.max_body_bytes),
        client_timeout: settings.body_timeout,
        client_keep_alive: head.wants_keep_alive() && !last,
    };
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
    });
    match tunnel {
        Some(upstream) => Served::Tunnel(upstream),
        None if result.keep_client => Served::KeepAlive,
        None => Served::Close,
    }
}

async fn dispatch(ex: &mut Exchange<'_>, conn: &mut ClientConn, route: &Route) -> (Forwarded, Option<UpstreamConn>) {
    match &route.action {
        RouteAction::Proxy(proxy) => match forward::proxy(ex, conn, proxy).await {
            Ok(done) => done,
            Err(error) => (answer_error(ex, conn, error).await, None),
        },
        RouteAction::Direct(direct) => {
            let response = Generated {
                status: direct.status,
                content_type: &direct.content_type,
                body: &direct.body,
                close: false,
                keep_alive_1_0: false,
                location: None,
                request_id: None,
                head_only: ex.head.method(ex.raw) == "HEAD",
            };
            (answer(ex, conn, response).await, None)
        }
        RouteAction::Redirect(redirect) => {
            let location = redirect.location("http", ex.host, ex.path, ex.query);
            let body = format!("Redirecting to {location}\n");
            let response = Generated {
                status: redirect.status(),
                content_type: "text/plain; charset=utf-8",
                body: body.as_bytes(),
                close: false,
                keep_alive_1_0: false,
                location: Some(&location),
                request_id: None,
                head_only: ex.head.method(ex.raw) == "HEAD",
            };
            (answer(ex, conn, response).await, None)
        }
    }
}

/// Writes a generated response. The connection stays open only when the
/// request carried no body, which Tollgate would otherwise have to drain.
async fn answer(ex: &Exchange<'_>, conn: &mut ClientConn, mut response: Generated<'_>) -> Forwarded {
    let keep = ex.client_keep_alive && ex.head.framing == BodyFraming::None;
    response.close = !keep;
    response.keep_alive_1_0 = keep && ex.head.minor_version == 0;
    response.request_id = Some((&ex.snapshot.http.request_id_header, ex.request_id));
    conn.out.clear();
    response.write_to(&mut conn.out);
    let head_len = conn.out.len() - if response.head_only { 0 } else { response.body.len() };
    let written = write_all(&mut conn.stream, &mut conn.out, ex.client_timeout)
        .await
        .is_ok();
    Forwarded {
        status: response.status,
        bytes_sent: if written { (conn.out.len() - head_len) as u64 } else { 0 },
        upstream: None,
        upstream_time: None,
        keep_client: keep && written,
        ..Forwarded::default()
    }
}

async fn answer_error(ex: &Exchange<'_>, conn: &mut ClientConn, error: HttpError) -> Forwarded {
    let status = error.status();
    let body = format!("{status} {}: {error}\n", respond::reason(status));
    let response = Generated {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.as_bytes(),
        close: true,
        keep_alive_1_0: false,
        location: None,
        request_id: None,
        head_only: false,
    };
    let mut done = answer(ex, conn, response).await;
    // After a failed exchange the request body may be half read: never reuse.
    if status >= 500 || status == 413 {
        done.keep_client = false;
    }
    done
}

/// Relays bytes both ways after a protocol switch until both sides close.
async fn tunnel(conn: ClientConn, upstream: UpstreamConn) {
    let ClientConn {
        stream,
        buf,
        upstream_buf,
        ..
    } = conn;
    let mut upstream_stream = upstream.stream;
    let mut early = buf;
    if !early.is_empty()
        && write_all(&mut upstream_stream, &mut early, Duration::from_secs(30))
            .await
            .is_err()
    {
        return;
    }
    drop(upstream_buf);
    let (mut client_read, mut client_write) = stream.into_split();
    let (mut upstream_read, mut upstream_write) = upstream_stream.into_split();
    let to_upstream = async {
        let _ = monoio::io::copy(&mut client_read, &mut upstream_write).await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut upstream_write).await;
    };
    let to_client = async {
        let _ = monoio::io::copy(&mut upstream_read, &mut client_write).await;
        let _ = monoio::io::AsyncWriteRent::shutdown(&mut client_write).await;
    };
    monoio::join!(to_upstream, to_client);
}
