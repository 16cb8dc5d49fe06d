//! NetworkPolicy end to end, as a cluster operator would try it: the real
//! agent with Pods, Namespaces, a Service and NetworkPolicies in its
//! manifest directory, real servers in pod namespaces, real TCP from
//! client pods — to the pod IP and through the ClusterIP. A denied
//! connection gets no answer (dropped, as the upstream tests expect), an
//! allowed one its backend's name. Needs root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use anyhow::Result;
use switchyard_tests::{
    AgentOptions, AgentProcess, AgentSource, EndpointSpec, ManifestDir, PodServer, ServerPorts,
    Topology, cleanup_stale, endpoint_slice_yaml, namespace_yaml, pod_yaml, service_yaml, wait,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 20);
const OTHER_BACKEND: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 21);
/// Client pods: (name, namespace, labels, address).
const CLIENTS: [(&str, &str, &str, Ipv4Addr); 3] = [
    (
        "frontend",
        "prod",
        "frontend",
        Ipv4Addr::new(10, 244, 0, 10),
    ),
    ("intruder", "prod", "other", Ipv4Addr::new(10, 244, 0, 11)),
    ("tool", "dev", "frontend", Ipv4Addr::new(10, 244, 0, 12)),
];
const DENIED_WITHIN: Duration = Duration::from_millis(400);

/// Field order is drop order: agent, servers, then namespaces.
struct Cluster {
    agent: AgentProcess,
    _servers: Vec<PodServer>,
    manifests: ManifestDir,
    topo: Topology,
}

impl Cluster {
    /// `prod/web` (10.244.0.20, app=web, port `http` 8080) behind the
    /// ClusterIP `prod/web` 10.96.0.10:80, `prod/other` (10.244.0.21,
    /// app=other) serving too, and the clients.
    fn start() -> Result<Self> {
        cleanup_stale();
        let mut topo = Topology::new()?;
        for (name, _, _, ip) in CLIENTS {
            topo.add_pod(name, ip)?;
        }
        let mut servers = Vec::new();
        for (name, ip) in [("web", WEB), ("other", OTHER_BACKEND)] {
            let pod = topo.add_pod(name, ip)?;
            servers.push(pod.start_server(&ServerPorts::tcp_udp(8080, 5353))?);
        }
        let manifests = ManifestDir::new()?;
        let mut objects = vec![
            namespace_yaml("prod", &[("team", "shop")]),
            namespace_yaml("dev", &[("team", "tools")]),
            pod_yaml(
                "prod",
                "web",
                &[("app", "web")],
                WEB,
                &[("http", 8080, "TCP")],
            ),
            pod_yaml(
                "prod",
                "other",
                &[("app", "other")],
                OTHER_BACKEND,
                &[("http", 8080, "TCP")],
            ),
            service_yaml("prod", "web", VIP, &[("http", 80, 8080, "TCP")]),
            endpoint_slice_yaml(
                "prod",
                "web-1",
                "web",
                &[("http", 8080, "TCP")],
                &[EndpointSpec::ready(WEB)],
            ),
        ];
        for (name, ns, app, ip) in CLIENTS {
            objects.push(pod_yaml(ns, name, &[("app", app)], ip, &[]));
        }
        manifests.write("cluster.yaml", &objects.join("---\n"))?;
        let agent = AgentProcess::start(AgentOptions {
            node_ns: topo.node_ns().to_string(),
            pin_dir: format!("/sys/fs/bpf/{}", topo.id()).into(),
            source: AgentSource::Manifests(manifests.path().to_path_buf()),
            pod_ifaces: topo.pod_iface_glob(),
            extra_args: vec![],
        })?;
        let c = Self {
            agent,
            _servers: servers,
            manifests,
            topo,
        };
        wait::until(
            "the service",
            Duration::from_secs(10),
            Duration::from_millis(20),
            || Ok(c.agent.backends_of("10.96.0.10:80/TCP")? == ["10.244.0.20:8080"]),
        )?;
        Ok(c)
    }

    /// Whether `client` gets an answer from `to` (a denied connection is
    /// dropped: no answer within the timeout).
    fn reaches(&self, client: &str, to: SocketAddrV4) -> bool {
        self.topo.pod(client).tcp_request(to, DENIED_WITHIN).is_ok()
    }

    fn policy(&self, file: &str, yaml: &str) -> Result<()> {
        self.manifests.write(file, yaml)
    }

    /// Waits until `client` → `to` is `allowed` (or not).
    fn until(&self, client: &str, to: SocketAddrV4, allowed: bool) -> Result<()> {
        wait::until(
            &format!(
                "{client} → {to} {}",
                if allowed { "allowed" } else { "denied" }
            ),
            Duration::from_secs(10),
            Duration::from_millis(5),
            || Ok(self.reaches(client, to) == allowed),
        )?;
        Ok(())
    }
}

fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, 80)
}

fn pod_ip(ip: Ipv4Addr) -> SocketAddrV4 {
    SocketAddrV4::new(ip, 8080)
}

fn netpol(name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
}

