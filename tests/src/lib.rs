//! Test harness: Kubernetes-like topologies built from network namespaces.
//!
//! A [`Topology`] is a node namespace with pods attached by veth pairs (the
//! host side in the node, `eth0` in the pod), routed like a typical CNI:
//! each pod reaches everything through the node, the node routes each pod IP
//! to its veth. Real servers run in pods ([`PodServer`]), clients run in
//! pod namespaces from test threads ([`Pod::in_netns`]), and the real
//! `switchyard` binary runs in the node namespace ([`AgentProcess`]).
//! Everything is torn down on drop, also when a test panics.

pub mod agent;
pub mod agnhost;
pub mod apiserver;
pub mod chart;
pub mod client;
pub mod cluster;
pub mod command;
pub mod conformance;
pub mod host;
pub mod kube_proxy;
pub mod manifests;
pub mod measure;
pub mod paths;
pub mod pki;
pub mod pod_server;
pub mod realcluster;
pub mod scale;
pub mod scenarios;
pub mod slow_backend;
pub mod topology;
pub mod wait;

pub use agent::{AgentOptions, AgentProcess, AgentSource};
pub use client::is_refused;
pub use cluster::{MultiNode, Node};
pub use manifests::{
    EndpointSpec, ManifestDir, endpoint_slice_yaml, namespace_yaml, pod_yaml, service_yaml,
    with_annotation, with_client_ip_affinity,
};
pub use pod_server::{PodServer, ServerPorts};
pub use topology::{Pod, Topology, cleanup_stale};
