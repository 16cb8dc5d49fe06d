//! Processes of a node itself (not of a pod): a cgroup per test node, which
//! the node's agent watches with its socket hooks (`--socket-lb on
//! --cgroup DIR`), and a client run in the node's namespace inside it.
//! Never the machine's own cgroups: the hooks would see every process.

use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::paths::host_client_bin;

/// The cgroup v2 hierarchy's mount point.
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/mounts")?;
    mounts
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(dir))
        })
        .context("no cgroup2 mount in /proc/mounts")
}

/// A cgroup for one test node's host processes; removed on drop.
pub struct NodeCgroup {
    path: PathBuf,
}

impl NodeCgroup {
    pub fn new() -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = cgroup2_root()?.join(format!(
            "sy{:x}g{:x}cg",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `host-client MODE ADDR` in `netns`, inside this cgroup; its
    /// output line (`reply=… peer=…` or `refused`).
    pub fn client(&self, netns: &str, mode: &str, addr: SocketAddrV4) -> Result<String> {
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(host_client_bin()?)
            .arg("--cgroup")
            .arg(&self.path)
            .arg(mode)
            .arg(addr.to_string())
            .output()
            .context("running host-client")?;
        if !out.status.success() {
            bail!(
                "host-client {mode} {addr}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        // Empty once the clients exited.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// Removes cgroups of test processes that are gone.
pub fn cleanup_stale_cgroups(is_dead: impl Fn(&str) -> bool) {
    let Ok(root) = cgroup2_root() else { return };
    if let Ok(dirs) = std::fs::read_dir(root) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if is_dead(&name) {
                let _ = std::fs::remove_dir(d.path());
            }
        }
    }
}
