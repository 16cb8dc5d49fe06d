//! Differential testing against a reference model of Service semantics,
//! written from the Kubernetes documentation, on generated service sets.

use std::net::Ipv4Addr;

use lb_common::{program_names, reason};
use lb_userspace::datapath::{maps::PinnedMaps, sync::MapSync};
use lb_userspace::model::{DesiredState, Protocol};

use crate::support::Rng;

use crate::build::*;
use crate::fixture::*;

/// An endpoint as a generated EndpointSlice states it (conditions may be
/// left out, as the API allows).
#[derive(Clone, Debug)]
struct GenEndpoint {
    ip: Ipv4Addr,
    node: &'static str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
}

#[derive(Clone, Debug)]
struct GenService {
    vip: Ipv4Addr,
    /// (port, protocol, target port)
    ports: Vec<(u16, Protocol, u16)>,
    internal_local: bool,
    endpoints: Vec<GenEndpoint>,
}

#[derive(Debug, PartialEq)]
enum Expect {
    Untouched,
    /// To one of these (address, target port), every one of them reachable.
    Dnat(std::collections::BTreeSet<(Ipv4Addr, u16)>),
    /// ICMP port unreachable (no endpoints at all).
    Reject,
    /// Dropped silently (internalTrafficPolicy Local, none on this node).
    Drop,
}

/// Written from the Kubernetes Service documentation, not from the agent:
/// a pod on node `n1` sending to `dst:dport/proto`.
fn reference(services: &[GenService], dst: Ipv4Addr, dport: u16, proto: Protocol) -> Expect {
    let Some((svc, target)) = services.iter().find_map(|s| {
        s.ports
            .iter()
            .find(|(p, pr, _)| s.vip == dst && *p == dport && *pr == proto)
            .map(|(_, _, t)| (s, *t))
    }) else {
        return Expect::Untouched;
    };
    let candidates: Vec<&GenEndpoint> = svc
        .endpoints
        .iter()
        .filter(|e| !svc.internal_local || e.node == "n1")
        .collect();
    let ready = |e: &GenEndpoint| e.ready.unwrap_or(true);
    let mut chosen: std::collections::BTreeSet<(Ipv4Addr, u16)> = candidates
        .iter()
        .filter(|e| ready(e))
        .map(|e| (e.ip, target))
        .collect();
    if chosen.is_empty() {
        // Nothing ready: endpoints still serving while terminating take the
        // traffic rather than dropping it.
        chosen = candidates
            .iter()
            .filter(|e| e.serving.unwrap_or(ready(e)) && e.terminating.unwrap_or(false))
            .map(|e| (e.ip, target))
            .collect();
    }
    // None to use here: dropped if the service has usable endpoints
    // elsewhere (a node-local policy), refused if it has none at all.
    let usable_anywhere = svc
        .endpoints
        .iter()
        .any(|e| ready(e) || (e.serving.unwrap_or(ready(e)) && e.terminating.unwrap_or(false)));
    match (chosen.is_empty(), usable_anywhere) {
        (false, _) => Expect::Dnat(chosen),
        (true, true) => Expect::Drop,
        (true, false) => Expect::Reject,
    }
}

