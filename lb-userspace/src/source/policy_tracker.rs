//! The API-server source's view of what NetworkPolicy is judged by: Pods
//! (slimmed to labels, addresses, named ports and the socket-LB opt-out),
//! Namespaces (labels, annotations) and
//! NetworkPolicies. A change that can alter the outcome marks it dirty; the
//! next batch compiles the whole [`PolicyState`] again (`policy::compile`)
//! and sends it only if it differs from the last one sent.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::{Container, ContainerPort, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::tracker::Key;
use super::{ClusterObjects, ObjectError, Sourced};
use crate::policy::{PolicyState, compile};

#[derive(Default)]
pub(super) struct PolicyTracker {
    pods: HashMap<Key, Pod>,
    namespaces: HashMap<Key, Namespace>,
    policies: HashMap<Key, NetworkPolicy>,
    dirty: bool,
    /// The last state sent, and the problems found with it.
    last: Option<PolicyState>,
    reported: BTreeSet<String>,
}

/// A Pod reduced to what policies read: at a few hundred bytes instead of
/// kilobytes, and unchanged by status updates that do not matter to them
/// (conditions, container states), so those do not recompile anything.
pub(super) fn slim_pod(pod: Pod) -> Pod {
    let containers = |list: Option<Vec<Container>>| -> Vec<Container> {
        list.unwrap_or_default()
            .into_iter()
            .filter(|c| c.ports.is_some())
            .map(|c| Container {
                name: c.name,
                ports: c.ports.map(|ports| {
                    ports
                        .into_iter()
                        .map(|p| ContainerPort {
                            name: p.name,
                            container_port: p.container_port,
                            protocol: p.protocol,
                            ..ContainerPort::default()
                        })
                        .collect()
                }),
                ..Container::default()
            })
            .collect()
    };
    let spec = pod.spec.map(|s| PodSpec {
        host_network: s.host_network,
        containers: containers(Some(s.containers)),
        init_containers: Some(containers(s.init_containers)).filter(|c| !c.is_empty()),
        ..PodSpec::default()
    });
    let status = pod.status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        ..PodStatus::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: pod.metadata.name,
            namespace: pod.metadata.namespace,
            labels: pod.metadata.labels,
            // The socket-LB opt-out (policy::socket_opt_out), alone.
            annotations: pod
                .metadata
                .annotations
                .map(|a| {
                    a.into_iter()
                        .filter(|(k, _)| k == crate::policy::socket_opt_out::ANNOTATION)
                        .collect()
                })
                .filter(|a: &std::collections::BTreeMap<String, String>| !a.is_empty()),
            ..ObjectMeta::default()
        },
        spec,
        status,
    }
}

/// Sets or removes one object; true when that changed anything.
fn set<K: PartialEq>(map: &mut HashMap<Key, K>, key: Key, value: Option<K>) -> bool {
    match value {
        Some(v) if map.get(&key) == Some(&v) => false,
        Some(v) => {
            map.insert(key, v);
            true
        }
        None => map.remove(&key).is_some(),
    }
}

/// Takes a complete list in place of what was known; true when different.
fn replace<K: PartialEq>(map: &mut HashMap<Key, K>, listed: HashMap<Key, K>) -> bool {
    let changed = *map != listed;
    *map = listed;
    changed
}

/// The kinds the tracker keeps: where, and in what form.
pub(super) trait PolicyObject: PartialEq + Sized {
    fn map(tracker: &mut PolicyTracker) -> &mut HashMap<Key, Self>;
    /// What is kept of a watched object.
    fn kept(self) -> Self {
        self
    }
}

impl PolicyObject for Pod {
    fn map(tracker: &mut PolicyTracker) -> &mut HashMap<Key, Self> {
        &mut tracker.pods
    }
    fn kept(self) -> Self {
        slim_pod(self)
    }
}

impl PolicyObject for Namespace {
    fn map(tracker: &mut PolicyTracker) -> &mut HashMap<Key, Self> {
        &mut tracker.namespaces
    }
}

impl PolicyObject for NetworkPolicy {
    fn map(tracker: &mut PolicyTracker) -> &mut HashMap<Key, Self> {
        &mut tracker.policies
    }
}

