//! Switchyard user space: the agent that programs the eBPF datapath from
//! Kubernetes objects, and the tools to look inside it.

pub mod agent;
pub mod datapath;
pub mod health;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod model;
pub mod policy;
pub mod source;
pub mod sweeper;
