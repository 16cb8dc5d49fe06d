//! The cluster's long-running processes, started detached so they outlive
//! `cluster up`, each with a pid file and a log under the state directory,
//! and stopped by those pid files on `down`.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::layout::{CGROUP_V2_ROOT, node_mount_ns, node_name, state_dir};

/// Where a daemon runs.
#[derive(Clone, Copy, Debug)]
pub enum Place {
    /// Node `n`'s network and mount namespaces, in its cgroup2 subtree
    /// (the node's host processes, as its socket-level hooks see them).
    Node(u8),
    /// Node 1's network namespace with the machine's mounts: the control
    /// plane, which needs no node-private mounts.
    ControlPlane,
}

pub fn log_path(name: &str) -> PathBuf {
    state_dir().join("logs").join(format!("{name}.log"))
}

fn pid_path(name: &str) -> PathBuf {
    state_dir().join("pids").join(format!("{name}.pid"))
}

/// The nsenter prefix that runs a command in `place`.
pub fn nsenter(place: Place) -> Vec<String> {
    let node = match place {
        Place::Node(n) => n,
        Place::ControlPlane => 1,
    };
    let mut argv = vec![
        "nsenter".to_string(),
        format!("--net=/run/netns/{}", super::layout::node_ns(node)),
    ];
    if let Place::Node(n) = place {
        argv.push(format!("--mount={}", node_mount_ns(n).display()));
        argv.push(format!("--uts={}", super::layout::node_uts_ns(n).display()));
    }
    argv.push("--".into());
    argv
}

/// Starts `argv` detached (its own session) in `place`; returns its pid.
pub fn start(name: &str, place: Place, argv: &[String]) -> Result<u32> {
    for dir in [state_dir().join("logs"), state_dir().join("pids")] {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log = File::options()
        .create(true)
        .append(true)
        .open(log_path(name))?;
    let mut full = nsenter(place);
    full.extend_from_slice(argv);
    // The shell moves itself into the node's cgroup2 subtree, then becomes
    // the daemon: nothing of it runs outside the node's cgroup.
    let cgroup = match place {
        Place::Node(n) => format!("{CGROUP_V2_ROOT}/{}/cgroup.procs", node_name(n)),
        Place::ControlPlane => String::new(),
    };
    let script = if cgroup.is_empty() {
        "exec \"$@\"".to_string()
    } else {
        format!("echo $$ > {cgroup} && exec \"$@\"")
    };
    let child = Command::new("sh")
        .args(["-c", &script, "sh"])
        .args(&full)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}: {}", argv.join(" ")))?;
    let pid = child.id();
    std::fs::write(pid_path(name), pid.to_string())?;
    Ok(pid)
}

/// The pid recorded for `name`, if it still runs (zombies do not count).
pub fn running_pid(name: &str) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_path(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    alive(pid).then_some(pid)
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Names of every daemon with a pid file.
pub fn recorded() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(state_dir().join("pids")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".pid"))
                .map(String::from)
        })
        .collect();
    names.sort();
    names
}

/// SIGTERM to the daemon's process group, SIGKILL after `grace`.
pub fn stop(name: &str, grace: Duration) -> Result<()> {
    let Some(pid) = running_pid(name) else {
        let _ = std::fs::remove_file(pid_path(name));
        return Ok(());
    };
    let group = -(pid as i32);
    // SAFETY: kill(2) on a process group we started.
    unsafe { libc::kill(group, libc::SIGTERM) };
    let started = Instant::now();
    while alive(pid) && started.elapsed() < grace {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive(pid) {
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(200));
    }
    if alive(pid) {
        bail!("{name} (pid {pid}) survived SIGKILL");
    }
    std::fs::remove_file(pid_path(name))?;
    Ok(())
}

/// The last `lines` lines of the daemon's log.
pub fn log_tail(name: &str, lines: usize) -> String {
    let text = std::fs::read_to_string(log_path(name)).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
