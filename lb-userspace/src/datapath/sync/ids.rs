//! Service and backend IDs: allocated next-fit, so a freed ID is reused only
//! after the rest of the space, keeping counters and conntrack entries that
//! mention an old ID from being confused with a new owner.

use std::collections::BTreeSet;

/// Next-fit allocator over `1..=max`.
#[derive(Debug)]
pub(super) struct IdAllocator {
    pub(super) max: u32,
    cursor: u32,
    used: BTreeSet<u32>,
}

impl IdAllocator {
    pub(super) fn new(max: u32) -> Self {
        Self {
            max,
            cursor: 0,
            used: BTreeSet::new(),
        }
    }

    pub(super) fn mark_used(&mut self, id: u32) {
        self.used.insert(id);
        self.cursor = self.cursor.max(id);
    }

    pub(super) fn allocate(&mut self) -> Option<u32> {
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

    pub(super) fn release(&mut self, id: u32) {
        self.used.remove(&id);
    }
}
