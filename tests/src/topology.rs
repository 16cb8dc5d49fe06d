//! Node and pod namespaces joined by veth pairs.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

use crate::command::{run, sysctl};
use crate::pod_server::{PodServer, ServerPorts};

/// The pods' gateway: every host-side veth carries it, so pods ARP for it on
/// their own link (the Calico-style link-local gateway).
pub const POD_GATEWAY: &str = "169.254.1.1";
/// All names start with this, followed by the creating pid in hex and `g`.
const PREFIX: &str = "sy";

pub struct Pod {
    name: String,
    ns: String,
    ip: Ipv4Addr,
    host_iface: String,
    /// Whether the namespace exists (for hosts built outside a topology).
    attached: bool,
}

impl Pod {
    /// A host whose namespace its owner creates and deletes (e.g. the
    /// external client of a multi-node cluster).
    pub(crate) fn detached(name: &str, ns: &str, ip: Ipv4Addr, host_iface: &str) -> Self {
        Self {
            name: name.to_string(),
            ns: ns.to_string(),
            ip,
            host_iface: host_iface.to_string(),
            attached: false,
        }
    }

    pub(crate) fn set_attached(&mut self) {
        self.attached = true;
    }

    pub(crate) fn is_attached(&self) -> bool {
        self.attached
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn ns(&self) -> &str {
        &self.ns
    }
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
    pub fn host_iface(&self) -> &str {
        &self.host_iface
    }

    /// Starts a `pod-server` in this pod that answers with the pod's name.
    pub fn start_server(&self, ports: &ServerPorts) -> Result<PodServer> {
        PodServer::start(&self.ns, &self.name, ports)
    }
}

pub struct Topology {
    /// Unique per topology: `sy<pid hex>g<counter hex>`.
    id: String,
    node_ns: String,
    pods: Vec<Pod>,
    next_iface: u32,
}

fn unique_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{:x}g{:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

impl Topology {
    /// A node namespace with forwarding on and no pods yet.
    pub fn new() -> Result<Self> {
        let id = unique_id();
        let node_ns = format!("{id}-node");
        let topo = Self {
            id,
            node_ns,
            pods: Vec::new(),
            next_iface: 0,
        };
        run(&["ip", "netns", "add", &topo.node_ns])?;
        run(&["ip", "-n", &topo.node_ns, "link", "set", "lo", "up"])?;
        sysctl(&topo.node_ns, "net.ipv4.ip_forward", "1")?;
        for scope in ["all", "default"] {
            sysctl(
                &topo.node_ns,
                &format!("net.ipv4.conf.{scope}.rp_filter"),
                "0",
            )?;
            sysctl(
                &topo.node_ns,
                &format!("net.ipv6.conf.{scope}.disable_ipv6"),
                "1",
            )?;
        }
        Ok(topo)
    }

    /// Unique id of this topology, usable in other names (pin dirs).
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn node_ns(&self) -> &str {
        &self.node_ns
    }

    /// The node namespace as a place to run clients from (host network),
    /// e.g. to read the agent's loopback-only metrics.
    pub fn host(&self) -> Pod {
        Pod::detached("host", &self.node_ns, Ipv4Addr::LOCALHOST, "")
    }

    /// A glob that matches exactly this topology's host-side interfaces.
    pub fn pod_iface_glob(&self) -> String {
        format!("{}-*", self.iface_stem())
    }

    fn iface_stem(&self) -> String {
        // Interface names are at most 15 bytes: keep the stem short.
        let hash = self
            .id
            .bytes()
            .fold(5381u32, |h, b| h.wrapping_mul(33) ^ u32::from(b));
        format!("sy{:06x}", hash & 0xff_ffff)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in this topology"))
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// Adds a pod: its namespace, a veth pair, addresses and routes.
    pub fn add_pod(&mut self, name: &str, ip: Ipv4Addr) -> Result<&Pod> {
        if self.pods.iter().any(|p| p.name == name) {
            bail!("pod {name} exists already");
        }
        let ns = format!("{}-{name}", self.id);
        let host_iface = format!("{}-{}", self.iface_stem(), self.next_iface);
        self.next_iface += 1;
        run(&["ip", "netns", "add", &ns])?;
        // Registered before configuring, so a failure still tears it down.
        self.pods.push(Pod {
            name: name.to_string(),
            ns: ns.clone(),
            ip,
            host_iface: host_iface.clone(),
            attached: true,
        });
        self.wire_pod(&ns, &host_iface, ip)
            .with_context(|| format!("wiring pod {name} ({ip}) to node {}", self.node_ns))?;
        Ok(self.pod(name))
    }

    fn wire_pod(&self, ns: &str, host_iface: &str, ip: Ipv4Addr) -> Result<()> {
        let node = self.node_ns.as_str();
        let ip_cidr = format!("{ip}/32");
        let gateway_cidr = format!("{POD_GATEWAY}/32");
        run(&[
            "ip", "link", "add", "name", host_iface, "netns", node, "type", "veth", "peer", "name",
            "eth0", "netns", ns,
        ])?;
        sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        run(&["ip", "-n", ns, "addr", "add", &ip_cidr, "dev", "eth0"])?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            POD_GATEWAY,
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            POD_GATEWAY,
            "dev",
            "eth0",
        ])?;
        run(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &gateway_cidr,
            "dev",
            host_iface,
        ])?;
        run(&["ip", "-n", node, "link", "set", host_iface, "up"])?;
        run(&[
            "ip", "-n", node, "route", "add", &ip_cidr, "dev", host_iface,
        ])?;
        Ok(())
    }

    /// Removes a pod: its namespace, and with it the veth pair.
    pub fn remove_pod(&mut self, name: &str) -> Result<()> {
        let idx = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        let pod = self.pods.remove(idx);
        run(&["ip", "netns", "del", &pod.ns])?;
        // The host side goes with its peer; make sure it is gone.
        let _ = run(&["ip", "-n", &self.node_ns, "link", "del", &pod.host_iface]);
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for pod in &self.pods {
            let _ = run(&["ip", "netns", "del", &pod.ns]);
        }
        let _ = run(&["ip", "netns", "del", &self.node_ns]);
    }
}

/// Deletes namespaces and pin directories left by test processes that no
/// longer run (an aborted run must not leak into the next).
pub fn cleanup_stale() {
    let is_dead = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            return false;
        };
        let Some((pid_hex, _)) = rest.split_once('g') else {
            return false;
        };
        match u32::from_str_radix(pid_hex, 16) {
            Ok(pid) => !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => false,
        }
    };
    if let Ok(list) = run(&["ip", "netns", "list"]) {
        for line in list.lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if is_dead(name) {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
    crate::host::cleanup_stale_cgroups(is_dead);
    if let Ok(dirs) = std::fs::read_dir("/sys/fs/bpf") {
        for d in dirs.flatten() {
            let name = d.file_name().to_string_lossy().into_owned();
            if is_dead(&name) {
                let _ = std::fs::remove_dir_all(d.path());
            }
        }
    }
}
