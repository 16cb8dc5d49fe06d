//! The real `switchyard agent` running in a topology's node namespace.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::command::run;
use crate::paths::switchyard_bin;
use crate::wait;

/// Where the agent reads the cluster's objects.
#[derive(Clone, Debug)]
pub enum AgentSource {
    /// `--standalone DIR`.
    Manifests(PathBuf),
    /// `--kubeconfig FILE`: a real API server.
    Kubeconfig(PathBuf),
}

pub struct AgentOptions {
    pub node_ns: String,
    pub pin_dir: PathBuf,
    pub source: AgentSource,
    pub pod_ifaces: String,
    pub extra_args: Vec<String>,
}

/// Stopped (SIGTERM) on drop; its pins are removed then too, unless
/// [`AgentProcess::keep_pins`] was called.
pub struct AgentProcess {
    opts: AgentOptions,
    child: Option<Child>,
    log: PathBuf,
    remove_pins: bool,
    startup_timeout: Duration,
    /// A command the agent is run under (e.g. setpriv), inside nsenter.
    wrapper: Vec<String>,
    /// Another switchyard binary than the build's (an upgrade).
    binary: Option<PathBuf>,
}

impl AgentProcess {
    /// Starts the agent and waits until its first sync is in the maps.
    pub fn start(opts: AgentOptions) -> Result<Self> {
        Self::start_within(opts, Duration::from_secs(20))
    }

    /// Like [`AgentProcess::start`], waiting up to `startup_timeout` (large
    /// clusters take longer to list).
    pub fn start_within(opts: AgentOptions, startup_timeout: Duration) -> Result<Self> {
        Self::start_wrapped(opts, startup_timeout, &[])
    }

    /// Starts the agent under `wrapper` (e.g. `setpriv --bounding-set …`).
    pub fn start_wrapped(
        opts: AgentOptions,
        startup_timeout: Duration,
        wrapper: &[&str],
    ) -> Result<Self> {
        let log = std::env::temp_dir().join(format!(
            "switchyard-agent-{}.log",
            opts.pin_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        ));
        let mut agent = Self {
            opts,
            child: None,
            log,
            remove_pins: true,
            startup_timeout,
            wrapper: wrapper.iter().map(|w| w.to_string()).collect(),
            binary: None,
        };
        agent.spawn()?;
        Ok(agent)
    }

    fn spawn(&mut self) -> Result<()> {
        let bin = match &self.binary {
            Some(b) => b.clone(),
            None => switchyard_bin()?,
        };
        let log_file = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let netns = format!("--net=/run/netns/{}", self.opts.node_ns);
        // nsenter, not `ip netns exec`: the latter remounts /sys, hiding the
        // bpffs at /sys/fs/bpf where the maps are pinned.
        let child = Command::new("nsenter")
            .arg(&netns)
            .args(&self.wrapper)
            .arg(&bin)
            .args(["--log-level", "info,lb_userspace=debug", "agent"])
            .args(match &self.opts.source {
                AgentSource::Manifests(dir) => ["--standalone".as_ref(), dir.as_os_str()],
                AgentSource::Kubeconfig(file) => ["--kubeconfig".as_ref(), file.as_os_str()],
            })
            .arg("--pin-dir")
            .arg(&self.opts.pin_dir)
            .args(["--pod-ifaces", &self.opts.pod_ifaces, "--poll-ms", "100"])
            .args(&self.opts.extra_args)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .stdin(Stdio::null())
            // The error chain, not a backtrace, ends the log on failure.
            .env("RUST_BACKTRACE", "0")
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let starts_before = self.log_text().matches("initial sync complete").count();
        let mut exited = None;
        wait::until(
            "the agent's initial sync",
            self.startup_timeout,
            Duration::from_millis(50),
            || {
                if let Some(child) = self.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    exited = Some(status);
                    return Ok(true);
                }
                Ok(self.log_text().matches("initial sync complete").count() > starts_before)
            },
        )?;
        if let Some(status) = exited {
            self.child = None;
            bail!("agent exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The agent's process ID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn pin_dir(&self) -> &Path {
        &self.opts.pin_dir
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Prints the last lines of the agent's log (a failed test's evidence).
    pub fn print_log_tail(&self) {
        eprintln!(
            "--- agent log ({}) ---\n{}",
            self.log.display(),
            self.log_tail()
        );
    }

    /// `switchyard inspect <args…>` against this agent's pins.
    pub fn inspect(&self, args: &[&str]) -> Result<String> {
        let bin = switchyard_bin()?;
        let bin = bin.to_string_lossy();
        let pin = self.opts.pin_dir.to_string_lossy();
        let mut argv = vec![bin.as_ref(), "inspect", "--pin-dir", pin.as_ref()];
        argv.extend_from_slice(args);
        run(&argv)
    }

    /// `inspect -o json services` parsed: frontend → backend addresses.
    pub fn services_json(&self) -> Result<serde_json::Value> {
        let out = self.inspect(&["-o", "json", "services"])?;
        serde_json::from_str(&out).with_context(|| format!("parsing inspect output: {out}"))
    }

    /// The backends programmed for `frontend` (e.g. `10.96.0.10:80/TCP`).
    pub fn backends_of(&self, frontend: &str) -> Result<Vec<String>> {
        let services = self.services_json()?;
        let row = services
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["frontend"] == frontend))
            .with_context(|| format!("frontend {frontend} not programmed"))?;
        Ok(row["backends"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Graceful stop (SIGTERM), waiting for the exit.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let waited = wait::until(
            "the agent to exit",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(child.try_wait()?.is_some()),
        );
        if waited.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("agent did not exit on SIGTERM:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the agent again with the same options (and the same pins).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// An in-place upgrade: stops this agent (SIGTERM; started with
    /// `--keep-datapath-on-exit`, it leaves the programs attached) and starts
    /// `binary` on the same pins, which takes the links over.
    pub fn upgrade_to(&mut self, binary: PathBuf) -> Result<()> {
        self.stop()?;
        self.binary = Some(binary);
        self.spawn()
    }

    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("agent still running");
        }
        self.spawn()
    }

    pub fn keep_pins(&mut self) {
        self.remove_pins = false;
    }

    /// `switchyard agent --cleanup` for this agent's pins.
    pub fn cleanup(&self) -> Result<String> {
        let bin = switchyard_bin()?;
        run(&[
            bin.to_string_lossy().as_ref(),
            "agent",
            "--cleanup",
            "--pin-dir",
            self.opts.pin_dir.to_string_lossy().as_ref(),
        ])
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.stop();
        if std::thread::panicking() {
            self.print_log_tail();
        }
        if self.remove_pins {
            let _ = self.cleanup();
            let _ = std::fs::remove_dir_all(&self.opts.pin_dir);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
