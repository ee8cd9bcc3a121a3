//! HTTP/1.x message heads: parsing requests and responses with httparse, the
//! RFC 9112 framing rules (Content-Length, Transfer-Encoding, no-body
//! responses) and the checks that keep smuggling-prone input away from
//! upstreams. Heads are described by byte ranges into the read buffer so the
//! buffer can move in and out of io_uring operations while the head is in use.

use std::ops::Range;

use super::HttpError;

/// Header slots handed to httparse; more headers than this is a 431.
pub const MAX_HEADERS: usize = 128;

/// Room for the method and version around the target on the request line.
const REQUEST_LINE_OVERHEAD: usize = 32;

#[derive(Debug, Clone)]
pub struct RequestLimits {
    /// Request line plus headers.
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_header_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    ContentLength(u64),
    Chunked,
    /// Response bodies only: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderRange {
    pub name: Range<usize>,
    pub value: Range<usize>,
}

impl HeaderRange {
    pub fn name<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.name.clone()]
    }

    pub fn value<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.value.clone()]
    }
}

/// Connection-level facts gathered from `Connection`, `Upgrade`, `Expect`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionOptions {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    /// Header names listed in `Connection` (lower-case), which are hop-by-hop.
    pub listed: Vec<Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct RequestHead {
    /// Bytes of the head, including the blank line.
    pub len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: Vec<HeaderRange>,
    pub framing: BodyFraming,
    /// The authority: from an absolute-form target, else the Host header.
    pub host: Option<Range<usize>>,
    /// Path and query of the target (origin-form part).
    pub path_and_query: Range<usize>,
    pub connection: ConnectionOptions,
    /// The value of `Upgrade`, when the client asked for a protocol switch.
    pub upgrade: Option<Range<usize>>,
    pub expect_continue: bool,
}

impl RequestHead {
    pub fn method<'b>(&self, buf: &'b [u8]) -> &'b str {
        // httparse only accepts token characters in the method.
        std::str::from_utf8(&buf[self.method.clone()]).unwrap_or("")
    }

    pub fn path_and_query<'b>(&self, buf: &'b [u8]) -> &'b str {
        // httparse only accepts visible ASCII in the target.
        std::str::from_utf8(&buf[self.path_and_query.clone()]).unwrap_or("/")
    }

    pub fn host<'b>(&self, buf: &'b [u8]) -> &'b str {
        self.host
            .clone()
            .and_then(|range| std::str::from_utf8(&buf[range]).ok())
            .unwrap_or("")
    }

    pub fn header<'b>(&self, buf: &'b [u8], name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name(buf).eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value(buf))
    }

    /// Whether the client lets the connection persist after this exchange.
    pub fn wants_keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.connection.keep_alive && !self.connection.close
        } else {
            !self.connection.close
        }
    }

    /// Safe to send twice (RFC 9110 §9.2.2).
    pub fn is_idempotent(&self, buf: &[u8]) -> bool {
        matches!(
            self.method(buf),
            "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
        )
    }
}

#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub len: usize,
    pub status: u16,
    pub reason: Range<usize>,
    pub minor_version: u8,
    pub headers: Vec<HeaderRange>,
    pub framing: BodyFraming,
    pub connection: ConnectionOptions,
}

fn offset_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

