//! `cargo xtask run`: installs what the build needs (`cargo xtask setup`, a
//! one-line no-op on a ready machine: the gateway embeds eBPF programs built
//! with nightly and bpf-linker), builds the release gateway and runs it in the
//! foreground with the default config embedded in the binary
//! (image/config/default.yaml).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::Result;

use crate::cmd;

/// Where image/config/default.yaml listens; a test below keeps these in step.
const LISTENER: &str = "0.0.0.0:8080";
const ADMIN: &str = "127.0.0.1:9901";

pub fn run() -> Result<()> {
    let root = cmd::repo_root();
    crate::setup::run()?;
    let binary = cmd::build_release_gateway()?;
    let port = LISTENER.rsplit_once(':').map_or("8080", |(_, port)| port);
    println!("Tollgate on {LISTENER}: http://127.0.0.1:{port}/  admin: http://{ADMIN}/metrics  (Ctrl-C stops)");
    let mut gateway = Command::new(binary);
    gateway.current_dir(&root).arg("run");
    // exec: Ctrl-C and SIGTERM go straight to the gateway, which drains and exits.
    let err = gateway.exec();
    Err(anyhow::Error::new(err).context(format!("cannot exec `{}`", cmd::display(&gateway))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_addresses_match_the_default_config() {
        let path = cmd::repo_root().join("image/config/default.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        for addr in [LISTENER, ADMIN] {
            let line = format!("address: {addr}");
            assert!(yaml.contains(&line), "{} has no {line:?}", path.display());
        }
    }
}
