//! The map entries that say a [`PolicyState`], given what the maps hold
//! now: policy IDs and rule-set IDs stay what they were for the same
//! policy and the same rules, so an unchanged policy writes nothing and a
//! changed one writes fresh sets before pods move to them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use lb_common::{
    MAX_POLICIES, MAX_POLICY_PODS, POLICY_PORT_RANGES, PodIsolation, PolicyPorts, PolicyRuleKey,
    policy_direction,
};

use super::ranges::{prefix_ports, to_ranges};
use crate::datapath::addr::ip_be;
use crate::datapath::ids::IdAllocator;
use crate::policy::{Isolation, PeerRule, PolicyState};

/// A `policy_rules` entry: (key data, peer prefix length).
pub(super) type RuleKey = (PolicyRuleKey, u8);

/// A rule set's entries: (peer address, prefix length) → ports.
type RuleSet = BTreeMap<(u32, u8), PolicyPorts>;

/// The set a pod is put in when no ID is left for its own: it has no
/// rules, so the pod is isolated with nothing allowed (failing closed).
const DENY_ALL_SET: u32 = u32::MAX;

/// What the maps hold (or should).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Entries {
    pub pods: BTreeMap<u32, PodIsolation>,
    pub rules: BTreeMap<RuleKey, PolicyPorts>,
    pub notes: BTreeMap<u32, String>,
    /// (pod, direction) counted in `policy_stats`.
    pub counted: BTreeSet<(u32, u32)>,
    /// Policy ID → `namespace/name` (`policy_names`).
    pub policies: BTreeMap<u32, String>,
}

impl Entries {
    /// The rule sets the maps hold: those with rules, and those pods
    /// point at with none (deny-all).
    fn rule_sets(&self) -> BTreeMap<u32, RuleSet> {
        let mut sets: BTreeMap<u32, RuleSet> = BTreeMap::new();
        for ((key, len), ports) in &self.rules {
            let set = u32::from_be(key.rule_set_be);
            sets.entry(set)
                .or_default()
                .insert((key.peer_ip_be, *len), *ports);
        }
        for isolation in self.pods.values() {
            for set in [isolation.ingress_set, isolation.egress_set] {
                if set != 0 {
                    sets.entry(set).or_default();
                }
            }
        }
        sets
    }
}

/// The entries that say `state`, reusing `current`'s IDs where they
/// still mean the same; problems name the pod or policy.
pub(super) fn wanted(
    state: &PolicyState,
    current: &Entries,
    problems: &mut Vec<String>,
) -> Entries {
    let mut e = Entries {
        policies: policy_ids(state, &current.policies, problems),
        ..Entries::default()
    };
    let by_name: HashMap<&str, u16> = e
        .policies
        .iter()
        .map(|(id, name)| (name.as_str(), u16::try_from(*id).unwrap_or(0)))
        .collect();
    let policy_id = |name: &str| by_name.get(name).copied().unwrap_or(0);
    let mut sets = RuleSetIds::new(current);
    // Pods under the same policies have the same rules: each distinct
    // list is compiled once (rule-set ID, ranges left out).
    let mut compiled: HashMap<&[PeerRule], (Option<u32>, usize)> = HashMap::new();
    for (ip, pod) in &state.pods {
        let ip_key = ip_be(*ip);
        let mut set_ids = [0u32; 2];
        let directions = [
            (policy_direction::INGRESS, &pod.ingress),
            (policy_direction::EGRESS, &pod.egress),
        ];
        for (slot, (direction, isolation)) in set_ids.iter_mut().zip(directions) {
            let Some(isolation) = isolation else { continue };
            e.counted.insert((ip_key, direction));
            let (id, dropped) = *compiled
                .entry(isolation.rules.as_slice())
                .or_insert_with(|| {
                    let (set, dropped) = rule_set(&isolation.rules, &policy_id);
                    (sets.id(set), dropped)
                });
            if dropped > 0 {
                problems.push(format!(
                    "pod {} ({ip}): {dropped} port ranges beyond the {POLICY_PORT_RANGES} one peer's entry holds are not allowed",
                    pod.pod
                ));
            }
            *slot = id.unwrap_or_else(|| {
                problems.push(format!(
                    "pod {} ({ip}): no rule-set ID left; denying all its new flows that way",
                    pod.pod
                ));
                DENY_ALL_SET
            });
        }
        let [ingress_set, egress_set] = set_ids;
        e.pods.insert(
            ip_key,
            PodIsolation {
                ingress_set,
                egress_set,
            },
        );
        e.notes.insert(
            ip_key,
            note(&pod.pod, pod.ingress.as_ref(), pod.egress.as_ref()),
        );
    }
    e.rules = sets.into_rules();
    e
}

