//! The cluster's network: a bridge in `sy-fabric` as the underlay, one
//! namespace per node with `eth0` on it, the outside client, and the routes
//! to each node's pod CIDR (what a host-gw CNI such as kindnet programs).

use anyhow::{Context, Result};

use super::layout::{
    FABRIC_NS, NODE_IFACE, OUTSIDE_NS, node_ip, node_ns, outside_ip, outside_public_ip,
};
use crate::command::run;

const FABRIC_BRIDGE: &str = "br0";
const FABRIC_GATEWAY: &str = "10.99.0.254";

pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

fn ns_run(ns: &str, argv: &[&str]) -> Result<String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(argv);
    run(&full)
}

pub fn create_fabric() -> Result<()> {
    run(&["ip", "netns", "add", FABRIC_NS])?;
    run(&["ip", "-n", FABRIC_NS, "link", "set", "lo", "up"])?;
    run(&[
        "ip",
        "-n",
        FABRIC_NS,
        "link",
        "add",
        FABRIC_BRIDGE,
        "type",
        "bridge",
    ])?;
    run(&[
        "ip",
        "-n",
        FABRIC_NS,
        "addr",
        "add",
        &format!("{FABRIC_GATEWAY}/24"),
        "dev",
        FABRIC_BRIDGE,
    ])?;
    run(&["ip", "-n", FABRIC_NS, "link", "set", FABRIC_BRIDGE, "up"])?;
    Ok(())
}

/// A namespace with `eth0` = `addr/24` on the fabric bridge and a default
/// route through the fabric.
fn attach(ns: &str, port: &str, addr: std::net::Ipv4Addr) -> Result<()> {
    run(&["ip", "netns", "add", ns])?;
    run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
    run(&[
        "ip", "-n", FABRIC_NS, "link", "add", port, "type", "veth", "peer", "name", NODE_IFACE,
        "netns", ns,
    ])?;
    run(&[
        "ip",
        "-n",
        FABRIC_NS,
        "link",
        "set",
        port,
        "master",
        FABRIC_BRIDGE,
        "up",
    ])?;
    run(&[
        "ip",
        "-n",
        ns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        NODE_IFACE,
    ])?;
    run(&["ip", "-n", ns, "link", "set", NODE_IFACE, "up"])?;
    run(&[
        "ip",
        "-n",
        ns,
        "route",
        "add",
        "default",
        "via",
        FABRIC_GATEWAY,
    ])?;
    Ok(())
}

pub fn create_node(n: u8) -> Result<()> {
    let ns = node_ns(n);
    attach(&ns, &format!("n{n}"), node_ip(n))?;
    ns_run(&ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    // The CNI's veths and pods' traffic pass FORWARD; a namespace starts
    // with ACCEPT, but say it: a daemon that sets DROP breaks the cluster.
    ns_run(&ns, &["iptables", "-P", "FORWARD", "ACCEPT"])
        .context("iptables in the node namespace (apt-get install iptables)")?;
    Ok(())
}

/// The outside client: on the fabric like a node, plus an address beyond
/// the nodes' network (the fabric routes it back), which load-balancer
/// routes use as their source.
pub fn create_outside() -> Result<()> {
    attach(OUTSIDE_NS, "out", outside_ip())?;
    let public = format!("{}/32", outside_public_ip());
    run(&[
        "ip", "-n", OUTSIDE_NS, "addr", "add", &public, "dev", NODE_IFACE,
    ])?;
    ns_run(FABRIC_NS, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    run(&[
        "ip",
        "-n",
        FABRIC_NS,
        "route",
        "add",
        &public,
        "via",
        &outside_ip().to_string(),
    ])
    .map(|_| ())
}

/// Node `n` routes `cidr` (another node's pods) through that node's IP.
pub fn route_pod_cidr(n: u8, cidr: &str, via_node: u8) -> Result<()> {
    run(&[
        "ip",
        "-n",
        &node_ns(n),
        "route",
        "replace",
        cidr,
        "via",
        &node_ip(via_node).to_string(),
    ])
    .map(|_| ())
}

/// Deletes every namespace of the cluster that exists.
pub fn delete_all(nodes: &[u8]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut names: Vec<String> = nodes.iter().map(|&n| node_ns(n)).collect();
    names.push(OUTSIDE_NS.into());
    names.push(FABRIC_NS.into());
    for ns in names {
        if netns_exists(&ns)
            && let Err(e) = run(&["ip", "netns", "del", &ns])
        {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}
