//! What a cluster installer adds once the control plane runs: CoreDNS as
//! the cluster DNS (kube-dns at 10.96.0.10, kubeadm's Corefile), and
//! Switchyard itself, installed with `helm install` as a user would.

use std::time::Duration;

use anyhow::{Context, Result};

use super::images::{COREDNS_IMAGE, SWITCHYARD_REPOSITORY, SWITCHYARD_TAG};
use super::layout::{
    APISERVER_PORT, DNS_SERVICE_IP, NODE_CGROUP2_MOUNT, NODE_IFACE, control_plane_ip,
};

pub const RELEASE: &str = "switchyard";
pub const NAMESPACE: &str = "kube-system";

/// The values a user sets for this environment: the locally built image,
/// the node interface, where cgroup2 is, and the API server's address (no
/// kube-proxy: the agent cannot reach the `kubernetes` Service's ClusterIP
/// before it runs).
/// `SWITCHYARD_HELM_SET` adds values, comma-separated `key=value` as for
/// `helm --set` (e.g. the label the upstream "restarting kube-proxy" case
/// restarts the service proxy by).
pub fn switchyard_values() -> Vec<String> {
    let mut values = vec![
        format!("image.repository={SWITCHYARD_REPOSITORY}"),
        format!("image.tag={SWITCHYARD_TAG}"),
        "image.pullPolicy=Never".into(),
        format!("interfaces.external={NODE_IFACE}"),
        format!("socketLB.hostCgroupRoot={NODE_CGROUP2_MOUNT}"),
        format!("apiServer.host={}", control_plane_ip()),
        format!("apiServer.port={APISERVER_PORT}"),
    ];
    if let Ok(extra) = std::env::var("SWITCHYARD_HELM_SET") {
        values.extend(extra.split(',').filter(|v| !v.is_empty()).map(String::from));
    }
    values
}

pub fn helm_install() -> Result<String> {
    let chart = crate::chart::chart_dir();
    let mut args: Vec<String> = vec![
        "install".into(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--wait".into(),
        "--timeout".into(),
        "180s".into(),
    ];
    for v in switchyard_values() {
        args.push("--set".into());
        args.push(v);
    }
    super::helm(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

pub fn install_coredns() -> Result<()> {
    super::kubectl_apply(&coredns_manifest()).context("applying CoreDNS")?;
    super::wait_until("CoreDNS ready", Duration::from_secs(120), || {
        Ok(super::kubectl(&[
            "-n",
            NAMESPACE,
            "get",
            "deploy",
            "coredns",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])?
        .trim()
            == "2")
    })
}

fn coredns_manifest() -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: coredns, namespace: kube-system}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: "system:coredns"}}
rules:
- apiGroups: [""]
  resources: [endpoints, services, pods, namespaces]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "system:coredns"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "system:coredns"}}
subjects: [{{kind: ServiceAccount, name: coredns, namespace: kube-system}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: coredns, namespace: kube-system}}
data:
  Corefile: |
    .:53 {{
        errors
        health {{
           lameduck 5s
        }}
        ready
        kubernetes cluster.local in-addr.arpa ip6.arpa {{
           pods insecure
           fallthrough in-addr.arpa ip6.arpa
           ttl 30
        }}
        prometheus :9153
        forward . /etc/resolv.conf {{
           max_concurrent 1000
        }}
        cache 30 {{
           disable success cluster.local
           disable denial cluster.local
        }}
        loop
        reload
        loadbalance
    }}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: kube-system
  labels: {{k8s-app: kube-dns}}
spec:
  replicas: 2
  selector: {{matchLabels: {{k8s-app: kube-dns}}}}
  template:
    metadata: {{labels: {{k8s-app: kube-dns}}}}
    spec:
      serviceAccountName: coredns
      priorityClassName: system-cluster-critical
      dnsPolicy: Default
      tolerations: [{{operator: Exists}}]
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              labelSelector: {{matchLabels: {{k8s-app: kube-dns}}}}
              topologyKey: kubernetes.io/hostname
      containers:
      - name: coredns
        image: {COREDNS_IMAGE}
        imagePullPolicy: Never
        args: [-conf, /etc/coredns/Corefile]
        ports:
        - {{containerPort: 53, name: dns, protocol: UDP}}
        - {{containerPort: 53, name: dns-tcp, protocol: TCP}}
        - {{containerPort: 9153, name: metrics, protocol: TCP}}
        securityContext:
          allowPrivilegeEscalation: false
          capabilities: {{add: [NET_BIND_SERVICE], drop: [ALL]}}
          readOnlyRootFilesystem: true
        livenessProbe:
          httpGet: {{path: /health, port: 8080}}
          initialDelaySeconds: 60
          failureThreshold: 5
        readinessProbe:
          httpGet: {{path: /ready, port: 8181}}
        volumeMounts: [{{name: config-volume, mountPath: /etc/coredns, readOnly: true}}]
      volumes:
      - name: config-volume
        configMap:
          name: coredns
          items: [{{key: Corefile, path: Corefile}}]
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: kube-system
  labels: {{k8s-app: kube-dns, kubernetes.io/name: CoreDNS}}
spec:
  selector: {{k8s-app: kube-dns}}
  clusterIP: {DNS_SERVICE_IP}
  ports:
  - {{name: dns, port: 53, protocol: UDP}}
  - {{name: dns-tcp, port: 53, protocol: TCP}}
  - {{name: metrics, port: 9153, protocol: TCP}}
"#
    )
}
