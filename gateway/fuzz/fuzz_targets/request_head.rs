//! Fuzzes the request-head parser (`tollgate::http::parse_request`) with
//! arbitrary bytes. Besides "never panics", it checks properties the proxy
//! relies on: every range points inside the head, bytes after the head do not
//! change it, a head is complete only at its end, and looser limits never
//! reject what tighter limits accept.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::http::{parse_request, HttpError, RequestHead, RequestLimits};

fuzz_target!(|data: &[u8]| {
    let loose = RequestLimits::default();
    // Small limits reach the 414/431 paths with inputs libFuzzer actually generates.
    let tight = RequestLimits {
        max_header_bytes: 256,
        max_uri_bytes: 64,
    };
    let parsed = parse_checked(data, &loose);
    if let Ok(Some(head)) = parse_checked(data, &tight) {
        match &parsed {
            Ok(Some(accepted)) => assert_eq!(accepted.len, head.len),
            other => panic!("accepted under tight limits, {other:?} under the defaults"),
        }
    }
});

fn parse_checked(data: &[u8], limits: &RequestLimits) -> Result<Option<RequestHead>, HttpError> {
    let parsed = parse_request(data, limits);
    match &parsed {
        Ok(Some(head)) => check_head(data, head, limits),
        Ok(None) => assert!(
            data.len() < limits.max_header_bytes,
            "an incomplete head over the limit must be a 431"
        ),
        Err(_) => {}
    }
    parsed
}

fn check_head(data: &[u8], head: &RequestHead, limits: &RequestLimits) {
    let len = head.len;
    assert!(len > 0 && len <= data.len() && len <= limits.max_header_bytes);
    let ranges = [
        Some(&head.method),
        Some(&head.target),
        Some(&head.path_and_query),
        head.host.as_ref(),
        head.upgrade.as_ref(),
    ];
    for range in ranges.into_iter().flatten() {
        assert!(
            range.start <= range.end && range.end <= len,
            "{range:?} outside the {len}-byte head"
        );
    }
    for header in &head.headers {
        assert!(header.name.end <= len && header.value.end <= len);
        // Header values reaching an upstream never carry line breaks or NUL.
        assert!(!header.value(data).iter().any(|b| matches!(b, b'\r' | b'\n' | 0)));
    }
    // The accessors the proxy calls must not panic on any accepted head.
    let _ = (
        head.method(data),
        head.path_and_query(data),
        head.host(data),
        head.is_idempotent(data),
    );

    let alone = parse_request(&data[..len], limits);
    assert!(
        matches!(&alone, Ok(Some(h)) if h.len == len),
        "trailing bytes changed the head: {alone:?}"
    );
    let short = parse_request(&data[..len - 1], limits);
    assert!(!matches!(short, Ok(Some(_))), "a head completed before its end");
}
