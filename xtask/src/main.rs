//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo
//! does. This file only parses the command line and dispatches; each task
//! lives in its own module.

mod bench;
mod build;
mod cmd;
mod fuzz;
mod plugins;
mod run;
mod setup;
mod test;
#[cfg(test)]
mod tidy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Tollgate build, test, bench and run automation")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the project needs (apt packages, toolchains, cargo tools); idempotent.
    Setup,
    /// Build the eBPF programs (ebpf/programs), then every binary of the workspace.
    Build {
        /// Release binaries (target/release) instead of debug ones.
        #[arg(long)]
        release: bool,
    },
    /// Setup, then format check, build, every test, clippy and a bounded fuzz run.
    Test,
    /// Setup, then build the release gateway and run it in the foreground with the embedded default config.
    Run,
    /// Build every plugin under plugins/ to target/plugins/<name>.wasm and .aot.
    Plugins,
    /// Run fuzz targets for a bounded time (needs `cargo xtask setup`).
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = fuzz::DEFAULT_SECONDS)]
        seconds: u32,
        /// Targets to run; all when none given.
        targets: Vec<String>,
    },
    /// Side-by-side benchmarks against nginx; results in target/bench/<name>.json.
    Bench {
        which: bench::Which,
        /// Shorter runs (3 s each) for a quick look; numbers are noisier.
        #[arg(long)]
        quick: bool,
        /// Cap each proxy at this share of its CPU with a cgroup quota (root), so the
        /// proxy rather than the load side is the bottleneck on a small machine.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
        proxy_cpu_percent: Option<u32>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => build::run(release),
        Task::Test => test::run(),
        Task::Run => run::run(),
        Task::Plugins => plugins::run(),
        Task::Fuzz { seconds, targets } => fuzz::run(&targets, seconds),
        Task::Bench {
            which,
            quick,
            proxy_cpu_percent,
        } => bench::run(which, quick, proxy_cpu_percent),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The message names the failing command; a Rust backtrace of xtask would only bury it.
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
