//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler in node
//! 1's network namespace, configured as kubeadm would for this cluster.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::daemon::{self, Place};
use super::layout::{APISERVER_PORT, CLUSTER_CIDR, SERVICE_CIDR, control_plane_ip, state_dir};
use super::pki::Pki;
use crate::apiserver::k8s_bin;

pub const DAEMONS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

pub fn start(pki: &Pki) -> Result<()> {
    start_etcd()?;
    start_apiserver(pki)?;
    wait_ready("kube-apiserver", Duration::from_secs(120), || {
        super::kubectl(&["get", "--raw", "/readyz"]).is_ok_and(|o| o.trim() == "ok")
    })?;
    start_controller_manager(pki)?;
    start_scheduler(pki)?;
    Ok(())
}

fn bin(name: &str) -> Result<String> {
    Ok(k8s_bin(name)?.display().to_string())
}

fn start_etcd() -> Result<()> {
    let data = state_dir().join("etcd");
    std::fs::create_dir_all(&data)?;
    let client = "http://127.0.0.1:2379";
    let peer = "http://127.0.0.1:2380";
    daemon::start(
        "etcd",
        Place::ControlPlane,
        &[
            bin("etcd")?,
            "--name=cluster".into(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=cluster={peer}"),
            "--log-level=warn".into(),
            // A test cluster: speed over durability.
            "--unsafe-no-fsync".into(),
        ],
    )?;
    Ok(())
}

fn start_apiserver(pki: &Pki) -> Result<()> {
    let p = |f: &str| pki.path(f).display().to_string();
    let ip = control_plane_ip();
    daemon::start(
        "kube-apiserver",
        Place::ControlPlane,
        &[
            bin("kube-apiserver")?,
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--advertise-address={ip}"),
            "--bind-address=0.0.0.0".into(),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!(
                "--kubelet-client-certificate={}",
                p("apiserver-kubelet-client.crt")
            ),
            format!("--kubelet-client-key={}", p("apiserver-kubelet-client.key")),
            // Node names do not resolve here; kubeadm clusters usually have DNS.
            "--kubelet-preferred-address-types=InternalIP".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--service-node-port-range=30000-32767".into(),
            "--authorization-mode=Node,RBAC".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ],
    )?;
    Ok(())
}

fn start_controller_manager(pki: &Pki) -> Result<()> {
    let p = |f: &str| pki.path(f).display().to_string();
    let kubeconfig = pki.kubeconfig("controller-manager").display().to_string();
    daemon::start(
        "kube-controller-manager",
        Place::ControlPlane,
        &[
            bin("kube-controller-manager")?,
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--allocate-node-cidrs=true".into(),
            format!("--cluster-cidr={CLUSTER_CIDR}"),
            "--node-cidr-mask-size=24".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--cluster-signing-cert-file={}", p("ca.crt")),
            format!("--cluster-signing-key-file={}", p("ca.key")),
            format!("--root-ca-file={}", p("ca.crt")),
            format!("--service-account-private-key-file={}", p("sa.key")),
            "--use-service-account-credentials=true".into(),
            "--controllers=*,bootstrapsigner,tokencleaner".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--v=1".into(),
        ],
    )?;
    Ok(())
}

fn start_scheduler(pki: &Pki) -> Result<()> {
    let kubeconfig = pki.kubeconfig("scheduler").display().to_string();
    daemon::start(
        "kube-scheduler",
        Place::ControlPlane,
        &[
            bin("kube-scheduler")?,
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--v=1".into(),
        ],
    )?;
    Ok(())
}

/// Waits for `ready`, failing at once with the daemon's log when it exits.
pub fn wait_ready(name: &str, limit: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let started = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if daemon::running_pid(name).is_none() {
            bail!("{name} exited:\n{}", daemon::log_tail(name, 30));
        }
        if started.elapsed() > limit {
            bail!(
                "{name} not ready after {limit:?}:\n{}",
                daemon::log_tail(name, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}
