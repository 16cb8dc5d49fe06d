//! `cluster status`: every daemon alive, every containerd answering, every
//! node Ready, the Switchyard DaemonSet ready — or a clear error naming
//! what is not, within seconds (every probe has a timeout).

use std::time::Duration;

use anyhow::{Result, bail};

use super::daemon;
use super::layout::node_name;

/// One line per check; `Err` lists the failed ones.
pub fn report() -> Result<String> {
    let nodes = super::recorded_nodes();
    if nodes.is_empty() {
        bail!("no cluster: `cargo xtask cluster up` first");
    }
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    let mut check = |what: String, result: Result<String>| match result {
        Ok(detail) => lines.push(format!("ok    {what}: {detail}")),
        Err(e) => {
            lines.push(format!("FAIL  {what}: {e:#}"));
            failed.push(what);
        }
    };
    for name in super::control_plane::DAEMONS {
        check(name.to_string(), process(name));
    }
    for &n in &nodes {
        let node = node_name(n);
        check(
            format!("containerd-{node}"),
            process(&format!("containerd-{node}")).and_then(|pid| {
                super::node::ctr_with_timeout(n, &["version"], Duration::from_secs(5))
                    .map(|_| format!("{pid}, answering"))
            }),
        );
        check(
            format!("kubelet-{node}"),
            process(&format!("kubelet-{node}"))
                .and_then(|pid| kubelet_healthz(n).map(|_| format!("{pid}, healthz ok"))),
        );
    }
    check("nodes Ready".into(), nodes_ready(&nodes));
    if super::daemon::recorded()
        .iter()
        .any(|d| d.starts_with("kube-proxy-"))
    {
        for &n in &nodes {
            let name = format!("kube-proxy-{}", node_name(n));
            check(name.clone(), process(&name));
        }
    } else {
        check("switchyard DaemonSet".into(), daemonset_ready());
    }
    let text = lines.join("\n");
    if failed.is_empty() {
        Ok(text)
    } else {
        bail!("{text}\n\nnot healthy: {}", failed.join(", "))
    }
}

fn process(name: &str) -> Result<String> {
    match daemon::running_pid(name) {
        Some(pid) => Ok(format!("pid {pid}")),
        None => bail!(
            "not running; log {}:\n{}",
            daemon::log_path(name).display(),
            daemon::log_tail(name, 5)
        ),
    }
}

fn kubelet_healthz(n: u8) -> Result<()> {
    let out = crate::command::run(&[
        "timeout",
        "5",
        "ip",
        "netns",
        "exec",
        &super::layout::node_ns(n),
        "curl",
        "-sf",
        "http://127.0.0.1:10248/healthz",
    ])?;
    anyhow::ensure!(out.trim() == "ok", "healthz said {out:?}");
    Ok(())
}

fn ready_condition(node: &str) -> Result<String> {
    Ok(super::kubectl(&[
        "--request-timeout=5s", "get", "node", node, "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.conditions[?(@.type==\"Ready\")].message}",
    ])?
    .trim()
    .to_string())
}

fn nodes_ready(nodes: &[u8]) -> Result<String> {
    let mut not = Vec::new();
    for &n in nodes {
        let cond = ready_condition(&node_name(n))?;
        if !cond.starts_with("True") {
            not.push(format!("{}: {cond}", node_name(n)));
        }
    }
    if !not.is_empty() {
        bail!("{}", not.join("; "));
    }
    Ok(format!("{} of {}", nodes.len(), nodes.len()))
}

pub fn all_nodes_ready(nodes: &[u8]) -> Result<bool> {
    Ok(nodes_ready(nodes).is_ok())
}

fn daemonset_ready() -> Result<String> {
    let out = super::kubectl(&[
        "--request-timeout=5s",
        "-n",
        super::addons::NAMESPACE,
        "get",
        "ds",
        super::addons::RELEASE,
        "-o",
        "jsonpath={.status.numberReady}/{.status.desiredNumberScheduled}",
    ])?;
    let (ready, desired) = out.trim().split_once('/').unwrap_or(("", ""));
    anyhow::ensure!(
        !desired.is_empty() && ready == desired,
        "{} ready",
        out.trim()
    );
    Ok(format!("{} ready", out.trim()))
}
