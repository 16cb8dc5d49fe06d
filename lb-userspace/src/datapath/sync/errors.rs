//! What can go wrong in a sync pass, typed where callers decide on it: a
//! full map is reported by name (metrics, the flag to raise), everything is
//! counted by kind, and one failed frontend or backend never stops the rest.

use thiserror::Error;

use crate::model::{BackendAddr, Frontend};

/// A write to the pinned maps that failed.
#[derive(Debug, Error)]
pub enum MapError {
    /// The kernel refused an insert: the map is at its size (E2BIG).
    #[error("{map} map is full")]
    Full { map: &'static str },
    /// Every ID of a kind is in use: the map cannot take another entry.
    #[error("{map} map full ({in_use} entries in use)")]
    NoFreeId { map: &'static str, in_use: u32 },
    /// More backends than a frontend's slots can number.
    #[error("{count} backends exceed the {} slot limit", u16::MAX)]
    TooManySlots { count: usize },
    /// Any other failure of the system call.
    #[error("{what}: {source:#}")]
    Os {
        what: String,
        #[source]
        source: anyhow::Error,
    },
}

impl MapError {
    /// The map that was full, if that is what failed.
    pub fn full_map(&self) -> Option<&'static str> {
        match self {
            Self::Full { map } | Self::NoFreeId { map, .. } => Some(map),
            _ => None,
        }
    }
}

/// One thing a sync pass could not do; the rest of the pass went on.
#[derive(Debug, Error)]
pub enum SyncError {
    #[error("backend {addr}: {source}")]
    Backend { addr: BackendAddr, source: MapError },
    #[error("deleting backend {addr}: {source}")]
    BackendRemoval { addr: BackendAddr, source: MapError },
    #[error("service {name} ({frontend}): {source}")]
    Frontend {
        name: String,
        frontend: Frontend,
        source: MapError,
    },
    #[error("deleting {frontend}: {source}")]
    FrontendRemoval {
        frontend: Frontend,
        source: MapError,
    },
    /// Two service ports claim one frontend (a node port, an LB or
    /// external IP): the first keeps it.
    #[error("service {name}: {frontend} is already served by {existing}; not programmed twice")]
    AlreadyServed {
        name: String,
        frontend: Frontend,
        existing: String,
    },
}

impl SyncError {
    /// For metrics: `backend`, `frontend` or `already_served`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Backend { .. } | Self::BackendRemoval { .. } => "backend",
            Self::Frontend { .. } | Self::FrontendRemoval { .. } => "frontend",
            Self::AlreadyServed { .. } => "already_served",
        }
    }

    /// The map that was full, if that is what failed.
    pub fn full_map(&self) -> Option<&'static str> {
        match self {
            Self::Backend { source, .. } | Self::Frontend { source, .. } => source.full_map(),
            _ => None,
        }
    }
}
