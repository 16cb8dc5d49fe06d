//! `switchyard inspect …`: the pinned maps as people read them. Reads only
//! the maps, so it works whether or not the agent is running.
//!
//! Each view collects one struct per line (`ServiceRow`, `ConnRow`, …) and
//! `render_rows` prints them: the table takes its columns from the row's
//! `Row` impl, the JSON is the row serialized. Both formats thus come from
//! the same values, and a view is just "collect rows; render".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use lb_common::{
    BackendSlot, ConnEntry, FlowKey, InterfaceStatus, ServiceKey, backend_flags, conn_kind,
    frontend_scope, interface_role, reason, service_flags, tcp_seen,
};
use serde::Serialize;

use crate::datapath::addr::{ip_from_be, port_from_be};
use crate::datapath::backend_load;
use crate::datapath::conntrack::monotonic_ns;
use crate::datapath::loader::xdp_mode_name;
use crate::datapath::maps::PinnedMaps;
use crate::model::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, clap::Subcommand)]
pub enum InspectWhat {
    /// Frontends (VIP:port/proto) with their service and backends.
    Services,
    /// Backends by ID, with the services that use them.
    Backends,
    /// Tracked connections: client → frontend → backend.
    Conntrack,
    /// ClientIP session affinity: which client sticks to which backend.
    Affinity,
    /// Interfaces the programs are attached to, and the XDP mode.
    Interfaces,
    /// The pinned links: every hook the datapath is attached at (they stay
    /// across agent restarts and crashes).
    Links,
    /// Datapath counters by reason.
    Stats,
    /// Pods NetworkPolicy isolates, by which policies, and what their rules
    /// allow in and out.
    Policy,
    /// NetworkPolicies with the pods they isolate on this node, the new
    /// flows each let through and the packets refused at their pods.
    Policies,
    /// Pods whose sockets the socket hooks connect straight to backends
    /// (`--socket-lb pods`), with their network namespace's cookie.
    SocketPods,
}

/// The view `what` of the maps pinned in `pin_dir`, ready to print.
pub fn run(pin_dir: &Path, what: InspectWhat, format: OutputFormat) -> Result<String> {
    // Opened for every view, links too, so that a wrong --pin-dir fails the
    // same way whatever is asked.
    let maps = PinnedMaps::open(pin_dir)?;
    match what {
        InspectWhat::Services => render_rows(&services(&maps)?, format),
        InspectWhat::Backends => render_rows(&backends(&maps)?, format),
        InspectWhat::Conntrack => render_rows(&conntrack(&maps)?, format),
        InspectWhat::Affinity => render_rows(&affinity(&maps)?, format),
        InspectWhat::Interfaces => render_rows(&interfaces(&maps), format),
        InspectWhat::Links => render_rows(&links(pin_dir)?, format),
        InspectWhat::Stats => render_rows(&stat_rows(&maps), format),
        InspectWhat::Policy => render_rows(&policy::policy(&maps)?, format),
        InspectWhat::Policies => render_rows(&policy::policies(&maps)?, format),
        InspectWhat::SocketPods => render_rows(&socket_pods(&maps)?, format),
    }
}

// ---- rendering -------------------------------------------------------------

/// One line of a view, in both output formats.
trait Row: Serialize + Sized {
    /// Column titles of the table, one per cell.
    const HEADER: &'static [&'static str];

    /// The table cells, in `HEADER` order.
    fn cells(&self) -> Vec<String>;

    /// The whole view as JSON: by default the array of rows.
    fn json(rows: &[Self]) -> serde_json::Result<serde_json::Value> {
        serde_json::to_value(rows)
    }
}

/// A view as an aligned table, or as pretty-printed JSON.
fn render_rows<R: Row>(rows: &[R], format: OutputFormat) -> Result<String> {
    Ok(match format {
        OutputFormat::Table => {
            let cells: Vec<Vec<String>> = rows.iter().map(R::cells).collect();
            table(R::HEADER, &cells)
        }
        // Through `Value`, whose objects sort their keys (serde_json's
        // default): the fields have always come out in alphabetical order.
        OutputFormat::Json => serde_json::to_string_pretty(&R::json(rows)?)? + "\n",
    })
}

/// Renders rows as an aligned text table. The last column is not padded,
/// so lines end without trailing spaces unless its cell is empty.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let cells: Vec<&str> = cells.collect();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                let _ = write!(out, "{cell}");
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

// ---- services --------------------------------------------------------------

