//! `switchyard inspect …`: the pinned maps as people read them. Reads only
//! the maps, so it works whether or not the agent is running.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use lb_common::{
    ConnEntry, FlowKey, backend_flags, conn_kind, interface_role, reason, service_flags, tcp_seen,
    xdp_mode,
};
use serde::Serialize;

use crate::datapath::addr::{ip_from_be, port_from_be};
use crate::datapath::conntrack::monotonic_ns;
use crate::datapath::maps::PinnedMaps;
use crate::model::Protocol;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

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

#[derive(Serialize)]
pub struct BackendRow {
    pub backend_id: u32,
    pub address: String,
    pub protocol: String,
    pub used_by: Vec<String>,
}

#[derive(Serialize)]
pub struct InterfaceRow {
    pub name: String,
    pub ifindex: u32,
    pub role: String,
    /// "native", "generic" or "none".
    pub xdp: String,
}

#[derive(Serialize)]
pub struct AffinityRow {
    pub client: String,
    pub service: String,
    pub backend: String,
    pub idle_seconds: u64,
    /// Seconds until a new connection may be balanced afresh; 0 if expired.
    pub expires_in_seconds: u64,
}

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

fn proto_name(p: u8) -> String {
    Protocol::from_number(p).map_or_else(|| format!("proto-{p}"), |p| p.to_string())
}

fn endpoint(ip_be: u32, port_be: u16) -> String {
    format!("{}:{}", ip_from_be(ip_be), port_from_be(port_be))
}

fn service_label(maps: &PinnedMaps, service_id: u32) -> String {
    maps.service_name(service_id)
        .unwrap_or_else(|| format!("(service #{service_id})"))
}

pub fn services(maps: &PinnedMaps) -> Result<Vec<ServiceRow>> {
    let entries: Vec<_> = maps.services.iter().collect::<Result<_, _>>()?;
    let slots: BTreeMap<_, _> = entries
        .iter()
        .filter(|(k, _)| k.slot != 0)
        .map(|(k, v)| (*k, v.backend_id))
        .collect();
    let mut rows = Vec::new();
    for (key, master) in entries.iter().filter(|(k, _)| k.slot == 0) {
        let mut local_backends = Vec::new();
        let backends: Vec<String> = (1..=master.count)
            .map(|slot| {
                let id = slots.get(&lb_common::ServiceKey { slot, ..*key });
                match id.and_then(|id| maps.backends.get(id, 0).ok()) {
                    Some(b) => {
                        if b.flags & backend_flags::LOCAL != 0 {
                            local_backends.push(endpoint(b.ip_be, b.port_be));
                        }
                        endpoint(b.ip_be, b.port_be)
                    }
                    None => format!("(slot {slot} missing)"),
                }
            })
            .collect();
        let counters = maps.service_counters(master.service_id);
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
        if key.scope == lb_common::frontend_scope::IN_CLUSTER {
            // What pods and the node's processes get for this address.
            policy.push("in-cluster".to_string());
        }
        if master.affinity_timeout_s > 0 {
            policy.push(format!("affinity={}s", master.affinity_timeout_s));
        }
        if master.flags & service_flags::MAGLEV != 0 {
            policy.push(format!("maglev={}", master.count));
        }
        // A Maglev table names each backend many times: list each once.
        let mut seen = std::collections::BTreeSet::new();
        let backends: Vec<String> = backends
            .into_iter()
            .filter(|b| seen.insert(b.clone()))
            .collect();
        local_backends.sort();
        local_backends.dedup();
        rows.push(ServiceRow {
            policy,
            service: service_label(maps, master.service_id),
            service_id: master.service_id,
            frontend: format!(
                "{}/{}",
                endpoint(key.vip_be, key.port_be),
                proto_name(key.proto)
            ),
            backends,
            local_backends,
            new_flows: counters.new_flows,
            packets: counters.packets,
            bytes: counters.bytes,
            refused_no_backend: counters.no_backend,
        });
    }
    rows.sort_by(|a, b| (&a.service, &a.frontend).cmp(&(&b.service, &b.frontend)));
    Ok(rows)
}

