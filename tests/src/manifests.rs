//! A manifest directory for `switchyard agent --standalone`, and the YAML of
//! the objects tests put in it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

/// A temporary directory, removed on drop.
pub struct ManifestDir {
    path: PathBuf,
}

impl ManifestDir {
    pub fn new() -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-manifests-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes atomically (temp file + rename), as `kubectl`-driven tooling
    /// and config management do, so the agent never reads half a file.
    pub fn write(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.path.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, self.path.join(file)).with_context(|| format!("renaming to {file}"))
    }

    pub fn remove(&self, file: &str) -> Result<()> {
        std::fs::remove_file(self.path.join(file)).with_context(|| format!("removing {file}"))
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `(name, port, targetPort, protocol)` of a Service port.
pub type ServicePortSpec<'a> = (&'a str, u16, u16, &'a str);

/// A `v1` Service with a cluster IP and ports.
pub fn service_yaml(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    ports: &[ServicePortSpec],
) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n  type: ClusterIP\n  clusterIP: {cluster_ip}\n  clusterIPs: [{cluster_ip}]\n  ports:\n"
    );
    for (port_name, port, target, protocol) in ports {
        let _ = writeln!(
            y,
            "  - name: {port_name}\n    port: {port}\n    targetPort: {target}\n    protocol: {protocol}"
        );
    }
    y
}

/// Adds the annotation `key: value` to an object from [`service_yaml`] (or
/// any manifest whose `metadata:` has no annotations yet).
pub fn with_annotation(manifest: &str, key: &str, value: &str) -> String {
    manifest.replacen(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    {key}: {value:?}\n"),
        1,
    )
}

/// Adds `sessionAffinity: ClientIP` with `timeout_s` to a Service from
/// [`service_yaml`].
pub fn with_client_ip_affinity(service_yaml: &str, timeout_s: u32) -> String {
    format!(
        "{service_yaml}  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: {timeout_s}\n"
    )
}

/// One endpoint of an EndpointSlice.
#[derive(Clone, Debug)]
pub struct EndpointSpec {
    pub ip: Ipv4Addr,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub node: String,
}

impl EndpointSpec {
    pub fn ready(ip: Ipv4Addr) -> Self {
        Self {
            ip,
            ready: true,
            serving: true,
            terminating: false,
            node: "node-1".into(),
        }
    }
}

/// A `discovery.k8s.io/v1` EndpointSlice for Service `service`, with ports
/// `(name, port, protocol)`.
pub fn endpoint_slice_yaml(
    namespace: &str,
    name: &str,
    service: &str,
    ports: &[(&str, u16, &str)],
    endpoints: &[EndpointSpec],
) -> String {
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: {namespace}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nports:\n"
    );
    for (port_name, port, protocol) in ports {
        let _ = writeln!(
            y,
            "- name: {port_name}\n  port: {port}\n  protocol: {protocol}"
        );
    }
    if endpoints.is_empty() {
        y.push_str("endpoints: []\n");
    } else {
        y.push_str("endpoints:\n");
    }
    for e in endpoints {
        let _ = writeln!(
            y,
            "- addresses: [\"{}\"]\n  conditions:\n    ready: {}\n    serving: {}\n    terminating: {}\n  nodeName: {}",
            e.ip, e.ready, e.serving, e.terminating, e.node
        );
    }
    y
}

/// A running Pod as the API server would show it: labels, its address in
/// `status`, named container ports `(name, port, protocol)`.
pub fn pod_yaml(
    namespace: &str,
    name: &str,
    labels: &[(&str, &str)],
    ip: Ipv4Addr,
    ports: &[(&str, u16, &str)],
) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let ports: Vec<String> = ports
        .iter()
        .map(|(n, p, proto)| format!("{{name: {n}, containerPort: {p}, protocol: {proto}}}"))
        .collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}, labels: {{{}}}}}\n\
         spec: {{containers: [{{name: main, image: pause, ports: [{}]}}]}}\n\
         status: {{phase: Running, podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n",
        labels.join(", "),
        ports.join(", ")
    )
}

/// A Namespace with labels.
pub fn namespace_yaml(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{{}}}}}\n",
        labels.join(", ")
    )
}
