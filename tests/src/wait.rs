//! Bounded polling: tests wait for conditions with a deadline instead of
//! sleeping a fixed time.

use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it is true or `timeout` passes; returns
/// whether it became true.
pub fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
