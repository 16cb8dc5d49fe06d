//! A real Kubernetes cluster on this machine: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, and per worker node a
//! network and mount namespace with its own containerd and kubelet, pods
//! on ptp veths, CoreDNS, and Switchyard installed with `helm install` in
//! place of kube-proxy. Every process is detached, so the cluster outlives
//! `up`; `down` stops and removes everything `up` made.
//!
//! `up` = build images → PKI → network → nodes' runtimes → control plane →
//! kubelets → pod CIDRs and routes → CoreDNS → Switchyard → the
//! load-balancer provider.

pub mod addons;
pub mod control_plane;
pub mod daemon;
pub mod images;
pub mod layout;
pub mod loadbalancer;
pub mod network;
pub mod node;
pub mod pki;
pub mod proxy;
pub mod status;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use layout::{
    NODE_CGROUP2_MOUNT, OUTSIDE_NS, admin_kubeconfig, node_mount_ns, node_name, state_dir,
};
use pki::Pki;

/// What `up` builds: the node count and where `cargo xtask image-root` put
/// the agent's files.
pub struct UpOptions<'a> {
    pub nodes: u8,
    pub image_root: &'a Path,
    /// The service proxy: Switchyard (helm install), the real kube-proxy,
    /// or none.
    pub proxy: proxy::Proxy,
}

/// Brings the cluster up; on failure removes what it made and says why.
pub fn up(opts: &UpOptions) -> Result<()> {
    anyhow::ensure!((1..=9).contains(&opts.nodes), "--nodes must be 1 to 9");
    if state_dir().join("nodes").exists() || network::netns_exists(OUTSIDE_NS) {
        bail!(
            "a cluster exists already (state in {}): `cargo xtask cluster down` first",
            state_dir().display()
        );
    }
    std::fs::create_dir_all(state_dir())?;
    std::fs::write(state_dir().join("nodes"), opts.nodes.to_string())?;
    let result = bring_up(opts);
    if let Err(e) = &result {
        eprintln!("cluster: up failed, removing what was made: {e:#}");
        if std::env::var_os("SWITCHYARD_CLUSTER_KEEP_ON_FAILURE").is_none() {
            let _ = down();
        }
    }
    result
}

fn bring_up(opts: &UpOptions) -> Result<()> {
    let started = Instant::now();
    let step = |what: &str| {
        eprintln!(
            "cluster: [{:>5.1}s] {what}",
            started.elapsed().as_secs_f64()
        )
    };
    let nodes: Vec<u8> = (1..=opts.nodes).collect();
    step("building images");
    let tars = images::build_all(opts.image_root)?;
    step("making the PKI");
    let pki = Pki::create(opts.nodes)?;
    step("making the network");
    network::create_fabric()?;
    network::create_outside()?;
    for &n in &nodes {
        network::create_node(n)?;
    }
    for &n in &nodes {
        step(&format!("starting containerd on {}", node_name(n)));
        node::create_cgroups(n)?;
        node::create_mount_ns(n)?;
        node::start_containerd(n)?;
        images::import(n, &tars)?;
    }
    step("starting the control plane");
    control_plane::start(&pki)?;
    for &n in &nodes {
        step(&format!("starting the kubelet on {}", node_name(n)));
        node::start_kubelet(n, &pki)?;
    }
    step("waiting for pod CIDRs");
    wire_pod_cidrs(&nodes)?;
    wait_until("every node Ready", Duration::from_secs(120), || {
        status::all_nodes_ready(&nodes)
    })?;
    step(&format!(
        "installing the service proxy ({}) and CoreDNS",
        opts.proxy
    ));
    opts.proxy.install(&nodes, &pki)?;
    addons::install_coredns()?;
    step("starting the load-balancer provider");
    let provider = crate::paths::cluster_bin()?;
    daemon::start(
        "lb-provider",
        daemon::Place::ControlPlane,
        &[provider.display().to_string(), "lb-provider".into()],
    )?;
    step("cluster up");
    Ok(())
}

/// Writes each node's CNI configuration from the podCIDR the controller
/// manager gave it, and routes every node's pod CIDR on the others.
fn wire_pod_cidrs(nodes: &[u8]) -> Result<()> {
    let mut cidrs = Vec::new();
    for &n in nodes {
        let mut cidr = String::new();
        wait_until(
            &format!("{} registered with a podCIDR", node_name(n)),
            Duration::from_secs(90),
            || {
                cidr = kubectl(&[
                    "get",
                    "node",
                    &node_name(n),
                    "-o",
                    "jsonpath={.spec.podCIDR}",
                ])
                .unwrap_or_default()
                .trim()
                .to_string();
                Ok(!cidr.is_empty())
            },
        )
        .map_err(|e| e.context(daemon::log_tail(&format!("kubelet-{}", node_name(n)), 20)))?;
        node::write_cni_config(n, &cidr)?;
        cidrs.push((n, cidr));
    }
    for &n in nodes {
        for (other, cidr) in &cidrs {
            if *other != n {
                network::route_pod_cidr(n, cidr, *other)?;
            }
        }
    }
    Ok(())
}

