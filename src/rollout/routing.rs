//! The split of unnamed requests between versions: each version owns a share of `BUCKETS`
//! buckets proportional to its weight, laid out in ascending version order. A request with a
//! routing key lands in the bucket its key hashes to (the same key always gets the same version
//! for a given split, on every replica: the hash is seeded with a constant); a request without
//! one gets the next point of a well-mixed sequence, so the shares hold to within a fraction of
//! a point over a few thousand requests. Moving weight between two adjacent versions moves only
//! the keys in the share that changed hands.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Buckets of the routing space (a weight of 1 in 10,000 is the finest share).
pub const BUCKETS: u64 = 10_000;

/// Weights per version for requests that name no version. Versions with weight 0 get nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    pub weights: BTreeMap<u64, u32>,
}

impl Split {
    /// All traffic to one version.
    pub fn only(version: u64) -> Split {
        Split {
            weights: BTreeMap::from([(version, 100)]),
        }
    }

    pub fn total(&self) -> u64 {
        self.weights.values().map(|&w| u64::from(w)).sum()
    }

    /// True when no version has weight (the model's default applies).
    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    /// The version owning `bucket` (in `0..BUCKETS`), or `None` for an empty split.
    pub fn pick(&self, bucket: u64) -> Option<u64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let point = bucket.min(BUCKETS - 1) * total / BUCKETS;
        let mut acc = 0;
        for (&v, &w) in &self.weights {
            acc += u64::from(w);
            if point < acc {
                return Some(v);
            }
        }
        self.weights.keys().next_back().copied()
    }

    /// The version with the largest weight (the oldest on a tie: the incumbent, with the newer
    /// one as its candidate): the "live" version.
    pub fn primary(&self) -> Option<u64> {
        self.weights
            .iter()
            .filter(|(_, &w)| w > 0)
            .max_by_key(|(&v, &w)| (w, std::cmp::Reverse(v)))
            .map(|(&v, _)| v)
    }

    /// Versions with a positive weight other than the primary (the canaries).
    pub fn canaries(&self) -> Vec<u64> {
        let p = self.primary();
        self.weights
            .iter()
            .filter(|(&v, &w)| w > 0 && Some(v) != p)
            .map(|(&v, _)| v)
            .collect()
    }

    /// Shares in percent, for status pages.
    pub fn percents(&self) -> BTreeMap<String, f64> {
        let t = self.total().max(1) as f64;
        self.weights
            .iter()
            .map(|(v, &w)| (v.to_string(), 100.0 * f64::from(w) / t))
            .collect()
    }
}

/// The bucket a routing key hashes to (seeded xxh3: stable across processes and replicas).
pub fn bucket_of_key(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(key, 0x0f3e_5eed) % BUCKETS
}

/// The bucket of the `n`-th keyless request (splitmix64 of `n ^ salt`).
pub fn bucket_of_seq(n: u64, salt: u64) -> u64 {
    splitmix64(n ^ salt) % BUCKETS
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(w: &[(u64, u32)]) -> Split {
        Split {
            weights: w.iter().copied().collect(),
        }
    }

    #[test]
    fn pick_keyless_90_10_lands_within_half_a_point() {
        let s = split(&[(1, 90), (2, 10)]);
        let n = 20_000;
        let twos = (0..n)
            .filter(|&i| s.pick(bucket_of_seq(i, 7)) == Some(2))
            .count();
        let share = 100.0 * twos as f64 / n as f64;
        assert!((share - 10.0).abs() < 0.5, "share of v2 {share}%");
    }

    #[test]
    fn pick_sticky_key_moves_only_the_needed_share() {
        let (a, b) = (split(&[(1, 90), (2, 10)]), split(&[(1, 80), (2, 20)]));
        let keys: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
        let mut moved = 0;
        for k in &keys {
            let (va, vb) = (
                a.pick(bucket_of_key(k.as_bytes())),
                b.pick(bucket_of_key(k.as_bytes())),
            );
            assert_eq!(va, a.pick(bucket_of_key(k.as_bytes())), "sticky");
            if va != vb {
                assert_eq!((va, vb), (Some(1), Some(2)), "only 1 -> 2 moves");
                moved += 1;
            }
        }
        let share = 100.0 * moved as f64 / keys.len() as f64;
        assert!((share - 10.0).abs() < 1.0, "moved {share}% of keys");
    }

    #[test]
    fn pick_empty_split_is_none_and_zero_weight_gets_nothing() {
        assert_eq!(Split::default().pick(5), None);
        let s = split(&[(1, 0), (2, 100)]);
        assert!((0..BUCKETS).all(|b| s.pick(b) == Some(2)));
    }

    #[test]
    fn primary_is_the_heaviest_then_oldest() {
        assert_eq!(split(&[(1, 10), (2, 90)]).primary(), Some(2));
        assert_eq!(split(&[(1, 50), (2, 50)]).primary(), Some(1));
        assert_eq!(split(&[(1, 50), (2, 50)]).canaries(), vec![2]);
        assert_eq!(split(&[(1, 0)]).primary(), None);
    }
}