pub fn backends(maps: &PinnedMaps) -> Result<Vec<BackendRow>> {
    let mut users: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let entries: Vec<_> = maps.services.iter().collect::<Result<_, _>>()?;
    let masters: BTreeMap<_, _> = entries
        .iter()
        .filter(|(k, _)| k.slot == 0)
        .map(|(k, v)| ((k.vip_be, k.port_be, k.proto, k.scope), v.service_id))
        .collect();
    for (key, slot) in entries.iter().filter(|(k, _)| k.slot != 0) {
        if let Some(service_id) = masters.get(&(key.vip_be, key.port_be, key.proto, key.scope)) {
            users
                .entry(slot.backend_id)
                .or_default()
                .push(service_label(maps, *service_id));
        }
    }
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
            used_by,
        });
    }
    rows.sort_by_key(|r| r.backend_id);
    Ok(rows)
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
            backend: match e.kind {
                conn_kind::HAIRPIN_FORWARD => {
                    format!("{} (hairpin)", endpoint(e.nat_ip_be, e.nat_port_be))
                }
                conn_kind::FORWARD_SNAT => format!(
                    "{} (via {})",
                    endpoint(e.nat_ip_be, e.nat_port_be),
                    endpoint(e.second_ip_be, e.second_port_be)
                ),
                _ if e.second_port_be != 0 => format!(
                    "{} (client port remapped to {})",
                    endpoint(e.nat_ip_be, e.nat_port_be),
                    port_from_be(e.second_port_be)
                ),
                _ => endpoint(e.nat_ip_be, e.nat_port_be),
            },
            service: service_label(maps, e.service_id),
            age_seconds: now.saturating_sub(e.created_ns) / 1_000_000_000,
            idle_seconds: now.saturating_sub(e.last_seen_ns) / 1_000_000_000,
            tcp_flags: flags_text(e.tcp_flags),
        })
        .collect();
    rows.sort_by(|a, b| (&a.service, &a.client).cmp(&(&b.service, &b.client)));
    Ok(rows)
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

/// Where the agent attached the programs, and in which XDP mode.
#[derive(Serialize)]
pub struct LinkRow {
    /// An interface name, or `cgroup` for the socket hooks.
    pub attached_to: String,
    pub ifindex: Option<u32>,
    /// ingress, egress, xdp, or the socket hook's program.
    pub hook: String,
    pub pin: String,
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
        let row = if let Some(program) = name.strip_prefix("cgroup_") {
            LinkRow {
                attached_to: "cgroup".into(),
                ifindex: None,
                hook: program.to_string(),
                pin: entry.path().display().to_string(),
            }
        } else {
            let mut parts = name.rsplitn(3, '_');
            let hook = parts.next().unwrap_or_default().to_string();
            let ifindex = parts.next().and_then(|i| i.parse().ok());
            let iface = parts.next().unwrap_or_default().replace('+', ".");
            LinkRow {
                attached_to: iface,
                ifindex,
                hook,
                pin: entry.path().display().to_string(),
            }
        };
        rows.push(row);
    }
    rows.sort_by(|a, b| (&a.attached_to, &a.hook).cmp(&(&b.attached_to, &b.hook)));
    Ok(rows)
}

pub fn interfaces(maps: &PinnedMaps) -> Vec<InterfaceRow> {
    let mut rows: Vec<InterfaceRow> = maps
        .interfaces
        .iter()
        .filter_map(|r| r.ok())
        .map(|(ifindex, st)| {
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
                xdp: match st.xdp_mode {
                    xdp_mode::NATIVE => "native",
                    xdp_mode::GENERIC => "generic",
                    _ => "none",
                }
                .to_string(),
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.role, &a.name).cmp(&(&b.role, &b.name)));
    rows
}

pub fn stats(maps: &PinnedMaps) -> BTreeMap<&'static str, u64> {
    (0..reason::COUNT)
        .map(|r| (reason::NAMES[r as usize], maps.reason_count(r)))
        .collect()
}

/// Renders rows as an aligned text table.
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
}

