//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, section 3.4): the lookup table a service's packets are balanced
//! with, built here and handed to the kernel, which indexes it with a hash of the flow.
//!
//! Each backend has a preference list, a permutation of the table's `m` slots given by an offset
//! and a skip (`slot_j = (offset + j * skip) mod m`, a permutation because `m` is prime). Backends
//! take turns, each claiming its most preferred slot still free, until the table is full. So:
//! - every backend gets `⌊m/n⌋` or `⌈m/n⌉` slots (each turn gives each backend exactly one);
//! - when a backend leaves or joins, the others mostly keep their slots, so few flows move beyond
//!   the ones that must (the tests measure how few);
//! - **every node builds the same table for the same backend set**, so every node picks the same
//!   backend for the same flow, which is what lets ECMP spread one flow over several nodes. For
//!   that the offset and skip come from a fixed, keyed hash (SipHash-2-4, implemented here with
//!   constant keys) of the backend's 18 bytes only, never from a per-process random seed, and the
//!   backends are sorted by those bytes before the turns start, so the caller's order does not
//!   matter. The hash, its keys and the sort are a contract between nodes: changing any of them
//!   makes nodes running different versions disagree until all run the new one (a test pins a
//!   table to catch that).

/// The default table size (`--maglev-table-size`): a prime, about 1 600 slots per backend for 10
/// backends, 64 KiB of kernel memory per service (two 4-byte backend ids to each 8-byte value of
/// the inner map: see `gannet_common::MAGLEV_IDS_PER_SLOT`).
pub const DEFAULT_TABLE_SIZE: u32 = 16_381;

/// The largest table size accepted. The table lives in kernel memory, one per service (4 bytes a
/// slot: 512 KiB at this bound, 64 KiB at the default), so that clusters with thousands of
/// services stay within reason; it is also far more slots than any service needs for even
/// balance (the spread between backends is at most one slot).
pub const MAX_TABLE_SIZE: u32 = 131_071;

/// The identity of a backend: its 16-byte address in network order (IPv4 as `::ffff:a.b.c.d`)
/// followed by its port in network order.
pub type BackendKey = [u8; 18];