#[derive(Serialize)]
pub struct ServiceRow {
    pub service: String,
    pub service_id: u32,
    pub frontend: String,
    /// How the frontend behaves: external, local-only, source-ranges, affinity=Ns.
    pub policy: Vec<String>,
    pub backends: Vec<String>,
    /// The subset of `backends` on this node.
    pub local_backends: Vec<String>,
    pub new_flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub refused_no_backend: u64,
}

impl Row for ServiceRow {
    const HEADER: &'static [&'static str] = &[
        "SERVICE", "FRONTEND", "POLICY", "BACKENDS", "FLOWS", "REFUSED",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.service.clone(),
            self.frontend.clone(),
            self.policy.join(","),
            self.backends_text(),
            self.new_flows.to_string(),
            self.refused_no_backend.to_string(),
        ]
    }
}

impl ServiceRow {
    /// The backends with the local ones marked; a frontend without any
    /// refuses connections.
    fn backends_text(&self) -> String {
        if self.backends.is_empty() {
            return "(none: refused)".to_string();
        }
        self.backends
            .iter()
            .map(|b| {
                if self.local_backends.contains(b) {
                    format!("{b} (local)")
                } else {
                    b.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One row per frontend (master entry), by service then frontend.
pub fn services(maps: &PinnedMaps) -> Result<Vec<ServiceRow>> {
    let entries: Vec<_> = maps.services.iter().collect::<Result<_, _>>()?;
    let slots: BTreeMap<_, _> = entries
        .iter()
        .filter(|(k, _)| k.slot != 0)
        .map(|(k, v)| (*k, v.backend_id))
        .collect();
    let mut rows: Vec<ServiceRow> = entries
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(key, master)| service_row(maps, &slots, key, master))
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    Ok(rows)
}

fn service_row(
    maps: &PinnedMaps,
    slots: &BTreeMap<ServiceKey, u32>,
    key: &ServiceKey,
    master: &BackendSlot,
) -> ServiceRow {
    let (backends, local_backends) = slot_backends(maps, slots, key, master.count);
    let counters = maps.service_counters(master.service_id);
    ServiceRow {
        service: service_label(maps, master.service_id),
        service_id: master.service_id,
        frontend: format!(
            "{}/{}",
            endpoint(key.vip_be, key.port_be),
            proto_name(key.proto)
        ),
        policy: policy(key, master),
        backends,
        local_backends,
        new_flows: counters.new_flows,
        packets: counters.packets,
        bytes: counters.bytes,
        refused_no_backend: counters.no_backend,
    }
}

/// The frontend's backends in slot order, and the local ones among them
/// (sorted). A Maglev table names each backend many times: each is listed
/// once.
fn slot_backends(
    maps: &PinnedMaps,
    slots: &BTreeMap<ServiceKey, u32>,
    key: &ServiceKey,
    count: u16,
) -> (Vec<String>, Vec<String>) {
    let mut backends = Vec::new();
    let mut local = Vec::new();
    let mut seen = BTreeSet::new();
    for slot in 1..=count {
        let id = slots.get(&ServiceKey { slot, ..*key });
        let text = match id.and_then(|id| maps.backends.get(id, 0).ok()) {
            Some(b) => {
                let address = endpoint(b.ip_be, b.port_be);
                if b.flags & backend_flags::LOCAL != 0 {
                    local.push(address.clone());
                }
                address
            }
            None => format!("(slot {slot} missing)"),
        };
        if seen.insert(text.clone()) {
            backends.push(text);
        }
    }
    local.sort();
    local.dedup();
    (backends, local)
}

/// The frontend's master entry in words, for `ServiceRow::policy`.
fn policy(key: &ServiceKey, master: &BackendSlot) -> Vec<String> {
    let mut policy = Vec::new();
    for (flag, text) in [
        (service_flags::EXTERNAL, "external"),
        (service_flags::DROP_IF_EMPTY, "local-only"),
        (service_flags::SOURCE_RANGES, "source-ranges"),
    ] {
        if master.flags & flag != 0 {
            policy.push(text.to_string());
        }
    }
    if key.scope == frontend_scope::IN_CLUSTER {
        // What pods and the node's processes get for this address.
        policy.push("in-cluster".to_string());
    }
    if master.affinity_timeout_s > 0 {
        policy.push(format!("affinity={}s", master.affinity_timeout_s));
    }
    if master.flags & service_flags::MAGLEV != 0 {
        policy.push(format!("maglev={}", master.count));
    }
    if master.flags & service_flags::ROUND_ROBIN != 0 {
        policy.push("round-robin".to_string());
    }
    if master.flags & service_flags::LEAST_CONN != 0 {
        policy.push("least-connection".to_string());
    }
    policy
}

// ---- backends --------------------------------------------------------------

#[derive(Serialize)]
pub struct BackendRow {
    pub backend_id: u32,
    pub address: String,
    pub protocol: String,
    /// Flows through this node to the backend, not yet closed by their
    /// client nor expired: what least-connection frontends compare.
    pub open_flows: u32,
    pub used_by: Vec<String>,
}

impl Row for BackendRow {
    const HEADER: &'static [&'static str] = &["ID", "ADDRESS", "PROTO", "OPEN FLOWS", "USED BY"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.backend_id.to_string(),
            self.address.clone(),
            self.protocol.clone(),
            self.open_flows.to_string(),
            self.used_by.join(", "),
        ]
    }
}

/// One row per backend, by ID.
pub fn backends(maps: &PinnedMaps) -> Result<Vec<BackendRow>> {
    let mut users = backend_users(maps)?;
    let open_flows = backend_load::read(maps);
    let mut rows = Vec::new();
    for item in maps.backends.iter() {
        let (id, b) = item?;
        let mut used_by = users.remove(&id).unwrap_or_default();
        used_by.sort();
        used_by.dedup();
        rows.push(BackendRow {
            backend_id: id,
            address: endpoint(b.ip_be, b.port_be),
            protocol: proto_name(b.proto),
            open_flows: open_flows.get(&id).copied().unwrap_or(0),
            used_by,
        });
    }
    rows.sort_by_key(|r| r.backend_id);
    Ok(rows)
}

/// The services whose slots name each backend (unsorted, with repeats).
fn backend_users(maps: &PinnedMaps) -> Result<BTreeMap<u32, Vec<String>>> {
    let entries: Vec<_> = maps.services.iter().collect::<Result<_, _>>()?;
    let masters: BTreeMap<_, _> = entries
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(k, v)| ((k.vip_be, k.port_be, k.proto, k.scope), v.service_id))
        .collect();
    let mut users: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (key, slot) in entries.iter().filter(|(k, _)| k.slot != 0) {
        if let Some(service_id) = masters.get(&(key.vip_be, key.port_be, key.proto, key.scope)) {
            users
                .entry(slot.backend_id)
                .or_default()
                .push(service_label(maps, *service_id));
        }
    }
    Ok(users)
}

// ---- conntrack -------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct ConnRow {
    pub protocol: String,
    pub client: String,
    pub frontend: String,
    pub backend: String,
    pub service: String,
    pub age_seconds: u64,
    pub idle_seconds: u64,
    pub tcp_flags: String,
}