/// Parses a request head from the start of `buf`. `Ok(None)` means more bytes
/// are needed; errors carry the status to answer with.
pub fn parse_request(buf: &[u8], limits: &RequestLimits) -> Result<Option<RequestHead>, HttpError> {
    check_request_line_length(buf, limits)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let status = request.parse(buf).map_err(|error| match error {
        httparse::Error::TooManyHeaders => HttpError::HeadersTooLarge,
        httparse::Error::Version if names_http_version(buf) => HttpError::VersionNotSupported,
        httparse::Error::Version => HttpError::BadRequest("malformed HTTP version"),
        other => HttpError::BadRequest(parse_error_text(other)),
    })?;
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() >= limits.max_header_bytes => return Err(HttpError::HeadersTooLarge),
        httparse::Status::Partial => return Ok(None),
    };
    if len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge);
    }
    let method = offset_in(buf, request.method.unwrap_or_default().as_bytes());
    let target_str = request.path.unwrap_or_default();
    let target = offset_in(buf, target_str.as_bytes());
    if target.len() > limits.max_uri_bytes {
        return Err(HttpError::UriTooLong);
    }
    let minor_version = request.version.unwrap_or(1);
    let headers = header_ranges(buf, request.headers)?;
    let method_str = request.method.unwrap_or_default();
    if method_str == "CONNECT" {
        return Err(HttpError::MethodNotAllowed);
    }

    let (path_and_query, target_authority) = split_target(target_str, method_str)?;
    let path_and_query = offset_in(buf, path_and_query.as_bytes());
    let target_authority = target_authority.map(|a| offset_in(buf, a.as_bytes()));

    let mut host = None;
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding_seen = false;
    let mut chunked_last = false;
    let mut connection = ConnectionOptions::default();
    let mut upgrade = None;
    let mut expect_continue = false;
    for header in &headers {
        let name = header.name(buf);
        let value = header.value(buf);
        if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(HttpError::BadRequest("more than one Host header"));
            }
            if !is_valid_authority(value) {
                return Err(HttpError::BadRequest("invalid Host header"));
            }
            host = Some(header.value.clone());
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let parsed = parse_content_length(value)?;
            if content_length.is_some_and(|existing| existing != parsed) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked_last = scan_transfer_encoding(value, transfer_encoding_seen && chunked_last)?;
            transfer_encoding_seen = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            scan_connection(value, &mut connection);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = Some(header.value.clone());
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                expect_continue = true;
            } else {
                return Err(HttpError::ExpectationFailed);
            }
        }
    }
    let framing = match (transfer_encoding_seen, content_length) {
        (true, Some(_)) => return Err(HttpError::BadRequest("both Content-Length and Transfer-Encoding")),
        (true, None) if minor_version == 0 => {
            return Err(HttpError::BadRequest("Transfer-Encoding in an HTTP/1.0 request"))
        }
        (true, None) if !chunked_last => {
            return Err(HttpError::BadRequest("Transfer-Encoding does not end in chunked"))
        }
        (true, None) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(length)) => BodyFraming::ContentLength(length),
    };
    if minor_version == 1 && host.is_none() {
        return Err(HttpError::BadRequest("missing Host header"));
    }
    if !connection.upgrade {
        upgrade = None;
    }
    if minor_version == 0 {
        expect_continue = false;
    }
    Ok(Some(RequestHead {
        len,
        method,
        target,
        minor_version,
        headers,
        framing,
        host: target_authority.or(host),
        path_and_query,
        connection,
        upgrade,
        expect_continue,
    }))
}

/// A request line longer than any allowed target is a 414 even before the
/// rest of the head arrives, so a client cannot hold a buffer with it.
fn check_request_line_length(buf: &[u8], limits: &RequestLimits) -> Result<(), HttpError> {
    let line_limit = limits.max_uri_bytes + REQUEST_LINE_OVERHEAD;
    let scanned = &buf[..buf.len().min(line_limit + 1)];
    match scanned.iter().position(|&b| b == b'\n') {
        None if buf.len() > line_limit => Err(HttpError::UriTooLong),
        _ => Ok(()),
    }
}

/// Splits a request target into the origin-form part and, for absolute-form,
/// the authority it names (RFC 9112 §3.2).
fn split_target<'a>(target: &'a str, method: &str) -> Result<(&'a str, Option<&'a str>), HttpError> {
    if target.starts_with('/') {
        return Ok((target, None));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok((target, None))
        } else {
            Err(HttpError::BadRequest("invalid request target"))
        };
    }
    let scheme_len = ["http://", "https://"]
        .iter()
        .find(|scheme| {
            // Bytes, not str slicing: the target may hold non-ASCII bytes
            // right after the scheme, and a str cut there would panic.
            target.len() > scheme.len() && target.as_bytes()[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
        })
        .map(|scheme| scheme.len())
        .ok_or(HttpError::BadRequest("invalid request target"))?;
    let rest = &target[scheme_len..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if authority.is_empty() || authority.contains('@') || !is_valid_authority(authority.as_bytes()) {
        return Err(HttpError::BadRequest("invalid authority in request target"));
    }
    // "http://host" and "http://host?q" name the root (RFC 9112 §3.2.2): the
    // writer adds the missing "/".
    Ok((&rest[authority_end..], Some(authority)))
}

fn is_valid_authority(value: &[u8]) -> bool {
    !value.is_empty()
        && value.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'.' | b'-'
                        | b'_'
                        | b':'
                        | b'['
                        | b']'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        })
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let mut parsed: Option<u64> = None;
    // A list of identical values ("5, 5") is allowed (RFC 9110 §8.6).
    for part in value.split(|&b| b == b',') {
        let part = trim_ows(part);
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return Err(HttpError::BadRequest("invalid Content-Length"));
        }
        let number = part.iter().fold(0u64, |acc, &d| acc * 10 + u64::from(d - b'0'));
        if parsed.is_some_and(|p| p != number) {
            return Err(HttpError::BadRequest("conflicting Content-Length values"));
        }
        parsed = Some(number);
    }
    parsed.ok_or(HttpError::BadRequest("invalid Content-Length"))
}

