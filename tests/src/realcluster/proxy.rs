//! The cluster's service proxy: Switchyard installed with helm, or the real
//! kube-proxy run on every node as kubeadm configures it (its own
//! credentials, `--cluster-cidr`, the chosen mode) for side-by-side runs,
//! or none.

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};

use super::daemon::{self, Place};
use super::layout::{CLUSTER_CIDR, node_name, node_ns};
use super::pki::Pki;
use crate::apiserver::k8s_bin;
use crate::kube_proxy::KubeProxyMode;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxy {
    Switchyard,
    KubeProxy(KubeProxyMode),
    None,
}

impl FromStr for Proxy {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "switchyard" => Self::Switchyard,
            "kube-proxy-nftables" => Self::KubeProxy(KubeProxyMode::Nftables),
            "kube-proxy-iptables" => Self::KubeProxy(KubeProxyMode::Iptables),
            "none" => Self::None,
            other => bail!(
                "unknown proxy {other:?}: switchyard, kube-proxy-nftables, kube-proxy-iptables or none"
            ),
        })
    }
}

impl std::fmt::Display for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Switchyard => write!(f, "switchyard"),
            Self::KubeProxy(mode) => write!(f, "kube-proxy-{}", mode.flag()),
            Self::None => write!(f, "none"),
        }
    }
}

impl Proxy {
    pub fn install(self, nodes: &[u8], pki: &Pki) -> Result<()> {
        match self {
            Self::Switchyard => super::addons::helm_install().map(|_| ()),
            Self::KubeProxy(mode) => {
                for &n in nodes {
                    start_kube_proxy(n, mode, pki)?;
                }
                for &n in nodes {
                    wait_synced(n)?;
                }
                Ok(())
            }
            Self::None => Ok(()),
        }
    }
}

fn start_kube_proxy(n: u8, mode: KubeProxyMode, pki: &Pki) -> Result<()> {
    daemon::start(
        &format!("kube-proxy-{}", node_name(n)),
        Place::Node(n),
        &[
            k8s_bin("kube-proxy")?.display().to_string(),
            format!("--kubeconfig={}", pki.kubeconfig("kube-proxy").display()),
            format!("--hostname-override={}", node_name(n)),
            format!("--proxy-mode={}", mode.flag()),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            // Several nodes share this machine's kernel: leave the
            // machine-wide conntrack table size and timeouts alone.
            "--conntrack-max-per-core=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--v=1".into(),
        ],
    )?;
    Ok(())
}

/// kube-proxy's healthz (10256) answers 200 once it has synced its rules.
fn wait_synced(n: u8) -> Result<()> {
    let name = format!("kube-proxy-{}", node_name(n));
    super::control_plane::wait_ready(&name, Duration::from_secs(60), || {
        crate::command::run(&[
            "timeout",
            "3",
            "ip",
            "netns",
            "exec",
            &node_ns(n),
            "curl",
            "-sf",
            "http://127.0.0.1:10256/healthz",
        ])
        .is_ok()
    })
}