fn generate(rng: &mut Rng, set: usize) -> Vec<GenService> {
    let maybe = |rng: &mut Rng| match rng.below(3) {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    (0..1 + rng.below(6) as usize)
        .map(|i| {
            let mut ports: Vec<(u16, Protocol, u16)> = Vec::new();
            for _ in 0..1 + rng.below(2) {
                let port = [80, 53, 443, 8443][rng.below(4) as usize];
                let proto = if rng.below(2) == 0 {
                    Protocol::Tcp
                } else {
                    Protocol::Udp
                };
                if !ports.iter().any(|(p, pr, _)| *p == port && *pr == proto) {
                    ports.push((port, proto, 8000 + rng.below(100) as u16));
                }
            }
            GenService {
                vip: Ipv4Addr::new(10, 96, 7 + (set % 100) as u8, 1 + i as u8),
                ports,
                internal_local: rng.below(3) == 0,
                endpoints: (0..rng.below(5))
                    .map(|_| GenEndpoint {
                        ip: Ipv4Addr::new(
                            10,
                            244,
                            1 + rng.below(2) as u8,
                            2 + rng.below(200) as u8,
                        ),
                        node: ["n1", "n2"][rng.below(2) as usize],
                        ready: maybe(rng),
                        serving: maybe(rng),
                        terminating: maybe(rng),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The generated services as the API would hold them, through the agent's
/// own translation (so it is under test too).
fn translated(services: &[GenService]) -> DesiredState {
    use lb_userspace::source::{ClusterObjects, Sourced};
    let mut objects = ClusterObjects::default();
    for (i, s) in services.iter().enumerate() {
        let proto = |p: Protocol| if p == Protocol::Tcp { "TCP" } else { "UDP" };
        let service = serde_json::json!({
            "metadata": {"name": format!("s{i}"), "namespace": "diff"},
            "spec": {
                "clusterIP": s.vip.to_string(),
                "internalTrafficPolicy": if s.internal_local { "Local" } else { "Cluster" },
                "ports": s.ports.iter().enumerate().map(|(j, (p, pr, t))| serde_json::json!({
                    "name": format!("p{j}"), "port": p, "protocol": proto(*pr), "targetPort": t
                })).collect::<Vec<_>>()
            }
        });
        let conditions = |e: &GenEndpoint| {
            let mut c = serde_json::Map::new();
            for (k, v) in [
                ("ready", e.ready),
                ("serving", e.serving),
                ("terminating", e.terminating),
            ] {
                if let Some(v) = v {
                    c.insert(k.into(), v.into());
                }
            }
            serde_json::Value::Object(c)
        };
        let slice = serde_json::json!({
            "metadata": {
                "name": format!("s{i}-1"), "namespace": "diff",
                "labels": {"kubernetes.io/service-name": format!("s{i}")}
            },
            "addressType": "IPv4",
            "ports": s.ports.iter().enumerate().map(|(j, (_, pr, t))| serde_json::json!({
                "name": format!("p{j}"), "port": t, "protocol": proto(*pr)
            })).collect::<Vec<_>>(),
            "endpoints": s.endpoints.iter().map(|e| serde_json::json!({
                "addresses": [e.ip.to_string()],
                "nodeName": e.node,
                "conditions": conditions(e),
            })).collect::<Vec<_>>()
        });
        objects.services.push(Sourced {
            origin: "generated".into(),
            object: serde_json::from_value(service).expect("service"),
        });
        objects.slices.push(Sourced {
            origin: "generated".into(),
            object: serde_json::from_value(slice).expect("slice"),
        });
    }
    let t = lb_userspace::source::translate::translate(&objects);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    t.desired
}

#[test]
fn datapath_agrees_with_a_reference_model_on_generated_service_sets() {
    let mut f = fixture();
    let mut sync = MapSync::adopt(PinnedMaps::open(&f.pin_dir).expect("open maps"))
        .expect("adopt")
        .with_node(Some("n1".into()));
    let from_pod = f.datapath.program_fd(program_names::FROM_POD).expect("fd");
    let mut rng = Rng(0xd1ff_e7e7_0000_0001);
    let (mut dnat, mut rejected, mut dropped, mut untouched) = (0, 0, 0, 0);
    let mut limited_seen = 0;
    for set in 0..60 {
        let services = generate(&mut rng, set);
        let report = sync.apply(&translated(&services));
        assert!(report.errors.is_empty(), "set {set}: {:?}", report.errors);
        // Every frontend, a port the VIP does not serve, and an address
        // that is no service at all.
        let mut probes: Vec<(Ipv4Addr, u16, Protocol)> = services
            .iter()
            .flat_map(|s| s.ports.iter().map(|(p, pr, _)| (s.vip, *p, *pr)))
            .collect();
        probes.push((services[0].vip, 9999, Protocol::Tcp));
        probes.push((Ipv4Addr::new(192, 0, 2, 9), 80, Protocol::Udp));
        for (probe, (dst, dport, proto)) in probes.into_iter().enumerate() {
            let expect = reference(&services, dst, dport, proto);
            let mut reached = std::collections::BTreeSet::new();
            for k in 0..24u16 {
                // Source ports unique across sets: no flow is established.
                let sport = 20_000 + (set as u16 % 100) * 400 + probe as u16 * 24 + k;
                let packet = match proto {
                    Protocol::Tcp => Pkt::tcp(CLIENT, sport, dst, dport, SYN),
                    Protocol::Udp => Pkt::udp(CLIENT, sport, dst, dport),
                }
                .build();
                let (verdict, out) = test_run(from_pod, &packet);
                let context = format!(
                    "set {set}, {dst}:{dport}/{proto:?}, expected {expect:?}, services {services:#?}"
                );
                match &expect {
                    Expect::Untouched => {
                        assert_eq!(
                            (verdict, &out[..packet.len()]),
                            (TC_ACT_OK, &packet[..]),
                            "{context}"
                        );
                        untouched += 1;
                    }
                    Expect::Drop => {
                        assert_eq!(verdict, 2, "TC_ACT_SHOT: {context}");
                        dropped += 1;
                    }
                    // Rejects are rate-limited (burst 50): past the burst a
                    // refusal may be a counted drop, as with the kernel's
                    // own ICMP rate limit under kube-proxy.
                    Expect::Reject
                        if verdict == 2
                            && f.maps.reason_count(reason::REJECT_RATE_LIMITED) > limited_seen =>
                    {
                        limited_seen = f.maps.reason_count(reason::REJECT_RATE_LIMITED);
                        rejected += 1;
                    }
                    Expect::Reject => {
                        assert_eq!(verdict, TC_ACT_REDIRECT, "{context}");
                        assert_eq!(
                            (out[23], out[34], out[35]),
                            (1, 3, 3),
                            "ICMP port unreachable: {context}"
                        );
                        rejected += 1;
                    }
                    Expect::Dnat(allowed) => {
                        assert_eq!(verdict, TC_ACT_OK, "{context}");
                        let p = parse_checked(&out);
                        assert_eq!((p.src, p.sport), (CLIENT, sport), "{context}");
                        assert!(
                            allowed.contains(&(p.dst, p.dport)),
                            "to {}:{}: {context}",
                            p.dst,
                            p.dport
                        );
                        reached.insert((p.dst, p.dport));
                        dnat += 1;
                    }
                }
            }
            if let Expect::Dnat(allowed) = &expect
                && allowed.len() <= 3
            {
                assert_eq!(
                    &reached, allowed,
                    "24 flows reach every backend: set {set} {dst}:{dport}"
                );
            }
        }
    }
    eprintln!(
        "differential: {dnat} translated, {rejected} rejected, {dropped} dropped, {untouched} untouched"
    );
    assert!(dnat > 1000 && rejected > 10 && dropped > 10 && untouched > 100);
}