/// Returns whether the last coding is `chunked`; chunked must be last and
/// appear once.
fn scan_transfer_encoding(value: &[u8], chunked_already_last: bool) -> Result<bool, HttpError> {
    let mut chunked_last = chunked_already_last;
    let mut any = false;
    for coding in value.split(|&b| b == b',') {
        let coding = trim_ows(coding);
        if coding.is_empty() {
            continue;
        }
        if chunked_last {
            return Err(HttpError::BadRequest("coding applied after chunked"));
        }
        chunked_last = coding.eq_ignore_ascii_case(b"chunked");
        any = true;
    }
    if !any && !chunked_already_last {
        return Err(HttpError::BadRequest("empty Transfer-Encoding"));
    }
    Ok(chunked_last)
}

fn scan_connection(value: &[u8], options: &mut ConnectionOptions) {
    for token in value.split(|&b| b == b',') {
        let token = trim_ows(token);
        if token.eq_ignore_ascii_case(b"close") {
            options.close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            options.keep_alive = true;
        } else if token.eq_ignore_ascii_case(b"upgrade") {
            options.upgrade = true;
        } else if !token.is_empty() {
            options.listed.push(token.to_ascii_lowercase());
        }
    }
}

fn trim_ows(mut bytes: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = bytes {
        bytes = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = bytes {
        bytes = rest;
    }
    bytes
}

/// Field values may hold HTAB, SP, visible ASCII and obs-text; NUL, CR, LF and
/// other controls are rejected (RFC 9110 §5.5).
fn header_ranges(buf: &[u8], headers: &[httparse::Header<'_>]) -> Result<Vec<HeaderRange>, HttpError> {
    let mut ranges = Vec::with_capacity(headers.len());
    for header in headers {
        if header.value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(HttpError::BadRequest("invalid character in a header value"));
        }
        ranges.push(HeaderRange {
            name: offset_in(buf, header.name.as_bytes()),
            value: offset_in(buf, header.value),
        });
    }
    Ok(ranges)
}

/// Whether the request line ends in a well-formed `HTTP/x.y` (so an
/// unsupported version is a 505 rather than a syntax error).
fn names_http_version(buf: &[u8]) -> bool {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = buf[..line_end].strip_suffix(b"\r").unwrap_or(&buf[..line_end]);
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor] if major.is_ascii_digit() && minor.is_ascii_digit())
}

fn parse_error_text(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine | httparse::Error::Status => "malformed request line",
        httparse::Error::Token => "invalid method",
        _ => "malformed request",
    }
}