/// Stops and removes everything `up` made; safe to run again, and after a
/// failed or partial `up`.
pub fn down() -> Result<()> {
    let nodes = recorded_nodes();
    let mut errors = Vec::new();
    for &n in &nodes {
        if let Err(e) = daemon::stop(
            &format!("kubelet-{}", node_name(n)),
            Duration::from_secs(10),
        ) {
            errors.push(format!("{e:#}"));
        }
    }
    // Containers, their shims and containerd all live in the node's cgroups.
    for &n in &nodes {
        let _ = daemon::stop(
            &format!("containerd-{}", node_name(n)),
            Duration::from_secs(5),
        );
        errors.extend(node::remove_cgroups(n));
    }
    for name in control_plane::DAEMONS.iter().rev() {
        if let Err(e) = daemon::stop(name, Duration::from_secs(10)) {
            errors.push(format!("{e:#}"));
        }
    }
    for name in daemon::recorded() {
        if let Err(e) = daemon::stop(&name, Duration::from_secs(5)) {
            errors.push(format!("{e:#}"));
        }
    }
    for &n in &nodes {
        for file in [node_mount_ns(n), layout::node_uts_ns(n)] {
            if file.exists() {
                let _ = Command::new("umount").arg(&file).status();
            }
        }
    }
    let ns_dir = state_dir().join("ns");
    if ns_dir.exists() {
        let _ = Command::new("umount").arg(&ns_dir).status();
    }
    errors.extend(network::delete_all(&nodes));
    if state_dir().exists()
        && let Err(e) = std::fs::remove_dir_all(state_dir())
    {
        errors.push(format!("removing {}: {e}", state_dir().display()));
    }
    // Mount points made for the nodes, if nothing else put files there.
    for dir in std::iter::once(&NODE_CGROUP2_MOUNT).chain(node::NODE_PRIVATE_DIRS.iter()) {
        let _ = std::fs::remove_dir(dir);
    }
    if !errors.is_empty() {
        bail!("cluster down left something behind:\n{}", errors.join("\n"));
    }
    Ok(())
}

/// Nodes of the cluster on record, else every `sy-node*` namespace.
pub fn recorded_nodes() -> Vec<u8> {
    if let Some(n) = std::fs::read_to_string(state_dir().join("nodes"))
        .ok()
        .and_then(|s| s.trim().parse::<u8>().ok())
    {
        return (1..=n).collect();
    }
    let mut nodes: Vec<u8> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_prefix("sy-node")?
                .parse()
                .ok()
        })
        .collect();
    nodes.sort();
    nodes
}

/// Runs a command in the outside client's namespace (where a user's
/// kubectl and helm would be), with the admin kubeconfig.
fn outside(
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let mut child = Command::new("timeout")
        .arg(timeout.as_secs().to_string())
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{OUTSIDE_NS}"))
        .arg(program)
        .args(args)
        .env("KUBECONFIG", admin_kubeconfig())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let name = program
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("command");
        bail!(
            "{name} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            if out.status.code() == Some(124) {
                format!(" (timed out after {timeout:?})")
            } else {
                String::new()
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kubectl as the cluster admin, from outside the cluster.
pub fn kubectl(args: &[&str]) -> Result<String> {
    outside(
        &crate::apiserver::k8s_bin("kubectl")?,
        args,
        None,
        Duration::from_secs(60),
    )
}

pub fn kubectl_apply(yaml: &str) -> Result<String> {
    outside(
        &crate::apiserver::k8s_bin("kubectl")?,
        &["apply", "-f", "-"],
        Some(yaml),
        Duration::from_secs(60),
    )
}

pub fn helm(args: &[&str]) -> Result<String> {
    outside(
        &crate::apiserver::k8s_bin("helm")?,
        args,
        None,
        Duration::from_secs(300),
    )
}

/// Polls `ready` until it holds; an error from it is remembered and shown
/// if time runs out.
pub fn wait_until(
    what: &str,
    limit: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!(": last error: {e:#}"),
        }
        if started.elapsed() > limit {
            bail!("{what}: not after {limit:?}{last}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs `argv` on node `n` (its network and mount namespaces), as a host
/// process of that node; stdout, or an error with stderr.
pub fn on_node(n: u8, argv: &[&str]) -> Result<String> {
    let mut full: Vec<String> = daemon::nsenter(daemon::Place::Node(n));
    full.extend(argv.iter().map(|a| a.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    crate::command::run(&refs)
}
