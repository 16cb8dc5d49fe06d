//! `inspect policy`: the pods NetworkPolicy isolates on this node, by which
//! policies, and what their rules let through; `inspect policies`: each
//! policy with the pods it isolates here and the flows it let through,
//! from the maps.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::Result;
use lb_common::{PolicyPorts, PolicyStatsKey, policy_direction};
use serde::Serialize;

use super::Row;
use crate::datapath::addr::ip_from_be;
use crate::datapath::maps::PinnedMaps;
use crate::datapath::policy_sync::decode_note;
use crate::policy::protocol_name;

#[derive(Serialize)]
pub struct PolicyRow {
    pub pod: String,
    pub address: String,
    /// Policies isolating the pod for ingress; empty: open.
    pub ingress_policies: Vec<String>,
    /// The rule sets the pod uses (shared by pods whose policies say the
    /// same); 0: open.
    pub ingress_set: u32,
    pub egress_set: u32,
    pub egress_policies: Vec<String>,
    /// "peer prefix: ports" the ingress rules allow in.
    pub allowed_in: Vec<String>,
    pub allowed_out: Vec<String>,
    /// New flows the rules let in / out, and packets they refused.
    pub flows_in: u64,
    pub denied_in: u64,
    pub flows_out: u64,
    pub denied_out: u64,
}

impl Row for PolicyRow {
    const HEADER: &'static [&'static str] = &[
        "POD",
        "ADDRESS",
        "INGRESS BY",
        "IN SET",
        "ALLOWED IN",
        "IN: FLOWS/DENIED",
        "EGRESS BY",
        "OUT SET",
        "ALLOWED OUT",
        "OUT: FLOWS/DENIED",
    ];

    fn cells(&self) -> Vec<String> {
        let or_open = |v: &[String]| {
            if v.is_empty() {
                "(open)".to_string()
            } else {
                v.join(",")
            }
        };
        vec![
            self.pod.clone(),
            self.address.clone(),
            or_open(&self.ingress_policies),
            self.ingress_set.to_string(),
            self.allowed_in.join("; "),
            format!("{}/{}", self.flows_in, self.denied_in),
            or_open(&self.egress_policies),
            self.egress_set.to_string(),
            self.allowed_out.join("; "),
            format!("{}/{}", self.flows_out, self.denied_out),
        ]
    }
}

/// One row per isolated pod, by address.
pub fn policy(maps: &PinnedMaps) -> Result<Vec<PolicyRow>> {
    let rules = rule_sets(maps)?;
    let mut rows = Vec::new();
    for item in maps.policy_pods.iter() {
        let (ip_be, isolation) = item?;
        let note = PodNote::read(maps, ip_be);
        let allowed = |set: u32| rules.get(&set).cloned().unwrap_or_default();
        let counted = |direction: u32| counters(maps, ip_be, direction);
        let ((flows_in, denied_in), (flows_out, denied_out)) = (
            counted(policy_direction::INGRESS),
            counted(policy_direction::EGRESS),
        );
        rows.push(PolicyRow {
            pod: note.pod,
            address: ip_from_be(ip_be).to_string(),
            ingress_policies: note.ingress,
            egress_policies: note.egress,
            ingress_set: isolation.ingress_set,
            egress_set: isolation.egress_set,
            allowed_in: allowed(isolation.ingress_set),
            allowed_out: allowed(isolation.egress_set),
            flows_in,
            denied_in,
            flows_out,
            denied_out,
        });
    }
    rows.sort_by_key(|r| r.address.parse::<Ipv4Addr>().ok());
    Ok(rows)
}

/// "peer prefix: ports" of each rule set.
fn rule_sets(maps: &PinnedMaps) -> Result<BTreeMap<u32, Vec<String>>> {
    let names = policy_names(maps)?;
    let mut sets: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for item in maps.policy_rules.iter() {
        let (key, ports) = item?;
        let data = key.data();
        let peer_len = key.prefix_len().saturating_sub(32);
        let peer = format!("{}/{peer_len}", ip_from_be(data.peer_ip_be));
        sets.entry(u32::from_be(data.rule_set_be))
            .or_default()
            .push(format!("{peer}: {}", describe(&ports, &names)));
    }
    Ok(sets)
}

/// Policy ID → `namespace/name`.
fn policy_names(maps: &PinnedMaps) -> Result<BTreeMap<u16, String>> {
    let mut names = BTreeMap::new();
    for item in maps.policy_names.iter() {
        let (id, name) = item?;
        names.insert(u16::try_from(id).unwrap_or(0), decode_note(&name));
    }
    Ok(names)
}

