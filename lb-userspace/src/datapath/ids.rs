//! Service, backend, NetworkPolicy and rule-set IDs: allocated next-fit,
//! so a freed ID is reused only after the rest of the space, keeping
//! counters and map entries that mention an old ID from being confused
//! with a new owner.

use std::collections::BTreeSet;

/// Next-fit allocator over `1..=max`.
#[derive(Debug)]
pub(crate) struct IdAllocator {
    pub(crate) max: u32,
    cursor: u32,
    used: BTreeSet<u32>,
}

impl IdAllocator {
    pub(crate) fn new(max: u32) -> Self {
        Self {
            max,
            cursor: 0,
            used: BTreeSet::new(),
        }
    }

    pub(crate) fn mark_used(&mut self, id: u32) {
        self.used.insert(id);
        self.cursor = self.cursor.max(id);
    }

    pub(crate) fn allocate(&mut self) -> Option<u32> {
        if self.used.len() as u32 >= self.max {
            return None;
        }
        loop {
            self.cursor = if self.cursor >= self.max {
                1
            } else {
                self.cursor + 1
            };
            if self.used.insert(self.cursor) {
                return Some(self.cursor);
            }
        }
    }

    pub(crate) fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}