impl Row for ConnRow {
    const HEADER: &'static [&'static str] = &[
        "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE", "AGE", "IDLE", "TCP",
    ];

    fn cells(&self) -> Vec<String> {
        vec![
            self.protocol.clone(),
            self.client.clone(),
            self.frontend.clone(),
            self.backend.clone(),
            self.service.clone(),
            format!("{}s", self.age_seconds),
            format!("{}s", self.idle_seconds),
            self.tcp_flags.clone(),
        ]
    }
}

/// One row per connection (its forward entry); reply entries are the same
/// connections seen from the backend.
pub fn conntrack(maps: &PinnedMaps) -> Result<Vec<ConnRow>> {
    let now = monotonic_ns();
    let entries: Vec<(FlowKey, ConnEntry)> = maps.conntrack.iter().collect::<Result<_, _>>()?;
    let mut rows: Vec<ConnRow> = entries
        .iter()
        .filter(|(_, e)| conn_kind::is_forward(e.kind))
        .map(|(k, e)| ConnRow {
            protocol: proto_name(k.proto),
            client: endpoint(k.src_ip_be, k.src_port_be),
            frontend: endpoint(k.dst_ip_be, k.dst_port_be),
            backend: conn_backend(e),
            service: service_label(maps, e.service_id),
            age_seconds: now.saturating_sub(e.created_ns) / 1_000_000_000,
            idle_seconds: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            tcp_flags: flags_text(e.tcp_flags),
        })
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    Ok(rows)
}

/// Where a forward entry sends the connection, and how it gets there.
fn conn_backend(e: &ConnEntry) -> String {
    let backend = endpoint(e.nat_ip_be, e.nat_port_be);
    match e.kind {
        conn_kind::HAIRPIN_FORWARD => format!("{backend} (hairpin)"),
        conn_kind::FORWARD_SNAT => format!(
            "{backend} (via {})",
            endpoint(e.second_ip_be, e.second_port_be)
        ),
        _ if e.second_port_be != 0 => format!(
            "{backend} (client port remapped to {})",
            port_from_be(e.second_port_be)
        ),
        _ => backend,
    }
}

