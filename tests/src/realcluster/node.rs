//! One worker node: its mount namespace (a private bpffs, its cgroup2
//! subtree at a fixed path), its cgroups, containerd and kubelet, and its
//! CNI configuration (ptp + host-local from the podCIDR the controller
//! manager allocated).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::daemon::{self, Place};
use super::layout::{
    CGROUP_V1_ROOT, CGROUP_V2_ROOT, DNS_SERVICE_IP, NODE_CGROUP2_MOUNT, containerd_socket,
    node_dir, node_ip, node_mount_ns, node_name, state_dir,
};
use super::pki::Pki;
use crate::command::run;

/// Node-private mounts and hostname: created once with `unshare
/// --mount=FILE` / `--uts=FILE`, entered by every daemon of the node.
pub fn create_mount_ns(n: u8) -> Result<()> {
    let dir = state_dir().join("ns");
    std::fs::create_dir_all(&dir)?;
    // unshare can only persist a namespace on a private mount.
    if !is_mount_point(&dir)? {
        let d = dir.to_str().context("state dir path")?;
        run(&["mount", "--bind", d, d])?;
        run(&["mount", "--make-private", d])?;
    }
    let uts = super::layout::node_uts_ns(n);
    std::fs::write(&uts, "")?;
    let u = uts.to_str().context("ns path")?;
    run(&["unshare", &format!("--uts={u}"), "hostname", &node_name(n)])?;
    let file = node_mount_ns(n);
    std::fs::write(&file, "")?;
    let f = file.to_str().context("ns path")?;
    run(&[
        "unshare",
        &format!("--mount={f}"),
        "--propagation",
        "slave",
        "true",
    ])?;
    let cgroup = format!("{CGROUP_V2_ROOT}/{}", node_name(n));
    for dir in std::iter::once(&NODE_CGROUP2_MOUNT).chain(NODE_PRIVATE_DIRS.iter()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
    }
    // A bpffs of the node's own in place of the machine's (whose pins stay
    // out of sight), shared so the agent's init container can mount with
    // Bidirectional propagation, as on a systemd host.
    // Paths containerd, the CNI plugins and the kubelet use whatever their
    // configuration says get a tmpfs of the node's own: nothing of a node
    // lands in the machine's /run or /var, and it all goes with the node.
    let private = NODE_PRIVATE_DIRS.join(" ");
    let script = format!(
        "while umount /sys/fs/bpf 2>/dev/null; do :; done; \
         mount -t bpf bpf /sys/fs/bpf && mount --make-shared /sys/fs/bpf && \
         mount --bind {cgroup} {NODE_CGROUP2_MOUNT} && \
         for d in {private}; do mount -t tmpfs -o mode=0755 tmpfs $d || exit 1; done"
    );
    run(&["nsenter", &format!("--mount={f}"), "sh", "-c", &script])?;
    Ok(())
}

/// Shim sockets and runc state (/run/containerd), the CNI result cache, the
/// kubelet's container log links and its device-plugin, plugin-registry
/// and pod-resources sockets (under /var/lib/kubelet whatever its
/// --root-dir): fixed paths, made private per node.
pub const NODE_PRIVATE_DIRS: [&str; 4] = [
    "/run/containerd",
    "/var/lib/cni",
    "/var/log/containers",
    "/var/lib/kubelet",
];

fn is_mount_point(path: &Path) -> Result<bool> {
    let p = path.to_str().context("path")?;
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(p)))
}

/// Every cgroup hierarchy of this machine (v1 controllers and the cgroup2
/// mount), as directories.
fn cgroup_hierarchies() -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(CGROUP_V1_ROOT)? {
        let entry = entry?;
        // cpu -> cpu,cpuacct and similar are links to the same hierarchy.
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// The kubelet's `cgroupRoot` must exist in every hierarchy.
pub fn create_cgroups(n: u8) -> Result<()> {
    for h in cgroup_hierarchies()? {
        let dir = h.join(node_name(n));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(h.join(file)) {
                std::fs::write(dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// Kills every process left in the node's cgroups (containers whose shim
/// is gone) and removes the cgroups, deepest first.
pub fn remove_cgroups(n: u8) -> Vec<String> {
    let mut errors = Vec::new();
    let Ok(hierarchies) = cgroup_hierarchies() else {
        return vec!["cannot list cgroup hierarchies".into()];
    };
    for _ in 0..20 {
        let mut left = 0;
        for h in &hierarchies {
            for dir in subtree(&h.join(node_name(n))) {
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    if let Ok(pid) = pid.trim().parse::<i32>() {
                        left += 1;
                        // SAFETY: kill(2) of a process in the node's cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        if left == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    for h in &hierarchies {
        let mut dirs = subtree(&h.join(node_name(n)));
        dirs.reverse();
        for dir in dirs {
            if let Err(e) = std::fs::remove_dir(&dir) {
                errors.push(format!("rmdir {}: {e}", dir.display()));
            }
        }
    }
    errors
}

/// `root` and every directory below it, parents first.
fn subtree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !root.is_dir() {
        return out;
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(e.path());
                }
            }
        }
        out.push(dir);
    }
    out.sort_by_key(|p| p.components().count());
    out
}

pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10.1";

fn containerd_config(n: u8) -> String {
    let d = node_dir(n);
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[grpc]
  address = "{sock}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine's root lacks CAP_SYS_RESOURCE: runc cannot lower
  # oom_score_adj below its own.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = true
  # Pods' network namespaces under the node's state, not /run/netns: they
  # go with the node.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
"#,
        root = d.join("containerd/root").display(),
        opt = d.join("containerd/opt").display(),
        state = d.join("containerd/state").display(),
        sock = containerd_socket(n).display(),
        cni = d.join("cni/net.d").display(),
    )
}

fn kubelet_config(n: u8, pki: &Pki) -> String {
    let d = node_dir(n);
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {ca}}}
authorization: {{mode: AlwaysAllow}}
cgroupDriver: cgroupfs
# This machine's cgroups are v1 (hybrid); kubelet 1.34 still runs there.
failCgroupV1: false
cgroupRoot: /{name}
containerRuntimeEndpoint: unix://{sock}
failSwapOn: false
clusterDNS: [{DNS_SERVICE_IP}]
clusterDomain: cluster.local
address: {ip}
healthzBindAddress: 127.0.0.1
readOnlyPort: 0
staticPodPath: {manifests}
podLogsDir: {logs}
resolvConf: /etc/resolv.conf
serializeImagePulls: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}}
"#,
        ca = pki.ca_cert().display(),
        name = node_name(n),
        sock = containerd_socket(n).display(),
        ip = node_ip(n),
        manifests = d.join("manifests").display(),
        logs = d.join("pod-logs").display(),
    )
}

