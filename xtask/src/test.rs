//! `cargo xtask test`: what CI runs (`.ci/run`). Setup, then every check in
//! sequence; a failed step does not hide the others, and the last line says
//! what passed and what failed.

use std::time::Instant;

use anyhow::Result;

use crate::{cmd, fuzz, plugins, setup};

struct Step {
    name: &'static str,
    run: fn() -> Result<()>,
    /// Skipped when this earlier step failed (its failure already explains it).
    needs: Option<&'static str>,
}

const STEPS: &[Step] = &[
    Step {
        name: "fmt",
        run: fmt,
        needs: None,
    },
    // The end-to-end tests spawn target/debug/tollgate: build every binary first.
    Step {
        name: "build",
        run: build,
        needs: None,
    },
    // The plugin and end-to-end tests load target/plugins/*.{wasm,aot}.
    Step {
        name: "plugins",
        run: plugins::run,
        needs: None,
    },
    Step {
        name: "test",
        run: test,
        needs: Some("build"),
    },
    Step {
        name: "clippy",
        run: clippy,
        needs: None,
    },
    Step {
        name: "fuzz",
        run: fuzz_all,
        needs: None,
    },
];

pub fn run() -> Result<()> {
    let started = Instant::now();
    // Without the tools every later step would fail for the same reason: stop here.
    setup::run().map_err(|e| anyhow::anyhow!("xtask test: FAILED: setup: {e:#}"))?;
    let mut passed = Vec::new();
    let mut failed = Vec::new();
    let mut skipped = Vec::new();
    for step in STEPS {
        if step.needs.is_some_and(|n| failed.contains(&n)) {
            skipped.push(step.name);
            continue;
        }
        println!("==> {}", step.name);
        let t = Instant::now();
        match (step.run)() {
            Ok(()) => {
                println!("==> {} ok ({:.0?})", step.name, t.elapsed());
                passed.push(step.name);
            }
            Err(e) => {
                eprintln!("==> {} FAILED: {e:#}", step.name);
                failed.push(step.name);
            }
        }
    }
    let took = started.elapsed().as_secs();
    let mut summary = format!("passed: {}", passed.join(" "));
    if !skipped.is_empty() {
        summary += &format!("; skipped: {}", skipped.join(" "));
    }
    if failed.is_empty() {
        println!("xtask test: OK in {}m{:02}s ({summary})", took / 60, took % 60);
        Ok(())
    } else {
        anyhow::bail!(
            "xtask test: FAILED: {} in {}m{:02}s ({summary})",
            failed.join(" "),
            took / 60,
            took % 60
        )
    }
}

fn fmt() -> Result<()> {
    let root = cmd::repo_root();
    cmd::run(cmd::cargo().current_dir(&root).args(["fmt", "--all", "--check"]))?;
    // The fuzz crate and the eBPF programs are workspaces of their own, so
    // `--all` reaches neither.
    for manifest in ["gateway/fuzz/Cargo.toml", "ebpf/programs/Cargo.toml"] {
        cmd::run(
            cmd::cargo()
                .current_dir(&root)
                .args(["fmt", "--check", "--manifest-path", manifest]),
        )?;
    }
    Ok(())
}

/// The eBPF programs, with their build output visible, then every binary.
fn build() -> Result<()> {
    crate::build::run(false)
}

fn test() -> Result<()> {
    cmd::run(cmd::cargo().current_dir(cmd::repo_root()).args(["test", "--workspace"]))
}

fn clippy() -> Result<()> {
    cmd::run(cmd::cargo().current_dir(cmd::repo_root()).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::build::ebpf_clippy()
}

fn fuzz_all() -> Result<()> {
    fuzz::run(&[], fuzz::DEFAULT_SECONDS)
}
