//! Maglev consistent hashing (Eisenbud et al., NSDI 2016): a lookup table of
//! M entries (M prime) filled from each backend's own permutation of the
//! table, so that every node builds the same table from the same backend set
//! and a change of the set moves few entries. The datapath hashes a flow's
//! 5-tuple to an entry.
//!
//! The permutations are seeded from the backend's *address*, never from
//! node-local IDs, so all nodes agree.

use crate::model::BackendAddr;

/// Default largest table size: a prime, ~100 entries per backend up to 10
/// backends.
pub const DEFAULT_TABLE_SIZE: usize = 1021;

/// The table sizes a frontend may get: primes, each about twice the last.
/// A frontend's table is the smallest of these with ~100 entries per
/// backend (the paper's bound for <1 % imbalance), up to the configured
/// largest: a 3-backend service takes 509 map entries, not the 16 381 a
/// 160-backend one needs. Every node derives the same size from the same
/// backend set; a size changes only when the backend count crosses a step.
pub const TABLE_SIZES: [usize; 9] = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521];

/// Entries per backend a table aims at.
const ENTRIES_PER_BACKEND: usize = 100;

/// The table size for a frontend with `backends` backends, at most `largest`.
pub fn table_size_for(backends: usize, largest: usize) -> usize {
    let want = backends.saturating_mul(ENTRIES_PER_BACKEND);
    TABLE_SIZES
        .into_iter()
        .find(|&size| size >= want)
        .unwrap_or(largest)
        .min(largest)
}

/// Whether `n` is prime (table sizes must be, for the permutations to cover
/// every entry).
pub fn is_prime(n: usize) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

/// 64-bit FNV-1a over `bytes`, then mixed: stable across runs and nodes.
fn hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64 finaliser: spreads FNV's weak low bits.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn backend_bytes(b: &BackendAddr) -> [u8; 7] {
    let ip = b.ip.octets();
    let port = b.port.to_be_bytes();
    [
        ip[0],
        ip[1],
        ip[2],
        ip[3],
        port[0],
        port[1],
        b.protocol.number(),
    ]
}

/// The lookup table: `table[i]` is an index into `backends`. Empty when
/// there are no backends. `size` must be prime.
pub fn table(backends: &[BackendAddr], size: usize) -> Vec<usize> {
    if backends.is_empty() {
        return Vec::new();
    }
    debug_assert!(is_prime(size), "maglev table size {size} is not prime");
    let m = size as u64;
    let permutation: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let bytes = backend_bytes(b);
            let offset = hash(&bytes, 0x6d61_676c) % m;
            let skip = hash(&bytes, 0x6576_3031) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut next = vec![0u64; backends.len()];
    let mut entries: Vec<Option<usize>> = vec![None; size];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in permutation.iter().enumerate() {
            // Each backend takes its next preferred free entry in turn.
            loop {
                let candidate = ((offset + next[i] * skip) % m) as usize;
                next[i] += 1;
                if entries[candidate].is_none() {
                    entries[candidate] = Some(i);
                    filled += 1;
                    break;
                }
            }
            if filled == size {
                break 'fill;
            }
        }
    }
    entries.into_iter().map(|e| e.unwrap_or(0)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;
    use std::net::Ipv4Addr;

    fn backends(n: u8) -> Vec<BackendAddr> {
        (1..=n)
            .map(|i| BackendAddr {
                ip: Ipv4Addr::new(10, 244, i / 100, i % 100 + 1),
                port: 8080,
                protocol: Protocol::Tcp,
            })
            .collect()
    }

    /// Fraction of table entries (≈ flows) whose backend changed between
    /// two tables, split into those that were on the removed backend and the
    /// rest (ideally 0).
    fn remapped(before: &[BackendAddr], after: &[BackendAddr], size: usize) -> (f64, f64) {
        let (t0, t1) = (table(before, size), table(after, size));
        let mut moved_total = 0;
        let mut moved_survivors = 0;
        for (a, b) in t0.iter().zip(&t1) {
            let (old, new) = (before[*a], after[*b]);
            if old != new {
                moved_total += 1;
                if after.contains(&old) {
                    moved_survivors += 1;
                }
            }
        }
        (
            moved_total as f64 / size as f64,
            moved_survivors as f64 / size as f64,
        )
    }

    #[test]
    fn tables_grow_with_the_backends_up_to_the_largest() {
        // (backends, largest, size)
        let cases = [
            (1, 16381, 251),
            (3, 16381, 509),
            (10, 16381, 1021),
            (11, 16381, 2039),
            (160, 16381, 16381),
            (500, 16381, 16381),
            (500, 65521, 65521),
            (3, 251, 251),
            (20, 1021, 1021),
            (0, 16381, 251),
        ];
        for (backends, largest, size) in cases {
            assert_eq!(
                table_size_for(backends, largest),
                size,
                "{backends} backends, largest {largest}"
            );
        }
        assert!(TABLE_SIZES.iter().all(|s| is_prime(*s)));
    }

    #[test]
    fn table_is_balanced_and_deterministic() {
        let b = backends(10);
        let t = table(&b, DEFAULT_TABLE_SIZE);
        assert_eq!(t, table(&b, DEFAULT_TABLE_SIZE));
        let mut counts = vec![0usize; b.len()];
        for i in &t {
            counts[*i] += 1;
        }
        let (min, max) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        assert!(max - min <= 2, "entries per backend {counts:?}");
        assert!(table(&[], DEFAULT_TABLE_SIZE).is_empty());
        assert!(is_prime(DEFAULT_TABLE_SIZE) && is_prime(16381) && !is_prime(1024));
    }

    /// The numbers recorded in docs/benchmarks.md ("Maglev remapping").
    #[test]
    fn removing_one_backend_moves_little_more_than_its_own_flows() {
        for (n, size) in [(3u8, 1021usize), (10, 1021), (10, 16381), (100, 16381)] {
            let before = backends(n);
            let mut after = before.clone();
            after.remove(usize::from(n) / 2);
            let (total, survivors) = remapped(&before, &after, size);
            eprintln!(
                "maglev N={n} M={size}: remove 1 backend -> {:.2}% of flows remapped (ideal {:.2}%), {:.2}% of flows on surviving backends moved (ideal 0)",
                total * 100.0,
                100.0 / f64::from(n),
                survivors * 100.0
            );
            assert!(total < 1.0 / f64::from(n) + 0.03, "N={n} M={size}: {total}");
            assert!(survivors < 0.03, "N={n} M={size}: {survivors}");
        }
    }
}
