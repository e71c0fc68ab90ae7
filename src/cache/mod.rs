//! The response cache: per model version, opt-in (`[response_cache]` in the model's config), with an
//! in-process level (moka: byte-weighted, TTL) and an optional shared Redis level
//! (`--cache-redis-url`) for replicas. The front doors call it through `api::infer` after the
//! serving version is known, with keys from `key` (version fingerprint + input hash) and values
//! from `value`. It degrades, never fails: a Redis that is down, slow or full means uncached
//! (counted). It must not: log payloads or keys' inputs, block on Redis longer than its timeout,
//! or let a new version read an old version's entries (the fingerprint is in every key).

pub mod breaker;
pub mod key;
pub mod redis;
pub mod value;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::notification::RemovalCause;

pub use key::{Fingerprint, Key, Partition, TextOptions};
pub use redis::{RedisLevel, RedisSettings};

use crate::spec::ResponseCache;
use crate::telemetry::CacheMetrics;

/// Bytes counted per in-process entry on top of its key and value: moka's entry, its place in
/// the hash table, the access-order and write-order queues and the `Bytes` header (measured:
/// `tests/cache.rs` fills far past `max_bytes` and checks RSS).
pub const ENTRY_OVERHEAD: u64 = 256;

/// An in-process entry's weight: its key, value and `ENTRY_OVERHEAD`.
fn weight(v: &Bytes) -> u32 {
    u32::try_from(16 + v.len() as u64 + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
}

/// What a request got from the cache, for `x-ferrite-cache`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Some of a multi-text request's texts were cached.
    Partial,
}

impl CacheStatus {
    pub fn of(hits: usize, total: usize) -> CacheStatus {
        match hits {
            0 => CacheStatus::Miss,
            h if h == total => CacheStatus::Hit,
            _ => CacheStatus::Partial,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Partial => "partial",
        }
    }
}

/// One model version's cache.
pub struct VersionCache {
    fingerprint: Fingerprint,
    ttl: Duration,
    shared: bool,
    local: Option<moka::sync::Cache<Key, Bytes>>,
    redis: Option<Arc<RedisLevel>>,
    metrics: CacheMetrics,
}

/// The result of a lookup: each key's value (or None) and when the lookup started (its time is
/// recorded once the misses are filled).
pub struct Lookup {
    pub values: Vec<Option<Bytes>>,
    started: Instant,
    lookup: Duration,
}

impl Lookup {
    pub fn hits(&self) -> usize {
        self.values.iter().filter(|v| v.is_some()).count()
    }
}

impl VersionCache {
    pub fn new(
        cfg: &ResponseCache,
        fingerprint: Fingerprint,
        redis: Option<Arc<RedisLevel>>,
        metrics: CacheMetrics,
    ) -> VersionCache {
        let ttl = Duration::from_secs(cfg.ttl_secs.max(1));
        let local = (cfg.max_bytes > 0).then(|| {
            let (size, expired) = (
                metrics.evicted_size.clone(),
                metrics.evicted_expired.clone(),
            );
            let bytes = metrics.bytes.clone();
            moka::sync::Cache::builder()
                .max_capacity(cfg.max_bytes)
                .weigher(|_k: &Key, v: &Bytes| weight(v))
                .time_to_live(ttl)
                .eviction_listener(move |_k, v: Bytes, cause| {
                    bytes.sub(i64::from(weight(&v)));
                    match cause {
                        RemovalCause::Size => size.inc(),
                        RemovalCause::Expired => expired.inc(),
                        RemovalCause::Explicit | RemovalCause::Replaced => {}
                    }
                })
                .build()
        });
        VersionCache {
            fingerprint,
            ttl,
            shared: cfg.shared,
            local,
            redis,
            metrics,
        }
    }

    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Whose entries a request reads and fills: its principal's (auth on) unless the model is
    /// `shared`.
    pub fn partition(&self, principal: Option<&str>) -> Partition {
        match principal {
            Some(p) if !self.shared => Partition::Principal(p.to_string()),
            _ => Partition::Shared,
        }
    }

