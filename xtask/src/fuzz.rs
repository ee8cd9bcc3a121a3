//! `cargo xtask fuzz`: runs the gateway's cargo-fuzz targets (gateway/fuzz) for
//! a bounded time each, starting from the committed seeds. libFuzzer's chatter
//! goes to target/fuzz/<target>.log; the terminal gets one line per target, or
//! the log's tail when a target fails.

use std::fs::{self, File};
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::cmd;

pub const TARGETS: &[&str] = &["request_head", "chunked"];
pub const DEFAULT_SECONDS: u32 = 60;
const TOOLCHAIN: &str = "nightly";

pub fn run(targets: &[String], seconds: u32) -> Result<()> {
    for t in targets {
        if !TARGETS.contains(&t.as_str()) {
            bail!("unknown fuzz target {t:?}; known: {}", TARGETS.join(", "));
        }
    }
    let chosen: Vec<&str> = if targets.is_empty() {
        TARGETS.to_vec()
    } else {
        targets.iter().map(String::as_str).collect()
    };
    let root = cmd::repo_root();
    let logs = root.join("target/fuzz");
    fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let mut failed = Vec::new();
    for target in chosen {
        if let Err(e) = run_target(&root, &logs, target, seconds) {
            eprintln!("fuzz {target}: {e:#}");
            failed.push(target);
        }
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}

fn run_target(root: &Path, logs: &Path, target: &str, seconds: u32) -> Result<()> {
    let fuzz_dir = root.join("gateway/fuzz");
    // New inputs go to the first (ignored) directory; the committed seeds are read only.
    let corpus = fuzz_dir.join("corpus").join(target);
    fs::create_dir_all(&corpus).with_context(|| format!("cannot create {}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(target);
    let log_path = logs.join(format!("{target}.log"));
    let log = File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;

    let mut fuzz = cmd::cargo_on(TOOLCHAIN);
    fuzz.current_dir(root.join("gateway"))
        .args(["fuzz", "run", target])
        .arg(&corpus)
        .arg(&seeds)
        .args(["--", &format!("-max_total_time={seconds}"), "-timeout=10"])
        // The panic message and libFuzzer's own stack trace say enough.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let status = fuzz
        .status()
        .with_context(|| format!("cannot start `{}`", cmd::display(&fuzz)))?;
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    if !status.success() {
        bail!(
            "`{}` failed: {status}\n--- from {} ---\n{}",
            cmd::display(&fuzz),
            log_path.display(),
            excerpt(&text)
        );
    }
    // libFuzzer ends with "Done <n> runs in <s> second(s)".
    let done = text
        .lines()
        .rev()
        .find(|l| l.starts_with("Done "))
        .unwrap_or("finished");
    println!("fuzz {target}: {done} (log: {})", log_path.display());
    Ok(())
}

/// What explains a failure: compiler errors, or the panic message and
/// cargo-fuzz's "Failing input / Reproduce with" block; else the log's tail.
fn excerpt(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut picked: Vec<&str> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("error") || line.contains("panicked at") {
            let explanation = lines[i + 1..]
                .iter()
                .take(8)
                .take_while(|l| !l.is_empty() && !l.starts_with("note:") && !l.starts_with("=="));
            picked.push(line);
            picked.extend(explanation);
        }
    }
    if let Some(start) = lines.iter().position(|l| l.starts_with("Failing input:")) {
        picked.extend(lines[start..].iter().take(14));
    }
    if picked.is_empty() {
        picked.extend(&lines[lines.len().saturating_sub(30)..]);
    }
    picked.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpt_keeps_the_panic_and_the_reproduction() {
        let log = "#1 INITED cov: 10\nnoise\nthread '<unnamed>' panicked at src/http/codec.rs:285:61:\n\
                   end byte index 7 is not a char boundary\n\nmore noise\nFailing input:\n\n\tfuzz/artifacts/x\n";
        let text = excerpt(log);
        assert!(
            text.contains("codec.rs:285:61") && text.contains("char boundary"),
            "{text}"
        );
        assert!(text.contains("fuzz/artifacts/x"), "{text}");
        assert!(!text.contains("noise"), "{text}");
    }
}
