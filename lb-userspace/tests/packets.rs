//! Packet-level tests of the datapath: crafted packets through the real BPF
//! programs with BPF_PROG_TEST_RUN, maps filled by the real map-sync code,
//! output bytes and checksums verified independently. Needs root.
//!
//! One test binary; its modules live in `packets/` (named with `#[path]`,
//! so that Cargo does not take them for test binaries of their own):
//!
//! - `fixture`: the datapath under test, the services it starts with,
//!   running a program on a packet;
//! - `build`: packet builders, checksums, parsers that verify them;
//! - `cases`: the plain stateless cases, one table, one sentence each;
//! - `tc`: ClusterIP traffic through the pod-side tc programs;
//! - `nodeport`: node ports, external addresses and XDP;
//! - `icmp`: ICMP errors about translated flows, rate-limited rejects;
//! - `schedulers`: round-robin and least-connection frontends, open flows
//!   per backend;
//! - `remap`: source-port remapping of flows that would share a reply tuple;
//! - `conntrack`: admission, forged sources, sequence window, sweep, SNAT
//!   ports;
//! - `policy`: NetworkPolicy at the pods' interfaces;
//! - `policy_sets`: shared rule sets and per-policy counters;
//! - `fuzz`: fuzzed and truncated packets;
//! - `reference`: the datapath against a reference model of Services.

mod support;

#[path = "packets/build.rs"]
mod build;
#[path = "packets/fixture.rs"]
mod fixture;

#[path = "packets/cases.rs"]
mod cases;
#[path = "packets/conntrack.rs"]
mod conntrack;
#[path = "packets/fuzz.rs"]
mod fuzz;
#[path = "packets/icmp.rs"]
mod icmp;
#[path = "packets/nodeport.rs"]
mod nodeport;
#[path = "packets/policy.rs"]
mod policy;
#[path = "packets/policy_sets.rs"]
mod policy_sets;
#[path = "packets/reference.rs"]
mod reference;
#[path = "packets/remap.rs"]
mod remap;
#[path = "packets/schedulers.rs"]
mod schedulers;
#[path = "packets/tc.rs"]
mod tc;
