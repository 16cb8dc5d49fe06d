//! The scenarios the kind suite runs (tests/kind/), on the two-node
//! namespace cluster: ClusterIP spread, NodePort from outside through both
//! nodes, ClientIP affinity. Same checks (switchyard_tests::scenarios),
//! different requester. Needs root.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use anyhow::Result;
use switchyard_tests::cluster::node_ip;
use switchyard_tests::scenarios::{Requester, check_affinity, check_spread};
use switchyard_tests::{Pod, wait};

mod common;
use common::{TIMEOUT, TwoNodes, VIP};

struct FromPod<'a>(&'a Pod);

impl Requester for FromPod<'_> {
    fn tcp(&self, to: SocketAddrV4) -> Result<String> {
        self.0.tcp_request(to, TIMEOUT)
    }
    fn udp(&self, to: SocketAddrV4) -> Result<String> {
        self.0.udp_request(to, TIMEOUT)
    }
}

fn backends() -> BTreeSet<String> {
    ["n1b1", "n2b1", "n2b2"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[test]
fn kind_scenarios_pass_on_the_namespace_cluster() -> Result<()> {
    let c = TwoNodes::start_with(&["--external-ifaces", "ext0"])?;
    let svc = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: test}}\nspec:\n  type: NodePort\n  clusterIP: {VIP}\n  ports:\n  - {{name: tcp, port: 80, targetPort: 8080, protocol: TCP, nodePort: 30080}}\n  - {{name: udp, port: 53, targetPort: 5353, protocol: UDP, nodePort: 30053}}\n"
    );
    c.apply_service(&svc, &c.endpoints())?;
    for agent in &c.agents {
        wait::until(
            "three backends",
            Duration::from_secs(5),
            Duration::from_millis(20),
            || Ok(agent.backends_of("10.96.1.10:80/TCP")?.len() == 3),
        )?;
    }
    // ClusterIP, from a pod on each node.
    for (node, pod) in [(1, "client1"), (2, "client2")] {
        check_spread(
            &FromPod(c.pod(node, pod)),
            SocketAddrV4::new(VIP, 80),
            SocketAddrV4::new(VIP, 53),
            &backends(),
        )?;
    }
    // NodePort, from outside, through either node.
    for n in 1..=2 {
        check_spread(
            &FromPod(c.cluster.external()),
            SocketAddrV4::new(node_ip(n), 30080),
            SocketAddrV4::new(node_ip(n), 30053),
            &backends(),
        )?;
    }
    // ClientIP affinity.
    c.apply_service(
        &svc.replace(
            "  ports:\n",
            "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n  ports:\n",
        ),
        &c.endpoints(),
    )?;
    wait::until(
        "affinity programmed",
        Duration::from_secs(5),
        Duration::from_millis(50),
        || {
            let rows = c.agents[0].services_json()?;
            Ok(rows.to_string().contains("affinity=60s"))
        },
    )?;
    check_affinity(
        &FromPod(c.pod(1, "client1")),
        SocketAddrV4::new(VIP, 80),
        &backends(),
    )?;
    Ok(())
}
