//! The Helm chart: lint, render with default and other values, the rendered
//! objects accepted by a real kube-apiserver (server-side dry run), and the
//! chart's RBAC proven least-privilege with a real ServiceAccount token (the
//! controller tests run the agent itself with that token). Uses the helm
//! and kubectl of scripts/k8s-binaries.sh.

use anyhow::{Context, Result};
use switchyard_tests::apiserver::ApiServer;
use switchyard_tests::chart::{self, chart_dir, helm};

/// `helm template` of the chart with `--set` values, as parsed documents.
fn render(sets: &[&str]) -> Result<(String, Vec<serde_json::Value>)> {
    let text = chart::render(sets)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok((text, docs))
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Result<&'a serde_json::Value> {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .with_context(|| format!("no {kind} rendered"))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(String::from))
        .collect()
}

#[test]
fn chart_lints_and_renders_a_least_privilege_daemonset() -> Result<()> {
    let lint = helm(&["lint", "--strict", chart_dir().to_str().context("path")?])?;
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

    let (_, docs) = render(&[])?;
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        vec![
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "DaemonSet"
        ]
    );
    let ds = find(&docs, "DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists", "every taint");
    assert_eq!(
        ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"],
        1
    );
    let agent = &pod["containers"][0];
    let sc = &agent["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), vec!["ALL"]);
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        vec!["BPF", "NET_ADMIN", "PERFMON"]
    );
    assert_eq!(
        agent["env"][0],
        serde_json::json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["port"], 10256);
    let args = strings(&agent["args"]);
    for expected in [
        "agent",
        "--keep-datapath-on-exit",
        "--pin-dir=/sys/fs/bpf/switchyard",
        "--algorithm=random",
        "--network-policy=on",
        "--xdp=auto",
        "--metrics-addr=127.0.0.1:10249",
        "--health-addr=0.0.0.0:10256",
        "--sysctl-dir=/host/proc/sys",
        "--owner-daemonset=kube-system/switchyard",
    ] {
        assert!(
            args.contains(&expected.to_string()),
            "{expected} not in {args:?}"
        );
    }
    assert!(args.contains(&"--socket-lb=host".to_string()), "{args:?}");
    assert!(
        pod.get("hostPID").is_none(),
        "host processes only: no hostPID"
    );
    check_agent_accepts(&args)?;
    // Socket LB for pods: their namespaces found through /proc and the
    // runtime's directory, entered with SYS_ADMIN.
    let (_, with_pods) = render(&["socketLB.pods=true"])?;
    let pods_spec = &find(&with_pods, "DaemonSet")?["spec"]["template"]["spec"];
    assert_eq!(pods_spec["hostPID"], true);
    let pods_agent = &pods_spec["containers"][0];
    let pods_args = strings(&pods_agent["args"]);
    for expected in ["--socket-lb=pods", "--netns-dir=/host/netns"] {
        assert!(
            pods_args.contains(&expected.to_string()),
            "{expected} not in {pods_args:?}"
        );
    }
    assert_eq!(
        strings(&pods_agent["securityContext"]["capabilities"]["add"]),
        vec!["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"]
    );
    check_agent_accepts(&pods_args)?;
    // The only privileged piece: the init container that mounts bpffs.
    let init = &pod["initContainers"][0];
    assert_eq!(init["name"], "mount-bpffs");
    assert_eq!(
        strings(&init["command"])[1..],
        ["mount-bpffs", "/sys/fs/bpf"]
    );

    // Its own DaemonSet only, to tell an uninstall from an upgrade.
    let own = find(&docs, "Role")?;
    assert_eq!(
        own["rules"],
        serde_json::json!([{"apiGroups": ["apps"], "resources": ["daemonsets"],
            "resourceNames": ["switchyard"], "verbs": ["get", "list", "watch"]}])
    );

    let role = find(&docs, "ClusterRole")?;
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role["rules"]
        .as_array()
        .context("rules")?
        .iter()
        .map(|r| {
            (
                strings(&r["apiGroups"]),
                strings(&r["resources"]),
                strings(&r["verbs"]),
            )
        })
        .collect();
    let read = vec!["get".to_string(), "list".into(), "watch".into()];
    assert_eq!(
        rules,
        vec![
            (
                vec!["".into()],
                vec!["services".into(), "nodes".into()],
                read.clone()
            ),
            (
                vec!["discovery.k8s.io".into()],
                vec!["endpointslices".into()],
                read.clone()
            ),
            (
                vec!["".into()],
                vec!["pods".into(), "namespaces".into()],
                read.clone()
            ),
            (
                vec!["networking.k8s.io".into()],
                vec!["networkpolicies".into()],
                read
            ),
            (
                vec!["events.k8s.io".into()],
                vec!["events".into()],
                vec!["create".into(), "patch".into()]
            ),
        ],
        "exactly read access to services, endpointslices and nodes, pods, namespaces and networkpolicies (NetworkPolicy), and events to tell why a Service is not programmed"
    );
    Ok(())
}

