//! `tollgate-aotc`: compiles a WebAssembly module (a proxy-wasm plugin) to a
//! WAMR 2.4.3 AOT file the gateway's runtime loads. The command line and file
//! handling live here; the compiler itself is behind `wamr::compile`, the
//! crate's only unsafe code, which also stamps every output (`stamp`: what
//! the gateway checks before it runs an AOT file). Its own process because
//! the compiler's WAMR build and the runtime's share symbol names with
//! different settings.

#![deny(unsafe_code)]

mod stamp;
#[allow(unsafe_code)]
mod wamr;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Parser;

/// Compile a WebAssembly module to a WAMR AOT file for x86_64 Linux, with
/// software bounds checks and terminable loops always on, stamped for the
/// Tollgate gateway of the same tree.
#[derive(Parser)]
#[command(name = "tollgate-aotc", version)]
struct Cli {
    /// The WebAssembly module (.wasm).
    input: PathBuf,
    /// Where to write the AOT file (.aot); replaced atomically.
    #[arg(short, long)]
    output: PathBuf,
    /// The x86-64 psABI level the code may assume: a baseline, never the build
    /// host's CPU, so shipped files run on every x86_64 the appliance uses.
    /// (Only these names: LLVM aborts the process on a CPU name it does not know.)
    #[arg(long, default_value = "x86-64-v2", value_parser = ["x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"])]
    target_cpu: String,
    /// LLVM optimisation level.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=3))]
    opt_level: u32,
    /// LLVM code size level; 3 (small code model) is wamrc's default on x86-64 Linux.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=3))]
    size_level: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-aotc: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> Result<()> {
    if same_file(&cli.input, &cli.output) {
        bail!("input and output are the same file: {}", cli.input.display());
    }
    let wasm = fs::read(&cli.input).with_context(|| format!("reading {}", cli.input.display()))?;
    let started = Instant::now();
    let options = wamr::Options {
        target_cpu: cli.target_cpu.clone(),
        opt_level: cli.opt_level,
        size_level: cli.size_level,
    };
    let aot = wamr::compile(&wasm, &options).map_err(|e| anyhow::anyhow!("{}: {e}", cli.input.display()))?;
    write_atomically(&cli.output, &aot)?;
    println!(
        "{} ({} bytes) -> {} ({} bytes), x86_64 {}, O{} s{}, {:.0?}",
        cli.input.display(),
        wasm.len(),
        cli.output.display(),
        aot.len(),
        cli.target_cpu,
        cli.opt_level,
        cli.size_level,
        started.elapsed()
    );
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::canonicalize(a), fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// A reader (the gateway reloading plugins) never sees a half-written file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| {
        let _ = fs::remove_file(&tmp);
        format!("renaming {} to {}", tmp.display(), path.display())
    })
}
