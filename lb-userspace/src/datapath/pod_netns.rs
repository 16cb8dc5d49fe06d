//! The network namespaces of this node's pods, found by their addresses.
//! The socket hooks know a pod's sockets by their namespace's cookie
//! (`sock_pods`), and the UDP clean-up must enter a pod's namespace to list
//! its sockets. Namespaces are looked for where `ip netns` and container
//! runtimes bind them by name (`--netns-dir`, `/run/netns` by default), and
//! through every process's `/proc/PID/ns/net` (a pod always has one: its
//! sandbox's pause process), each namespace entered once.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use tracing::debug;

/// Where network namespaces are bound by name.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace found under [`NETNS_DIR`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub path: PathBuf,
    /// What `bpf_get_netns_cookie` returns for its sockets.
    pub cookie: u64,
    /// Its interfaces' IPv4 addresses.
    pub addrs: Vec<Ipv4Addr>,
}

/// Runs `f` on a thread inside the network namespace bound at `path`
/// (setns moves only the calling thread; this one ends with `f`).
pub fn inside<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: a valid namespace file descriptor.
                if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error())
                        .with_context(|| format!("entering {}", path.display()));
                }
                Ok(f())
            })
            .join()
            .map_err(|_| anyhow!("thread in {} panicked", path.display()))?
    })
}

/// The cookie of the calling thread's network namespace. The socket asked
/// is never bound: in a pod's namespace a bound one would take a port the
/// pod's own programs may be binding at that moment.
pub fn own_cookie() -> io::Result<u64> {
    // SAFETY: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket and an 8-byte buffer, as SO_NETNS_COOKIE needs.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Paths of the namespaces bound under `dir` and of those of the processes
/// under `proc`, one per namespace (by inode), the caller's own left out.
pub fn candidates(dir: &Path, proc: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let identity = |path: &Path| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    let own = identity(&proc.join("self/ns/net"));
    let bound = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path());
    let of_processes = std::fs::read_dir(proc)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .map(|e| e.path().join("ns/net"));
    let mut seen = std::collections::BTreeSet::new();
    bound
        .chain(of_processes)
        .filter(|path| match identity(path) {
            Some(id) => Some(id) != own && seen.insert(id),
            None => false,
        })
        .collect()
}

/// Every namespace among `paths` with its cookie and addresses; one that
/// cannot be entered (being deleted, its process gone) is skipped.
pub fn list(paths: Vec<PathBuf>) -> Vec<Netns> {
    paths
        .into_iter()
        .filter_map(|path| {
            let found = inside(&path, || -> Result<(u64, Vec<Ipv4Addr>)> {
                let cookie = own_cookie().context("reading the namespace cookie")?;
                let addrs = super::ifaces::all_ipv4_addresses()?;
                Ok((cookie, addrs))
            })
            .and_then(|r| r);
            match found {
                Ok((cookie, addrs)) => Some(Netns {
                    path,
                    cookie,
                    addrs,
                }),
                Err(e) => {
                    debug!(netns = %path.display(), "skipped: {e:#}");
                    None
                }
            }
        })
        .collect()
}