/// A pod selected by a deny-all ingress policy is unreachable through its
/// ClusterIP and its pod IP, from every client, and reachable again once
/// the policy is deleted; other pods are untouched.
#[test]
fn deny_all_ingress_closes_the_pod_on_every_path_until_deleted() -> Result<()> {
    let c = Cluster::start()?;
    assert!(c.reaches("frontend", vip()) && c.reaches("frontend", pod_ip(WEB)));
    c.policy(
        "deny.yaml",
        &netpol(
            "deny-web",
            "prod",
            "{podSelector: {matchLabels: {app: web}}}",
        ),
    )?;
    c.until("frontend", vip(), false)?;
    for (client, ..) in CLIENTS {
        assert!(!c.reaches(client, vip()), "{client} through the ClusterIP");
        assert!(!c.reaches(client, pod_ip(WEB)), "{client} to the pod IP");
    }
    assert!(
        c.reaches("frontend", pod_ip(OTHER_BACKEND)),
        "a pod no policy selects"
    );
    let stats = c.agent.inspect(&["stats"])?;
    assert!(stats.contains("policy_ingress_denied"), "{stats}");
    let policy = c.agent.inspect(&["policy"])?;
    eprintln!("{policy}");
    assert!(
        policy.contains("prod/web") && policy.contains("prod/deny-web"),
        "{policy}"
    );

    std::fs::remove_file(c.manifests.path().join("deny.yaml"))?;
    // New connections every 20 ms, each given 20 ms: when the first is
    // answered, the policy is gone from the datapath (the agent polls the
    // manifest directory every 100 ms).
    let removed = Instant::now();
    wait::until(
        "web reachable again",
        Duration::from_secs(5),
        Duration::ZERO,
        || {
            Ok(c.topo
                .pod("frontend")
                .tcp_request(vip(), Duration::from_millis(20))
                .is_ok())
        },
    )?;
    eprintln!(
        "reachable again {} ms after the policy file was removed",
        removed.elapsed().as_millis()
    );
    assert!(c.reaches("frontend", pod_ip(WEB)));
    Ok(())
}

/// Who may connect, by pod selector, namespace selector, both, an address
/// block with an exception, and by named port; through the ClusterIP as
/// to the pod IP.
#[test]
fn ingress_rules_admit_exactly_the_selected_peers() -> Result<()> {
    let c = Cluster::start()?;
    // Same namespace, label app=frontend, on the named port `http`.
    c.policy(
        "web.yaml",
        &netpol(
            "web-from-frontend",
            "prod",
            "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: http}]}]}",
        ),
    )?;
    c.until("intruder", vip(), false)?;
    let expect = |client: &str, allowed: bool| {
        for to in [vip(), pod_ip(WEB)] {
            assert_eq!(c.reaches(client, to), allowed, "{client} → {to}");
        }
    };
    expect("frontend", true);
    expect("intruder", false);
    // `tool` has app=frontend, but in another namespace.
    expect("tool", false);

    // A namespace selector combined with a pod selector: team=tools AND
    // app=frontend.
    c.policy(
        "tools.yaml",
        &netpol(
            "web-from-tools",
            "prod",
            "{podSelector: {matchLabels: {app: web}}, ingress: [{from: [{namespaceSelector: {matchLabels: {team: tools}}, podSelector: {matchLabels: {app: frontend}}}]}]}",
        ),
    )?;
    c.until("tool", vip(), true)?;
    expect("intruder", false);

    // An address block with the intruder cut out, then without the cut.
    let block = |except: &str| {
        netpol(
            "web-from-block",
            "prod",
            &format!(
                "{{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{from: [{{ipBlock: {{cidr: 10.244.0.0/24, except: [{except}]}}}}]}}]}}"
            ),
        )
    };
    c.policy("block.yaml", &block("10.244.0.11/32"))?;
    std::thread::sleep(Duration::from_millis(500));
    expect("intruder", false);
    c.policy("block.yaml", &block("10.244.0.99/32"))?;
    c.until("intruder", vip(), true)?;
    expect("intruder", true);
    eprintln!("{}", c.agent.inspect(&["policy"])?);
    Ok(())
}

/// Egress is judged on the backend a service gives the client; replies of
/// connections a pod accepted pass its egress policy.
#[test]
fn egress_rules_apply_after_translation_and_replies_always_pass() -> Result<()> {
    let c = Cluster::start()?;
    // frontend may only talk to app=other pods.
    c.policy(
        "egress.yaml",
        &netpol(
            "frontend-out",
            "prod",
            "{podSelector: {matchLabels: {app: frontend}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: other}}}]}]}",
        ),
    )?;
    c.until("frontend", vip(), false)?;
    assert!(!c.reaches("frontend", pod_ip(WEB)), "web by its pod IP");
    assert!(
        c.reaches("frontend", pod_ip(OTHER_BACKEND)),
        "other is allowed"
    );
    let stats = c.agent.inspect(&["stats"])?;
    assert!(stats.contains("policy_egress_denied"), "{stats}");

    // web may send nothing at all, yet answers the connections it accepts.
    c.policy(
        "web-out.yaml",
        &netpol(
            "web-silent",
            "prod",
            "{podSelector: {matchLabels: {app: web}}, policyTypes: [Egress]}",
        ),
    )?;
    std::fs::remove_file(c.manifests.path().join("egress.yaml"))?;
    c.until("frontend", vip(), true)?;
    assert!(c.reaches("intruder", pod_ip(WEB)));
    assert!(
        c.topo
            .pod("web")
            .tcp_request(pod_ip(OTHER_BACKEND), DENIED_WITHIN)
            .is_err(),
        "web's own connections are denied"
    );
    Ok(())
}
