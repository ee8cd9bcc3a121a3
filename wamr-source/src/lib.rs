//! WAMR 2.4.3's C sources for the project's build scripts (wamr-sys builds the
//! runtime from them, tollgate-aotc the AOT compiler), patched the same way for
//! both. The sources come from the crates.io package `wamrx-sys` =0.3.0, used
//! as a file source only: it is a never-compiled dependency of this crate, is
//! found with `cargo metadata`, and `wasm-micro-runtime/` is copied into the
//! caller's OUT_DIR, so the registry cache is never written. The project's
//! patches (`patches/*.patch`, unified diffs with a description on top) are
//! applied to that copy by exact text replacement, which fails the build when
//! the expected lines are not there exactly once.
//!
//! It also defines the AOT stamp ([`aot_stamp`]): the text tollgate-aotc
//! writes into every AOT file and the gateway requires, derived from the WAMR
//! release and the patches here, and passed to both crates by their build
//! scripts ([`export_aot_stamp`]).
//!
//! The WAMR sources are licensed Apache-2.0 WITH LLVM-exception; their
//! `LICENSE` file travels with every copy.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::{env, fs};

/// The crates.io package that ships WAMR's sources, and its pinned version.
pub const SOURCE_PACKAGE: &str = "wamrx-sys";
pub const SOURCE_VERSION: &str = "0.3.0";
/// The WAMR release inside that package.
pub const WAMR_VERSION: &str = "2.4.3";

/// (file name, text) of every patch, applied in this order. Embedded so that
/// editing a patch rebuilds this crate and reruns every build script using it.
pub const PATCHES: &[(&str, &str)] = &[(
    "0001-suspend-checks-without-shared-memory.patch",
    include_str!("../patches/0001-suspend-checks-without-shared-memory.patch"),
)];

/// The wasm custom section that carries the AOT stamp: tollgate-aotc adds it
/// to the module it compiles and has WAMR keep it in the AOT file (a raw AOT
/// custom section, which any WAMR AOT loader skips or keeps by name).
pub const AOT_STAMP_SECTION: &str = "tollgate-aot-stamp";

/// The checks tollgate-aotc compiles into every AOT file and the runtime
/// relies on, as the stamp names them: software bounds checks, native stack
/// bounds checks, auxiliary stack checks, and suspend checks (the patch plus
/// `enable_thread_mgr`). tollgate-aotc's unit tests tie this to the options it
/// sets; change both together.
pub const AOT_CHECKS: &str = "bounds,stack-bounds,aux-stack,suspend";

/// The stamp every AOT file from tollgate-aotc carries and the gateway
/// requires: the WAMR release, a hash of the project's patch set and the
/// checks. An AOT file from another WAMR with the same AOT format version,
/// from an unpatched compiler, or without the checks lacks this exact text.
/// One line of ASCII (build scripts pass it on through `rustc-env`).
pub fn aot_stamp() -> String {
    aot_stamp_for(PATCHES)
}

fn aot_stamp_for(patches: &[(&str, &str)]) -> String {
    format!(
        "tollgate-aotc WAMR {WAMR_VERSION} patches:{:016x} checks:{AOT_CHECKS}",
        patch_set_hash(patches)
    )
}

