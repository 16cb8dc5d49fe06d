//! Where the binaries under test are: next to the test executable's
//! directory (`target/<profile>/`), or where an environment variable says.

use std::path::PathBuf;

use anyhow::{Result, bail};

fn find(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // Test executables live in target/<profile>/deps, binaries one level up.
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "{name} not found next to {} (build it with `cargo xtask build`, or set {env})",
        exe.display()
    )
}

pub fn switchyard_bin() -> Result<PathBuf> {
    find("switchyard", "SWITCHYARD_BIN")
}

pub fn host_client_bin() -> Result<PathBuf> {
    find("host-client", "SWITCHYARD_HOST_CLIENT")
}

pub fn pod_server_bin() -> Result<PathBuf> {
    find("pod-server", "SWITCHYARD_POD_SERVER")
}

pub fn cluster_bin() -> Result<PathBuf> {
    find("switchyard-cluster", "SWITCHYARD_CLUSTER_BIN")
}