/// Parses an upstream response head. `request_method_head` and the status
/// decide whether a body follows (RFC 9112 §6.3).
pub fn parse_response(
    buf: &[u8],
    max_header_bytes: usize,
    request_method_head: bool,
) -> Result<Option<ResponseHead>, HttpError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max_header_bytes => {
            return Err(HttpError::BadGateway("upstream response head too large"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::BadGateway("malformed upstream response")),
    };
    let status = response.code.unwrap_or(0);
    let reason = offset_in(buf, response.reason.unwrap_or_default().as_bytes());
    let minor_version = response.version.unwrap_or(1);
    let headers = header_ranges(buf, response.headers).map_err(|_| HttpError::BadGateway("invalid upstream header"))?;
    let mut content_length = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut connection = ConnectionOptions::default();
    for header in &headers {
        let name = header.name(buf);
        let value = header.value(buf);
        if name.eq_ignore_ascii_case(b"content-length") {
            let parsed =
                parse_content_length(value).map_err(|_| HttpError::BadGateway("invalid upstream Content-Length"))?;
            if content_length.is_some_and(|existing| existing != parsed) {
                return Err(HttpError::BadGateway("conflicting upstream Content-Length"));
            }
            content_length = Some(parsed);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            chunked = value
                .split(|&b| b == b',')
                .map(trim_ows)
                .rfind(|c| !c.is_empty())
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            scan_connection(value, &mut connection);
        }
    }
    let framing = if request_method_head || (100..200).contains(&status) || status == 204 || status == 304 {
        BodyFraming::None
    } else if transfer_encoding {
        if chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match content_length {
            Some(0) => BodyFraming::None,
            Some(length) => BodyFraming::ContentLength(length),
            None => BodyFraming::UntilClose,
        }
    };
    Ok(Some(ResponseHead {
        len,
        status,
        reason,
        minor_version,
        headers,
        framing,
        connection,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Option<RequestHead>, HttpError> {
        parse_request(raw.as_bytes(), &RequestLimits::default())
    }

    #[test]
    fn parses_a_simple_request() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: Example.com:8080\r\nX: y\r\n\r\nrest";
        let head = parse(raw).unwrap().unwrap();
        assert_eq!(head.len, raw.len() - 4);
        assert_eq!(head.method(raw.as_bytes()), "GET");
        assert_eq!(head.path_and_query(raw.as_bytes()), "/a?b=1");
        assert_eq!(head.host(raw.as_bytes()), "Example.com:8080");
        assert_eq!(head.framing, BodyFraming::None);
        assert!(head.wants_keep_alive());
    }

    #[test]
    fn non_ascii_after_the_scheme_is_rejected_without_panic() {
        // Found by the request_head fuzz target: slicing the target as str at
        // the scheme's length cut a multibyte character.
        for raw in [
            &b"GET http:/\xC7\x9Ax HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            b"GET htt\xC7\x9A//x HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(matches!(
                parse_request(raw, &RequestLimits::default()),
                Err(HttpError::BadRequest(_))
            ));
        }
    }

    #[test]
    fn version_errors() {
        assert_eq!(
            parse("GET / HTTP/2.0\r\nHost: a\r\n\r\n").unwrap_err(),
            HttpError::VersionNotSupported
        );
        assert!(matches!(
            parse("GET / HTTQ/1.1\r\nHost: a\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
        assert!(matches!(
            parse("GET / HTTP/1.x\r\nHost: a\r\n\r\n"),
            Err(HttpError::BadRequest(_))
        ));
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert!(parse("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn framing_rules() {
        let cl = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(cl.framing, BodyFraming::ContentLength(5));
        let same = parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(same.framing, BodyFraming::ContentLength(5));
        let te = parse("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(te.framing, BodyFraming::Chunked);
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        for raw in [
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET example HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(
                matches!(parse(raw), Err(HttpError::BadRequest(_))),
                "{raw:?} gave {:?}",
                parse(raw)
            );
        }
    }

    #[test]
    fn limits_give_414_and_431() {
        let limits = RequestLimits {
            max_header_bytes: 1024,
            max_uri_bytes: 100,
        };
        let long_uri = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(200));
        assert!(matches!(
            parse_request(long_uri.as_bytes(), &limits),
            Err(HttpError::UriTooLong)
        ));
        let partial_long_uri = format!("GET /{}", "a".repeat(200));
        assert!(matches!(
            parse_request(partial_long_uri.as_bytes(), &limits),
            Err(HttpError::UriTooLong)
        ));
        let big = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "b".repeat(2000));
        assert!(matches!(
            parse_request(big.as_bytes(), &limits),
            Err(HttpError::HeadersTooLarge)
        ));
        let many: String = (0..200).map(|i| format!("X{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert!(matches!(parse(&many), Err(HttpError::HeadersTooLarge)));
    }

    #[test]
    fn absolute_form_overrides_host() {
        let raw = "GET http://api.test:81/x?y HTTP/1.1\r\nHost: other\r\n\r\n";
        let head = parse(raw).unwrap().unwrap();
        assert_eq!(head.host(raw.as_bytes()), "api.test:81");
        assert_eq!(head.path_and_query(raw.as_bytes()), "/x?y");
    }

    #[test]
    fn connection_options() {
        let raw = "GET / HTTP/1.0\r\nConnection: keep-alive, X-Foo\r\n\r\n";
        let head = parse(raw).unwrap().unwrap();
        assert!(head.wants_keep_alive());
        assert_eq!(head.connection.listed, vec![b"x-foo".to_vec()]);
        let raw = "GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let head = parse(raw).unwrap().unwrap();
        assert!(head.upgrade.is_some());
        assert!(!parse("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().wants_keep_alive());
    }

    #[test]
    fn response_framing() {
        let parse_resp = |raw: &str, head: bool| parse_response(raw.as_bytes(), 65536, head).unwrap().unwrap();
        assert_eq!(
            parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", false).framing,
            BodyFraming::ContentLength(3)
        );
        assert_eq!(
            parse_resp("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true).framing,
            BodyFraming::None
        );
        assert_eq!(parse_resp("HTTP/1.1 204 No\r\n\r\n", false).framing, BodyFraming::None);
        assert_eq!(
            parse_resp("HTTP/1.1 200 OK\r\n\r\n", false).framing,
            BodyFraming::UntilClose
        );
        assert_eq!(
            parse_resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false).framing,
            BodyFraming::Chunked
        );
        assert!(parse_response(b"garbage\r\n\r\n", 65536, false).is_err());
    }
}
