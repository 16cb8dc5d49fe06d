//! Where the desired state comes from. Every source yields the same
//! Kubernetes objects ([`ClusterObjects`]); [`translate`] turns them into a
//! [`crate::model::DesiredState`] with kube-proxy's semantics.

use std::fmt;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

pub mod standalone;
pub mod translate;

/// An object with where it came from, for error messages.
#[derive(Clone, Debug)]
pub struct Sourced<T> {
    /// e.g. `web.yaml (document 2)`.
    pub origin: String,
    pub object: T,
}

/// Everything a source knows about the cluster's services.
#[derive(Clone, Debug, Default)]
pub struct ClusterObjects {
    pub services: Vec<Sourced<Service>>,
    pub slices: Vec<Sourced<EndpointSlice>>,
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

impl fmt::Display for ObjectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.origin, self.object, self.field, self.message
        )
    }
}
