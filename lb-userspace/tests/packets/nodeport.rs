//! Node ports, load-balancer and external IPs: the world-side tc programs
//! and the XDP program.

use std::net::Ipv4Addr;

use lb_common::{conn_kind, program_names, reason};
use lb_userspace::datapath::{
    addr::{ip_be, port_be},
    maps::PinnedMaps,
    sync::MapSync,
};
use lb_userspace::model::{Protocol, ServiceType};

use crate::build::*;
use crate::fixture::*;

#[test]
fn xdp_translates_local_flows_and_records_snat_flows_it_cannot_send() {
    let (node_ip, client) = (NODE_IP, EXTERNAL_CLIENT);
    let mut f = fixture();
    program_node_ports(&f, node_ip);
    f.maps
        .nat_config
        .set(
            0,
            lb_common::NatConfig {
                snat_ip_be: ip_be(node_ip),
                port_min: 61000,
                port_max: 61999,
                flags: lb_common::nat_flags::XDP_SNAT,
            },
            0,
        )
        .expect("nat_config");
    let fd = f
        .datapath
        .program_fd(program_names::XDP_WORLD)
        .expect("xdp fd");
    const XDP_PASS: u32 = 2;

    // Policy Local: only the local backend; DNATed with valid checksums,
    // the client address kept, and tracked so later packets follow.
    for flags in [SYN, ACK, ACK] {
        let (rc, out) = test_run(fd, &Pkt::tcp(client, 34010, node_ip, 30080, flags).build());
        assert_eq!(rc, XDP_PASS);
        let p = parse_checked(&out);
        assert_eq!((p.src, p.dst, p.dport), (client, BACKENDS[0], 8080));
    }
    assert_eq!(f.maps.reason_count(reason::NEW_FLOW), 1);
    assert_eq!(f.maps.reason_count(reason::ESTABLISHED), 2);
    assert_eq!(f.maps.reason_count(reason::XDP_TRANSLATED), 3);

    // Remote backends only: XDP picks the backend and a SNAT port and
    // records both directions; with no route to the backend from this test
    // namespace it cannot send the frame itself, so it passes it untouched
    // and tc, finding the entry, forwards it the same way.
    let syn = Pkt::tcp(client, 34011, node_ip, 30081, SYN).build();
    assert_eq!(test_run(fd, &syn), (XDP_PASS, syn.clone()));
    assert_eq!(f.maps.reason_count(reason::NEW_FLOW), 2);
    let entries: Vec<(lb_common::FlowKey, lb_common::ConnEntry)> =
        f.maps.conntrack.iter().filter_map(Result::ok).collect();
    let forward = entries
        .iter()
        .find(|(k, _)| k.src_port_be == port_be(34011))
        .map(|(_, e)| *e)
        .expect("the SNAT flow is tracked");
    assert_eq!(forward.kind, conn_kind::FORWARD_SNAT);
    assert!(BACKENDS[1..].iter().any(|b| ip_be(*b) == forward.nat_ip_be));
    assert_eq!(forward.second_ip_be, ip_be(node_ip));
    let snat_port = u16::from_be(forward.second_port_be);
    assert!((61000..=61999).contains(&snat_port), "{snat_port}");
    assert!(
        entries.iter().any(
            |(k, e)| e.kind == conn_kind::REPLY_SNAT && k.dst_port_be == forward.second_port_be
        ),
        "the reply direction is tracked"
    );
    // Not a service: untouched.
    let other = Pkt::tcp(client, 34012, node_ip, 22, SYN).build();
    assert_eq!(test_run(fd, &other), (XDP_PASS, other.clone()));
}