fn flags_text(flags: u8) -> String {
    let mut s = String::new();
    for (bit, name) in [
        (tcp_seen::SYN, "SYN"),
        (tcp_seen::ACK, "ACK"),
        (tcp_seen::FIN, "FIN"),
        (tcp_seen::RST, "RST"),
    ] {
        if flags & bit != 0 {
            if !s.is_empty() {
                s.push('|');
            }
            s.push_str(name);
        }
    }
    s
}

// ---- affinity --------------------------------------------------------------

#[derive(Serialize)]
pub struct AffinityRow {
    pub client: String,
    pub service: String,
    pub backend: String,
    pub idle_seconds: u64,
    /// Seconds until a new connection may be balanced afresh; 0 if expired.
    pub expires_in_seconds: u64,
}

impl Row for AffinityRow {
    const HEADER: &'static [&'static str] = &["CLIENT", "SERVICE", "BACKEND", "IDLE", "EXPIRES IN"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.client.clone(),
            self.service.clone(),
            self.backend.clone(),
            format!("{}s", self.idle_seconds),
            format!("{}s", self.expires_in_seconds),
        ]
    }
}

/// Which client is pinned to which backend, for services with ClientIP
/// session affinity.
pub fn affinity(maps: &PinnedMaps) -> Result<Vec<AffinityRow>> {
    let now = monotonic_ns();
    let timeouts: BTreeMap<u32, u64> = maps
        .services
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, _)| k.slot == 0)
        .map(|(_, v)| (v.service_id, u64::from(v.affinity_timeout_s)))
        .collect();
    let mut rows = Vec::new();
    for item in maps.affinity.iter() {
        let Ok((key, pin)) = item else { continue };
        let idle = now.saturating_sub(pin.last_used_ns) / 1_000_000_000;
        let timeout = timeouts.get(&key.service_id).copied().unwrap_or(0);
        let backend = maps
            .backends
            .get(&pin.backend_id, 0)
            .map(|b| endpoint(b.ip_be, b.port_be))
            .unwrap_or_else(|_| format!("(backend #{} gone)", pin.backend_id));
        rows.push(AffinityRow {
            client: ip_from_be(key.client_ip_be).to_string(),
            service: service_label(maps, key.service_id),
            backend,
            idle_seconds: idle,
            expires_in_seconds: timeout.saturating_sub(idle),
        });
    }
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    Ok(rows)
}

// ---- interfaces ------------------------------------------------------------

#[derive(Serialize)]
pub struct InterfaceRow {
    pub name: String,
    pub ifindex: u32,
    pub role: String,
    /// "native", "generic", "none", or none because `--xdp auto` found
    /// tc faster on the interface's driver.
    pub xdp: String,
}

impl Row for InterfaceRow {
    const HEADER: &'static [&'static str] = &["INTERFACE", "IFINDEX", "ROLE", "XDP"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.name.clone(),
            self.ifindex.to_string(),
            self.role.clone(),
            self.xdp.clone(),
        ]
    }
}

/// The interfaces the agent recorded, by role then name.
pub fn interfaces(maps: &PinnedMaps) -> Vec<InterfaceRow> {
    let mut rows: Vec<InterfaceRow> = maps
        .interfaces
        .iter()
        .filter_map(|r| r.ok())
        .map(|(ifindex, st)| interface_row(ifindex, &st))
        .collect();
    rows.sort_by(|a, b| (&a.role, &a.name).cmp(&(&b.role, &b.name)));
    rows
}

fn interface_row(ifindex: u32, st: &InterfaceStatus) -> InterfaceRow {
    // NUL-padded, unless the name fills the whole array.
    let end = st
        .name
        .iter()
        .position(|b| *b == 0)
        .unwrap_or(st.name.len());
    InterfaceRow {
        name: String::from_utf8_lossy(&st.name[..end]).into_owned(),
        ifindex,
        role: match st.role {
            interface_role::POD => "pod",
            interface_role::EXTERNAL => "external",
            interface_role::TUNNEL => "tunnel",
            _ => "unknown",
        }
        .to_string(),
        xdp: xdp_mode_name(st.xdp_mode).to_string(),
    }
}

// ---- links -----------------------------------------------------------------

/// A hook the agent attached a program at: one pinned link.
#[derive(Serialize)]
pub struct LinkRow {
    /// An interface name, or `cgroup` for the socket hooks.
    pub attached_to: String,
    pub ifindex: Option<u32>,
    /// ingress, egress, xdp, or the socket hook's program.
    pub hook: String,
    pub pin: String,
}

