//! Workers: threads, CPU pinning, per-worker SO_REUSEPORT listeners, accept loops and drain.

pub mod sizing;
