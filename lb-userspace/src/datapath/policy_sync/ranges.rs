//! The ports a rule set's longest-match entry for each peer prefix must
//! allow, each range tagged with the policy whose rule allows it (for
//! `policy_hits`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use lb_common::{POLICY_PORT_RANGES, PolicyPortRange, PolicyPorts};

use crate::policy::{Cidr, PeerRule, PortRange};

/// Ports allowed to a peer: all of them (by the first policy found that
/// says so), or some ranges, each with the policy allowing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Allowed {
    All(u16),
    Ranges(BTreeSet<(u16, PortRange)>),
}

/// Each peer prefix of `rules` with the union of the ports of every rule
/// whose peers contain it (what its longest-match entry must allow).
/// `policy_id` names each rule's policy in the datapath. Each peer visits
/// only the prefixes inside it (a range of the sorted table), so a rule
/// admitting N pods costs N, not N².
pub(super) fn prefix_ports(
    rules: &[PeerRule],
    policy_id: impl Fn(&str) -> u16,
) -> BTreeMap<Cidr, Allowed> {
    let mut out: BTreeMap<Cidr, Allowed> = rules
        .iter()
        .flat_map(|r| r.peers.iter())
        .map(|p| (*p, Allowed::Ranges(BTreeSet::new())))
        .collect();
    for rule in rules {
        let id = policy_id(&rule.policy);
        for peer in &rule.peers {
            for (_, allowed) in out
                .range_mut(peer.contained_range())
                .filter(|(q, _)| peer.contains(q))
            {
                match allowed {
                    Allowed::All(_) => {}
                    _ if rule.ports.is_empty() => *allowed = Allowed::All(id),
                    Allowed::Ranges(set) => set.extend(rule.ports.iter().map(|p| (id, *p))),
                }
            }
        }
    }
    out
}

/// The map value for `allowed`, and how many ranges did not fit.
/// Overlapping and adjacent ranges of a protocol are merged within each
/// policy, and across policies only if that is what makes them fit (the
/// merged range is then counted for its first policy); beyond what one
/// entry holds, the rest is left out (allowing less than asked, never
/// more).
pub(super) fn to_ranges(allowed: &Allowed) -> (PolicyPorts, usize) {
    let mut value = PolicyPorts::default();
    let merged = match allowed {
        Allowed::All(policy) => vec![(
            *policy,
            PortRange {
                protocol: 0,
                first: 0,
                last: u16::MAX,
            },
        )],
        Allowed::Ranges(set) => merge_attributed(set),
    };
    for (slot, (policy, r)) in value.ranges.iter_mut().zip(&merged) {
        *slot = PolicyPortRange {
            first: r.first,
            last: r.last,
            proto: r.protocol,
            _pad: 0,
            policy: *policy,
        };
    }
    value.count = merged.len().min(POLICY_PORT_RANGES) as u32;
    (value, merged.len().saturating_sub(POLICY_PORT_RANGES))
}

fn merge_attributed(set: &BTreeSet<(u16, PortRange)>) -> Vec<(u16, PortRange)> {
    let mut by_policy: BTreeMap<u16, Vec<PortRange>> = BTreeMap::new();
    for (policy, range) in set {
        by_policy.entry(*policy).or_default().push(*range);
    }
    let per_policy: Vec<(u16, PortRange)> = by_policy
        .into_iter()
        .flat_map(|(policy, ranges)| merge(ranges).into_iter().map(move |r| (policy, r)))
        .collect();
    if per_policy.len() <= POLICY_PORT_RANGES {
        return per_policy;
    }
    let by_range: BTreeMap<PortRange, u16> =
        per_policy.iter().rev().map(|(p, r)| (*r, *p)).collect();
    let mut out: Vec<(u16, PortRange)> = Vec::new();
    for (range, policy) in by_range {
        match out.last_mut() {
            Some((_, last)) if joins(last, &range) => last.last = last.last.max(range.last),
            _ => out.push((policy, range)),
        }
    }
    out
}

/// `ranges` (in any order) with overlapping and adjacent ones of a
/// protocol merged, sorted.
pub(super) fn merge(ranges: impl IntoIterator<Item = PortRange>) -> Vec<PortRange> {
    let sorted: BTreeSet<PortRange> = ranges.into_iter().collect();
    let mut out: Vec<PortRange> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(last) if joins(last, &r) => last.last = last.last.max(r.last),
            _ => out.push(r),
        }
    }
    out
}

/// Whether `next` (sorted after `last`) overlaps or touches it.
fn joins(last: &PortRange, next: &PortRange) -> bool {
    last.protocol == next.protocol && u32::from(next.first) <= u32::from(last.last) + 1
}

