//! The probe's per-request HTTP context: what it reads and writes on each stream, in callback order.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::{counters, Handles};

/// Request headers sent upstream, each filled from one host property ("-" when missing or empty).
const PROPERTY_HEADERS: [(&str, &[&str]); 12] = [
    ("x-probe-path", &["request", "path"]),
    ("x-probe-method", &["request", "method"]),
    ("x-probe-host", &["request", "host"]),
    ("x-probe-id", &["request", "id"]),
    ("x-probe-scheme", &["request", "scheme"]),
    ("x-probe-protocol", &["request", "protocol"]),
    ("x-probe-source", &["source", "address"]),
    ("x-probe-destination", &["destination", "address"]),
    ("x-probe-route", &["route_name"]),
    ("x-probe-cluster", &["cluster_name"]),
    ("x-probe-plugin", &["plugin_name"]),
    ("x-probe-tls-version", &["connection", "tls_version"]),
];

const CALLOUT_PATH: &str = "/probe-callout";
const CALLOUT_TIMEOUT: Duration = Duration::from_secs(1);
/// Status for `x-probe-deny` values that are not a usable HTTP status.
const DEFAULT_DENY_STATUS: u32 = 403;

/// The status `x-probe-deny: <value>` answers with: the value when it is a status from 200 to 599.
pub fn deny_status(value: &str) -> u32 {
    match value.trim().parse::<u32>() {
        Ok(status) if (200..=599).contains(&status) => status,
        _ => DEFAULT_DENY_STATUS,
    }
}

/// A property's value as a header value; `None` for a property the host does not have (or an error).
fn property_value(path: &[&str]) -> Option<Vec<u8>> {
    match hostcalls::get_property(path.to_vec()) {
        Ok(Some(value)) if !value.is_empty() => Some(value),
        Ok(_) => None,
        Err(status) => {
            log::warn!("test-probe: get_property({}): {status:?}", path.join("."));
            None
        }
    }
}

pub struct ProbeStream {
    handles: Rc<Handles>,
    /// Value for `x-probe-hits`, decided when the request was counted.
    hits: Option<String>,
    echo_body: bool,
    body_bytes: u64,
    counted_inflight: bool,
}

impl ProbeStream {
    pub fn new(handles: Rc<Handles>) -> ProbeStream {
        ProbeStream {
            handles,
            hits: None,
            echo_body: false,
            body_bytes: 0,
            counted_inflight: false,
        }
    }

    fn update_metric(&self, id: u32, offset: i64) {
        if let Err(status) = hostcalls::increment_metric(id, offset) {
            log::warn!("test-probe: increment_metric({id}, {offset}): {status:?}");
        }
    }

    fn callout_failed(&self) {
        self.send_http_response(502, vec![("x-probe", "callout-failed")], Some(b"probe callout failed"));
    }
}

impl Context for ProbeStream {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        let status = if num_headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status")
        };
        let Some(status) = status else {
            log::warn!("test-probe: callout failed (no response headers)");
            self.callout_failed();
            return;
        };
        let body_len = self
            .get_http_call_response_body(0, body_size)
            .map_or(0, |body| body.len());
        self.set_http_request_header("x-probe-call-status", Some(&status));
        self.set_http_request_header("x-probe-call-body-bytes", Some(&body_len.to_string()));
        self.resume_http_request();
    }
}

impl HttpContext for ProbeStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.update_metric(self.handles.requests_total, 1);
        self.update_metric(self.handles.inflight, 1);
        self.counted_inflight = true;
        self.hits = Some(match counters::increment(counters::HITS) {
            Ok(hits) => hits.to_string(),
            Err(message) => {
                log::warn!("test-probe: {message}");
                "error".to_string()
            }
        });

        // Bytes, not the SDK's String getter: that one panics on a path that is not UTF-8.
        let path = self.get_http_request_header_bytes(":path").unwrap_or_default();
        log::info!("probe saw {}", String::from_utf8_lossy(&path));
        if let Err(status) = hostcalls::enqueue_shared_queue(self.handles.queue_id, Some(&path)) {
            log::warn!(
                "test-probe: enqueue_shared_queue({}): {status:?}",
                self.handles.queue_id
            );
        }

        for (header, property) in PROPERTY_HEADERS {
            let value = property_value(property).unwrap_or_else(|| b"-".to_vec());
            self.set_http_request_header_bytes(header, Some(&value));
        }

        if let Some(value) = self.get_http_request_header("x-probe-deny") {
            self.send_http_response(
                deny_status(&value),
                vec![("x-probe", "denied")],
                Some(b"denied by probe"),
            );
            return Action::Pause;
        }

        if self.get_http_request_header_bytes("x-probe-echo-body").is_some() {
            self.echo_body = true;
            // The body is rewritten after the headers went through this callback: its length is not promised.
            self.set_http_request_header("content-length", None);
        }

        if let Some(cluster) = self.get_http_request_header("x-probe-call") {
            let headers = vec![
                (":method", "GET"),
                (":path", CALLOUT_PATH),
                (":authority", cluster.as_str()),
            ];
            return match self.dispatch_http_call(&cluster, headers, None, vec![], CALLOUT_TIMEOUT) {
                Ok(_token) => Action::Pause,
                Err(status) => {
                    log::warn!("test-probe: dispatch_http_call({cluster}): {status:?}");
                    self.callout_failed();
                    Action::Pause
                }
            };
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.echo_body {
            self.body_bytes += body_size as u64;
            return Action::Continue;
        }
        if !end_of_stream {
            // Pause from a body callback asks the host to keep buffering; the next call sees the whole body.
            return Action::Pause;
        }
        self.body_bytes = body_size as u64;
        if let Some(body) = self.get_http_request_body(0, body_size) {
            self.set_http_request_body(0, body_size, &body.to_ascii_uppercase());
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        // Names the trailers it saw in a request header: a host that builds the
        // upstream head after the body (a buffered body) forwards it.
        let names: Vec<String> = self
            .get_http_request_trailers()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        self.set_http_request_header("x-probe-trailers", Some(&names.join(",")));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-probe-response", Some("1"));
        self.set_http_response_header("x-probe-hits", Some(self.hits.as_deref().unwrap_or("-")));
        for (header, key) in [
            ("x-probe-dequeued", counters::DEQUEUED),
            ("x-probe-ticks", counters::TICKS),
        ] {
            let value = counters::read(key).map_or_else(
                |message| {
                    log::warn!("test-probe: {message}");
                    "error".to_string()
                },
                |count| count.to_string(),
            );
            self.set_http_response_header(header, Some(&value));
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.counted_inflight {
            self.update_metric(self.handles.inflight, -1);
        }
        if let Err(status) = hostcalls::record_metric(self.handles.body_bytes, self.body_bytes) {
            log::warn!("test-probe: record_metric({}): {status:?}", self.handles.body_bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deny_status_accepts_200_to_599_and_falls_back_to_403() {
        assert_eq!(deny_status("418"), 418);
        assert_eq!(deny_status(" 200 "), 200);
        assert_eq!(deny_status("599"), 599);
        assert_eq!(deny_status("199"), 403);
        assert_eq!(deny_status("600"), 403);
        assert_eq!(deny_status("yes"), 403);
        assert_eq!(deny_status(""), 403);
    }
}