/// FNV-1a (64-bit) over every patch's name and text, in order: stable across
/// builds and platforms, and any edit to a patch changes it.
fn patch_set_hash(patches: &[(&str, &str)]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (name, text) in patches {
        for byte in name.bytes().chain([b'\n']).chain(text.bytes()).chain([b'\n']) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

/// For build scripts: makes the stamp, its section name and the WAMR release
/// compile-time environment variables of the calling crate
/// (`env!("TOLLGATE_AOT_STAMP")`, `TOLLGATE_AOT_STAMP_SECTION`,
/// `TOLLGATE_WAMR_VERSION`), so tollgate-aotc (which writes the stamp) and
/// wamr-sys (whose users check it) take it from this one definition without
/// linking this crate.
pub fn export_aot_stamp() {
    println!("cargo:rustc-env=TOLLGATE_AOT_STAMP={}", aot_stamp());
    println!("cargo:rustc-env=TOLLGATE_AOT_STAMP_SECTION={AOT_STAMP_SECTION}");
    println!("cargo:rustc-env=TOLLGATE_WAMR_VERSION={WAMR_VERSION}");
}

/// Makes `out_dir/wasm-micro-runtime` a patched copy of WAMR's sources and
/// returns its path. A finished copy is reused while the stamp beside it
/// matches the source version and patches: re-copying 11 MB would change
/// every mtime and force a full CMake rebuild. Panics with a message saying
/// what to do when the sources cannot be found or a patch does not apply
/// (this runs in build scripts).
pub fn prepare(out_dir: &Path) -> PathBuf {
    let wamr = out_dir.join("wasm-micro-runtime");
    let stamp = out_dir.join("wasm-micro-runtime.stamp");
    let expected = stamp_text();
    if fs::read_to_string(&stamp).ok().as_deref() == Some(expected.as_str()) {
        return wamr;
    }
    let source = find_sources().unwrap_or_else(|e| panic!("{e}"));
    // The stamp goes first: a copy interrupted half-way is never taken as finished.
    if stamp.exists() {
        fs::remove_file(&stamp).unwrap_or_else(|e| panic!("removing {}: {e}", stamp.display()));
    }
    if wamr.exists() {
        fs::remove_dir_all(&wamr).unwrap_or_else(|e| panic!("removing {}: {e}", wamr.display()));
    }
    copy_dir(&source, &wamr);
    for (name, text) in PATCHES {
        apply_patch(&wamr, text).unwrap_or_else(|e| {
            panic!("patch wamr-source/patches/{name} does not apply to WAMR {WAMR_VERSION} from {SOURCE_PACKAGE} ={SOURCE_VERSION}: {e}")
        });
    }
    fs::write(&stamp, expected).unwrap_or_else(|e| panic!("writing {}: {e}", stamp.display()));
    wamr
}

/// What a finished copy was made from: the package version and every patch.
fn stamp_text() -> String {
    let mut text = format!("{SOURCE_PACKAGE} {SOURCE_VERSION}\n");
    for (name, patch) in PATCHES {
        text += &format!("{name}\n{patch}\n");
    }
    text
}

/// The `wasm-micro-runtime/` directory of the downloaded source package.
pub fn find_sources() -> Result<PathBuf, String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let help = format!(
        "WAMR's C sources come from the crates.io package {SOURCE_PACKAGE} ={SOURCE_VERSION} \
         (a never-compiled dependency in wamr-source/Cargo.toml); run `cargo fetch` with registry access once"
    );
    // This crate's own manifest: the workspace it belongs to locks the source package.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let output = Command::new(&cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .map_err(|e| format!("{help}: running {} metadata: {e}", Path::new(&cargo).display()))?;
    if !output.status.success() {
        return Err(format!(
            "{help}: cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    let metadata = String::from_utf8(output.stdout).map_err(|_| format!("{help}: cargo metadata printed non-UTF-8"))?;
    let manifest_path = package_manifest(&metadata)
        .ok_or_else(|| format!("{help}: cargo metadata lists no {SOURCE_PACKAGE} {SOURCE_VERSION}"))?;
    let root = Path::new(&manifest_path)
        .parent()
        .ok_or_else(|| format!("{help}: manifest path {manifest_path} has no directory"))?
        .join("wasm-micro-runtime");
    if !root.join("CMakeLists.txt").is_file() || !root.join("core/iwasm/include/wasm_export.h").is_file() {
        return Err(format!("{help}: {} does not hold WAMR's sources", root.display()));
    }
    Ok(root)
}

/// `manifest_path` of the source package in `cargo metadata` JSON.
fn package_manifest(metadata: &str) -> Option<String> {
    let metadata: serde_json::Value = serde_json::from_str(metadata).ok()?;
    metadata["packages"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == SOURCE_PACKAGE && p["version"] == SOURCE_VERSION)?["manifest_path"]
        .as_str()
        .map(str::to_owned)
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("creating {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("reading {}: {e}", from.display())) {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap_or_else(|e| panic!("copying {}: {e}", entry.path().display()));
        }
    }
}

/// One file's changes: (path relative to the tree, [(old text, new text)] per hunk).
type FileChanges = (String, Vec<(String, String)>);

/// Applies a unified diff to the tree at `root` by exact text replacement.
/// Each hunk's old text (context and `-` lines) must occur exactly once in
/// its file; line numbers are ignored. Every hunk is checked before any file
/// is written, so a failing patch leaves the tree untouched.
pub fn apply_patch(root: &Path, patch: &str) -> Result<(), String> {
    let mut patched = Vec::new();
    for (path, hunks) in parse_patch(patch)? {
        let file = root.join(&path);
        let mut text = fs::read_to_string(&file).map_err(|e| format!("reading {}: {e}", file.display()))?;
        for (i, (old, new)) in hunks.iter().enumerate() {
            text = replace_once(&text, old, new).map_err(|e| format!("{path}: hunk {}: {e}", i + 1))?;
        }
        patched.push((file, text));
    }
    for (file, text) in patched {
        fs::write(&file, text).map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    Ok(())
}

fn replace_once(text: &str, old: &str, new: &str) -> Result<String, String> {
    match text.matches(old).count() {
        1 => Ok(text.replacen(old, new, 1)),
        0 => Err(format!("expected text not found:\n{old}")),
        n => Err(format!("expected text found {n} times, must be once:\n{old}")),
    }
}

/// The files and hunks of a unified diff. Text before the first `--- ` line
/// is the patch's description. Hunk bodies are read by the counts in their
/// `@@ -a,b +c,d @@` headers, so a removed line that starts with `--` cannot
/// be taken for a file header.
fn parse_patch(patch: &str) -> Result<Vec<FileChanges>, String> {
    let mut files: Vec<FileChanges> = Vec::new();
    let mut lines = patch.lines().skip_while(|l| !l.starts_with("--- ")).peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("--- ") {
            let next = lines.next().unwrap_or_default();
            let path = next
                .strip_prefix("+++ b/")
                .ok_or_else(|| format!("expected `+++ b/<path>` after `{line}`, found `{next}`"))?;
            files.push((path.split('\t').next().unwrap_or(path).to_owned(), Vec::new()));
        } else if line.starts_with("@@ ") {
            let (mut old_left, mut new_left) = hunk_counts(line)?;
            let (path, hunks) = files
                .last_mut()
                .ok_or_else(|| format!("hunk `{line}` before any file header"))?;
            let (mut old, mut new) = (String::new(), String::new());
            while old_left + new_left > 0 {
                let body = lines
                    .next()
                    .ok_or_else(|| format!("{path}: hunk `{line}` ends early"))?;
                // Editors strip the single space of an empty context line.
                let mut chars = body.chars();
                let tag = chars.next().unwrap_or(' ');
                let rest = chars.as_str();
                match tag {
                    ' ' if old_left > 0 && new_left > 0 => {
                        old_left -= 1;
                        new_left -= 1;
                        old += rest;
                        old.push('\n');
                        new += rest;
                        new.push('\n');
                    }
                    '-' if old_left > 0 => {
                        old_left -= 1;
                        old += rest;
                        old.push('\n');
                    }
                    '+' if new_left > 0 => {
                        new_left -= 1;
                        new += rest;
                        new.push('\n');
                    }
                    '\\' => {}
                    _ => return Err(format!("{path}: hunk `{line}`: line does not fit its counts: `{body}`")),
                }
            }
            hunks.push((old, new));
        } else if !line.is_empty() {
            return Err(format!("unexpected line outside a hunk: `{line}`"));
        }
    }
    if files.is_empty() || files.iter().any(|(_, hunks)| hunks.is_empty()) {
        return Err("a patch needs at least one file with at least one hunk".into());
    }
    Ok(files)
}

/// Old and new line counts of a `@@ -a[,b] +c[,d] @@` header (a missing count is 1).
fn hunk_counts(header: &str) -> Result<(usize, usize), String> {
    let bad = || format!("malformed hunk header `{header}`");
    let mut ranges = header.trim_start_matches("@@ ").split(' ');
    let mut count = |sign: char| -> Result<usize, String> {
        let range = ranges.next().and_then(|r| r.strip_prefix(sign)).ok_or_else(bad)?;
        match range.split_once(',') {
            Some((_, n)) => n.parse().map_err(|_| bad()),
            None => Ok(1),
        }
    };
    Ok((count('-')?, count('+')?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "int f(void)\n{\n    if (x)\n        return 1;\n    return 0;\n}\n";
    const PATCH: &str = "description\n--- a/src/f.c\n+++ b/src/f.c\n@@ -2,4 +2,3 @@\n {\n-    if (x)\n-        return 1;\n+    /* always */\n     return 0;\n";

    /// A scratch tree holding `src/f.c`; `name` keeps parallel tests apart.
    fn tree(name: &str, file: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("wamr-source-{name}-{}", std::process::id()));
        fs::create_dir_all(dir.join("src")).unwrap();
        fs::write(dir.join("src/f.c"), file).unwrap();
        dir
    }

    #[test]
    fn applies_a_hunk_by_its_text() {
        let dir = tree("applies", FILE);
        apply_patch(&dir, PATCH).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("src/f.c")).unwrap(),
            "int f(void)\n{\n    /* always */\n    return 0;\n}\n"
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_loudly_when_the_expected_text_is_gone() {
        let changed = FILE.replace("return 1", "return 2");
        let dir = tree("refuses", &changed);
        let err = apply_patch(&dir, PATCH).unwrap_err();
        assert!(err.contains("src/f.c: hunk 1: expected text not found"), "{err}");
        assert_eq!(fs::read_to_string(dir.join("src/f.c")).unwrap(), changed, "untouched");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn refuses_text_found_twice() {
        let err = replace_once("a\na\n", "a\n", "b\n").unwrap_err();
        assert!(err.contains("found 2 times"), "{err}");
    }

    #[test]
    fn refuses_a_hunk_whose_counts_do_not_match() {
        let short = PATCH.replace("@@ -2,4 +2,3 @@", "@@ -2,5 +2,3 @@");
        let err = parse_patch(&short).unwrap_err();
        assert!(err.contains("ends early") || err.contains("does not fit"), "{err}");
    }

    #[test]
    fn aot_stamp_names_the_release_and_checks_and_follows_every_patch() {
        let stamp = aot_stamp();
        assert!(stamp.starts_with("tollgate-aotc WAMR 2.4.3 patches:"), "{stamp}");
        assert!(
            stamp.ends_with(" checks:bounds,stack-bounds,aux-stack,suspend"),
            "{stamp}"
        );
        assert!(
            stamp.is_ascii() && !stamp.contains(['\n', '\r', '\0']),
            "one line: {stamp}"
        );
        assert_eq!(stamp, aot_stamp(), "deterministic");
        let (name, text) = PATCHES[0];
        let edited = text.replacen("Tollgate", "Tollgatf", 1);
        assert_ne!(aot_stamp_for(&[(name, &edited)]), stamp, "an edited patch");
        assert_ne!(aot_stamp_for(&[]), stamp, "no patches");
        assert_ne!(aot_stamp_for(&[(name, text), (name, text)]), stamp, "an added patch");
    }

    /// The shipped patches apply to the pinned sources, and the suspend-check
    /// patch really removes the shared-memory condition.
    #[test]
    fn shipped_patches_apply_to_the_pinned_sources() {
        let source = find_sources().unwrap();
        let file = "core/iwasm/compilation/aot_emit_control.c";
        let dir = env::temp_dir().join(format!("wamr-source-shipped-{}", std::process::id()));
        fs::create_dir_all(dir.join("core/iwasm/compilation")).unwrap();
        fs::copy(source.join(file), dir.join(file)).unwrap();
        for (name, text) in PATCHES {
            apply_patch(&dir, text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let patched = fs::read_to_string(dir.join(file)).unwrap();
        assert!(fs::read_to_string(source.join(file))
            .unwrap()
            .contains("if (!is_shared_memory)"));
        assert!(!patched.contains("is_shared_memory"), "the early return is gone");
        assert!(patched.contains("WAMR issue #3574"));
        fs::remove_dir_all(dir).unwrap();
    }
}