/// A pod's note: its name and the policies isolating it each way.
struct PodNote {
    pod: String,
    ingress: Vec<String>,
    egress: Vec<String>,
}

impl PodNote {
    fn read(maps: &PinnedMaps, ip_be: u32) -> Self {
        let note = maps
            .policy_notes
            .get(&ip_be, 0)
            .map(|n| decode_note(&n))
            .unwrap_or_default();
        let mut parts = note.split('|');
        let pod = parts.next().unwrap_or("?").to_string();
        let by = |text: Option<&str>| -> Vec<String> {
            text.filter(|t| *t != "-")
                .map(|t| t.split(',').map(String::from).collect())
                .unwrap_or_default()
        };
        let (ingress, egress) = (by(parts.next()), by(parts.next()));
        Self {
            pod,
            ingress,
            egress,
        }
    }
}

#[derive(Serialize)]
pub struct PolicyStatsRow {
    pub policy: String,
    pub id: u32,
    /// Pods on this node it isolates for ingress / egress.
    pub pods_in: usize,
    pub pods_out: usize,
    /// New flows its rules let through (a flow several policies allow is
    /// counted for the one whose range matched first).
    pub flows_allowed: u64,
    /// Packets refused at the pods it isolates, each way (shared with the
    /// other policies isolating them: refusal is by no rule, not by one).
    pub denied_in: u64,
    pub denied_out: u64,
}

impl Row for PolicyStatsRow {
    const HEADER: &'static [&'static str] = &[
        "POLICY",
        "ID",
        "PODS IN/OUT",
        "FLOWS ALLOWED",
        "DENIED AT ITS PODS IN/OUT",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.policy.clone(),
            self.id.to_string(),
            format!("{}/{}", self.pods_in, self.pods_out),
            self.flows_allowed.to_string(),
            format!("{}/{}", self.denied_in, self.denied_out),
        ]
    }
}

/// One row per policy the node knows, by name.
pub fn policies(maps: &PinnedMaps) -> Result<Vec<PolicyStatsRow>> {
    let mut rows: BTreeMap<String, PolicyStatsRow> = BTreeMap::new();
    for (id, name) in policy_names(maps)? {
        let flows_allowed = maps
            .policy_hits
            .get(&u32::from(id), 0)
            .map_or(0, |per_cpu| per_cpu.iter().map(|h| h.allowed).sum());
        rows.insert(
            name.clone(),
            PolicyStatsRow {
                policy: name,
                id: u32::from(id),
                pods_in: 0,
                pods_out: 0,
                flows_allowed,
                denied_in: 0,
                denied_out: 0,
            },
        );
    }
    let pods: BTreeSet<u32> = maps.policy_pods.keys().collect::<Result<_, _>>()?;
    for ip_be in pods {
        let note = PodNote::read(maps, ip_be);
        let (_, denied_in) = counters(maps, ip_be, policy_direction::INGRESS);
        let (_, denied_out) = counters(maps, ip_be, policy_direction::EGRESS);
        for name in &note.ingress {
            if let Some(row) = rows.get_mut(name) {
                row.pods_in += 1;
                row.denied_in += denied_in;
            }
        }
        for name in &note.egress {
            if let Some(row) = rows.get_mut(name) {
                row.pods_out += 1;
                row.denied_out += denied_out;
            }
        }
    }
    Ok(rows.into_values().collect())
}

/// (allowed new flows, denied packets) of a pod and direction, all CPUs.
fn counters(maps: &PinnedMaps, pod_ip_be: u32, direction: u32) -> (u64, u64) {
    let key = PolicyStatsKey {
        pod_ip_be,
        direction,
    };
    maps.policy_stats.get(&key, 0).map_or((0, 0), |per_cpu| {
        per_cpu
            .iter()
            .fold((0, 0), |(a, d), c| (a + c.allowed, d + c.denied))
    })
}

/// "all (ns/p)", or "80/TCP (ns/p), 5000-5010/UDP (ns/q)": each range
/// with the policy it is counted for.
fn describe(ports: &PolicyPorts, names: &BTreeMap<u16, String>) -> String {
    let ranges = &ports.ranges[..(ports.count as usize).min(ports.ranges.len())];
    let proto = protocol_name;
    ranges
        .iter()
        .map(|r| {
            let by = names.get(&r.policy).map_or("?", String::as_str);
            match (r.proto, r.first, r.last) {
                (0, _, _) => format!("all ({by})"),
                (p, 0, u16::MAX) => format!("all/{} ({by})", proto(p)),
                (p, a, b) if a == b => format!("{a}/{} ({by})", proto(p)),
                (p, a, b) => format!("{a}-{b}/{} ({by})", proto(p)),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
