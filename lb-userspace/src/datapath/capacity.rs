//! How many entries each datapath map holds. The defaults are compiled into
//! the BPF object; the agent can size the maps differently when it creates
//! them. A map pinned by an earlier run keeps the size it was made with
//! (re-creating it would drop every tracked connection), so what counts is
//! read back from the kernel.

use std::path::Path;

use anyhow::{Context, Result};
use aya::EbpfLoader;
use aya::maps::MapData;
use lb_common::{
    MAX_AFFINITY_ENTRIES, MAX_BACKENDS, MAX_CONNTRACK_ENTRIES, MAX_SERVICE_ENTRIES, map_names,
};
use tracing::warn;

/// Maps with an entry per entry of another, sized with it: `backend_flows`
/// holds each backend's open flows. (Left at its compiled size, it refused
/// every backend past 262 144 however large `--map-size-backends` was.)
const FOLLOWERS: [(&str, &str); 1] = [(map_names::BACKEND_FLOWS, map_names::BACKENDS)];

/// The map whose size `map` has.
fn sized_as(map: &str) -> &str {
    FOLLOWERS
        .iter()
        .find(|(follower, _)| *follower == map)
        .map_or(map, |(_, like)| like)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Frontend master entries plus their backend slots.
    pub services: u32,
    /// Distinct backend addresses.
    pub backends: u32,
    /// Connections × 2 (forward and reply entries); LRU: when full, the
    /// least recently used entries are evicted.
    pub conntrack: u32,
    /// ClientIP affinity pins; LRU like conntrack.
    pub affinity: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            services: MAX_SERVICE_ENTRIES,
            backends: MAX_BACKENDS,
            conntrack: MAX_CONNTRACK_ENTRIES,
            affinity: MAX_AFFINITY_ENTRIES,
        }
    }
}

impl Capacity {
    /// (map name, entries, the agent flag that sets it).
    pub fn rows(&self) -> [(&'static str, u32, &'static str); 4] {
        [
            (map_names::SERVICES, self.services, "--map-size-services"),
            (map_names::BACKENDS, self.backends, "--map-size-backends"),
            (map_names::CONNTRACK, self.conntrack, "--map-size-conntrack"),
            (map_names::AFFINITY, self.affinity, "--map-size-affinity"),
        ]
    }

    /// The size of `map` (0 for a map that is not sized here).
    pub fn size_of(&self, map: &str) -> u32 {
        let map = sized_as(map);
        self.rows()
            .into_iter()
            .find(|(name, _, _)| *name == map)
            .map_or(0, |(_, size, _)| size)
    }

    /// The flag that sizes `map`.
    pub fn flag_of(map: &str) -> &'static str {
        let map = sized_as(map);
        Self::default()
            .rows()
            .into_iter()
            .find(|(name, _, _)| *name == map)
            .map_or("(not configurable)", |(_, _, flag)| flag)
    }

    /// Sizes the maps the loader creates (not those it finds pinned).
    pub fn configure(&self, loader: &mut EbpfLoader<'_>) {
        for (name, entries, _) in self.rows() {
            loader.map_max_entries(name, entries);
        }
        for (map, like) in FOLLOWERS {
            loader.map_max_entries(map, self.size_of(like));
        }
    }

    /// What the pinned maps really hold; warns about each map whose pinned
    /// size differs from the configured one.
    pub fn of_pinned(pin_dir: &Path, configured: &Capacity) -> Result<Self> {
        let read = |name: &str| -> Result<u32> {
            let path = pin_dir.join(name);
            let map = MapData::from_pin(&path)
                .with_context(|| format!("opening pinned map {}", path.display()))?;
            Ok(map
                .info()
                .with_context(|| format!("reading the size of {}", path.display()))?
                .max_entries())
        };
        let actual = Self {
            services: read(map_names::SERVICES)?,
            backends: read(map_names::BACKENDS)?,
            conntrack: read(map_names::CONNTRACK)?,
            affinity: read(map_names::AFFINITY)?,
        };
        for ((name, have, flag), (_, want, _)) in actual.rows().into_iter().zip(configured.rows()) {
            if have != want {
                warn!(
                    map = name,
                    pinned = have,
                    configured = want,
                    "map {name} was created by an earlier run with {have} entries; {flag} {want} \
                     takes effect once the datapath is re-created (`switchyard agent --cleanup`, \
                     which forgets tracked connections)"
                );
            }
        }
        for (map, like) in FOLLOWERS {
            let (have, want) = (read(map)?, actual.size_of(like));
            if have < want {
                warn!(
                    map,
                    pinned = have,
                    needed = want,
                    "map {map} was created by an earlier run with {have} entries, fewer than \
                     {like}'s {want}: backends past {have} are refused until the datapath is \
                     re-created (`switchyard agent --cleanup`)"
                );
            }
        }
        Ok(actual)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_map_names_the_flag_that_sizes_it() {
        assert_eq!(Capacity::flag_of("conntrack"), "--map-size-conntrack");
        assert_eq!(Capacity::flag_of("backend_flows"), "--map-size-backends");
    }

    #[test]
    fn backend_flows_is_as_large_as_backends() {
        let capacity = Capacity {
            backends: 1_250_000,
            ..Capacity::default()
        };
        assert_eq!(capacity.size_of(map_names::BACKEND_FLOWS), 1_250_000);
    }
}
