//! Which interfaces the datapath is attached to: the host side of pod
//! interfaces, selected by name globs, followed as pods come and go.

use std::collections::BTreeMap;
use std::ffi::CStr;

use anyhow::{Result, bail};
use tracing::warn;

use super::loader::{Datapath, Role};
use super::socket_pods::PodAddresses;

/// Interface names of the common CNIs' host-side pod interfaces.
pub const DEFAULT_POD_IFACES: &str = "veth*,lxc*,cali*,gke*,eni*,azv*";

/// Name patterns with `*` (any run of characters) and `?` (one character).
#[derive(Clone, Debug)]
pub struct IfaceGlobs(Vec<String>);

impl IfaceGlobs {
    pub fn parse(spec: &str) -> Result<Self> {
        let globs: Vec<String> = spec
            .split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty())
            .map(String::from)
            .collect();
        if globs.is_empty() {
            bail!("--pod-ifaces: no interface pattern given");
        }
        Ok(Self(globs))
    }

    pub fn matches(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|g| glob_match(g.as_bytes(), name.as_bytes()))
    }
}

fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    match (pattern.first(), name.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            glob_match(&pattern[1..], name) || (!name.is_empty() && glob_match(pattern, &name[1..]))
        }
        (Some(b'?'), Some(_)) => glob_match(&pattern[1..], &name[1..]),
        (Some(p), Some(n)) if p == n => glob_match(&pattern[1..], &name[1..]),
        _ => false,
    }
}

/// The interfaces of this network namespace, by name, with their index.
pub fn list_interfaces() -> Result<BTreeMap<String, u32>> {
    let head = unsafe { libc::if_nameindex() };
    if head.is_null() {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut out = BTreeMap::new();
    let mut cur = head;
    loop {
        let entry = unsafe { &*cur };
        if entry.if_index == 0 || entry.if_name.is_null() {
            break;
        }
        let name = unsafe { CStr::from_ptr(entry.if_name) }
            .to_string_lossy()
            .into_owned();
        out.insert(name, entry.if_index);
        cur = unsafe { cur.add(1) };
    }
    unsafe { libc::if_freenameindex(head) };
    Ok(out)
}

/// Which interfaces get which programs, by name.
#[derive(Clone, Debug)]
pub struct IfaceRoles {
    pub pods: IfaceGlobs,
    pub external: Option<IfaceGlobs>,
    pub tunnels: Option<IfaceGlobs>,
}

impl IfaceRoles {
    /// Pod globs win over external ones, external over tunnel ones, for an
    /// interface matching several.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        if self.pods.matches(name) {
            Some(Role::Pod)
        } else if self.external.as_ref().is_some_and(|g| g.matches(name)) {
            Some(Role::External)
        } else if self.tunnels.as_ref().is_some_and(|g| g.matches(name)) {
            Some(Role::Tunnel)
        } else {
            None
        }
    }
}

/// Attaches to matching interfaces that appeared (or were re-created with a
/// new index) and forgets the ones that went away; returns this node's pods
/// (the addresses routed through each attached pod interface).
pub fn reconcile(datapath: &mut Datapath, roles: &IfaceRoles) -> Result<PodAddresses> {
    let present: BTreeMap<String, (u32, Role)> = list_interfaces()?
        .into_iter()
        .filter_map(|(name, index)| Some((name.clone(), (index, roles.role_of(&name)?))))
        .collect();
    let attached: Vec<(String, u32, Role)> = datapath
        .attached()
        .map(|(n, i, r)| (n.to_string(), i, r))
        .collect();
    for (name, ifindex, role) in &attached {
        if present.get(name) != Some(&(*ifindex, *role)) {
            datapath.detach(name, true);
        }
    }
    for (name, (ifindex, role)) in present {
        if datapath.attached().any(|(n, _, _)| n == name) {
            continue;
        }
        if let Err(e) = datapath.attach(&name, ifindex, role) {
            // The interface may be vanishing right now; retried next round.
            warn!(iface = %name, "cannot attach: {e:#}");
        }
    }
    // The CNI adds a pod's host route just after its interface: this runs
    // again on that route's notification.
    let table = std::fs::read_to_string("/proc/net/route")?;
    let pods = datapath.pod_addresses(&super::pod_sources::host_routes(&table));
    datapath.update_pod_sources(pods.clone())?;
    Ok(pods)
}

/// IPv4 addresses of the interfaces matching `globs`, in interface order.
pub fn ipv4_addresses(globs: &IfaceGlobs) -> Result<Vec<std::net::Ipv4Addr>> {
    ipv4_addresses_of(|name| globs.matches(name))
}

/// IPv4 addresses of every interface of the calling thread's namespace.
pub fn all_ipv4_addresses() -> Result<Vec<std::net::Ipv4Addr>> {
    ipv4_addresses_of(|_| true)
}

fn ipv4_addresses_of(wanted: impl Fn(&str) -> bool) -> Result<Vec<std::net::Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        let entry = unsafe { &*cur };
        cur = entry.ifa_next;
        if entry.ifa_addr.is_null() || entry.ifa_name.is_null() {
            continue;
        }
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }.to_string_lossy();
        if unsafe { (*entry.ifa_addr).sa_family } as i32 != libc::AF_INET || !wanted(&name) {
            continue;
        }
        let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
        let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let g = IfaceGlobs::parse("veth*, lxc?x,eth0").expect("valid");
        assert!(g.matches("veth1234"));
        assert!(g.matches("veth"));
        assert!(g.matches("lxc1x"));
        assert!(!g.matches("lxc12x"));
        assert!(g.matches("eth0"));
        assert!(!g.matches("eth01"));
        assert!(IfaceGlobs::parse(" , ").is_err());
    }

    #[test]
    fn lists_loopback() {
        assert!(list_interfaces().expect("if_nameindex").contains_key("lo"));
    }
}