    /// Looks `keys` up: the in-process level, then Redis (one round trip) for what it lacked;
    /// Redis hits are copied into the in-process level.
    pub async fn get_many(&self, keys: &[Key]) -> Lookup {
        let started = Instant::now();
        let mut values: Vec<Option<Bytes>> = match &self.local {
            Some(l) => keys.iter().map(|k| l.get(k)).collect(),
            None => vec![None; keys.len()],
        };
        if let Some(r) = &self.redis {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| values[i].is_none()).collect();
            if !missing.is_empty() {
                let ks: Vec<Key> = missing.iter().map(|&i| keys[i]).collect();
                for (i, v) in missing.into_iter().zip(r.get_many(&ks).await) {
                    if let Some(v) = &v {
                        self.insert_local(keys[i], v.clone());
                    }
                    values[i] = v;
                }
            }
        }
        Lookup {
            values,
            started,
            lookup: started.elapsed(),
        }
    }

    /// `ferrite_cache_bytes` counts what is inserted and what the eviction listener removes
    /// (moka's own `weighted_size` lags until its housekeeping runs).
    fn insert_local(&self, k: Key, v: Bytes) {
        if let Some(l) = &self.local {
            self.metrics.bytes.add(i64::from(weight(&v)));
            l.insert(k, v);
        }
    }

    /// Stores computed values (both levels; Redis in the background) and records the request's
    /// hits, misses and their durations (Triton's: lookup time for hits, lookup plus insert for
    /// misses; a partly cached request splits its lookup time by count).
    pub fn fill(&self, lookup: &Lookup, entries: Vec<(Key, Bytes)>) {
        for (k, v) in &entries {
            self.insert_local(*k, v.clone());
        }
        if let Some(r) = &self.redis {
            if !entries.is_empty() {
                r.put_many(entries, self.ttl);
            }
        }
        let total = lookup.values.len();
        let hits = lookup.hits();
        let misses = total - hits;
        let lookup_us = lookup.lookup.as_micros() as u64;
        let hit_us = if total == 0 {
            0
        } else {
            lookup_us * hits as u64 / total as u64
        };
        let miss_us = if misses == 0 {
            0
        } else {
            (lookup.started.elapsed().as_micros() as u64).saturating_sub(hit_us)
        };
        self.metrics.hits.inc_by(hits as u64);
        self.metrics.misses.inc_by(misses as u64);
        self.metrics.hit_us.inc_by(hit_us);
        self.metrics.miss_us.inc_by(miss_us);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> (crate::telemetry::Metrics, CacheMetrics) {
        let m = crate::telemetry::Metrics::new();
        let c = m.for_cache("m", 1);
        (m, c)
    }

    fn cfg(max_bytes: u64) -> ResponseCache {
        ResponseCache {
            enable: true,
            ttl_secs: 60,
            max_bytes,
            shared: false,
        }
    }

    #[test]
    fn status_of_counts() {
        assert_eq!(CacheStatus::of(0, 3), CacheStatus::Miss);
        assert_eq!(CacheStatus::of(3, 3), CacheStatus::Hit);
        assert_eq!(CacheStatus::of(1, 3), CacheStatus::Partial);
    }

    #[test]
    fn partition_by_principal_unless_shared() {
        let (_m, c) = metrics();
        let vc = VersionCache::new(&cfg(1 << 20), Fingerprint(1), None, c.clone());
        assert_eq!(vc.partition(None), Partition::Shared);
        assert_eq!(vc.partition(Some("a")), Partition::Principal("a".into()));
        let shared = ResponseCache {
            shared: true,
            ..cfg(1 << 20)
        };
        let vc = VersionCache::new(&shared, Fingerprint(1), None, c);
        assert_eq!(vc.partition(Some("a")), Partition::Shared);
    }

    #[tokio::test]
    async fn local_level_hits_after_fill_and_counts() {
        let (_m, c) = metrics();
        let vc = VersionCache::new(&cfg(1 << 20), Fingerprint(1), None, c.clone());
        let l = vc.get_many(&[1, 2]).await;
        assert_eq!(l.hits(), 0);
        vc.fill(&l, vec![(1, Bytes::from_static(b"one"))]);
        let l = vc.get_many(&[1, 2]).await;
        assert_eq!(l.values[0].as_deref(), Some(&b"one"[..]));
        assert_eq!(l.values[1], None);
        vc.fill(&l, vec![]);
        assert_eq!((c.hits.get(), c.misses.get()), (1, 3));
        assert!(c.bytes.get() > 0);
    }

    #[tokio::test]
    async fn local_level_stays_within_max_bytes() {
        let (_m, c) = metrics();
        let vc = VersionCache::new(&cfg(64 * 1024), Fingerprint(1), None, c.clone());
        let v = Bytes::from(vec![7u8; 1000]);
        for k in 0..1000u128 {
            let l = vc.get_many(&[k]).await;
            vc.fill(&l, vec![(k, v.clone())]);
        }
        let local = vc.local.as_ref().unwrap();
        local.run_pending_tasks();
        assert!(
            local.weighted_size() <= 64 * 1024,
            "{}",
            local.weighted_size()
        );
        assert!(c.evicted_size.get() > 0);
        assert_eq!(
            c.bytes.get() as u64,
            local.weighted_size(),
            "the gauge follows evictions"
        );
    }
}
