//! `cargo xtask plugins`: builds every plugin crate under plugins/ for
//! wasm32-wasip1 (profile `plugin`) and compiles each module to WAMR AOT with
//! tollgate-aotc. Outputs: `target/plugins/<package>.wasm` (what the fast
//! interpreter loads) and `target/plugins/<package>.aot`, named after the
//! package (= its directory under plugins/, e.g. `header-rewrite.aot`).
//! Cargo caches the wasm builds; an .aot is rebuilt only when it is older than
//! its .wasm or than the compiler binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::cmd;

const WASM_TARGET: &str = "wasm32-wasip1";
/// `[profile.plugin]` in the root Cargo.toml.
const PROFILE: &str = "plugin";

/// One plugin's outputs.
pub struct Plugin {
    pub name: String,
    pub wasm: PathBuf,
    pub aot: PathBuf,
    /// Compile time of the .aot; None when the existing file was current.
    compiled_in: Option<std::time::Duration>,
}

/// The subcommand: build everything, then print a table.
pub fn run() -> Result<()> {
    let plugins = build()?;
    println!("{:<24} {:>10} {:>10}  aot", "plugin", "wasm KiB", "aot KiB");
    for p in &plugins {
        let kib = |path: &Path| fs::metadata(path).map(|m| m.len() as f64 / 1024.0).unwrap_or(f64::NAN);
        let how = p
            .compiled_in
            .map_or_else(|| "up to date".to_owned(), |t| format!("compiled in {t:.1?}"));
        println!("{:<24} {:>10.1} {:>10.1}  {how}", p.name, kib(&p.wasm), kib(&p.aot));
    }
    println!("{} plugins in {}", plugins.len(), out_dir().display());
    Ok(())
}

/// Builds all plugins and returns their outputs, sorted by name.
pub fn build() -> Result<Vec<Plugin>> {
    let root = cmd::repo_root();
    let crates = discover(&root)?;
    if crates.is_empty() {
        bail!(
            "no plugin crates (cdylib workspace members) under {}",
            root.join("plugins").display()
        );
    }
    let mut wasm_build = cmd::cargo();
    wasm_build
        .current_dir(&root)
        .args(["build", "--target", WASM_TARGET, "--profile", PROFILE]);
    for c in &crates {
        wasm_build.args(["-p", &c.package]);
    }
    cmd::run(&mut wasm_build)?;

    let aotc = build_aotc(&root)?;
    let aotc_time = modified(&aotc)?;
    let out = out_dir();
    fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let built = root.join("target").join(WASM_TARGET).join(PROFILE);
    let mut plugins = Vec::new();
    for c in crates {
        let wasm = out.join(format!("{}.wasm", c.package));
        let aot = out.join(format!("{}.aot", c.package));
        // Rewritten only when its bytes change: its mtime decides whether the .aot is stale.
        let fresh = built.join(format!("{}.wasm", c.lib_name));
        let bytes = fs::read(&fresh).with_context(|| format!("cargo built no {}", fresh.display()))?;
        if fs::read(&wasm).ok().as_deref() != Some(bytes.as_slice()) {
            fs::write(&wasm, &bytes).with_context(|| format!("cannot write {}", wasm.display()))?;
        }
        let wasm_time = modified(&wasm)?;
        let current = modified(&aot).is_ok_and(|t| t > wasm_time && t > aotc_time);
        let compiled_in = if current {
            None
        } else {
            let t = Instant::now();
            cmd::output(std::process::Command::new(&aotc).arg(&wasm).arg("-o").arg(&aot))?;
            Some(t.elapsed())
        };
        plugins.push(Plugin {
            name: c.package,
            wasm,
            aot,
            compiled_in,
        });
    }
    Ok(plugins)
}

/// Where the outputs go.
pub fn out_dir() -> PathBuf {
    cmd::repo_root().join("target/plugins")
}

