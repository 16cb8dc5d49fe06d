//! Rendering the Helm chart with the real helm, for the chart tests and for
//! the controller tests (which run the agent with the chart's RBAC).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::apiserver::k8s_bin;

pub fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/switchyard")
}

/// Runs helm; stdout, or an error with stderr.
pub fn helm(args: &[&str]) -> Result<String> {
    let out = Command::new(k8s_bin("helm")?)
        .args(args)
        .output()
        .context("running helm")?;
    if !out.status.success() {
        bail!(
            "helm {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template switchyard helm/switchyard -n kube-system --set …`.
pub fn render(sets: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let mut args = vec![
        "template",
        "switchyard",
        chart.to_str().context("chart path")?,
        "--namespace",
        "kube-system",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    helm(&args)
}

/// The ServiceAccount and the (Cluster)Roles and bindings of the default
/// rendering: what the agent runs with in a cluster.
pub fn agent_rbac() -> Result<String> {
    let rendered = render(&[])?;
    Ok(rendered
        .split("\n---")
        .filter(|d| {
            d.contains("\nkind: ServiceAccount")
                || d.contains("\nkind: ClusterRole\n")
                || d.contains("\nkind: ClusterRoleBinding")
                || d.contains("\nkind: Role\n")
                || d.contains("\nkind: RoleBinding")
        })
        .collect::<Vec<_>>()
        .join("\n---"))
}
