//! Running external commands. Every failure names the full command line, so a
//! red CI log says exactly what to re-run by hand.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The command line as a user would type it (program, then arguments, quoted
/// when they contain spaces).
pub fn display(cmd: &Command) -> String {
    let mut line = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"') {
            let _ = write!(line, " '{arg}'");
        } else {
            let _ = write!(line, " {arg}");
        }
    }
    line
}

/// Runs `cmd` with inherited stdio; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed: {status}", display(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; on failure the error carries stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8 output", display(cmd)))
}

/// True when `cmd` starts and exits 0; all output discarded. For presence probes.
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `cargo` command using the same cargo that runs xtask (cargo sets `CARGO`
/// for `cargo run`), so the toolchain never changes under our feet.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A `cargo +<toolchain>` command. It goes through rustup directly: the cargo
/// that runs xtask may be the toolchain's own binary, which does not
/// understand `+toolchain`.
pub fn cargo_on(toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo"]);
    // Set by the rustup proxy that started xtask; it would pin nested tools
    // to the outer toolchain.
    cmd.env_remove("RUSTUP_TOOLCHAIN");
    cmd
}

/// The repository root (the parent of xtask/).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask/ lives inside the repository")
        .to_path_buf()
}

/// Whether this process runs as root (then no `sudo` is needed or wanted).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|uids| uids.split_whitespace().nth(1).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Builds the release `tollgate` binary and returns its path.
pub fn build_release_gateway() -> Result<PathBuf> {
    let root = repo_root();
    run(cargo()
        .current_dir(&root)
        .args(["build", "--release", "-p", "tollgate", "--bin", "tollgate"]))?;
    Ok(root.join("target/release/tollgate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_arguments_with_spaces() {
        let mut cmd = Command::new("wrk");
        cmd.args(["-H", "Connection: close", "http://x/"]);
        assert_eq!(display(&cmd), "wrk -H 'Connection: close' http://x/");
    }

    #[test]
    fn failure_names_the_command_line() {
        let err = run(Command::new("false").arg("--flag")).unwrap_err();
        assert!(err.to_string().contains("`false --flag` failed"), "{err}");
    }

    #[test]
    fn output_returns_stdout() {
        assert_eq!(output(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
