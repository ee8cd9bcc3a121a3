//! Repository-wide checks that run with `cargo test`: rules the compiler
//! cannot see. Every Rust file opens with a `//!` header saying what it owns,
//! and docs/configuration.md documents every field of the config schema.

use std::fs;
use std::path::{Path, PathBuf};

use crate::cmd;

/// Directories never walked: build output, git, fuzzer-generated inputs.
const SKIP_DIRS: &[&str] = &["target", ".git", "corpus", "artifacts"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let path = entry.path();
        let name = entry.file_name();
        if entry.file_type().unwrap().is_dir() {
            if !SKIP_DIRS.contains(&name.to_str().unwrap_or_default()) {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_module_header() {
    let root = cmd::repo_root();
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(
        files.len() > 10,
        "found only {} Rust files under {}",
        files.len(),
        root.display()
    );
    let missing: Vec<String> = files
        .iter()
        .filter(|f| !fs::read_to_string(f).unwrap().starts_with("//!"))
        .map(|f| f.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "files without a `//!` header saying what they own:\n{}",
        missing.join("\n")
    );
}

/// Field names declared in a .proto file (`type name = N;` lines).
fn proto_fields(proto: &str) -> Vec<&str> {
    proto
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && l.ends_with(';') && l.contains(" = "))
        .filter_map(|l| {
            let (decl, _) = l.split_once(" = ")?;
            let words: Vec<&str> = decl.split_whitespace().collect();
            // Enum values are a single word; fields are "[optional|repeated] type name".
            (words.len() >= 2).then(|| words[words.len() - 1])
        })
        .collect()
}

#[test]
fn configuration_reference_covers_every_proto_field() {
    let root = cmd::repo_root();
    let proto = fs::read_to_string(root.join("gateway/proto/tollgate/config/v1/config.proto")).unwrap();
    let doc = fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    let fields = proto_fields(&proto);
    assert!(fields.contains(&"max_request_header_bytes") && fields.contains(&"lb_policy"));
    let undocumented: Vec<&str> = fields
        .into_iter()
        .filter(|f| !doc.contains(&format!("`{f}`")) && !doc.contains(&format!(".{f}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "docs/configuration.md lacks config fields: {undocumented:?}"
    );
}
