//! The `tollgate` binary: `run` serves, `check` validates a config, prints
//! every error and which eBPF features would be active, `--version` names
//! the build.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate::config::{Snapshot, WorkersSetting};
use tollgate::control;
use tollgate::listener::sizing;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Edge gateway: HTTP reverse proxy, proxy-wasm plugins, eBPF"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the config file, or the embedded default config.
    Run {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate a config (the embedded default without --config) and print
    /// every error; load the eBPF programs (not attached) and say which
    /// features `run` would start.
    Check {
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match cli.command {
        Command::Run { config } => match control::run(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tollgate: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Check { config } => check(config),
    }
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let built = control::load_source(path.as_deref()).and_then(|source| Snapshot::build(source, None));
    let snapshot = match built {
        Ok(snapshot) => snapshot,
        Err(errors) => {
            eprintln!("config invalid ({} errors):\n{errors}", errors.0.len());
            return ExitCode::FAILURE;
        }
    };
    let plan = sizing::plan_workers(match snapshot.runtime.workers {
        WorkersSetting::Auto => None,
        WorkersSetting::Count(count) => Some(count),
    });
    println!(
        "config OK: {} listeners, {} hosts, {} clusters",
        snapshot.listeners.len(),
        snapshot.router.hosts().len(),
        snapshot.clusters.len()
    );
    println!("workers: {} ({})", plan.count, plan.explanation);
    println!(
        "{}",
        tollgate::ebpf::check(
            tollgate::ebpf::object::guard_object(),
            &snapshot.ebpf,
            snapshot.runtime.pin_workers
        )
    );
    ExitCode::SUCCESS
}
