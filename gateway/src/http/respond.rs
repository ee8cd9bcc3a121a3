//! Responses Tollgate writes itself: errors, direct responses, redirects and
//! `100 Continue`. Every generated response carries Date, Server and an exact
//! Content-Length.

use std::fmt::Write as _;
use std::time::SystemTime;

/// Reason phrases for the statuses Tollgate generates or is configured with.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// A generated response, written into `out`.
pub struct Generated<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub close: bool,
    /// HTTP/1.0 client that asked for keep-alive: say so explicitly.
    pub keep_alive_1_0: bool,
    pub location: Option<&'a str>,
    pub request_id: Option<(&'a str, &'a str)>,
    /// Strict-Transport-Security value.
    pub hsts: Option<&'a str>,
    /// HEAD: headers only.
    pub head_only: bool,
    /// More headers (a plugin's local response); framing and connection
    /// headers among them are ignored, Tollgate writes its own.
    pub extra_headers: &'a [(Vec<u8>, Vec<u8>)],
}

/// Headers a generated response always writes itself.
const OWN_HEADERS: &[&[u8]] = &[
    b"content-length",
    b"content-type",
    b"transfer-encoding",
    b"connection",
    b"keep-alive",
    b"date",
    b"server",
];

impl<'a> Generated<'a> {
    /// A response with no extra headers that closes the connection; callers
    /// set what differs with struct update syntax.
    pub fn new(status: u16, content_type: &'a str, body: &'a [u8]) -> Generated<'a> {
        Generated {
            status,
            content_type,
            body,
            close: true,
            keep_alive_1_0: false,
            location: None,
            request_id: None,
            hsts: None,
            head_only: false,
            extra_headers: &[],
        }
    }

    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut head = String::with_capacity(256);
        let _ = write!(
            head,
            "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: tollgate\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            httpdate::fmt_http_date(SystemTime::now()),
            self.content_type,
            self.body.len()
        );
        if let Some(location) = self.location {
            let _ = write!(head, "Location: {location}\r\n");
        }
        if let Some((name, value)) = self.request_id {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if let Some(hsts) = self.hsts {
            let _ = write!(head, "Strict-Transport-Security: {hsts}\r\n");
        }
        for (name, value) in self.extra_headers {
            let own = OWN_HEADERS.iter().any(|own| name.eq_ignore_ascii_case(own));
            // Names and values that would split the head are dropped, not written.
            let valid = !name.is_empty()
                && name.iter().all(|&b| b.is_ascii_graphic() && b != b':')
                && !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
            if own || !valid {
                continue;
            }
            head.push_str(&String::from_utf8_lossy(name));
            head.push_str(": ");
            head.push_str(&String::from_utf8_lossy(value));
            head.push_str("\r\n");
        }
        if self.close {
            head.push_str("Connection: close\r\n");
        } else if self.keep_alive_1_0 {
            head.push_str("Connection: keep-alive\r\n");
        }
        head.push_str("\r\n");
        out.extend_from_slice(head.as_bytes());
        if !self.head_only {
            out.extend_from_slice(self.body);
        }
    }
}

/// The body of a generated error response.
pub fn error_body(status: u16, message: &str) -> String {
    format!("{status} {}: {message}\n", reason(status))
}

pub const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// A short plain-text error response that closes the connection.
pub fn error(status: u16, message: &str, out: &mut Vec<u8>) {
    Generated::new(status, TEXT_PLAIN, error_body(status, message).as_bytes()).write_to(out);
}

pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_is_well_formed() {
        let mut out = Vec::new();
        error(431, "header too large", &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", body.len())));
    }
}
