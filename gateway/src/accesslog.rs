//! The access log: one JSON object per request, buffered per worker and
//! written to stdout or a file in whole lines.
//!
//! Each worker owns its writer (its own descriptor, its own buffer), so
//! logging takes no lock shared with other workers. Lines from different
//! workers never interleave mid-line: a file is opened with O_APPEND and each
//! flush is one write(2) of whole lines; on stdout, which may be a pipe, each
//! write(2) holds whole lines and at most PIPE_BUF bytes when it can, since
//! only writes up to PIPE_BUF are atomic on a pipe.

use std::fmt::Display;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use serde::{Serialize, Serializer};

use crate::config::AccessLogTarget;

/// Buffered bytes that trigger a write.
const FLUSH_THRESHOLD: usize = 16 * 1024;
/// Linux's PIPE_BUF: the largest write to a pipe that is not interleaved.
const PIPE_BUF: usize = 4096;

/// One finished request.
pub struct AccessEntry<'a> {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub host: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    /// Response bytes sent to the client.
    pub bytes: u64,
    pub upstream: Option<SocketAddr>,
    pub upstream_time: Option<Duration>,
    pub total_time: Duration,
    pub request_id: &'a str,
    /// The CPU that received the connection's packets (`SO_INCOMING_CPU`).
    pub incoming_cpu: Option<u32>,
}

/// Where a request ran, added to its line by the worker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub worker: usize,
    /// The CPU the worker is pinned to; None when unpinned.
    pub worker_cpu: Option<usize>,
}

/// The JSON shape of a line.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(serialize_with = "as_display")]
    time: humantime::Rfc3339Timestamp,
    #[serde(serialize_with = "as_display")]
    client: SocketAddr,
    host: &'a str,
    method: &'a str,
    path: &'a str,
    status: u16,
    bytes: u64,
    #[serde(serialize_with = "as_optional_display")]
    upstream: Option<SocketAddr>,
    upstream_time_ms: Option<f64>,
    total_time_ms: f64,
    request_id: &'a str,
    worker: usize,
    worker_cpu: Option<usize>,
    incoming_cpu: Option<u32>,
}

fn as_display<T: Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn as_optional_display<T: Display, S: Serializer>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => serializer.collect_str(value),
        None => serializer.serialize_none(),
    }
}

