//! NetworkPolicy rule sets and per-policy counters, as an operator sees
//! them: many pods under one policy cost one set of entries, a change to
//! one pod's rules leaves its neighbours' alone, every allowed flow is
//! counted for the policy that allowed it (`inspect policies`), and
//! nothing of a pod is left once no policy selects it.

use std::net::Ipv4Addr;

use lb_userspace::datapath::policy_sync::PolicySync;
use lb_userspace::inspect::{InspectWhat, OutputFormat};
use lb_userspace::policy::{Cidr, Isolation, PeerRule, PodPolicy, PolicyState, PortRange};
use serde_json::Value;

use crate::build::*;
use crate::fixture::*;

const POD: Ipv4Addr = BACKENDS[0];
const NEIGHBOUR: Ipv4Addr = BACKENDS[1];

fn tcp(port: u16) -> PortRange {
    PortRange {
        protocol: 6,
        first: port,
        last: port,
    }
}

fn from_client(policy: &str, port: u16) -> PeerRule {
    PeerRule {
        policy: policy.into(),
        peers: vec![Cidr::host(CLIENT)],
        ports: vec![tcp(port)],
    }
}

/// A pod isolated for ingress by the policies of `rules`.
fn ingress_only(pod: &str, rules: Vec<PeerRule>) -> PodPolicy {
    PodPolicy {
        pod: pod.into(),
        ingress: Some(Isolation {
            policies: rules.iter().map(|r| r.policy.clone()).collect(),
            rules,
        }),
        egress: None,
    }
}

fn rule_entries(f: &Fixture) -> usize {
    f.maps.policy_rules.iter().filter(Result::is_ok).count()
}

fn inspect_policies(f: &Fixture) -> Vec<Value> {
    let out = lb_userspace::inspect::run(&f.pin_dir, InspectWhat::Policies, OutputFormat::Json)
        .expect("inspect policies");
    let rows: Value = serde_json::from_str(&out).expect("json");
    rows.as_array().cloned().unwrap_or_default()
}

/// `inspect policies` row of `policy`: (flows allowed, pods in).
fn policy_row(f: &Fixture, policy: &str) -> Option<(u64, u64)> {
    inspect_policies(f)
        .into_iter()
        .find(|r| r["policy"] == policy)
        .map(|r| {
            (
                r["flows_allowed"].as_u64().unwrap_or(u64::MAX),
                r["pods_in"].as_u64().unwrap_or(u64::MAX),
            )
        })
}

/// A thousand pods selected by one policy that admits 50 peers: 50 rule
/// entries, not 50 000 (the node's table would overflow at 262 144).
#[test]
fn pods_under_the_same_policy_share_one_rule_set() {
    let mut f = fixture();
    let peers: Vec<Cidr> = (0..50u32)
        .map(|i| Cidr::host(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 9, 0, 1)) + i)))
        .collect();
    let mut state = PolicyState::default();
    for i in 0..1000u32 {
        let rule = PeerRule {
            policy: "prod/web".into(),
            peers: peers.clone(),
            ports: vec![tcp(8080)],
        };
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 100, 0)) + i);
        state
            .pods
            .insert(ip, ingress_only(&format!("prod/web-{i}"), vec![rule]));
    }
    let problems = PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(rule_entries(&f), 50);
    assert_eq!(policy_row(&f, "prod/web"), Some((0, 1000)));
}

