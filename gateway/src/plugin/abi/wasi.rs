//! Where a plugin's WASI stdout and stderr go: WAMR's WASI writes them to
//! raw fds chosen per instance (`wasm_runtime_instantiation_args_set_wasi_stdio`),
//! so each plugin name gets one pipe, shared by its instances for both
//! streams, and one reader thread that logs every line at info level with
//! the plugin's name. Pipes live for the process (WAMR never closes stdio
//! fds it was given). A write blocks only while the reader is behind.
//! Stdin is /dev/null: left at WAMR's default, a plugin would read the
//! gateway's own stdin and could block a worker in `read`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, PipeWriter, Read};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, OnceLock, PoisonError};

/// Longest line logged as is; longer output is logged in pieces.
const MAX_LINE: usize = 16 * 1024;

fn writers() -> &'static Mutex<HashMap<String, PipeWriter>> {
    static WRITERS: OnceLock<Mutex<HashMap<String, PipeWriter>>> = OnceLock::new();
    WRITERS.get_or_init(Default::default)
}

/// The raw fd every instance reads as stdin: /dev/null, opened once.
pub(crate) fn stdin_fd() -> Result<i64, String> {
    static NULL: OnceLock<Result<std::fs::File, String>> = OnceLock::new();
    NULL.get_or_init(|| std::fs::File::open("/dev/null").map_err(|e| format!("opening /dev/null: {e}")))
        .as_ref()
        .map(|file| i64::from(file.as_raw_fd()))
        .map_err(Clone::clone)
}

/// The raw fd the plugin's instances write stdout and stderr to.
pub(crate) fn output_fd(plugin: &str) -> Result<i64, String> {
    let mut writers = writers().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(writer) = writers.get(plugin) {
        return Ok(i64::from(writer.as_raw_fd()));
    }
    let (reader, writer) = std::io::pipe().map_err(|e| format!("creating the output pipe of plugin {plugin}: {e}"))?;
    let name = plugin.to_string();
    std::thread::Builder::new()
        .name("plugin-stdout".into())
        .spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut reader).take(MAX_LINE as u64).read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line);
                        tracing::info!(target: "plugin", plugin = %name, "output: {}", text.trim_end());
                    }
                }
            }
        })
        .map_err(|e| format!("starting the output reader of plugin {plugin}: {e}"))?;
    let fd = i64::from(writer.as_raw_fd());
    writers.insert(plugin.to_string(), writer);
    Ok(fd)
}
