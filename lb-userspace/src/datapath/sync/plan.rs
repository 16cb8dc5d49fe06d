//! Planning: the desired state (what the cluster wants) turned into this
//! node's concrete frontends — each service port's cluster IP, and for
//! externally reachable ones this node's addresses at the node port, the
//! load-balancer IPs and the external IPs — with their backends and flags,
//! before any ID is known or any map is touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use lb_common::service_flags;

use super::{MapSync, Scope, ServiceMaps, SyncError, SyncReport};
use crate::model::{Algorithm, BackendAddr, DesiredState, Frontend, FrontendScope, ServicePort};

/// What one frontend should look like, before backend IDs are known.
pub(super) struct FrontendPlan {
    /// The service port (its key in the desired state) it belongs to.
    pub(super) owner: Frontend,
    pub(super) name: String,
    pub(super) backends: Vec<BackendAddr>,
    pub(super) affinity_timeout_s: u32,
    pub(super) algorithm: Algorithm,
    pub(super) flags: u16,
    pub(super) source_ranges: Vec<(Ipv4Addr, u8)>,
}

/// The service ports a pass looks at.
pub(super) fn ports_in_scope<'a>(
    desired: &'a DesiredState,
    scope: Scope<'_>,
) -> Vec<&'a ServicePort> {
    match scope {
        Scope::All => desired.services.values().collect(),
        Scope::Only(keys) => keys
            .iter()
            .filter_map(|k| desired.services.get(k))
            .collect(),
    }
}

/// Every backend address some planned frontend needs.
pub(super) fn needed_backends(wanted: &BTreeMap<Frontend, FrontendPlan>) -> BTreeSet<BackendAddr> {
    wanted
        .values()
        .flat_map(|plan| plan.backends.iter().copied())
        .collect()
}

impl<M: ServiceMaps> MapSync<M> {
    /// The backends among `ports`' endpoints that are on this node.
    pub(super) fn local_backends(&self, ports: &[&ServicePort]) -> BTreeSet<BackendAddr> {
        ports
            .iter()
            .flat_map(|sp| sp.endpoints.iter())
            .filter(|e| self.node.is_some() && e.node == self.node)
            .map(|e| e.addr)
            .collect()
    }

    /// The concrete frontends of `desired` on this node: each service port's
    /// cluster IP, and for externally reachable ones this node's addresses
    /// at the node port, the load-balancer IPs and the external IPs.
    pub(super) fn plan(
        &self,
        desired: &DesiredState,
        ports: &[&ServicePort],
        scope: Scope<'_>,
        report: &mut SyncReport,
    ) -> BTreeMap<Frontend, FrontendPlan> {
        let node = self.node.as_deref();
        let zone = self.zone.as_deref();
        let mut wanted: BTreeMap<Frontend, FrontendPlan> = BTreeMap::new();
        // A frontend stays with the service port that has it, when that one
        // is outside this pass and still wanted.
        let held_elsewhere = |frontend: &Frontend| -> Option<String> {
            let Scope::Only(keys) = scope else {
                return None;
            };
            let owner = self.owners.get(frontend)?;
            if keys.contains(owner) || !desired.services.contains_key(owner) {
                return None;
            }
            self.services.get(frontend).map(|p| p.name.clone())
        };
        for sp in ports.iter().copied() {
            let name = sp.name.to_string();
            let usable_anywhere = sp.has_usable_endpoints();
            let affinity_timeout_s = sp
                .affinity
                .map_or(0, |d| d.as_secs().clamp(1, u32::MAX as u64) as u32);
            let algorithm = sp.algorithm.unwrap_or(self.selection.default);
            wanted.insert(
                sp.frontend,
                FrontendPlan {
                    owner: sp.frontend,
                    name: name.clone(),
                    backends: sp.backends_at(node, zone),
                    affinity_timeout_s,
                    algorithm,
                    // Local policy, none here but some elsewhere: drop, as
                    // kube-proxy does (no endpoints at all: refuse).
                    flags: if sp.internal_traffic_local && usable_anywhere {
                        service_flags::DROP_IF_EMPTY
                    } else {
                        0
                    },
                    source_ranges: Vec::new(),
                },
            );
            let ext = &sp.external;
            if !ext.is_exposed() {
                continue;
            }
            let external_backends = sp.external_backends_at(node, zone);
            let base_flags = service_flags::EXTERNAL
                | if ext.traffic_local && usable_anywhere {
                    service_flags::DROP_IF_EMPTY
                } else {
                    0
                };
            let at = |ip: Ipv4Addr, port: u16| Frontend::new(ip, port, sp.frontend.protocol);
            let mut frontends: Vec<(Frontend, bool)> = Vec::new();
            if let Some(node_port) = ext.node_port {
                frontends.extend(self.node_ips.iter().map(|ip| (at(*ip, node_port), false)));
            }
            frontends.extend(
                ext.load_balancer_ips
                    .iter()
                    .map(|ip| (at(*ip, sp.frontend.port), true)),
            );
            frontends.extend(
                ext.external_ips
                    .iter()
                    .map(|ip| (at(*ip, sp.frontend.port), false)),
            );
            // Node-local for outside clients only: pods and the node's own
            // processes reach these addresses over every endpoint.
            if ext.traffic_local {
                let in_cluster: Vec<(Frontend, bool)> = frontends
                    .iter()
                    .map(|(f, is_lb)| (f.in_cluster(), *is_lb))
                    .collect();
                frontends.extend(in_cluster);
            }
            let cluster_wide = sp.cluster_wide_backends(node, zone);
            for (frontend, is_lb) in frontends {
                let in_cluster = frontend.scope == FrontendScope::InCluster;
                let ranged = is_lb && !ext.source_ranges.is_empty();
                let plan = FrontendPlan {
                    owner: sp.frontend,
                    name: name.clone(),
                    backends: if in_cluster {
                        cluster_wide.clone()
                    } else {
                        external_backends.clone()
                    },
                    affinity_timeout_s,
                    algorithm,
                    flags: if in_cluster {
                        service_flags::EXTERNAL
                    } else if ext.traffic_local {
                        base_flags | service_flags::HAS_IN_CLUSTER
                    } else {
                        base_flags
                    } | if ranged {
                        service_flags::SOURCE_RANGES
                    } else {
                        0
                    },
                    source_ranges: if ranged {
                        ext.source_ranges.clone()
                    } else {
                        Vec::new()
                    },
                };
                if let Some(existing) = wanted
                    .get(&frontend)
                    .map(|p| p.name.clone())
                    .or_else(|| held_elsewhere(&frontend))
                {
                    report.fail(SyncError::AlreadyServed {
                        name: name.clone(),
                        frontend,
                        existing,
                    });
                    continue;
                }
                wanted.insert(frontend, plan);
            }
        }
        wanted
    }
}