/// Policy ID per policy named anywhere in `state`: the current one if the
/// policy has one, else a fresh one (never an ID `current` holds, so old
/// counts are not taken for a new policy's).
fn policy_ids(
    state: &PolicyState,
    current: &BTreeMap<u32, String>,
    problems: &mut Vec<String>,
) -> BTreeMap<u32, String> {
    let names: BTreeSet<&str> = state
        .pods
        .values()
        .flat_map(|p| [&p.ingress, &p.egress])
        .flatten()
        .flat_map(|i| i.policies.iter().chain(i.rules.iter().map(|r| &r.policy)))
        .map(String::as_str)
        .collect();
    let current_ids: HashMap<&str, u32> = current
        .iter()
        .map(|(id, name)| (name.as_str(), *id))
        .collect();
    let mut ids = IdAllocator::new(MAX_POLICIES - 1);
    current.keys().for_each(|id| ids.mark_used(*id));
    let mut out = BTreeMap::new();
    let mut unnamed = 0;
    for name in names {
        match current_ids.get(name).copied().or_else(|| ids.allocate()) {
            Some(id) => {
                out.insert(id, name.to_string());
            }
            None => unnamed += 1,
        }
    }
    if unnamed > 0 {
        problems.push(format!(
            "{unnamed} network policies beyond the {} the datapath counts apart are enforced but counted as policy 0",
            MAX_POLICIES - 1
        ));
    }
    out
}

/// A rule set's entries, and the port ranges that did not fit.
fn rule_set(rules: &[PeerRule], policy_id: &impl Fn(&str) -> u16) -> (RuleSet, usize) {
    let mut set = RuleSet::new();
    let mut dropped = 0;
    for (peer, allowed) in prefix_ports(rules, policy_id) {
        let (ports, over) = to_ranges(&allowed);
        dropped += over;
        set.insert((ip_be(peer.ip), peer.len), ports);
    }
    (set, dropped)
}

/// Rule-set IDs by content: the current ID for a set the maps already
/// hold, a fresh one (never a current ID) for a new set.
struct RuleSetIds {
    current: HashMap<RuleSet, u32>,
    wanted: HashMap<RuleSet, u32>,
    ids: IdAllocator,
}

impl RuleSetIds {
    fn new(current: &Entries) -> Self {
        // Two pods isolated in both directions at most.
        let mut ids = IdAllocator::new(2 * MAX_POLICY_PODS);
        let mut by_content = HashMap::new();
        for (id, set) in current.rule_sets() {
            if id == DENY_ALL_SET {
                continue;
            }
            ids.mark_used(id);
            by_content.entry(set).or_insert(id);
        }
        Self {
            current: by_content,
            wanted: HashMap::new(),
            ids,
        }
    }

    fn id(&mut self, set: RuleSet) -> Option<u32> {
        if let Some(id) = self.wanted.get(&set) {
            return Some(*id);
        }
        let id = match self.current.get(&set) {
            Some(id) => *id,
            None => self.ids.allocate()?,
        };
        self.wanted.insert(set, id);
        Some(id)
    }

    fn into_rules(self) -> BTreeMap<RuleKey, PolicyPorts> {
        let mut rules = BTreeMap::new();
        for (set, id) in self.wanted {
            for ((peer_ip_be, len), ports) in set {
                let key = PolicyRuleKey {
                    rule_set_be: id.to_be(),
                    peer_ip_be,
                };
                rules.insert((key, len), ports);
            }
        }
        rules
    }
}

fn note(pod: &str, ingress: Option<&Isolation>, egress: Option<&Isolation>) -> String {
    let by = |i: Option<&Isolation>| {
        i.map_or_else(
            || "-".to_string(),
            |i| i.policies.iter().cloned().collect::<Vec<_>>().join(","),
        )
    };
    format!("{pod}|{}|{}", by(ingress), by(egress))
}
