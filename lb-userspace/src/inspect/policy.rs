//! `inspect policy`: the pods NetworkPolicy isolates on this node, by which
//! policies, and what their rules let through, from the maps.

use std::collections::BTreeMap;
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
        "ALLOWED IN",
        "IN: FLOWS/DENIED",
        "EGRESS BY",
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
            self.allowed_in.join("; "),
            format!("{}/{}", self.flows_in, self.denied_in),
            or_open(&self.egress_policies),
            self.allowed_out.join("; "),
            format!("{}/{}", self.flows_out, self.denied_out),
        ]
    }
}

/// One row per isolated pod, by address.
pub fn policy(maps: &PinnedMaps) -> Result<Vec<PolicyRow>> {
    let mut rules: BTreeMap<(u32, u32), Vec<String>> = BTreeMap::new();
    for item in maps.policy_rules.iter() {
        let (key, ports) = item?;
        let data = key.data();
        let peer_len = key.prefix_len().saturating_sub(64);
        let peer = format!("{}/{peer_len}", ip_from_be(data.peer_ip_be));
        rules
            .entry((data.pod_ip_be, u32::from_be(data.direction_be)))
            .or_default()
            .push(format!("{peer}: {}", describe(&ports)));
    }
    let mut rows = Vec::new();
    for item in maps.policy_pods.iter() {
        let (ip_be, _) = item?;
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
        let allowed = |direction: u32| rules.get(&(ip_be, direction)).cloned().unwrap_or_default();
        let counted = |direction: u32| counters(maps, ip_be, direction);
        let ((flows_in, denied_in), (flows_out, denied_out)) = (
            counted(policy_direction::INGRESS),
            counted(policy_direction::EGRESS),
        );
        rows.push(PolicyRow {
            pod,
            address: ip_from_be(ip_be).to_string(),
            ingress_policies: ingress,
            egress_policies: egress,
            allowed_in: allowed(policy_direction::INGRESS),
            allowed_out: allowed(policy_direction::EGRESS),
            flows_in,
            denied_in,
            flows_out,
            denied_out,
        });
    }
    rows.sort_by_key(|r| r.address.parse::<Ipv4Addr>().ok());
    Ok(rows)
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

/// "all", or "80/TCP, 5000-5010/UDP".
fn describe(ports: &PolicyPorts) -> String {
    let ranges = &ports.ranges[..(ports.count as usize).min(ports.ranges.len())];
    if ranges.iter().any(|r| r.proto == 0) {
        return "all".into();
    }
    let proto = protocol_name;
    ranges
        .iter()
        .map(|r| match (r.first, r.last) {
            (0, u16::MAX) => format!("all/{}", proto(r.proto)),
            (a, b) if a == b => format!("{a}/{}", proto(r.proto)),
            (a, b) => format!("{a}-{b}/{}", proto(r.proto)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
