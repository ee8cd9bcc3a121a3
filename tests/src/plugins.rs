//! The proxy-wasm plugins `cargo xtask plugins` built, as files the gateway
//! loads: `<target>/plugins/<name>.aot` (WAMR AOT) and `<name>.wasm` (fast
//! interpreter).

use std::path::{Path, PathBuf};

/// How a test runs a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Aot,
    Interpreter,
}

impl Mode {
    pub const BOTH: [Mode; 2] = [Mode::Aot, Mode::Interpreter];

    fn extension(self) -> &'static str {
        match self {
            Mode::Aot => "aot",
            Mode::Interpreter => "wasm",
        }
    }
}

/// `<target>/plugins`, found from this test binary's own path
/// (`<target>/debug/deps/<test>-<hash>`).
pub fn plugin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .and_then(Path::parent)
        .expect("test binary lives in <target>/debug/deps")
        .join("plugins")
}

/// The built module of plugin crate `name` (e.g. "header-rewrite").
pub fn plugin(name: &str, mode: Mode) -> PathBuf {
    let path = plugin_dir().join(format!("{name}.{}", mode.extension()));
    assert!(
        path.is_file(),
        "{} is missing: run cargo xtask plugins (cargo xtask test does it)",
        path.display()
    );
    path
}
