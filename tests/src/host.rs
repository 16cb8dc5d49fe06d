//! Client processes under a test node's socket hooks: a cgroup per test
//! node, which the node's agent watches (`--socket-lb host|pods --cgroup
//! DIR`), with the node's own processes in it and each pod's in a cgroup of
//! its own below it, as a kubelet places them. Never the machine's own
//! cgroups: the hooks would see every process.

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

    /// The cgroup of the pod whose network namespace is `pod_ns`, below
    /// this one (made on first use, removed with it).
    fn pod_cgroup(&self, pod_ns: &str) -> Result<PathBuf> {
        let path = self.path.join(pod_ns);
        match std::fs::create_dir(&path) {
            Ok(()) => Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
            Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }

    /// Runs `host-client MODE ADDR` in `netns`, inside this cgroup; its
    /// output line (`reply=… peer=…` or `refused`).
    pub fn client(&self, netns: &str, mode: &str, addr: SocketAddrV4) -> Result<String> {
        client_in(&self.path, netns, mode, addr)
    }

    /// Runs `host-client MODE ADDR` as a process of the pod whose network
    /// namespace is `pod_ns`, in the pod's own cgroup.
    pub fn pod_client(&self, pod_ns: &str, mode: &str, addr: SocketAddrV4) -> Result<String> {
        client_in(&self.pod_cgroup(pod_ns)?, pod_ns, mode, addr)
    }

    /// [`NodeCgroup::held_client`] as a process of a pod.
    pub fn pod_held_client(
        &self,
        pod_ns: &str,
        mode: &str,
        addr: SocketAddrV4,
    ) -> Result<HeldClient> {
        held_client_in(&self.pod_cgroup(pod_ns)?, pod_ns, mode, addr)
    }
}

fn client_in(cgroup: &Path, netns: &str, mode: &str, addr: SocketAddrV4) -> Result<String> {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(host_client_bin()?)
        .arg("--cgroup")
        .arg(cgroup)
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

/// A host-client in a `-hold` mode: one socket, asked again on demand.
pub struct HeldClient {
    child: std::process::Child,
    answers: std::io::BufReader<std::process::ChildStdout>,
}

impl HeldClient {
    /// The answer to the request made at start, or to the last `again`.
    pub fn answer(&mut self) -> Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        self.answers
            .read_line(&mut line)
            .context("reading host-client")?;
        Ok(line.trim().to_string())
    }

    /// Asks again on the same socket; returns the answer line.
    pub fn again(&mut self) -> Result<String> {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().context("host-client stdin")?;
        stdin.write_all(b"again\n")?;
        stdin.flush()?;
        self.answer()
    }
}

impl Drop for HeldClient {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl NodeCgroup {
    /// Starts `host-client MODE-hold ADDR` in `netns`, inside this cgroup.
    pub fn held_client(&self, netns: &str, mode: &str, addr: SocketAddrV4) -> Result<HeldClient> {
        held_client_in(&self.path, netns, mode, addr)
    }
}

fn held_client_in(
    cgroup: &Path,
    netns: &str,
    mode: &str,
    addr: SocketAddrV4,
) -> Result<HeldClient> {
    use std::process::Stdio;
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(host_client_bin()?)
        .arg("--cgroup")
        .arg(cgroup)
        .arg(format!("{mode}-hold"))
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting host-client")?;
    let answers = std::io::BufReader::new(child.stdout.take().context("stdout")?);
    Ok(HeldClient { child, answers })
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// Removes a test cgroup and its pods' (empty once the clients exited).
fn remove_cgroup(path: &Path) {
    if let Ok(children) = std::fs::read_dir(path) {
        for child in children.flatten().filter(|c| c.path().is_dir()) {
            let _ = std::fs::remove_dir(child.path());
        }
    }
    let _ = std::fs::remove_dir(path);
}

/// Removes cgroups of test processes that are gone.
pub fn cleanup_stale_cgroups(is_dead: impl Fn(&str) -> bool) {
    let Ok(root) = cgroup2_root() else { return };
    if let Ok(dirs) = std::fs::read_dir(root) {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if is_dead(&name) {
                remove_cgroup(&d.path());
            }
        }
    }
}