impl Row for LinkRow {
    const HEADER: &'static [&'static str] = &["ATTACHED TO", "IFINDEX", "HOOK", "PIN"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.attached_to.clone(),
            self.ifindex.map_or_else(|| "-".into(), |i| i.to_string()),
            self.hook.clone(),
            self.pin.clone(),
        ]
    }
}

/// The links pinned under `<pin dir>/links` (see loader.rs for the names).
pub fn links(pin_dir: &Path) -> Result<Vec<LinkRow>> {
    let dir = pin_dir.join("links");
    let mut rows = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(rows),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        rows.push(link_row(&name, entry.path().display().to_string()));
    }
    rows.sort_by(|a, b| (&a.attached_to, &a.hook).cmp(&(&b.attached_to, &b.hook)));
    Ok(rows)
}

/// Parses a link's pin name: `cgroup_<program>`, or
/// `<interface>_<ifindex>_<hook>` with the interface's dots as `+`.
fn link_row(name: &str, pin: String) -> LinkRow {
    if let Some(program) = name.strip_prefix("cgroup_") {
        return LinkRow {
            attached_to: "cgroup".into(),
            ifindex: None,
            hook: program.to_string(),
            pin,
        };
    }
    // From the right: interface names may themselves contain '_'.
    let mut parts = name.rsplitn(3, '_');
    let hook = parts.next().unwrap_or_default().to_string();
    let ifindex = parts.next().and_then(|i| i.parse().ok());
    let iface = parts.next().unwrap_or_default().replace('+', ".");
    LinkRow {
        attached_to: iface,
        ifindex,
        hook,
        pin,
    }
}

// ---- socket pods -----------------------------------------------------------

/// A pod whose sockets are translated at connect().
#[derive(Serialize)]
pub struct SocketPodRow {
    pub pod_ip: String,
    pub netns_cookie: u64,
}

impl Row for SocketPodRow {
    const HEADER: &'static [&'static str] = &["POD", "NETNS COOKIE"];

    fn cells(&self) -> Vec<String> {
        vec![self.pod_ip.clone(), self.netns_cookie.to_string()]
    }
}

/// `sock_pods`, by pod address.
pub fn socket_pods(maps: &PinnedMaps) -> Result<Vec<SocketPodRow>> {
    let mut rows = Vec::new();
    for entry in maps.sock_pods.iter() {
        let (netns_cookie, ip_be) = entry.context("reading sock_pods")?;
        rows.push((ip_from_be(ip_be), netns_cookie));
    }
    rows.sort();
    Ok(rows
        .into_iter()
        .map(|(ip, netns_cookie)| SocketPodRow {
            pod_ip: ip.to_string(),
            netns_cookie,
        })
        .collect())
}

// ---- stats -----------------------------------------------------------------

/// Datapath counters by reason name, summed over CPUs.
pub fn stats(maps: &PinnedMaps) -> BTreeMap<&'static str, u64> {
    (0..reason::COUNT)
        .map(|r| (reason::NAMES[r as usize], maps.reason_count(r)))
        .collect()
}

/// One counter of [`stats`].
#[derive(Serialize)]
pub struct StatRow {
    pub reason: &'static str,
    pub packets: u64,
}

impl Row for StatRow {
    const HEADER: &'static [&'static str] = &["REASON", "PACKETS"];

    fn cells(&self) -> Vec<String> {
        vec![self.reason.to_string(), self.packets.to_string()]
    }

    /// An object by reason rather than an array: scripts look counters up
    /// by name (`.new_flow`).
    fn json(rows: &[Self]) -> serde_json::Result<serde_json::Value> {
        let by_reason: BTreeMap<&str, u64> = rows.iter().map(|r| (r.reason, r.packets)).collect();
        serde_json::to_value(by_reason)
    }
}

/// [`stats`] as rows, by reason name.
fn stat_rows(maps: &PinnedMaps) -> Vec<StatRow> {
    stats(maps)
        .into_iter()
        .map(|(reason, packets)| StatRow { reason, packets })
        .collect()
}

// ---- shared cell text ------------------------------------------------------

fn proto_name(p: u8) -> String {
    Protocol::from_number(p).map_or_else(|| format!("proto-{p}"), |p| p.to_string())
}

fn endpoint(ip_be: u32, port_be: u16) -> String {
    format!("{}:{}", ip_from_be(ip_be), port_from_be(port_be))
}

/// The stored service name, or its ID where none is stored.
fn service_label(maps: &PinnedMaps, service_id: u32) -> String {
    maps.service_name(service_id)
        .unwrap_or_else(|| format!("(service #{service_id})"))
}

mod policy;

#[cfg(test)]
mod tests;
