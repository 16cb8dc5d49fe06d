//! Where the desired state comes from. Every source yields the same
//! Kubernetes objects ([`ClusterObjects`]); [`translate`] turns them into a
//! [`crate::model::DesiredState`] with kube-proxy's semantics.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::SystemTime;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
pub use slice::EndpointSlice;

use crate::model::{DesiredState, Frontend, ServicePort};
use crate::policy::PolicyState;

mod endpoints;
pub mod events;
pub mod kubernetes;
pub mod owner;
mod policy_tracker;
pub mod slice;
pub mod standalone;
mod tracker;
pub mod translate;

/// One batch of changes from a source to the agent. Sources send only what
/// changed, so the agent's work follows the size of the change, not of the
/// cluster.
#[derive(Clone, Debug, Default)]
pub struct StateDelta {
    /// Service ports (by their key in [`DesiredState::services`]) that
    /// appeared or changed, or went away (`None`).
    pub ports: BTreeMap<Frontend, Option<ServicePort>>,
    /// The source has now delivered everything it knows: on the first such
    /// batch the agent removes whatever the maps hold that nothing owns.
    pub complete: bool,
    /// When the writes behind this batch were made at the API server (from
    /// EndpointSlices' `endpoints.kubernetes.io/last-change-trigger-time`),
    /// for the propagation-delay metric.
    pub triggered_at: Vec<SystemTime>,
    /// This node's addresses from its Node object, when they changed.
    pub node_addresses: Option<Vec<Ipv4Addr>>,
    /// This node's zone label (`topology.kubernetes.io/zone`), when it
    /// changed: `Some(None)` is a label removed.
    pub node_zone: Option<Option<String>>,
    /// What NetworkPolicy says about every pod, when that changed.
    pub policy: Option<PolicyState>,
}

impl StateDelta {
    /// The batch that turns `old` into `new`.
    pub fn between(old: &DesiredState, new: &DesiredState) -> Self {
        let gone = old
            .services
            .keys()
            .filter(|k| !new.services.contains_key(k))
            .map(|k| (*k, None));
        let changed = new
            .services
            .iter()
            .filter(|(k, sp)| old.services.get(k) != Some(sp))
            .map(|(k, sp)| (*k, Some(sp.clone())));
        Self {
            ports: gone.chain(changed).collect(),
            ..Self::default()
        }
    }
}

impl DesiredState {
    /// Applies a batch; returns the keys whose service port really changed.
    pub fn apply_delta(&mut self, delta: &StateDelta) -> BTreeSet<Frontend> {
        let mut changed = BTreeSet::new();
        for (key, port) in &delta.ports {
            let differs = match port {
                Some(sp) => self.services.get(key) != Some(sp),
                None => self.services.contains_key(key),
            };
            if !differs {
                continue;
            }
            match port {
                Some(sp) => self.services.insert(*key, sp.clone()),
                None => self.services.remove(key),
            };
            changed.insert(*key);
        }
        changed
    }
}

/// An object with where it came from, for error messages.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    /// e.g. `web.yaml (document 2)`.
    pub origin: String,
    pub object: T,
}

/// Everything a source knows about the cluster's services, and the pods,
/// namespaces and policies NetworkPolicy is judged by.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<EndpointSlice>>,
    pub pods: Vec<Sourced<Pod>>,
    pub namespaces: Vec<Sourced<Namespace>>,
    pub network_policies: Vec<Sourced<NetworkPolicy>>,
}

/// A problem with one object (or one part of it) that kept it from being
/// used. Everything else is still applied.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, thiserror::Error)]
pub struct ObjectError {
    pub origin: String,
    /// `Service default/web`, `EndpointSlice default/web-abc`.
    pub object: String,
    /// Path of the offending field, e.g. `spec.ports[1].port`.
    pub field: String,
    pub message: String,
}

impl ObjectError {
    pub fn new(
        origin: &str,
        object: &str,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            origin: origin.to_string(),
            object: object.to_string(),
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.origin, self.object, self.field, self.message
        )
    }
}