#[test]
fn chart_values_reach_the_agent_and_bad_values_are_refused() -> Result<()> {
    let (_, docs) = render(&[
        "algorithm=maglev",
        "xdp=off",
        "log.format=text",
        "metrics.bindAddress=0.0.0.0",
        "serviceMonitor.enabled=true",
        "socketLB.enabled=false",
        "bpffs.mountIfMissing=false",
        "extraArgs={--poll-ms=150}",
        "image.tag=test",
    ])?;
    let ds = find(&docs, "DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    let agent = &pod["containers"][0];
    let args = strings(&agent["args"]);
    for expected in [
        "--algorithm=maglev",
        "--xdp=off",
        "--log-format=text",
        "--metrics-addr=0.0.0.0:10249",
        "--socket-lb=off",
        "--poll-ms=150",
    ] {
        assert!(
            args.contains(&expected.to_string()),
            "{expected} not in {args:?}"
        );
    }
    check_agent_accepts(&args)?;
    // Maglev tables that cannot fit the services map are refused at start,
    // naming both values, not discovered as "map full" one service at a time.
    let (_, too_big) = render(&[
        "algorithm=maglev",
        "maglevTableSize=65521",
        "mapSizes.services=100000",
    ])?;
    let too_big =
        strings(&find(&too_big, "DaemonSet")?["spec"]["template"]["spec"]["containers"][0]["args"]);
    let err = check_agent_accepts(&too_big)
        .expect_err("a services map too small for the Maglev tables")
        .to_string();
    assert!(
        err.contains("--map-size-services 100000") && err.contains("--maglev-table-size 65521"),
        "{err}"
    );
    assert!(pod["initContainers"].is_null(), "no bpffs mount asked for");
    assert!(
        agent["image"]
            .as_str()
            .is_some_and(|i| i.ends_with(":test"))
    );
    find(&docs, "ServiceMonitor")?;

    for (set, message) in [
        (
            "algorithm=bogus",
            "algorithm must be random, maglev, round-robin or least-connection",
        ),
        ("xdp=sometimes", "xdp must be auto, native, generic or off"),
        (
            "serviceMonitor.enabled=true",
            "serviceMonitor.enabled needs metrics.bindAddress",
        ),
    ] {
        let err = render(&[set]).expect_err(set).to_string();
        assert!(err.contains(message), "{set}: {err}");
    }
    Ok(())
}

#[test]
fn rendered_chart_is_accepted_by_the_api_server_and_its_rbac_is_least_privilege() -> Result<()> {
    let api = ApiServer::start_isolated()?;
    let (default, _) = render(&[])?;
    let accepted = api.kubectl_as(
        &api.kubeconfig(),
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&default),
    )?;
    assert!(
        accepted.contains("daemonset.apps/switchyard created (server dry run)"),
        "{accepted}"
    );
    // A variant with other values validates too (the ServiceMonitor needs
    // the Prometheus Operator's CRD, which a bare API server lacks).
    let (custom, docs) = render(&["algorithm=maglev", "xdp=off", "socketLB.enabled=false"])?;
    assert!(docs.iter().all(|d| d["kind"] != "ServiceMonitor"));
    api.kubectl_as(
        &api.kubeconfig(),
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&custom),
    )?;

    // For real: the ServiceAccount and its RBAC, then ask as that account.
    api.apply(&chart::agent_rbac()?)?;
    let sa = api.service_account_kubeconfig("kube-system", "switchyard")?;
    // `kubectl auth can-i` answers yes (exit 0) or no (exit 1).
    let can = |verb: &str, resource: &str| -> Result<bool> {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", api.netns()))
            .arg(switchyard_tests::apiserver::k8s_bin("kubectl")?)
            .arg(format!("--kubeconfig={}", sa.display()))
            .args(["auth", "can-i", verb, resource])
            .output()?;
        let answer = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match (out.status.code(), answer.as_str()) {
            (Some(0), "yes") => Ok(true),
            (Some(1), "no") => Ok(false),
            _ => anyhow::bail!(
                "kubectl auth can-i {verb} {resource}: {answer} {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    };
    for (verb, resource) in [
        ("get", "services"),
        ("list", "services"),
        ("watch", "services"),
        ("watch", "endpointslices.discovery.k8s.io"),
        ("list", "nodes"),
        ("create", "events.events.k8s.io"),
        ("watch", "pods"),
        ("list", "namespaces"),
        ("watch", "networkpolicies.networking.k8s.io"),
    ] {
        assert!(can(verb, resource)?, "{verb} {resource} should be allowed");
    }
    for (verb, resource) in [
        ("create", "services"),
        ("update", "endpointslices.discovery.k8s.io"),
        ("delete", "nodes"),
        ("get", "secrets"),
        ("update", "pods"),
        ("create", "networkpolicies.networking.k8s.io"),
        ("create", "events"),
        ("delete", "events.events.k8s.io"),
    ] {
        assert!(
            !can(verb, resource)?,
            "{verb} {resource} should be forbidden"
        );
    }
    // And a real write is refused by the API server.
    let denied = api
        .kubectl_as(
            &sa,
            &[
                "-n",
                "default",
                "create",
                "service",
                "clusterip",
                "nope",
                "--tcp=80:80",
            ],
            None,
        )
        .expect_err("creating a service with the agent's token");
    assert!(
        denied.to_string().contains("is forbidden: User \"system:serviceaccount:kube-system:switchyard\" cannot create resource \"services\""),
        "{denied}"
    );
    Ok(())
}

/// The agent binary parses the rendered arguments (`--check-config`).
fn check_agent_accepts(args: &[String]) -> Result<()> {
    let out = std::process::Command::new(switchyard_tests::paths::switchyard_bin()?)
        .args(args)
        .arg("--check-config")
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the agent refuses the chart's arguments {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
