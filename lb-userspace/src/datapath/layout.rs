//! Pinned maps outlive the agent, so an agent may find maps that another
//! version's datapath made (an upgrade, a rollback). Before the loader
//! reuses a pin, the map's shape as the kernel reports it — type, key size,
//! value size, flags — is compared with what this BPF object defines, and
//! the pinned layout version (the `layout` map) with [`LAYOUT_VERSION`]. A
//! map in another layout is unpinned, so the loader creates it anew: its
//! contents would be misread, or the programs refused by the verifier. The
//! programs still attached keep the old map until the new ones replace them.
//! What is lost is said: re-creating `conntrack` re-balances established
//! connections through services on this node.
//!
//! Sizes (max entries) of hash maps are not part of the layout: they are
//! the operator's (capacity.rs reads them back). An array's size is: it is
//! the index space (the `reason_stats` counters grow with new reasons).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use lb_common::{LAYOUT_VERSION, map_names};
use tracing::{info, warn};

/// What makes two maps interchangeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub flags: u32,
    /// Entries, for arrays only (see the module comment).
    pub array_entries: Option<u32>,
}

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

fn array_entries(map_type: u32, max_entries: u32) -> Option<u32> {
    matches!(map_type, BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY).then_some(max_entries)
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type {}, key {} B, value {} B, flags {:#x}",
            self.map_type, self.key_size, self.value_size, self.flags
        )?;
        match self.array_entries {
            Some(n) => write!(f, ", {n} entries"),
            None => Ok(()),
        }
    }
}

/// A pinned map that was not reused, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct Recreated {
    pub map: String,
    pub reason: String,
}

/// The shapes of the pinned maps as the object defines them.
pub fn expected_shapes(object: &Path) -> Result<BTreeMap<String, Shape>> {
    let bytes = std::fs::read(object).with_context(|| format!("reading {}", object.display()))?;
    let parsed = aya_obj::Object::parse(&bytes)
        .with_context(|| format!("parsing BPF object {}", object.display()))?;
    Ok(map_names::ALL
        .iter()
        .filter_map(|name| {
            let m = parsed.maps.get(*name)?;
            Some((
                name.to_string(),
                Shape {
                    map_type: m.map_type(),
                    key_size: m.key_size(),
                    value_size: m.value_size(),
                    flags: m.map_flags(),
                    array_entries: array_entries(m.map_type(), m.max_entries()),
                },
            ))
        })
        .collect())
}

/// The shape of the map pinned at `path`, if there is one.
pub fn pinned_shape(path: &Path) -> Result<Option<Shape>> {
    if !path.exists() {
        return Ok(None);
    }
    let map = MapData::from_pin(path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let info = map
        .info()
        .with_context(|| format!("reading {}", path.display()))?;
    let map_type =
        info.map_type()
            .with_context(|| format!("reading the type of {}", path.display()))? as u32;
    Ok(Some(Shape {
        map_type,
        key_size: info.key_size(),
        value_size: info.value_size(),
        flags: info.map_flags(),
        array_entries: array_entries(map_type, info.max_entries()),
    }))
}

/// The layout version recorded with the pins: `None` without pins; pins
/// from before versioning (no `layout` map) count as version 1, whose
/// shapes are still checked one by one.
fn pinned_version(pin_dir: &Path) -> Result<Option<u32>> {
    let path = pin_dir.join(map_names::LAYOUT);
    if !path.exists() {
        let any_pinned = map_names::ALL.iter().any(|m| pin_dir.join(m).exists());
        return Ok(any_pinned.then_some(1));
    }
    let map = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    let array: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(map))
        .with_context(|| format!("{} is not an array of u32", path.display()))?;
    Ok(Some(array.get(&0, 0).with_context(|| {
        format!("reading the layout version in {}", path.display())
    })?))
}

/// Unpins every map under `pin_dir` that this object cannot use as it is;
/// returns what was unpinned, and why.
pub fn unpin_incompatible(
    pin_dir: &Path,
    expected: &BTreeMap<String, Shape>,
) -> Result<Vec<Recreated>> {
    let version = pinned_version(pin_dir)?;
    let mut recreated = Vec::new();
    for (name, want) in expected {
        let path = pin_dir.join(name);
        let Some(have) = pinned_shape(&path)? else {
            continue;
        };
        let reason = if version.is_some_and(|v| v != LAYOUT_VERSION) {
            format!(
                "pinned by a datapath with layout version {}, this one has {LAYOUT_VERSION}",
                version.unwrap_or_default()
            )
        } else if have != *want {
            format!("pinned as {have}, this datapath needs {want}")
        } else {
            continue;
        };
        std::fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
        warn!(
            map = %name,
            "map {name} {reason}: re-created{}",
            if name == map_names::CONNTRACK {
                " (connections through services on this node are balanced afresh)"
            } else {
                ""
            }
        );
        recreated.push(Recreated {
            map: name.clone(),
            reason,
        });
    }
    if !recreated.is_empty() {
        info!(count = recreated.len(), "maps in another layout re-created");
    }
    Ok(recreated)
}

/// Records this datapath's layout version with the pins.
pub fn record_version(ebpf: &mut aya::Ebpf) -> Result<()> {
    let map = ebpf
        .map_mut(map_names::LAYOUT)
        .context("the BPF object has no layout map")?;
    let mut array: Array<&mut MapData, u32> =
        Array::try_from(map).context("the layout map is not an array of u32")?;
    array
        .set(0, LAYOUT_VERSION, 0)
        .context("writing the layout version")
}