/// Whether `m` may be used as a table size: a prime from 2 to [`MAX_TABLE_SIZE`]. It must be
/// prime so that every skip in `1..m` is coprime with `m` and each preference list visits every
/// slot.
#[must_use]
pub fn is_valid_table_size(m: u32) -> bool {
    if !(2..=MAX_TABLE_SIZE).contains(&m) {
        return false;
    }
    let mut d = 2u32;
    while d * d <= m {
        if m.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

/// The key [`table`] identifies a backend by: `ip` as 16 bytes (IPv4 mapped to
/// `::ffff:a.b.c.d`), then `port`, both in network order.
#[must_use]
pub fn backend_key(ip: std::net::IpAddr, port: u16) -> BackendKey {
    let v6 = match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    let mut key = [0; 18];
    key[..16].copy_from_slice(&v6.octets());
    key[16..].copy_from_slice(&port.to_be_bytes());
    key
}

/// The Maglev table of size `m` for `backends`: `m` entries, each an index into `backends`.
/// Empty when there are no backends.
///
/// The table depends only on the *set* of backends: the same set in any order, on any node, in
/// any process, yields the same backend in every slot (see the module documentation). A backend
/// listed twice is treated as two backends with the same preferences; pass a set. With more
/// backends than slots, some backends get no slot.
///
/// # Panics
///
/// If `m` is not a valid table size ([`is_valid_table_size`]), which callers check when they
/// read their configuration, or if there are more than `u32::MAX` backends.
#[must_use]
pub fn table(backends: &[BackendKey], m: u32) -> Vec<u32> {
    assert!(
        is_valid_table_size(m),
        "Maglev table size {m} is not a prime in 2..={MAX_TABLE_SIZE}"
    );
    if backends.is_empty() {
        return Vec::new();
    }
    let n = u32::try_from(backends.len()).expect("at most u32::MAX backends");

    // Turn order: by the backends' bytes, so the caller's order cannot change the table.
    let mut order: Vec<u32> = (0..n).collect();
    order.sort_by_key(|&i| backends[i as usize]);

    // Each backend's next preferred slot and its step through the table (its permutation,
    // generated as it is walked, with no multiplication or allocation per step).
    let mut next: Vec<u32> = Vec::with_capacity(order.len());
    let mut skip: Vec<u32> = Vec::with_capacity(order.len());
    for &i in &order {
        let key = &backends[i as usize];
        next.push(reduce(siphash24(OFFSET_KEY, key), m));
        skip.push(reduce(siphash24(SKIP_KEY, key), m - 1) + 1);
    }

    const FREE: u32 = u32::MAX;
    let mut entries = vec![FREE; m as usize];
    let mut filled = 0u32;
    'fill: loop {
        for (turn, &backend) in order.iter().enumerate() {
            let mut slot = next[turn];
            while entries[slot as usize] != FREE {
                slot = step(slot, skip[turn], m);
            }
            entries[slot as usize] = backend;
            next[turn] = step(slot, skip[turn], m);
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    entries
}

/// `(slot + skip) mod m` for `slot < m`, `skip < m` (no overflow: `m` ≤ [`MAX_TABLE_SIZE`]).
fn step(slot: u32, skip: u32, m: u32) -> u32 {
    let s = slot + skip;
    if s >= m { s - m } else { s }
}

/// `h mod m`, as a `u32` (`m` fits one).
fn reduce(h: u64, m: u32) -> u32 {
    u32::try_from(h % u64::from(m)).expect("a remainder mod a u32 fits a u32")
}

/// The keys of the offset and skip hashes: fixed, distinct, and part of the contract between
/// nodes (any constants would do; these are easy to recognise).
const OFFSET_KEY: [u8; 16] = *b"gannet maglev of";
const SKIP_KEY: [u8; 16] = *b"gannet maglev sk";

/// SipHash-2-4 (Aumasson and Bernstein, 2012) of `data` under `key`, as its reference
/// implementation computes it. std's hashers are not used: their algorithm and keys may differ
/// between Rust releases or processes, and the table must not.
fn siphash24(key: [u8; 16], data: &[u8]) -> u64 {
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13);
        v[1] ^= v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16);
        v[3] ^= v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21);
        v[3] ^= v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17);
        v[1] ^= v[2];
        v[2] = v[2].rotate_left(32);
    }
    fn compress(v: &mut [u64; 4], m: u64) {
        v[3] ^= m;
        round(v);
        round(v);
        v[0] ^= m;
    }

    let (k0, k1) = key.split_at(8);
    let k0 = u64::from_le_bytes(k0.try_into().expect("8 bytes"));
    let k1 = u64::from_le_bytes(k1.try_into().expect("8 bytes"));
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut words = data.chunks_exact(8);
    for word in &mut words {
        compress(
            &mut v,
            u64::from_le_bytes(word.try_into().expect("8 bytes")),
        );
    }
    let mut last = [0u8; 8];
    let tail = words.remainder();
    last[..tail.len()].copy_from_slice(tail);
    // The length's low byte goes in the last word's top byte (truncation intended).
    last[7] = data.len().to_le_bytes()[0];
    compress(&mut v, u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::time::{Duration, Instant};

    use super::*;

    /// `n` IPv4 backends, 10.x.y.z:8080, distinct across `set` (to get several unrelated sets).
    fn backends(set: u8, n: usize) -> Vec<BackendKey> {
        (0..n)
            .map(|i| {
                let [_, _, hi, lo] = u32::try_from(i).unwrap().to_be_bytes();
                backend_key(IpAddr::V4(Ipv4Addr::new(10, set, hi, lo)), 8080)
            })
            .collect()
    }

    /// Slots per backend key.
    fn shares(backends: &[BackendKey], table: &[u32]) -> BTreeMap<BackendKey, usize> {
        let mut counts = BTreeMap::new();
        for &i in table {
            *counts.entry(backends[i as usize]).or_default() += 1;
        }
        counts
    }

    /// The table as backend keys, to compare tables built from differently ordered inputs.
    fn resolved(backends: &[BackendKey], m: u32) -> Vec<BackendKey> {
        table(backends, m)
            .iter()
            .map(|&i| backends[i as usize])
            .collect()
    }

    /// A deterministic shuffle (xorshift), so failures reproduce.
    fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
        let mut items = items.to_vec();
        let mut x = seed | 1;
        for i in (1..items.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let j = usize::try_from(x % (i as u64 + 1)).unwrap();
            items.swap(i, j);
        }
        items
    }

    #[test]
    fn siphash24_matches_the_reference_vectors() {
        // The SipHash paper's appendix and its reference implementation's vectors.h: key
        // 00 01 .. 0f, message 00 01 .. (len - 1).
        let key: [u8; 16] = std::array::from_fn(|i| u8::try_from(i).unwrap());
        let message: Vec<u8> = (0..64).collect();
        for (len, expected) in [(0, 0x726f_db47_dd0e_0e31), (15, 0xa129_ca61_49be_45e5)] {
            assert_eq!(
                siphash24(key, &message[..len]),
                expected,
                "SipHash-2-4 of {len} bytes"
            );
        }
    }

    #[test]
    fn valid_table_sizes_are_the_primes_up_to_the_bound() {
        for (m, valid) in [
            (0, false),
            (1, false),
            (2, true),
            (3, true),
            (4, false),
            (251, true),
            (256, false),
            (16_381, true),
            (16_383, false),
            (65_537, true),
            (131_071, true),
            (131_072, false),
            (131_101, false), // prime, above the bound
            (u32::MAX, false),
        ] {
            assert_eq!(is_valid_table_size(m), valid, "is_valid_table_size({m})");
        }
        assert!(is_valid_table_size(DEFAULT_TABLE_SIZE));
    }

    #[test]
    fn backend_keys_are_network_order_with_ipv4_mapped() {
        let v4 = backend_key(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 0x1f90);
        assert_eq!(
            v4,
            [
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3, 0x1f, 0x90
            ]
        );
        let v6 = backend_key(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)), 443);
        assert_eq!(
            v6,
            [
                0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb
            ]
        );
    }

    #[test]
    fn no_backends_give_an_empty_table() {
        assert_eq!(table(&[], DEFAULT_TABLE_SIZE), Vec::<u32>::new());
    }

    #[test]
    fn one_backend_fills_the_table() {
        let one = backends(1, 1);
        for m in [2, 3, 7, DEFAULT_TABLE_SIZE] {
            let t = table(&one, m);
            assert_eq!(t.len(), m as usize, "table length for m = {m}");
            assert!(t.iter().all(|&i| i == 0), "m = {m}: {t:?}");
        }
    }

    #[test]
    fn every_backend_gets_floor_or_ceil_of_m_over_n() {
        // Maglev's population gives every backend exactly one slot per turn, so shares differ by
        // at most one slot: ⌊m/n⌋ or ⌈m/n⌉, no statistical slack.
        for (m, n) in [
            (DEFAULT_TABLE_SIZE, 10),
            (DEFAULT_TABLE_SIZE, 3),
            (DEFAULT_TABLE_SIZE, 100),
            (DEFAULT_TABLE_SIZE, 1000),
            (251, 7),
            (65_537, 33),
        ] {
            let set = backends(2, n);
            let t = table(&set, m);
            assert_eq!(t.len(), m as usize);
            let counts = shares(&set, &t);
            assert_eq!(
                counts.len(),
                n,
                "m = {m}, n = {n}: some backend got no slot"
            );
            let floor = m as usize / n;
            let ceil = floor + usize::from(!(m as usize).is_multiple_of(n));
            for (key, &count) in &counts {
                assert!(
                    (floor..=ceil).contains(&count),
                    "m = {m}, n = {n}: backend {key:?} got {count} slots, \
                     expected {floor} or {ceil}"
                );
            }
        }
    }

    #[test]
    fn small_prime_tables_are_filled_with_valid_indices() {
        for m in [2, 3, 5, 7, 11, 13] {
            for n in [1, 2, 3, 5, 13, 20] {
                let set = backends(3, n);
                let t = table(&set, m);
                assert_eq!(t.len(), m as usize, "m = {m}, n = {n}");
                assert!(
                    t.iter().all(|&i| (i as usize) < n),
                    "m = {m}, n = {n}: index out of range in {t:?}"
                );
                // Balanced, as far as m allows: nobody holds two slots while someone has none.
                let counts = shares(&set, &t);
                let max = counts.values().copied().max().unwrap();
                let min = if counts.len() < n {
                    0
                } else {
                    counts.values().copied().min().unwrap()
                };
                assert!(max - min <= 1, "m = {m}, n = {n}: shares {counts:?}");
            }
        }
    }

    #[test]
    fn the_table_depends_on_the_set_not_the_order_nor_the_call() {
        let set = backends(4, 37);
        let reference = resolved(&set, DEFAULT_TABLE_SIZE);
        assert_eq!(
            reference,
            resolved(&set, DEFAULT_TABLE_SIZE),
            "two builds differ"
        );
        for seed in 1..=5 {
            let other = shuffled(&set, seed);
            assert_ne!(other, set, "the shuffle must change the order");
            assert!(
                resolved(&other, DEFAULT_TABLE_SIZE) == reference,
                "the table changed when the backends were listed in another order (seed {seed})"
            );
        }
        // Indices refer to the caller's order.
        let reversed: Vec<_> = set.iter().rev().copied().collect();
        let t = table(&reversed, DEFAULT_TABLE_SIZE);
        assert_eq!(
            t[0] as usize,
            set.len() - 1 - table(&set, DEFAULT_TABLE_SIZE)[0] as usize
        );
    }

    #[test]
    fn the_table_is_pinned_across_versions() {
        // Nodes running different gannet versions must build the same table, so the hash, its
        // keys and the population order must not change by accident. If this fails because of
        // an intended change, every node must be upgraded before the tables agree again; say so
        // in the release notes.
        let set = [
            backend_key(IpAddr::V4(Ipv4Addr::new(10, 244, 1, 5)), 8080),
            backend_key(IpAddr::V4(Ipv4Addr::new(10, 244, 2, 7)), 8080),
            backend_key(IpAddr::V6("fd00::1:5".parse().unwrap()), 8080),
        ];
        assert_eq!(table(&set, 13), PINNED_13, "the table for m = 13 changed");
    }
    /// Computed by this module and, independently, by a direct transcription of the paper's
    /// pseudocode with SipHash-2-4 in Python.
    const PINNED_13: [u32; 13] = [2, 1, 2, 0, 0, 2, 0, 0, 1, 1, 0, 1, 2];

    /// Entries (out of the table) that point to a different backend in `after` than in `before`,
    /// split into those whose backend in `before` is still present and the rest.
    fn moved(before: &[BackendKey], after: &[BackendKey], m: u32) -> (usize, usize) {
        let (a, b) = (resolved(before, m), resolved(after, m));
        let mut kept_backend_moved = 0;
        let mut removed_backend_moved = 0;
        for (x, y) in a.iter().zip(&b) {
            if x != y {
                if after.contains(x) {
                    kept_backend_moved += 1;
                } else {
                    removed_backend_moved += 1;
                }
            }
        }
        (kept_backend_moved, removed_backend_moved)
    }

    #[test]
    fn removing_one_of_ten_backends_moves_few_other_flows() {
        let m = DEFAULT_TABLE_SIZE;
        let mut worst = 0.0f64;
        let mut total = 0.0f64;
        let mut cases = 0u32;
        for set_id in 10..20 {
            let set = backends(set_id, 10);
            for gone in 0..set.len() {
                let mut after = set.clone();
                after.remove(gone);
                let (others, own) = moved(&set, &after, m);
                // Every slot of the removed backend moves, and nothing else does besides `others`.
                let own_share = shares(&set, &table(&set, m))[&set[gone]];
                assert_eq!(own, own_share, "the removed backend's slots must all move");
                let fraction = others as f64 / f64::from(m);
                worst = worst.max(fraction);
                total += fraction;
                cases += 1;
                let all = (others + own) as f64 / f64::from(m);
                assert!(
                    all <= 0.12,
                    "set {set_id}, removing backend {gone}: {:.1}% of the table moved, \
                     expected ≤ 12%",
                    all * 100.0
                );
            }
        }
        eprintln!(
            "remove 1 of 10: slots of remaining backends moved: mean {:.2}%, worst {:.2}%",
            total / f64::from(cases) * 100.0,
            worst * 100.0
        );
        assert!(
            worst <= 0.02,
            "up to {:.2}% of the slots of backends that stayed moved, expected ≤ 2%",
            worst * 100.0
        );
    }

    #[test]
    fn adding_an_eleventh_backend_moves_few_other_flows() {
        let m = DEFAULT_TABLE_SIZE;
        let mut worst = 0.0f64;
        for set_id in 20..30 {
            let set = backends(set_id, 11);
            let before = &set[..10];
            let (b, a) = (resolved(before, m), resolved(&set, m));
            let new = set[10];
            let taken = a.iter().filter(|&&k| k == new).count();
            let between_old = b
                .iter()
                .zip(&a)
                .filter(|(x, y)| x != y && **y != new)
                .count();
            assert!(
                (m as usize / 11..=m as usize / 11 + 1).contains(&taken),
                "the new backend took {taken} slots"
            );
            let fraction = between_old as f64 / f64::from(m);
            worst = worst.max(fraction);
        }
        eprintln!(
            "add 11th: slots moved between old backends: worst {:.2}%",
            worst * 100.0
        );
        assert!(
            worst <= 0.02,
            "up to {:.2}% of the slots moved from one old backend to another, expected ≤ 2%",
            worst * 100.0
        );
    }

    #[test]
    fn builds_are_fast() {
        for n in [10, 100, 1000] {
            let set = backends(5, n);
            let start = Instant::now();
            let t = table(&set, DEFAULT_TABLE_SIZE);
            let took = start.elapsed();
            eprintln!("table of {} for {n} backends: {took:?}", t.len());
            assert_eq!(t.len(), DEFAULT_TABLE_SIZE as usize);
            // A few milliseconds even unoptimised; the bound leaves room for a loaded machine
            // but not for a quadratic fill (hundreds of millions of probes).
            assert!(
                took < Duration::from_millis(200),
                "building the table for {n} backends took {took:?}"
            );
        }
    }
}