/// Writes the node's configuration and starts containerd.
pub fn start_containerd(n: u8) -> Result<()> {
    let d = node_dir(n);
    for sub in [
        "containerd",
        "cni/net.d",
        "cni/ipam",
        "manifests",
        "pod-logs",
        "kubelet",
    ] {
        std::fs::create_dir_all(d.join(sub))?;
    }
    let config = d.join("containerd.toml");
    std::fs::write(&config, containerd_config(n))?;
    daemon::start(
        &format!("containerd-{}", node_name(n)),
        Place::Node(n),
        &[
            "containerd".into(),
            "--config".into(),
            config.display().to_string(),
        ],
    )?;
    wait_for_containerd(n)
}

fn wait_for_containerd(n: u8) -> Result<()> {
    let name = format!("containerd-{}", node_name(n));
    for _ in 0..100 {
        if ctr(n, &["version"]).is_ok() {
            return Ok(());
        }
        if daemon::running_pid(&name).is_none() {
            bail!("{name} exited:\n{}", daemon::log_tail(&name, 20));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    bail!(
        "{name} not answering after 10 s:\n{}",
        daemon::log_tail(&name, 20)
    )
}

/// `ctr -n k8s.io` against node `n`'s containerd.
pub fn ctr(n: u8, args: &[&str]) -> Result<String> {
    let sock = containerd_socket(n);
    let mut argv = vec![
        "ctr",
        "--address",
        sock.to_str().context("socket path")?,
        "-n",
        "k8s.io",
    ];
    argv.extend_from_slice(args);
    run(&argv)
}

pub fn start_kubelet(n: u8, pki: &Pki) -> Result<()> {
    let d = node_dir(n);
    let config = d.join("kubelet.yaml");
    std::fs::write(&config, kubelet_config(n, pki))?;
    let kubeconfig = pki.node_kubeconfig(n)?;
    let bin = crate::apiserver::k8s_bin("kubelet")?;
    daemon::start(
        &format!("kubelet-{}", node_name(n)),
        Place::Node(n),
        &[
            bin.display().to_string(),
            format!("--config={}", config.display()),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--hostname-override={}", node_name(n)),
            format!("--node-ip={}", node_ip(n)),
            // A zone per node, so topology hints (trafficDistribution) have
            // something to choose between.
            format!("--node-labels=topology.kubernetes.io/zone=zone-{n}"),
            format!("--root-dir={}", d.join("kubelet").display()),
            "--v=1".into(),
        ],
    )?;
    Ok(())
}

/// The CNI configuration for the node's pod CIDR; containerd picks it up and
/// the node turns Ready.
pub fn write_cni_config(n: u8, pod_cidr: &str) -> Result<()> {
    let d = node_dir(n);
    let conf = serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "switchyard-cluster",
        "plugins": [
            {
                // Routed veths (host side `veth…`), as kindnet and most
                // eBPF CNIs do: the chart's default pod-interface glob.
                "type": "ptp",
                "ipMasq": false,
                "mtu": 1500,
                "ipam": {
                    "type": "host-local",
                    "dataDir": d.join("cni/ipam"),
                    "ranges": [[{"subnet": pod_cidr}]],
                    "routes": [{"dst": "0.0.0.0/0"}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    std::fs::write(
        d.join("cni/net.d/10-switchyard-cluster.conflist"),
        serde_json::to_vec_pretty(&conf)?,
    )?;
    Ok(())
}

/// `ctr` with a deadline: a hung containerd is an error, not a hang.
pub fn ctr_with_timeout(n: u8, args: &[&str], limit: std::time::Duration) -> Result<String> {
    let sock = containerd_socket(n);
    let secs = limit.as_secs().max(1).to_string();
    let mut argv = vec![
        "timeout",
        &secs,
        "ctr",
        "--address",
        sock.to_str().context("socket path")?,
    ];
    argv.extend_from_slice(args);
    run(&argv)
}
