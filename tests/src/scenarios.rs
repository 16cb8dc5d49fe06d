//! Service scenarios and their expectations, shared by the namespace
//! cluster tests (`tests/tests/scenarios.rs`, requests from pod namespaces)
//! and the kind suite (`tests/kind/`, requests through agnhost pods), so
//! both check the same things the same way.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;

use anyhow::{Result, ensure};

/// Something that can send one request to a service address, from a fixed
/// client, and say which backend answered.
pub trait Requester {
    fn tcp(&self, to: SocketAddrV4) -> Result<String>;
    fn udp(&self, to: SocketAddrV4) -> Result<String>;
}

/// Requests per check: enough that missing one of three backends by chance
/// is below one in a million ((2/3)^36).
pub const SPREAD_REQUESTS: usize = 36;

/// Every backend answers over TCP and UDP, and nothing else does.
pub fn check_spread(
    client: &dyn Requester,
    tcp: SocketAddrV4,
    udp: SocketAddrV4,
    backends: &BTreeSet<String>,
) -> Result<()> {
    for (proto, to) in [("TCP", tcp), ("UDP", udp)] {
        let mut seen = BTreeSet::new();
        for _ in 0..SPREAD_REQUESTS {
            seen.insert(if proto == "TCP" {
                client.tcp(to)?
            } else {
                client.udp(to)?
            });
        }
        ensure!(
            &seen == backends,
            "{proto} {to}: answered by {seen:?}, expected {backends:?}"
        );
    }
    Ok(())
}

/// With ClientIP affinity, every new connection of one client goes to the
/// same backend, one of the service's.
pub fn check_affinity(
    client: &dyn Requester,
    tcp: SocketAddrV4,
    backends: &BTreeSet<String>,
) -> Result<String> {
    let first = client.tcp(tcp)?;
    ensure!(backends.contains(&first), "{first} is not a backend");
    for i in 0..20 {
        let next = client.tcp(tcp)?;
        ensure!(
            next == first,
            "connection {i} went to {next}, the client is pinned to {first}"
        );
    }
    Ok(first)
}