/// The release tollgate-aotc binary (its C side is built Release in any profile).
fn build_aotc(root: &Path) -> Result<PathBuf> {
    cmd::run(cmd::cargo().current_dir(root).args([
        "build",
        "--release",
        "-p",
        "tollgate-aotc",
        "--bin",
        "tollgate-aotc",
    ]))?;
    Ok(root.join("target/release/tollgate-aotc"))
}

fn modified(path: &Path) -> Result<SystemTime> {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("cannot stat {}", path.display()))
}

/// A workspace member under plugins/ with a cdylib target.
#[derive(Debug, PartialEq)]
struct Crate {
    package: String,
    /// The cdylib's crate name: cargo names the .wasm after it.
    lib_name: String,
}

fn discover(root: &Path) -> Result<Vec<Crate>> {
    let metadata =
        cmd::output(
            cmd::cargo()
                .current_dir(root)
                .args(["metadata", "--format-version", "1", "--no-deps"]),
        )?;
    plugin_crates(&metadata, &root.join("plugins"))
}

/// Members whose manifest lies under `plugins_dir` and that build a cdylib
/// (a plain library there would be a helper shared by plugins), by name.
fn plugin_crates(metadata: &str, plugins_dir: &Path) -> Result<Vec<Crate>> {
    let metadata: serde_json::Value = serde_json::from_str(metadata).context("cargo metadata printed invalid JSON")?;
    let mut crates = Vec::new();
    for package in metadata["packages"]
        .as_array()
        .context("cargo metadata lists no packages")?
    {
        let manifest = Path::new(package["manifest_path"].as_str().unwrap_or_default());
        if !manifest.starts_with(plugins_dir) {
            continue;
        }
        let cdylib = package["targets"].as_array().into_iter().flatten().find(|t| {
            t["crate_types"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        });
        if let (Some(name), Some(target)) = (package["name"].as_str(), cdylib) {
            let lib_name = target["name"].as_str().unwrap_or(name).replace('-', "_");
            crates.push(Crate {
                package: name.to_owned(),
                lib_name,
            });
        }
    }
    crates.sort_by(|a, b| a.package.cmp(&b.package));
    Ok(crates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_crates_are_cdylibs_under_plugins() {
        let metadata = r#"{"packages": [
            {"name": "tollgate", "manifest_path": "/r/gateway/Cargo.toml",
             "targets": [{"name": "tollgate", "crate_types": ["lib"]}]},
            {"name": "test-trap", "manifest_path": "/r/plugins/test-trap/Cargo.toml",
             "targets": [{"name": "test-trap", "crate_types": ["cdylib"]}]},
            {"name": "header-rewrite", "manifest_path": "/r/plugins/header-rewrite/Cargo.toml",
             "targets": [{"name": "header_rewrite", "crate_types": ["cdylib"]}]},
            {"name": "plugin-common", "manifest_path": "/r/plugins/common/Cargo.toml",
             "targets": [{"name": "plugin_common", "crate_types": ["lib"]}]}
        ]}"#;
        let crates = plugin_crates(metadata, Path::new("/r/plugins")).unwrap();
        assert_eq!(
            crates,
            [
                Crate {
                    package: "header-rewrite".into(),
                    lib_name: "header_rewrite".into()
                },
                Crate {
                    package: "test-trap".into(),
                    lib_name: "test_trap".into()
                },
            ]
        );
    }

    /// Every directory under plugins/ whose Cargo.toml builds a cdylib is a workspace
    /// member the build will find (a crate left out of `members` would silently not
    /// ship); a plain library there (plugins/support) is shared code, not a plugin.
    #[test]
    fn every_plugin_directory_is_discovered() {
        let root = cmd::repo_root();
        let found: Vec<String> = discover(&root).unwrap().into_iter().map(|c| c.package).collect();
        for entry in fs::read_dir(root.join("plugins")).unwrap() {
            let dir = entry.unwrap().path();
            let manifest = fs::read_to_string(dir.join("Cargo.toml")).unwrap_or_default();
            if manifest.contains("\"cdylib\"") {
                let name = dir.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    found.contains(&name),
                    "plugins/{name} is not a discovered plugin: {found:?}"
                );
            }
        }
    }
}
