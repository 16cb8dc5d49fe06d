//! The real kube-proxy (built from its Go module by
//! `scripts/k8s-binaries.sh --with-kube-proxy`) running in a node namespace
//! against a test API server: the contender in the benchmarks.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::apiserver::k8s_bin;
use crate::command::run_in;
use crate::topology::Pod;
use crate::wait;

/// kube-proxy's metrics address inside its node namespace (its default).
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KubeProxyMode {
    Nftables,
    Iptables,
}

impl KubeProxyMode {
    pub fn flag(self) -> &'static str {
        match self {
            Self::Nftables => "nftables",
            Self::Iptables => "iptables",
        }
    }
}

/// Killed on drop, and its rules removed (`kube-proxy --cleanup`).
pub struct KubeProxy {
    node_ns: String,
    node_name: String,
    kubeconfig: PathBuf,
    mode: KubeProxyMode,
    child: Option<Child>,
    log: PathBuf,
}

impl KubeProxy {
    /// Starts kube-proxy for node `node_name` in `node_ns` and waits until
    /// it has synced its rules once.
    pub fn start(
        node_ns: &str,
        node_name: &str,
        kubeconfig: &Path,
        mode: KubeProxyMode,
        startup_timeout: Duration,
    ) -> Result<Self> {
        let mut proxy = Self {
            node_ns: node_ns.to_string(),
            node_name: node_name.to_string(),
            kubeconfig: kubeconfig.to_path_buf(),
            mode,
            child: None,
            log: std::env::temp_dir().join(format!("kube-proxy-{node_ns}.log")),
        };
        proxy.spawn(startup_timeout)?;
        Ok(proxy)
    }

    fn spawn(&mut self, startup_timeout: Duration) -> Result<()> {
        let bin = k8s_bin("kube-proxy")?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.node_ns))
            .arg(&bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--hostname-override={}", self.node_name))
            .arg(format!("--proxy-mode={}", self.mode.flag()))
            .args([
                "--cluster-cidr=10.244.0.0/16",
                // Leave the host-wide conntrack table size and timeouts alone.
                "--conntrack-max-per-core=0",
                "--conntrack-tcp-timeout-established=0",
                "--conntrack-tcp-timeout-close-wait=0",
                "--v=1",
            ])
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.child = Some(child);
        let mut exited = None;
        wait::until(
            "kube-proxy's first rule sync",
            startup_timeout,
            Duration::from_millis(100),
            || {
                if let Some(child) = self.child.as_mut()
                    && let Some(status) = child.try_wait()?
                {
                    exited = Some(status);
                    return Ok(true);
                }
                Ok(self.metric("kubeproxy_sync_proxy_rules_last_timestamp_seconds")? > 0.0)
            },
        )?;
        if let Some(status) = exited {
            self.child = None;
            bail!("kube-proxy exited with {status}:\n{}", self.log_tail());
        }
        Ok(())
    }

    pub fn mode(&self) -> KubeProxyMode {
        self.mode
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The sum of every sample of a metric (counters, gauges, histogram
    /// `_sum`/`_count` series); 0 when it is not exported (yet).
    pub fn metric(&self, name: &str) -> Result<f64> {
        let host = Pod::detached("kube-proxy", &self.node_ns, Ipv4Addr::LOCALHOST, "");
        let Ok((200, body)) = host.http_get_path(METRICS, "/metrics", Duration::from_secs(2))
        else {
            return Ok(0.0);
        };
        Ok(body
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    /// Mean of a histogram metric (`_sum / _count`), in its unit.
    pub fn histogram_mean(&self, name: &str) -> Result<f64> {
        let sum = self.metric(&format!("{name}_sum"))?;
        let count = self.metric(&format!("{name}_count"))?;
        Ok(if count > 0.0 { sum / count } else { f64::NAN })
    }

    /// Stops it and removes every rule it made.
    pub fn stop_and_clean(&mut self) -> Result<()> {
        self.stop();
        self.cleanup()
    }

    /// Starts it again (after [`KubeProxy::stop_and_clean`]: a full sync
    /// from nothing) and waits for its first sync.
    pub fn start_again(&mut self, startup_timeout: Duration) -> Result<()> {
        if self.child.is_some() {
            bail!("kube-proxy still running");
        }
        self.spawn(startup_timeout)
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let exited = wait::until(
                "kube-proxy to exit",
                Duration::from_secs(5),
                Duration::from_millis(20),
                || Ok(child.try_wait()?.is_some()),
            );
            if exited.is_err() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Removes every rule it made. `kube-proxy --cleanup` takes minutes with
    /// 100 000 endpoints in iptables mode; the node namespace holds nothing
    /// else, and both modes' rules live in nftables (iptables-nft), so
    /// flushing the ruleset is the same, at once.
    fn cleanup(&self) -> Result<()> {
        run_in(&self.node_ns, &["nft", "flush", "ruleset"]).map(|_| ())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("--- kube-proxy log ---\n{}", self.log_tail());
        }
        let _ = self.cleanup();
        let _ = std::fs::remove_file(&self.log);
    }
}
