//! Several nodes on a shared underlay: the stand-in for a multi-node
//! cluster. Each node is a [`Topology`] whose `ext0` interface sits on a
//! bridge in an underlay namespace, with the node IP `10.10.0.<n>/24`; pods
//! of node `n` get `10.244.<n>.x` and every node routes the other nodes' pod
//! CIDRs through their node IPs (like a host-gw / direct-routing CNI). An
//! external client namespace on the same underlay is not a node.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

use crate::agent::{AgentOptions, AgentSource};
use crate::command::{run, sysctl};
use crate::topology::{Pod, Topology};

pub const NODE_EXTERNAL_IFACE: &str = "ext0";

pub fn node_ip(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, n)
}

pub fn external_client_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 100)
}

/// Where the API server of the controller tests listens, on the underlay.
pub fn control_plane_ip() -> Ipv4Addr {
    Ipv4Addr::new(10, 10, 0, 250)
}

/// The node name the agents and EndpointSlices use for node `n`.
pub fn node_name(n: u8) -> String {
    format!("node-{n}")
}

pub struct Node {
    pub number: u8,
    pub topo: Topology,
}

impl Node {
    pub fn name(&self) -> String {
        node_name(self.number)
    }
    pub fn ip(&self) -> Ipv4Addr {
        node_ip(self.number)
    }
    /// The node's own network namespace as a place to run clients from:
    /// host-network processes.
    pub fn host(&self) -> Pod {
        Pod::detached(&self.name(), self.topo.node_ns(), self.ip(), "")
    }
    /// Pod `i` of this node gets 10.244.<node>.<i>.
    pub fn pod_ip(&self, i: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.number, i)
    }
    /// Options for an agent on this node: its node name, its external
    /// interface, then `extra` flags.
    pub fn agent_options(&self, source: AgentSource, extra: &[&str]) -> AgentOptions {
        let mut extra_args = vec![
            "--node-name".to_string(),
            self.name(),
            "--external-ifaces".to_string(),
            NODE_EXTERNAL_IFACE.to_string(),
        ];
        extra_args.extend(extra.iter().map(|a| a.to_string()));
        AgentOptions {
            node_ns: self.topo.node_ns().to_string(),
            pin_dir: format!("/sys/fs/bpf/{}", self.topo.id()).into(),
            source,
            pod_ifaces: self.topo.pod_iface_glob(),
            extra_args,
        }
    }

    pub fn add_pod(&mut self, name: &str, i: u8) -> Result<&Pod> {
        let ip = self.pod_ip(i);
        self.topo.add_pod(name, ip)
    }
}

/// Field order is drop order: nodes (and their pods) go before the underlay.
pub struct MultiNode {
    pub nodes: Vec<Node>,
    external: Pod,
    /// A host on the underlay for the API server, when asked for.
    control_plane: Option<Pod>,
    id: String,
    underlay_ns: String,
}