/// Two pods share a set; one pod's rules change: it moves to a new set,
/// its neighbour keeps the old rules, and the old set goes only when no
/// pod uses it.
#[test]
fn changing_one_pods_rules_leaves_its_neighbours_alone() {
    let mut f = fixture();
    let mut sync = PolicySync::default();
    let mut state = PolicyState::default();
    for (ip, name) in [(POD, "prod/a"), (NEIGHBOUR, "prod/b")] {
        state
            .pods
            .insert(ip, ingress_only(name, vec![from_client("prod/web", 8080)]));
    }
    sync.apply(&mut f.maps, &state).expect("policy");
    assert_eq!(rule_entries(&f), 1, "one set for both");

    state.pods.insert(
        POD,
        ingress_only("prod/a", vec![from_client("prod/web", 9090)]),
    );
    sync.apply(&mut f.maps, &state).expect("policy");
    assert_eq!(
        rule_entries(&f),
        2,
        "the neighbour's set and the pod's new one"
    );
    let cases = [
        (POD, 9090, true),
        (POD, 8080, false),
        (NEIGHBOUR, 8080, true),
        (NEIGHBOUR, 9090, false),
    ];
    for (i, (pod, port, passes)) in cases.into_iter().enumerate() {
        let syn = Pkt::tcp(CLIENT, 42000 + i as u16, pod, port, SYN).build();
        let want = if passes { TC_ACT_OK } else { TC_ACT_SHOT };
        assert_eq!(f.run_to_pod_forwarded(&syn).0, want, "{pod}:{port}");
    }

    state.pods.remove(&NEIGHBOUR);
    sync.apply(&mut f.maps, &state).expect("policy");
    assert_eq!(rule_entries(&f), 1, "the old set went with its last pod");
}

/// Two policies admit the same peer on different ports: each flow is
/// counted for the policy whose port it used, and the counts survive an
/// agent restart (the new agent adopts the IDs instead of renumbering).
#[test]
fn each_allowed_flow_is_counted_for_the_policy_that_allowed_it() {
    let mut f = fixture();
    let mut state = PolicyState::default();
    let rules = vec![
        from_client("prod/web", 8080),
        from_client("prod/admin", 9090),
    ];
    state.pods.insert(POD, ingress_only("prod/a", rules));
    PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    let flows = [(8080, 3), (9090, 1), (7070, 2)];
    let mut sport = 43000;
    for (port, n) in flows {
        for _ in 0..n {
            sport += 1;
            f.run_to_pod_forwarded(&Pkt::tcp(CLIENT, sport, POD, port, SYN).build());
        }
    }
    assert_eq!(policy_row(&f, "prod/web"), Some((3, 1)));
    assert_eq!(policy_row(&f, "prod/admin"), Some((1, 1)));

    // A restarted agent: same state, nothing renumbered or zeroed.
    PolicySync::default()
        .apply(&mut f.maps, &state)
        .expect("policy");
    assert_eq!(policy_row(&f, "prod/web"), Some((3, 1)));
    assert_eq!(policy_row(&f, "prod/admin"), Some((1, 1)));
}

/// A pod no policy selects any more leaves nothing behind: no isolation,
/// rules, note, counters or policy name (a stale counter would be shown
/// for the next pod given its address).
#[test]
fn nothing_of_a_pod_is_left_once_no_policy_selects_it() {
    let mut f = fixture();
    let mut sync = PolicySync::default();
    let mut state = PolicyState::default();
    state.pods.insert(
        POD,
        ingress_only("prod/a", vec![from_client("prod/web", 8080)]),
    );
    sync.apply(&mut f.maps, &state).expect("policy");
    let denied = Pkt::tcp(CLIENT, 44000, POD, 1, SYN).build();
    assert_eq!(f.run_to_pod_forwarded(&denied).0, TC_ACT_SHOT);

    sync.apply(&mut f.maps, &PolicyState::default())
        .expect("policy");
    let left = [
        ("policy_pods", f.maps.policy_pods.keys().count()),
        ("policy_rules", rule_entries(&f)),
        ("policy_notes", f.maps.policy_notes.keys().count()),
        ("policy_stats", f.maps.policy_stats.keys().count()),
        ("policy_names", f.maps.policy_names.keys().count()),
    ];
    for (map, entries) in left {
        assert_eq!(entries, 0, "{map}");
    }
    assert_eq!(f.run_to_pod_forwarded(&denied).0, TC_ACT_OK, "open again");
}
