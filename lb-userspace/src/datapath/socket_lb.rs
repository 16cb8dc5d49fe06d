//! Sockets still aimed at UDP backends that left their service. The
//! socket hooks translate once per socket (connect) or reuse their first
//! choice (sendmsg): no per-packet state exists that a conntrack flush
//! could clear. When a UDP backend departs, its cached choices in `sock_lb`
//! are dropped (the next datagram of an unconnected socket is balanced
//! afresh) and the sockets connected to it through a service are aborted
//! (their owners see ECONNABORTED and reconnect, through the hooks, to a
//! live backend) — kube-proxy's UDP conntrack flush, for sockets.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use lb_common::{PROTO_UDP, SockAddr, SockKey};
use tracing::warn;

use super::maps::PinnedMaps;
use super::sock_diag::{self, UdpSocketId};
use crate::model::{BackendAddr, Frontend};

/// What one pass did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forgotten {
    /// Cached choices of unconnected sockets dropped.
    pub choices: usize,
    /// Connected sockets aborted.
    pub aborted: usize,
}

fn sock_addr(ip: std::net::Ipv4Addr, port: u16) -> SockAddr {
    SockAddr {
        ip_be: u32::from_ne_bytes(ip.octets()),
        port_be: port.to_be(),
        _pad: 0,
    }
}

/// An address and port as the socket hooks store them (network order).
type Addr = (u32, u16);
/// Service address → backend address that left it.
type Departed = BTreeSet<(Addr, Addr)>;

/// Service address → backend address, for each UDP departure.
fn departures(gone: &[(Frontend, BackendAddr)]) -> Departed {
    gone.iter()
        .map(|(front, back)| {
            let (f, b) = (
                sock_addr(front.ip, front.port),
                sock_addr(back.ip, back.port),
            );
            ((f.ip_be, f.port_be), (b.ip_be, b.port_be))
        })
        .collect()
}

/// Drops the cached choices of departed backends; returns how many, and
/// the cookies of sockets the hooks sent through a departed pair (their
/// reverse entries: backend → service).
fn forget_choices(maps: &mut PinnedMaps, gone: &Departed) -> Result<(usize, HashSet<u64>)> {
    let entries: Vec<(SockKey, SockAddr)> = maps
        .sock_lb
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, _)| k.proto == PROTO_UDP)
        .collect();
    let mut choices = 0;
    let mut cookies = HashSet::new();
    for (key, value) in entries {
        let (to, translated) = ((key.ip_be, key.port_be), (value.ip_be, value.port_be));
        if gone.contains(&(to, translated)) {
            // service → backend: the socket's cached choice.
            if maps.sock_lb.remove(&key).is_ok() {
                choices += 1;
            }
        } else if gone.contains(&(translated, to)) {
            // backend → service: the socket went to that backend.
            cookies.insert(key.cookie);
        }
    }
    Ok((choices, cookies))
}

/// Aborts the connected UDP sockets among `cookies` whose peer is a
/// departed backend, in each of `namespaces` (`None`: the agent's own; a
/// pod's sockets are seen only from inside its namespace).
fn abort_connected(
    cookies: &HashSet<u64>,
    gone: &Departed,
    namespaces: &[Option<PathBuf>],
) -> Result<usize> {
    if cookies.is_empty() {
        return Ok(0);
    }
    let mut aborted = 0;
    for netns in namespaces {
        match netns {
            None => aborted += abort_connected_here(cookies, gone)?,
            // A pod being deleted takes its sockets with it: not an error
            // that should keep the others' from being aborted.
            Some(path) => {
                match super::pod_netns::inside(path, || abort_connected_here(cookies, gone))
                    .and_then(|r| r)
                {
                    Ok(n) => aborted += n,
                    Err(e) => warn!(netns = %path.display(), "aborting UDP sockets: {e:#}"),
                }
            }
        }
    }
    Ok(aborted)
}

/// [`abort_connected`] in the calling thread's namespace.
fn abort_connected_here(cookies: &HashSet<u64>, gone: &Departed) -> Result<usize> {
    let backends: HashSet<Addr> = gone.iter().map(|(_, b)| *b).collect();
    let stale: Vec<UdpSocketId> = sock_diag::connected_udp_sockets()
        .context("listing connected UDP sockets")?
        .into_iter()
        .filter(|s| {
            let (ip, port) = s.peer();
            let peer = sock_addr(ip, port);
            cookies.contains(&s.cookie()) && backends.contains(&(peer.ip_be, peer.port_be))
        })
        .collect();
    let mut aborted = 0;
    for socket in &stale {
        sock_diag::abort(socket).context("aborting a UDP socket")?;
        aborted += 1;
    }
    Ok(aborted)
}

/// Forgets cached choices and aborts connected sockets of the UDP backends
/// in `gone` (frontend, backend that left it), in `namespaces`.
pub fn forget_departed(
    maps: &mut PinnedMaps,
    gone: &[(Frontend, BackendAddr)],
    namespaces: &[Option<PathBuf>],
) -> Result<Forgotten> {
    if gone.is_empty() {
        return Ok(Forgotten::default());
    }
    let gone = departures(gone);
    let (choices, cookies) = forget_choices(maps, &gone)?;
    let aborted = abort_connected(&cookies, &gone, namespaces)?;
    Ok(Forgotten { choices, aborted })
}
