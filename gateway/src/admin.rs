//! The admin HTTP listener on the control thread: `/metrics` (Prometheus),
//! `/healthz` (the process is alive) and `/readyz` (workers accept traffic).
//! It runs apart from the data plane so scrapes and probes never compete with
//! proxied requests.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::config::Snapshot;

/// A client must send its request head within this time.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the admin endpoints read.
pub struct AdminState {
    live: Arc<ArcSwap<Snapshot>>,
    /// True while workers accept traffic: set once they started, cleared when
    /// draining (prefer `mark_ready` / `mark_draining`, which also set the
    /// reason `/readyz` reports).
    pub ready: AtomicBool,
    draining: AtomicBool,
}

impl AdminState {
    pub fn new(live: Arc<ArcSwap<Snapshot>>) -> AdminState {
        AdminState {
            live,
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    pub fn mark_ready(&self) {
        self.draining.store(false, Ordering::SeqCst);
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Makes `/readyz` answer 503 "draining" so load balancers stop sending.
    pub fn mark_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.ready.store(false, Ordering::SeqCst);
    }
}

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, state: Arc<AdminState>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = respond(&state, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn respond(state: &AdminState, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match path {
        "/metrics" => {
            let snapshot = state.live.load();
            let body = crate::metrics::encode(&snapshot);
            // The body is valid in both formats; answer in the one asked for.
            let openmetrics = request
                .headers()
                .get_all(ACCEPT)
                .iter()
                .any(|value| value.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let content_type = if openmetrics { OPENMETRICS_TEXT } else { PROMETHEUS_TEXT };
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        _ if state.ready.load(Ordering::SeqCst) => text(StatusCode::OK, "ready\n"),
        _ if state.draining.load(Ordering::SeqCst) => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::config::{parse_yaml, DEFAULT_CONFIG};

    async fn start() -> (SocketAddr, Arc<AdminState>) {
        let snapshot = Snapshot::build(parse_yaml(DEFAULT_CONFIG).unwrap(), None).unwrap();
        let state = Arc::new(AdminState::new(Arc::new(ArcSwap::from_pointee(snapshot))));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, state.clone()));
        (addr, state)
    }

    /// Sends one raw request and returns the whole response.
    async fn get(addr: SocketAddr, method: &str, path: &str, extra: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
            .await
            .expect("response within 5 s")
            .unwrap();
        response
    }

    fn status_and_body(response: &str) -> (&str, &str) {
        let status = response.split(' ').nth(1).unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1;
        (status, body)
    }

    #[tokio::test]
    async fn health_readiness_and_errors() {
        let (addr, state) = start().await;
        assert_eq!(
            status_and_body(&get(addr, "GET", "/healthz", "").await),
            ("200", "ok\n")
        );
        assert_eq!(
            status_and_body(&get(addr, "GET", "/readyz", "").await),
            ("503", "starting\n")
        );
        state.mark_ready();
        assert_eq!(
            status_and_body(&get(addr, "GET", "/readyz", "").await),
            ("200", "ready\n")
        );
        state.mark_draining();
        assert_eq!(
            status_and_body(&get(addr, "GET", "/readyz", "").await),
            ("503", "draining\n")
        );
        assert_eq!(status_and_body(&get(addr, "GET", "/nope", "").await).0, "404");
        let post = get(addr, "POST", "/metrics", "Content-Length: 0\r\n").await;
        assert_eq!(status_and_body(&post).0, "405");
        assert!(post.to_ascii_lowercase().contains("\r\nallow: get\r\n"), "{post}");
    }

    #[tokio::test]
    async fn metrics_in_prometheus_text() {
        let (addr, state) = start().await;
        crate::metrics::route_stats("admin-test.example", "admin-route").record(0, 200, 1, 2);
        let response = get(addr, "GET", "/metrics", "").await;
        let (status, body) = status_and_body(&response);
        assert_eq!(status, "200");
        let lower = response.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{response}"
        );
        let generation = state.live.load().generation;
        assert!(
            body.lines()
                .any(|l| l == format!("tollgate_config_generation {generation}")),
            "{body}"
        );
        assert!(
            body.contains(
                "tollgate_requests_total{host=\"admin-test.example\",route=\"admin-route\",class=\"2xx\"} 1\n"
            ),
            "{body}"
        );
        assert!(
            body.contains("tollgate_endpoint_healthy{cluster=\"example\",endpoint=\"127.0.0.1:8081\"} 1\n"),
            "{body}"
        );

        let open = get(
            addr,
            "GET",
            "/metrics",
            "Accept: application/openmetrics-text; version=1.0.0\r\n",
        )
        .await;
        assert!(
            open.to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
            "{open}"
        );
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
