//! Repository hygiene checked by the compiler's test runner: every Rust file
//! says what it owns in a `//!` header, and docs/ARCHITECTURE.md names every
//! module of the gateway, so the code map cannot silently fall behind.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo root")
        .to_path_buf()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_header() {
    let root = repo_root();
    let mut files = Vec::new();
    for dir in [
        "gateway/src",
        "gateway/fuzz/fuzz_targets",
        "xtask/src",
        "tests/src",
        "tests/tests",
        "wamr-sys/src",
        "wamr-sys/tests",
        "wamr-source/src",
        "aotc/src",
        "aotc/tests",
        "plugins",
        "gateway/tests",
        "ebpf/common/src",
        "ebpf/build/src",
        "ebpf/programs/src",
    ] {
        rust_files(&root.join(dir), &mut files);
    }
    files.push(root.join("gateway/build.rs"));
    files.push(root.join("wamr-sys/build.rs"));
    files.push(root.join("aotc/build.rs"));
    files.push(root.join("tests/build.rs"));
    assert!(
        files.len() > 20,
        "found only {} files: wrong root {}?",
        files.len(),
        root.display()
    );
    let missing: Vec<String> = files
        .iter()
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            !text.trim_start().starts_with("//!")
        })
        .map(|path| path.strip_prefix(&root).unwrap_or(path).display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a //! header saying what they own: {missing:?}"
    );
}

#[test]
fn architecture_doc_names_every_gateway_module() {
    let root = repo_root();
    let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let mut modules = Vec::new();
    for entry in std::fs::read_dir(root.join("gateway/src")).expect("gateway/src") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name != "lib" && name != "main" {
            modules.push(name);
        }
    }
    assert!(modules.len() >= 8, "gateway modules: {modules:?}");
    // The code map names a module as `name.rs` or as the directory `name/`.
    let unmapped: Vec<&String> = modules
        .iter()
        .filter(|m| !doc.contains(&format!("`{m}.rs`")) && !doc.contains(&format!("`{m}/`")))
        .collect();
    assert!(
        unmapped.is_empty(),
        "docs/ARCHITECTURE.md does not mention gateway modules {unmapped:?}"
    );
}
