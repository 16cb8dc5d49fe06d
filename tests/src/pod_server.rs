//! A `pod-server` process running in a pod's namespace.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::paths::pod_server_bin;

#[derive(Clone, Debug, Default)]
pub struct ServerPorts {
    pub tcp: Vec<u16>,
    pub udp: Vec<u16>,
    /// How long each TCP answer waits (a slow backend); zero: none.
    pub answer_delay: std::time::Duration,
}

impl ServerPorts {
    pub fn tcp_udp(tcp: u16, udp: u16) -> Self {
        Self {
            tcp: vec![tcp],
            udp: vec![udp],
            answer_delay: std::time::Duration::ZERO,
        }
    }
}

/// Killed on drop.
pub struct PodServer {
    child: Child,
}

impl PodServer {
    pub fn start(ns: &str, name: &str, ports: &ServerPorts) -> Result<Self> {
        let bin = pod_server_bin()?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(&bin)
            .args(["--name", name]);
        for p in &ports.tcp {
            cmd.args(["--tcp", &p.to_string()]);
        }
        for p in &ports.udp {
            cmd.args(["--udp", &p.to_string()]);
        }
        if !ports.answer_delay.is_zero() {
            cmd.args(["--delay-ms", &ports.answer_delay.as_millis().to_string()]);
        }
        // If the test process dies without running destructors (a signal,
        // an abort), the server dies with it rather than lingering in a
        // deleted namespace. (Tied to the spawning thread: servers are
        // started and dropped by the test's own thread.)
        // SAFETY: prctl is async-signal-safe; nothing else runs in pre_exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting pod-server in {ns}"))?;
        let stdout = child.stdout.take().context("pod-server stdout")?;
        let mut server = Self { child };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .with_context(|| format!("waiting for pod-server {name} in {ns}"))?;
        if line.trim() != "ready" {
            let status = server.child.try_wait().ok().flatten();
            bail!("pod-server {name} in {ns} did not start (status {status:?})");
        }
        Ok(server)
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