pub fn run(pin_dir: &Path, what: InspectWhat, format: OutputFormat) -> Result<String> {
    let maps = PinnedMaps::open(pin_dir)?;
    let json =
        |v: serde_json::Value| -> Result<String> { Ok(serde_json::to_string_pretty(&v)? + "\n") };
    match (what, format) {
        (InspectWhat::Services, OutputFormat::Json) => {
            json(serde_json::to_value(services(&maps)?)?)
        }
        (InspectWhat::Services, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = services(&maps)?
                .into_iter()
                .map(|r| {
                    vec![
                        r.service,
                        r.frontend,
                        r.policy.join(","),
                        if r.backends.is_empty() {
                            "(none: refused)".to_string()
                        } else {
                            r.backends
                                .iter()
                                .map(|b| {
                                    if r.local_backends.contains(b) {
                                        format!("{b} (local)")
                                    } else {
                                        b.clone()
                                    }
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                        r.new_flows.to_string(),
                        r.refused_no_backend.to_string(),
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "SERVICE", "FRONTEND", "POLICY", "BACKENDS", "FLOWS", "REFUSED",
                ],
                &rows,
            ))
        }
        (InspectWhat::Backends, OutputFormat::Json) => {
            json(serde_json::to_value(backends(&maps)?)?)
        }
        (InspectWhat::Backends, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = backends(&maps)?
                .into_iter()
                .map(|r| {
                    vec![
                        r.backend_id.to_string(),
                        r.address,
                        r.protocol,
                        r.used_by.join(", "),
                    ]
                })
                .collect();
            Ok(table(&["ID", "ADDRESS", "PROTO", "USED BY"], &rows))
        }
        (InspectWhat::Conntrack, OutputFormat::Json) => {
            json(serde_json::to_value(conntrack(&maps)?)?)
        }
        (InspectWhat::Conntrack, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = conntrack(&maps)?
                .into_iter()
                .map(|r| {
                    vec![
                        r.protocol,
                        r.client,
                        r.frontend,
                        r.backend,
                        r.service,
                        format!("{}s", r.age_seconds),
                        format!("{}s", r.idle_seconds),
                        r.tcp_flags,
                    ]
                })
                .collect();
            Ok(table(
                &[
                    "PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE", "AGE", "IDLE", "TCP",
                ],
                &rows,
            ))
        }
        (InspectWhat::Affinity, OutputFormat::Json) => {
            json(serde_json::to_value(affinity(&maps)?)?)
        }
        (InspectWhat::Affinity, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = affinity(&maps)?
                .into_iter()
                .map(|r| {
                    vec![
                        r.client,
                        r.service,
                        r.backend,
                        format!("{}s", r.idle_seconds),
                        format!("{}s", r.expires_in_seconds),
                    ]
                })
                .collect();
            Ok(table(
                &["CLIENT", "SERVICE", "BACKEND", "IDLE", "EXPIRES IN"],
                &rows,
            ))
        }
        (InspectWhat::Interfaces, OutputFormat::Json) => {
            json(serde_json::to_value(interfaces(&maps))?)
        }
        (InspectWhat::Interfaces, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = interfaces(&maps)
                .into_iter()
                .map(|r| vec![r.name, r.ifindex.to_string(), r.role, r.xdp])
                .collect();
            Ok(table(&["INTERFACE", "IFINDEX", "ROLE", "XDP"], &rows))
        }
        (InspectWhat::Links, OutputFormat::Json) => json(serde_json::to_value(links(pin_dir)?)?),
        (InspectWhat::Links, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = links(pin_dir)?
                .into_iter()
                .map(|r| {
                    vec![
                        r.attached_to,
                        r.ifindex.map_or_else(|| "-".into(), |i| i.to_string()),
                        r.hook,
                        r.pin,
                    ]
                })
                .collect();
            Ok(table(&["ATTACHED TO", "IFINDEX", "HOOK", "PIN"], &rows))
        }
        (InspectWhat::Stats, OutputFormat::Json) => json(serde_json::to_value(stats(&maps))?),
        (InspectWhat::Stats, OutputFormat::Table) => {
            let rows: Vec<Vec<String>> = stats(&maps)
                .into_iter()
                .map(|(k, v)| vec![k.to_string(), v.to_string()])
                .collect();
            Ok(table(&["REASON", "PACKETS"], &rows))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn every_table_has_as_many_headers_as_cells() {
        // Rendering panics on a mismatch; services rows carry 6 cells.
        let row = vec![String::new(); 6];
        let t = table(
            &[
                "SERVICE", "FRONTEND", "POLICY", "BACKENDS", "FLOWS", "REFUSED",
            ],
            &[row],
        );
        assert!(t.starts_with("SERVICE"));
    }

    #[test]
    fn flags() {
        assert_eq!(flags_text(tcp_seen::SYN | tcp_seen::ACK), "SYN|ACK");
        assert_eq!(flags_text(0), "");
    }
}