impl MultiNode {
    /// `count` nodes numbered 1..=count, plus the external client.
    pub fn new(count: u8) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "sy{:x}g{:x}u",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let underlay_ns = format!("{id}-net");
        run(&["ip", "netns", "add", &underlay_ns])?;
        // From here on, Drop cleans up whatever was made.
        let mut cluster = Self {
            nodes: Vec::new(),
            external: Pod::detached("external", &format!("{id}-ext"), external_client_ip(), ""),
            control_plane: None,
            id: id.clone(),
            underlay_ns,
        };
        cluster
            .build(&id, count)
            .context("building the multi-node cluster")?;
        Ok(cluster)
    }

    fn build(&mut self, id: &str, count: u8) -> Result<()> {
        let net = self.underlay_ns.clone();
        sysctl(&net, "net.ipv6.conf.all.disable_ipv6", "1")?;
        run(&["ip", "-n", &net, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &net, "link", "set", "br0", "up"])?;
        for n in 1..=count {
            let topo = Topology::new()?;
            let node = Node { number: n, topo };
            let port = format!("{id}{n}");
            let ns = node.topo.node_ns().to_string();
            self.nodes.push(node);
            self.plug(&ns, NODE_EXTERNAL_IFACE, &port, node_ip(n))?;
        }
        for node in &self.nodes {
            for other in self.nodes.iter().filter(|o| o.number != node.number) {
                let cidr = format!("10.244.{}.0/24", other.number);
                run(&[
                    "ip",
                    "-n",
                    node.topo.node_ns(),
                    "route",
                    "add",
                    &cidr,
                    "via",
                    &other.ip().to_string(),
                ])?;
            }
        }
        // The external client: a host on the underlay, not a node.
        let ext_ns = self.external.ns().to_string();
        run(&["ip", "netns", "add", &ext_ns])?;
        self.external.set_attached();
        sysctl(&ext_ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
        run(&["ip", "-n", &ext_ns, "link", "set", "lo", "up"])?;
        self.plug(&ext_ns, "eth0", &format!("{id}x"), external_client_ip())?;
        Ok(())
    }

    /// A veth from `ns` (named `iface`, with `ip/24`) to the underlay bridge.
    fn plug(&self, ns: &str, iface: &str, bridge_port: &str, ip: Ipv4Addr) -> Result<()> {
        let net = self.underlay_ns.as_str();
        run(&[
            "ip",
            "link",
            "add",
            "name",
            iface,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            bridge_port,
            "netns",
            net,
        ])?;
        run(&["ip", "-n", net, "link", "set", bridge_port, "master", "br0"])?;
        // Frames on the underlay carry complete checksums, as on a real wire
        // (with offload, a local stack sends CHECKSUM_PARTIAL skbs over veth,
        // whose checksum field XDP cannot update).
        run(&[
            "ip", "netns", "exec", ns, "ethtool", "-K", iface, "tx", "off",
        ])?;
        run(&["ip", "-n", net, "link", "set", bridge_port, "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            iface,
        ])?;
        run(&["ip", "-n", ns, "link", "set", iface, "up"])?;
        Ok(())
    }

    /// A control-plane host namespace on the underlay at
    /// [`control_plane_ip`], where the agents reach an API server over their
    /// nodes' external interfaces, as on a real cluster.
    pub fn add_control_plane(&mut self) -> Result<&Pod> {
        if self.control_plane.is_none() {
            let ns = format!("{}-cp", self.id);
            let mut host = Pod::detached("control-plane", &ns, control_plane_ip(), "");
            run(&["ip", "netns", "add", &ns])?;
            host.set_attached();
            self.control_plane = Some(host);
            sysctl(&ns, "net.ipv6.conf.all.disable_ipv6", "1")?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            self.plug(&ns, "eth0", &format!("{}c", self.id), control_plane_ip())?;
        }
        self.control_plane
            .as_ref()
            .context("control plane host just made")
    }

    pub fn node(&self, n: u8) -> &Node {
        &self.nodes[usize::from(n) - 1]
    }

    pub fn node_mut(&mut self, n: u8) -> &mut Node {
        &mut self.nodes[usize::from(n) - 1]
    }

    /// Routes `cidr` from the external client through node `n`, as an
    /// upstream router announcing load-balancer IPs would.
    pub fn route_external_via(&self, cidr: &str, n: u8) -> Result<()> {
        run(&[
            "ip",
            "-n",
            self.external.ns(),
            "route",
            "replace",
            cidr,
            "via",
            &node_ip(n).to_string(),
        ])?;
        Ok(())
    }

    /// An overlay as flannel's VXLAN backend builds it: on every node a
    /// VXLAN device `flannel.1` (VNI 1, over `ext0`) with address
    /// 10.245.0.<node>/24, and the other nodes' pod CIDRs routed through
    /// it — pod-to-pod traffic between nodes then leaves and arrives
    /// encapsulated, decapsulated on `flannel.1`, while node addresses stay
    /// on the underlay. Removed with the nodes' namespaces.
    pub fn add_vxlan_overlay(&self) -> Result<()> {
        for node in &self.nodes {
            let ns = node.topo.node_ns();
            run(&[
                "ip",
                "-n",
                ns,
                "link",
                "add",
                "flannel.1",
                "type",
                "vxlan",
                "id",
                "1",
                "dstport",
                "8472",
                "dev",
                NODE_EXTERNAL_IFACE,
                "local",
                &node.ip().to_string(),
            ])?;
            let tunnel_ip = format!("10.245.0.{}/24", node.number);
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &tunnel_ip,
                "dev",
                "flannel.1",
            ])?;
            run(&["ip", "-n", ns, "link", "set", "flannel.1", "up"])?;
            for other in self.nodes.iter().filter(|o| o.number != node.number) {
                // Flood (ARP included) to every other node's VTEP.
                run(&[
                    "bridge",
                    "-n",
                    ns,
                    "fdb",
                    "append",
                    "00:00:00:00:00:00",
                    "dev",
                    "flannel.1",
                    "dst",
                    &other.ip().to_string(),
                ])?;
                run(&[
                    "ip",
                    "-n",
                    ns,
                    "route",
                    "replace",
                    &format!("10.244.{}.0/24", other.number),
                    "via",
                    &format!("10.245.0.{}", other.number),
                    "dev",
                    "flannel.1",
                ])?;
            }
        }
        Ok(())
    }

    /// The client outside the cluster, on the underlay.
    pub fn external(&self) -> &Pod {
        &self.external
    }
}

impl Drop for MultiNode {
    fn drop(&mut self) {
        self.nodes.clear();
        if self.external.is_attached() {
            let _ = run(&["ip", "netns", "del", self.external.ns()]);
        }
        if let Some(cp) = self.control_plane.as_ref().filter(|cp| cp.is_attached()) {
            let _ = run(&["ip", "netns", "del", cp.ns()]);
        }
        let _ = run(&["ip", "netns", "del", &self.underlay_ns]);
    }
}
