//! The cluster's load-balancer provider, doing what a cloud's does for
//! Services of type LoadBalancer (and what cloud-provider-kind does for
//! kind): an address from [`POOL`] in `status.loadBalancer.ingress`, the
//! cleanup finalizer, and a route from the outside client to the nodes that
//! should get the traffic — every node for `externalTrafficPolicy: Cluster`,
//! only the nodes whose health-check node port answers 200 for `Local`.
//! Services with a `loadBalancerClass` are someone else's.
//!
//! It runs as a cluster daemon (`switchyard-cluster lb-provider`), polling
//! the API server once a second, so the upstream LoadBalancer e2e cases can
//! run; the service proxy under test does everything on the nodes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::layout::{OUTSIDE_NS, node_ip, outside_public_ip};
use super::{kubectl, recorded_nodes};
use crate::command::run;

/// Load-balancer addresses: routed from the outside client to nodes only.
pub const POOL: [u8; 3] = [10, 99, 1];
const FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";
const POLL: Duration = Duration::from_secs(1);

/// What the provider did for one Service: its address and where it routes it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Balancer {
    ip: Ipv4Addr,
    nodes: Vec<u8>,
}

/// Runs until killed.
pub fn serve() -> Result<()> {
    run(&[
        "ip",
        "netns",
        "exec",
        OUTSIDE_NS,
        "sysctl",
        "-qw",
        "net.ipv4.fib_multipath_hash_policy=1",
    ])?;
    let mut routed: BTreeMap<Ipv4Addr, Vec<u8>> = BTreeMap::new();
    loop {
        if let Err(e) = reconcile(&mut routed) {
            eprintln!("lb-provider: {e:#}");
        }
        std::thread::sleep(POLL);
    }
}

/// One pass: every Service brought to what it should have.
fn reconcile(routed: &mut BTreeMap<Ipv4Addr, Vec<u8>>) -> Result<()> {
    let list: Value = serde_json::from_str(&kubectl(&["get", "services", "-A", "-o", "json"])?)?;
    let services = list["items"].as_array().cloned().unwrap_or_default();
    let mut taken: BTreeSet<Ipv4Addr> = services.iter().filter_map(our_ingress).collect();
    let mut wanted: BTreeMap<Ipv4Addr, Vec<u8>> = BTreeMap::new();
    for svc in &services {
        let name = object_name(svc);
        match reconcile_service(svc, &mut taken) {
            Ok(Some(b)) => {
                wanted.insert(b.ip, b.nodes);
            }
            Ok(None) => {}
            Err(e) => eprintln!("lb-provider: {name}: {e:#}"),
        }
    }
    sync_routes(routed, wanted)
}

