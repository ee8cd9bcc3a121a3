//! Counters kept in the host's shared data (visible to every instance of every worker), stored as decimal
//! ASCII so a test or another plugin can read them. Increments use compare-and-swap with bounded retries.

use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

/// Counts requests seen by `on_http_request_headers`.
pub const HITS: &str = "probe-hits";
/// Counts items the root context took off the shared queue.
pub const DEQUEUED: &str = "probe-dequeued";
/// Counts `on_tick` calls.
pub const TICKS: &str = "probe-ticks";

/// Enough for many instances incrementing at once; a host whose CAS never succeeds is reported, not spun on.
const CAS_RETRIES: u32 = 32;

/// A stored counter's value; a missing or unparsable value counts as 0.
pub fn parse_count(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Stores 0 under `key` unless it exists, so later increments always carry a CAS token: without one the ABI
/// treats a write as unconditional, and two first writers could both store 1.
pub fn ensure(key: &str) -> Result<(), String> {
    let (value, _) = hostcalls::get_shared_data(key).map_err(|s| format!("get_shared_data({key}): {s:?}"))?;
    if value.is_some() {
        return Ok(());
    }
    match hostcalls::set_shared_data(key, Some(b"0"), None) {
        Ok(()) => Ok(()),
        Err(status) => Err(format!("set_shared_data({key}): {status:?}")),
    }
}

/// Adds one to the counter under `key` and returns the value this call stored.
pub fn increment(key: &str) -> Result<u64, String> {
    for _ in 0..CAS_RETRIES {
        let (value, cas) = hostcalls::get_shared_data(key).map_err(|s| format!("get_shared_data({key}): {s:?}"))?;
        let next = parse_count(value.as_deref()) + 1;
        match hostcalls::set_shared_data(key, Some(next.to_string().as_bytes()), cas) {
            Ok(()) => return Ok(next),
            Err(Status::CasMismatch) => continue,
            Err(status) => return Err(format!("set_shared_data({key}): {status:?}")),
        }
    }
    Err(format!(
        "set_shared_data({key}): CAS mismatch {CAS_RETRIES} times in a row"
    ))
}

/// The counter's current value (0 when missing).
pub fn read(key: &str) -> Result<u64, String> {
    let (value, _) = hostcalls::get_shared_data(key).map_err(|s| format!("get_shared_data({key}): {s:?}"))?;
    Ok(parse_count(value.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_count_reads_decimal_and_defaults_to_zero() {
        assert_eq!(parse_count(Some(b"41")), 41);
        assert_eq!(parse_count(Some(b" 7\n")), 7);
        assert_eq!(parse_count(None), 0);
        assert_eq!(parse_count(Some(b"")), 0);
        assert_eq!(parse_count(Some(b"x1")), 0);
        assert_eq!(parse_count(Some(&[0xff, 0x31])), 0);
    }
}