impl PolicyTracker {
    /// Sets or removes one object; dirty when that changed anything.
    pub(super) fn set<K: PolicyObject>(&mut self, key: Key, object: Option<K>) {
        let changed = set(K::map(self), key, object.map(K::kept));
        self.dirty |= changed;
    }

    /// Takes a complete list in place of what was known.
    pub(super) fn replace<K: PolicyObject>(&mut self, listed: HashMap<Key, K>) {
        let listed = listed.into_iter().map(|(k, o)| (k, o.kept())).collect();
        let changed = replace(K::map(self), listed);
        self.dirty |= changed;
    }

    pub(super) fn pending(&self) -> bool {
        self.dirty
    }

    pub(super) fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// The new state if it changed since the last one taken, and the
    /// problems not reported before.
    pub(super) fn take(&mut self) -> (Option<PolicyState>, Vec<ObjectError>) {
        if !std::mem::take(&mut self.dirty) && self.last.is_some() {
            return (None, Vec::new());
        }
        let (state, errors) = if self.policies.is_empty() {
            // Nothing selects any pod: no need to look at them.
            (PolicyState::default(), Vec::new())
        } else {
            compile(&self.objects())
        };
        let now: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        let new_errors = errors
            .into_iter()
            .filter(|e| !self.reported.contains(&e.to_string()))
            .collect();
        self.reported = now;
        if self.last.as_ref() == Some(&state) {
            return (None, new_errors);
        }
        self.last = Some(state.clone());
        (Some(state), new_errors)
    }

    fn objects(&self) -> ClusterObjects {
        let sourced = |kind: &str, key: &Key| format!("{kind} {}/{}", key.0, key.1);
        ClusterObjects {
            pods: self
                .pods
                .iter()
                .map(|(k, p)| Sourced {
                    origin: sourced("Pod", k),
                    object: p.clone(),
                })
                .collect(),
            namespaces: self
                .namespaces
                .iter()
                .map(|(k, n)| Sourced {
                    origin: sourced("Namespace", k),
                    object: n.clone(),
                })
                .collect(),
            network_policies: self
                .policies
                .iter()
                .map(|(k, n)| {
                    // A namespaced object keeps its key's namespace.
                    let mut object = n.clone();
                    object.metadata.namespace.get_or_insert_with(|| k.0.clone());
                    Sourced {
                        origin: sourced("NetworkPolicy", k),
                        object,
                    }
                })
                .collect(),
            ..ClusterObjects::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(labels: &[(&str, &str)], ip: &str, phase_note: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web", "namespace": "prod", "resourceVersion": phase_note,
                         "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<std::collections::BTreeMap<_, _>>()},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": phase_note}]}
        }))
        .expect("pod")
    }

    fn policy() -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "prod"},
            "spec": {"podSelector": {"matchLabels": {"app": "web"}}}
        }))
        .expect("policy")
    }

    fn key() -> Key {
        ("prod".into(), "web".into())
    }

    #[test]
    fn only_changes_that_matter_to_policies_recompile_and_only_new_states_are_sent() {
        let mut t = PolicyTracker::default();
        let (state, _) = t.take();
        assert_eq!(
            state,
            Some(PolicyState::default()),
            "the first state always goes"
        );
        t.set(key(), Some(pod(&[("app", "web")], "10.244.0.20", "True")));
        t.set(("prod".into(), "deny".into()), Some(policy()));
        let (state, errors) = t.take();
        assert!(errors.is_empty());
        assert_eq!(state.expect("isolated").pods.len(), 1);
        // A readiness flip: nothing policies read.
        t.set(key(), Some(pod(&[("app", "web")], "10.244.0.20", "False")));
        assert!(!t.pending());
        // A label change that unselects the pod: a new state.
        t.set(key(), Some(pod(&[("app", "db")], "10.244.0.20", "False")));
        assert!(t.pending());
        assert_eq!(t.take().0.expect("changed").pods.len(), 0);
        // Dirty but compiling to the same state: nothing sent.
        t.set(("".into(), "prod".into()), Some(Namespace::default()));
        assert_eq!(t.take().0, None);
    }
}