fn object_name(svc: &Value) -> String {
    format!(
        "{}/{}",
        svc["metadata"]["namespace"].as_str().unwrap_or_default(),
        svc["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// The ingress address this provider gave `svc`, if any.
fn our_ingress(svc: &Value) -> Option<Ipv4Addr> {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()?
        .iter()
        .filter_map(|i| i["ip"].as_str()?.parse::<Ipv4Addr>().ok())
        .find(|ip| ip.octets()[..3] == POOL)
}

fn is_ours(svc: &Value) -> bool {
    svc["spec"]["type"] == "LoadBalancer" && svc["spec"]["loadBalancerClass"].is_null()
}

fn reconcile_service(svc: &Value, taken: &mut BTreeSet<Ipv4Addr>) -> Result<Option<Balancer>> {
    let has_finalizer = svc["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER));
    let deleting = !svc["metadata"]["deletionTimestamp"].is_null();
    if !is_ours(svc) || deleting {
        // Gone or no longer a load balancer: release what it had.
        if let Some(ip) = our_ingress(svc)
            && !deleting
        {
            patch_status(svc, &serde_json::json!([]))?;
            taken.remove(&ip);
        }
        if has_finalizer {
            remove_finalizer(svc)?;
        }
        return Ok(None);
    }
    if !has_finalizer {
        patch(
            svc,
            &[],
            &serde_json::json!({"metadata": {"finalizers": [FINALIZER]}}).to_string(),
        )?;
    }
    let ip = match our_ingress(svc) {
        Some(ip) => ip,
        None => {
            let ip = (1..=254u8)
                .map(|h| Ipv4Addr::new(POOL[0], POOL[1], POOL[2], h))
                .find(|ip| !taken.contains(ip))
                .context("the load-balancer pool is exhausted")?;
            patch_status(
                svc,
                &serde_json::json!([{"ip": ip.to_string(), "ipMode": "VIP"}]),
            )?;
            taken.insert(ip);
            ip
        }
    };
    Ok(Some(Balancer {
        ip,
        nodes: target_nodes(svc),
    }))
}

/// Every node, or for `externalTrafficPolicy: Local` those whose
/// health-check node port says they have a local endpoint (as a cloud
/// load balancer's health checks do). A cloud balancer spreads connections
/// over them (5-tuple hash), except for `sessionAffinity: ClientIP`, where
/// it keeps a client on one node (GCE's CLIENT_IP target-pool affinity):
/// here, with one client, the first healthy node.
fn target_nodes(svc: &Value) -> Vec<u8> {
    let mut nodes = recorded_nodes();
    if svc["spec"]["externalTrafficPolicy"] == "Local"
        && let Some(port) = svc["spec"]["healthCheckNodePort"].as_u64()
    {
        nodes.retain(|&n| healthy(SocketAddrV4::new(node_ip(n), port as u16)));
    }
    if svc["spec"]["sessionAffinity"] == "ClientIP" {
        nodes.truncate(1);
    }
    nodes
}

fn healthy(addr: SocketAddrV4) -> bool {
    let ask = || -> std::io::Result<bool> {
        let mut s = TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.ends_with(b"200"))
    };
    ask().unwrap_or(false)
}

fn patch(svc: &Value, extra: &[&str], body: &str) -> Result<()> {
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = svc["metadata"]["name"].as_str().unwrap_or_default();
    let mut args = vec![
        "-n",
        ns,
        "patch",
        "service",
        name,
        "--type=merge",
        "-p",
        body,
    ];
    args.extend_from_slice(extra);
    kubectl(&args).map(|_| ())
}

fn patch_status(svc: &Value, ingress: &Value) -> Result<()> {
    let body = serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}});
    patch(svc, &["--subresource=status"], &body.to_string())
}

fn remove_finalizer(svc: &Value) -> Result<()> {
    let kept: Vec<&Value> = svc["metadata"]["finalizers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| *f != FINALIZER)
        .collect();
    patch(
        svc,
        &[],
        &serde_json::json!({"metadata": {"finalizers": kept}}).to_string(),
    )
}

/// Routes in the outside client's namespace: one per address, from the
/// client's public address, over the target nodes (each connection hashed
/// on its 5-tuple, `fib_multipath_hash_policy` 1); an address without
/// healthy nodes is unreachable.
fn sync_routes(
    routed: &mut BTreeMap<Ipv4Addr, Vec<u8>>,
    wanted: BTreeMap<Ipv4Addr, Vec<u8>>,
) -> Result<()> {
    for ip in routed.keys().filter(|ip| !wanted.contains_key(ip)) {
        // Already gone is fine.
        let _ = run(&["ip", "-n", OUTSIDE_NS, "route", "del", &format!("{ip}/32")]);
    }
    for (ip, nodes) in &wanted {
        if routed.get(ip) == Some(nodes) {
            continue;
        }
        let mut argv: Vec<String> = ["ip", "-n", OUTSIDE_NS, "route", "replace"]
            .map(String::from)
            .to_vec();
        if nodes.is_empty() {
            argv.extend(["unreachable".into(), format!("{ip}/32")]);
        } else {
            // From the client's public address, as from a real client.
            argv.extend([
                format!("{ip}/32"),
                "src".into(),
                outside_public_ip().to_string(),
            ]);
            for n in nodes {
                argv.extend(["nexthop".into(), "via".into(), node_ip(*n).to_string()]);
            }
        }
        let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
        run(&refs)?;
        eprintln!("lb-provider: {ip} → nodes {nodes:?}");
    }
    *routed = wanted;
    Ok(())
}