/// Milliseconds with microsecond precision.
fn millis(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

enum Sink {
    Off,
    Stdout(File),
    File(File),
}

/// A worker's access log writer; not shared between workers.
pub struct AccessLogWriter {
    sink: Sink,
    buffer: Vec<u8>,
    /// Set after a failed write so a broken sink warns once, not per flush.
    failing: bool,
}

impl AccessLogWriter {
    pub fn open(target: &AccessLogTarget) -> io::Result<AccessLogWriter> {
        let sink = match target {
            AccessLogTarget::Off => Sink::Off,
            // A descriptor of our own: std's Stdout would take a process-wide lock.
            AccessLogTarget::Stdout => Sink::Stdout(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
            AccessLogTarget::File(path) => Sink::File(OpenOptions::new().create(true).append(true).open(path)?),
        };
        Ok(AccessLogWriter {
            sink,
            buffer: Vec::with_capacity(FLUSH_THRESHOLD + 1024),
            failing: false,
        })
    }

    /// Whether lines are dropped (`path: off`).
    pub fn is_off(&self) -> bool {
        matches!(self.sink, Sink::Off)
    }

    /// Buffers the entry's line; writes the buffer once it holds 16 KiB.
    pub fn write(&mut self, entry: &AccessEntry, placement: &Placement) {
        if self.is_off() {
            return;
        }
        let line = Line {
            time: humantime::format_rfc3339_millis(entry.time),
            client: entry.client,
            host: entry.host,
            method: entry.method,
            path: entry.path,
            status: entry.status,
            bytes: entry.bytes,
            upstream: entry.upstream,
            upstream_time_ms: entry.upstream_time.map(millis),
            total_time_ms: millis(entry.total_time),
            request_id: entry.request_id,
            worker: placement.worker,
            worker_cpu: placement.worker_cpu,
            incoming_cpu: entry.incoming_cpu,
        };
        let start = self.buffer.len();
        if serde_json::to_writer(&mut self.buffer, &line).is_err() {
            // Serializing strings and numbers cannot fail; never leave half a line.
            self.buffer.truncate(start);
            return;
        }
        self.buffer.push(b'\n');
        if self.buffer.len() >= FLUSH_THRESHOLD {
            self.flush();
        }
    }

    /// Writes every buffered line. Call when the worker is idle and before
    /// it exits; dropping the writer flushes too.
    pub fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        let result = match &mut self.sink {
            Sink::Off => Ok(()),
            Sink::File(file) => file.write_all(&self.buffer),
            Sink::Stdout(file) => write_pipe_safe(file, &self.buffer),
        };
        self.buffer.clear();
        match result {
            Ok(()) => self.failing = false,
            Err(error) if !self.failing => {
                self.failing = true;
                tracing::warn!(%error, "access log write failed; dropping lines until it recovers");
            }
            Err(_) => {}
        }
    }
}

impl Drop for AccessLogWriter {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Writes `buffer` (whole lines) in chunks of whole lines of at most
/// PIPE_BUF bytes; a longer single line goes alone.
fn write_pipe_safe(out: &mut impl Write, buffer: &[u8]) -> io::Result<()> {
    let mut rest = buffer;
    while !rest.is_empty() {
        let window = &rest[..rest.len().min(PIPE_BUF)];
        let end = match window.iter().rposition(|&b| b == b'\n') {
            Some(newline) if rest.len() > PIPE_BUF => newline + 1,
            Some(_) => rest.len(),
            None => rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |newline| newline + 1),
        };
        out.write_all(&rest[..end])?;
        rest = &rest[end..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("tollgate-accesslog-{name}-{}", std::process::id()));
            let _ = std::fs::remove_file(&path);
            TempFile(path)
        }

        fn lines(&self) -> Vec<serde_json::Value> {
            std::fs::read_to_string(&self.0)
                .unwrap_or_default()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
                .collect()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const PLACED: Placement = Placement {
        worker: 3,
        worker_cpu: Some(5),
    };

    fn entry(request_id: &str) -> AccessEntry<'_> {
        AccessEntry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_000_000_123),
            client: "192.0.2.7:51000".parse().unwrap(),
            host: "api.example.com",
            method: "GET",
            path: "/users?q=\"x\"",
            status: 200,
            bytes: 1234,
            upstream: Some("10.0.0.5:8080".parse().unwrap()),
            upstream_time: Some(Duration::from_micros(2_500)),
            total_time: Duration::from_micros(3_125),
            request_id,
            incoming_cpu: Some(5),
        }
    }

    #[test]
    fn a_line_is_json_with_every_field() {
        let file = TempFile::new("fields");
        let mut log = AccessLogWriter::open(&AccessLogTarget::File(file.0.clone())).unwrap();
        log.write(&entry("req-1"), &PLACED);
        let mut local = entry("req-2");
        local.upstream = None;
        local.upstream_time = None;
        local.status = 404;
        local.incoming_cpu = None;
        log.write(
            &local,
            &Placement {
                worker: 0,
                worker_cpu: None,
            },
        );
        assert!(file.lines().is_empty(), "buffered until flush");
        log.flush();

        let lines = file.lines();
        assert_eq!(lines.len(), 2);
        let expected = serde_json::json!({
            "time": "2025-11-24T16:00:00.123Z",
            "client": "192.0.2.7:51000",
            "host": "api.example.com",
            "method": "GET",
            "path": "/users?q=\"x\"",
            "status": 200,
            "bytes": 1234,
            "upstream": "10.0.0.5:8080",
            "upstream_time_ms": 2.5,
            "total_time_ms": 3.125,
            "request_id": "req-1",
            "worker": 3,
            "worker_cpu": 5,
            "incoming_cpu": 5,
        });
        assert_eq!(lines[0], expected);
        assert_eq!(lines[1]["upstream"], serde_json::Value::Null);
        assert_eq!(lines[1]["upstream_time_ms"], serde_json::Value::Null);
        assert_eq!(lines[1]["status"], 404);
        assert_eq!(lines[1]["worker"], 0);
        assert_eq!(lines[1]["worker_cpu"], serde_json::Value::Null, "an unpinned worker");
        assert_eq!(lines[1]["incoming_cpu"], serde_json::Value::Null);
    }

    #[test]
    fn flushes_by_itself_past_16_kib_and_on_drop() {
        let file = TempFile::new("threshold");
        let mut log = AccessLogWriter::open(&AccessLogTarget::File(file.0.clone())).unwrap();
        let mut written = 0;
        while file.lines().is_empty() {
            log.write(&entry("req"), &PLACED);
            written += 1;
            assert!(written < 1000, "no write after {written} entries");
        }
        let line_len = std::fs::read_to_string(&file.0).unwrap().lines().next().unwrap().len() + 1;
        assert_eq!(
            written,
            FLUSH_THRESHOLD.div_ceil(line_len),
            "the first write happens at 16 KiB"
        );
        log.write(&entry("last"), &PLACED);
        drop(log);
        let lines = file.lines();
        assert_eq!(lines.len(), written + 1);
        assert_eq!(lines.last().unwrap()["request_id"], "last");
    }

    #[test]
    fn workers_appending_to_one_file_never_split_lines() {
        let file = TempFile::new("workers");
        let threads: Vec<_> = (0..4)
            .map(|worker| {
                let path = file.0.clone();
                std::thread::spawn(move || {
                    let mut log = AccessLogWriter::open(&AccessLogTarget::File(path)).unwrap();
                    let id = format!("worker-{worker}");
                    for _ in 0..2000 {
                        log.write(&entry(&id), &PLACED);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let lines = file.lines();
        assert_eq!(lines.len(), 8000, "every line whole and parseable");
        for worker in 0..4 {
            let id = format!("worker-{worker}");
            assert_eq!(lines.iter().filter(|l| l["request_id"] == id.as_str()).count(), 2000);
        }
    }

    #[test]
    fn off_writes_nothing() {
        let mut log = AccessLogWriter::open(&AccessLogTarget::Off).unwrap();
        log.write(&entry("x"), &PLACED);
        assert!(log.buffer.is_empty());
    }

    #[test]
    fn pipe_writes_hold_whole_lines_within_pipe_buf() {
        struct Recorder(Vec<Vec<u8>>);
        impl Write for Recorder {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.push(buf.to_vec());
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let line = |n: usize| format!("{}\n", "x".repeat(n - 1));
        let long = line(PIPE_BUF + 10);
        let buffer = [line(3000), line(1000), line(200), long.clone(), line(10)].concat();
        let mut out = Recorder(Vec::new());
        write_pipe_safe(&mut out, buffer.as_bytes()).unwrap();
        let sizes: Vec<usize> = out.0.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![4000, 200, PIPE_BUF + 10, 10]);
        assert!(out.0.iter().all(|chunk| chunk.ends_with(b"\n")));
        assert_eq!(out.0.concat(), buffer.as_bytes());
    }
}