#[test]
fn xdp_and_tc_draw_once_per_flow_so_node_ports_balance_evenly() {
    let node_ip = Ipv4Addr::new(10, 10, 0, 1);
    let client = Ipv4Addr::new(10, 10, 0, 100);
    let mut f = fixture();
    // Node port 30090: one backend on this node, two elsewhere.
    let mut desired = desired_state(&BACKENDS);
    let mut mixed = service(Ipv4Addr::new(10, 96, 0, 50), 80, Protocol::Tcp, &BACKENDS);
    mixed.external.node_port = Some(30090);
    place_backends(&mut mixed);
    desired.services.insert(mixed.frontend, mixed);
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![node_ip]);
    assert!(sync.apply(&desired).errors.is_empty());
    f.maps
        .nat_config
        .set(
            0,
            lb_common::NatConfig {
                snat_ip_be: ip_be(node_ip),
                port_min: 40000,
                port_max: 60000,
                flags: 0,
            },
            0,
        )
        .expect("nat_config");
    let xdp = f.datapath.program_fd(program_names::XDP_WORLD).expect("fd");
    let tc = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    const FLOWS: u16 = 3000;
    for i in 0..FLOWS {
        let syn = Pkt::tcp(client, 10_000 + i, node_ip, 30090, SYN).build();
        let (_, out) = test_run(xdp, &syn);
        if out[..syn.len()] == syn[..] {
            // Passed on untouched: tc takes it from here, with the choice
            // XDP recorded (the FIB lookup fails in this namespace; the
            // entry is what matters).
            let _ = test_run(tc, &syn);
        }
    }
    let mut chosen = std::collections::BTreeMap::<Ipv4Addr, u32>::new();
    for (key, entry) in f.maps.conntrack.iter().filter_map(Result::ok) {
        if key.dst_port_be == port_be(30090) && conn_kind::is_forward(entry.kind) {
            *chosen
                .entry(lb_userspace::datapath::addr::ip_from_be(entry.nat_ip_be))
                .or_default() += 1;
        }
    }
    assert_eq!(chosen.values().sum::<u32>(), u32::from(FLOWS), "{chosen:?}");
    for b in BACKENDS {
        let n = chosen.get(&b).copied().unwrap_or(0);
        // 1000 expected each; ±150 is > 5 standard deviations.
        assert!(
            (850..=1150).contains(&n),
            "{b}: {n} of {FLOWS} flows: {chosen:?}"
        );
    }
}

/// An ingress controller's Service: type LoadBalancer, externalTrafficPolicy
/// Local, its pods on other nodes only. From outside, this node must drop
/// (kube-proxy: no local endpoint); but a pod here reaching the LB IP, the
/// node port or the external IP (an app calling its own public hostname) is
/// balanced over every endpoint, as kube-proxy's short-circuit does.
#[test]
fn pods_reach_external_addresses_of_local_policy_services_over_every_endpoint() {
    let mut f = fixture();
    let lb_ip = Ipv4Addr::new(192, 0, 2, 50);
    let external_ip = Ipv4Addr::new(192, 0, 2, 51);
    let mut desired = desired_state(&BACKENDS);
    let mut ingress = service(Ipv4Addr::new(10, 96, 0, 60), 443, Protocol::Tcp, &BACKENDS);
    ingress.service_type = ServiceType::LoadBalancer;
    ingress.external.node_port = Some(30443);
    ingress.external.load_balancer_ips = vec![lb_ip];
    ingress.external.external_ips = vec![external_ip];
    ingress.external.traffic_local = true;
    for e in &mut ingress.endpoints {
        e.node = Some("elsewhere".into());
    }
    desired.services.insert(ingress.frontend, ingress);
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("maps"))
        .expect("adopt")
        .with_node(Some("here".into()))
        .with_node_ips(vec![NODE_IP]);
    assert!(sync.apply(&desired).errors.is_empty());

    let world = f
        .datapath
        .program_fd(program_names::FROM_WORLD)
        .expect("fd");
    for (dst, port) in [(lb_ip, 443), (external_ip, 443), (NODE_IP, 30443)] {
        // Outside client: no endpoint on this node, dropped.
        let (verdict, _) = test_run(
            world,
            &Pkt::tcp(EXTERNAL_CLIENT, 40000, dst, port, SYN).build(),
        );
        assert_eq!(
            verdict, 2,
            "TC_ACT_SHOT for an outside client to {dst}:{port}"
        );
        // Pod on this node: every endpoint, whatever the node.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..60u16 {
            let (verdict, out) =
                f.run_from_pod(&Pkt::tcp(CLIENT, 41000 + i, dst, port, SYN).build());
            assert_ne!(verdict, 2, "a pod's SYN to {dst}:{port} was dropped");
            let p = parse_checked(&out);
            assert_eq!(p.dport, 8080, "to {dst}:{port}");
            seen.insert(p.dst);
        }
        assert_eq!(
            seen,
            BACKENDS.iter().copied().collect(),
            "pods to {dst}:{port}"
        );
    }
    let rows = lb_userspace::inspect::services(&f.maps).expect("inspect");
    let in_cluster: Vec<_> = rows
        .iter()
        .filter(|r| r.policy.iter().any(|p| p == "in-cluster"))
        .collect();
    assert_eq!(in_cluster.len(), 3, "inspect shows the in-cluster entries");
}