/// For tests and inspection: the allowed ports of an address in a pod's
/// rules, as the datapath's longest match finds them (empty: all).
pub fn longest_match(rules: &[PeerRule], peer: Ipv4Addr) -> Option<Vec<PortRange>> {
    let table = prefix_ports(rules, |_| 0);
    let host = Cidr::host(peer);
    let best = table
        .iter()
        .filter(|(p, _)| p.contains(&host))
        .max_by_key(|(p, _)| p.len)?;
    Some(match best.1 {
        Allowed::All(_) => Vec::new(),
        Allowed::Ranges(set) => merge(set.iter().map(|(_, r)| *r)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(t: &str) -> Cidr {
        Cidr::parse(t).expect(t)
    }

    fn tcp(first: u16, last: u16) -> PortRange {
        PortRange {
            protocol: 6,
            first,
            last,
        }
    }

    fn rule(policy: &str, peers: Vec<Cidr>, ports: Vec<PortRange>) -> PeerRule {
        PeerRule {
            policy: policy.into(),
            peers,
            ports,
        }
    }

    /// The longest match finds every rule that allows an address, across
    /// nested and excepted blocks.
    #[test]
    fn longest_prefix_holds_the_union_of_the_rules_containing_it() {
        let rules = vec![
            rule(
                "a/p",
                c("10.0.0.0/8").minus(&[c("10.1.0.0/16")]),
                vec![tcp(80, 80)],
            ),
            rule("a/p", vec![c("10.0.5.0/24")], vec![tcp(443, 443)]),
            rule("a/q", vec![c("10.1.2.3/32")], vec![tcp(22, 22)]),
            rule("a/q", vec![c("192.168.0.0/16")], vec![]),
        ];
        let cases: [(&str, Option<Vec<PortRange>>); 6] = [
            ("10.0.5.7", Some(vec![tcp(80, 80), tcp(443, 443)])),
            ("10.0.6.7", Some(vec![tcp(80, 80)])),
            ("10.1.2.3", Some(vec![tcp(22, 22)])),
            ("10.1.2.4", None),
            ("192.168.3.3", Some(vec![])),
            ("11.0.0.1", None),
        ];
        for (addr, want) in cases {
            let got = longest_match(&rules, addr.parse().expect("ip"));
            // 10.1.2.4 lies in no rule's prefix; 10.1.2.3 only in its own.
            assert_eq!(got, want, "{addr}");
        }
    }

    #[test]
    fn ranges_merge_and_overflow_is_counted_not_allowed() {
        let udp53 = PortRange {
            protocol: 17,
            first: 53,
            last: 53,
        };
        assert_eq!(
            merge([tcp(85, 100), tcp(80, 80), udp53, tcp(81, 90)]),
            vec![tcp(80, 100), udp53]
        );
        let many: BTreeSet<(u16, PortRange)> = (0..20)
            .map(|i| (1, tcp(1000 + 10 * i, 1000 + 10 * i)))
            .collect();
        let (value, dropped) = to_ranges(&Allowed::Ranges(many));
        assert_eq!((value.count, dropped), (16, 4));
    }

    /// Two policies allowing the same peer keep their own ranges, so a
    /// flow is counted for the policy whose port it used; only when they
    /// would not fit are they merged across policies.
    #[test]
    fn ranges_keep_their_policy_unless_merging_is_needed_to_fit() {
        let set: BTreeSet<(u16, PortRange)> =
            [(1, tcp(80, 80)), (2, tcp(81, 81)), (2, tcp(443, 443))].into();
        let (value, dropped) = to_ranges(&Allowed::Ranges(set));
        let got: Vec<(u16, u16, u16)> = value.ranges[..value.count as usize]
            .iter()
            .map(|r| (r.policy, r.first, r.last))
            .collect();
        assert_eq!(
            (got, dropped),
            (vec![(1, 80, 80), (2, 81, 81), (2, 443, 443)], 0)
        );

        // 9 + 9 single ports, pairwise adjacent across the two policies:
        // 18 ranges as they are, 9 once merged across.
        let set: BTreeSet<(u16, PortRange)> = (0..9)
            .flat_map(|i| {
                [
                    (1, tcp(2000 + 2 * i, 2000 + 2 * i)),
                    (2, tcp(2001 + 2 * i, 2001 + 2 * i)),
                ]
            })
            .collect();
        let (value, dropped) = to_ranges(&Allowed::Ranges(set));
        assert_eq!((value.count, dropped), (1, 0));
        assert_eq!((value.ranges[0].first, value.ranges[0].last), (2000, 2017));
        assert_eq!(value.ranges[0].policy, 1);
    }
}
