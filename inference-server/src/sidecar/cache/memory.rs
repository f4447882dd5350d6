//! The in-process backend: one HNSW graph per partition, at most
//! `max_entries` entries in total with least-recently-used eviction, and a
//! TTL per entry.
//!
//! Locks (never two of a kind at once, always in this order):
//!
//! 1. `partitions` (the map; held only to find, add or drop a partition);
//! 2. a partition's `RwLock` (lookups share it; a store holds it for one
//!    graph insert);
//! 3. `book` (recency and expiry order over all entries; O(log n) work).
//!
//! A lookup never holds 2 and 3 together, and a store releases 2 before it
//! takes 3, so eviction victims are removed from their partitions after the
//! book is released.
//!
//! Removal leaves a tombstone in the graph (the node keeps routing
//! searches and is filtered from results). When a partition holds more
//! tombstones than live entries it is rebuilt from its live vectors: on a
//! background thread for large partitions (lookups and stores go on against
//! the old graph; entries added or removed meanwhile are reconciled when
//! the new graph is swapped in), inline for small ones.
//!
//! Storing a vector bit-identical to a live entry of the same partition
//! replaces that entry's answer and TTL instead of adding a duplicate.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use sha2::{Digest, Sha256};

use super::hnsw::{dot, Hnsw, HnswParams, Scored};
use super::{CacheBackend, Clock, Lookup, Stored};
use crate::sidecar::metrics::Metrics;

/// Partitions with at most this many nodes are scanned exactly.
pub const BRUTE_FORCE_MAX: usize = 256;
/// A rebuild needs at least this many tombstones (and more than live entries).
const REBUILD_MIN_TOMBSTONES: usize = 64;
/// Partitions up to this many nodes are rebuilt inline (a few milliseconds).
const INLINE_REBUILD_MAX: usize = 512;
/// How often `vsr serve` sweeps expired entries (lookups never return them
/// in between; the sweep frees their memory).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Identity of a vector's content: the first 16 bytes of SHA-256 over its
/// little-endian f32s (after normalisation). Shared with the Redis backend.
pub fn content_id(v: &[f32]) -> [u8; 16] {
    let mut h = Sha256::new();
    for x in v {
        h.update(x.to_le_bytes());
    }
    let d = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&d[..16]);
    id
}

struct Entry {
    node: u32,
    response: Bytes,
    expires_at: u64,
    content: [u8; 16],
}

struct State {
    index: Hnsw,
    /// Per graph node: the key of the entry it holds; `None` = tombstone.
    nodes: Vec<Option<u64>>,
    entries: HashMap<u64, Entry>,
    by_content: HashMap<[u8; 16], u64>,
    /// Dropped from the partition map; a store that finds this retries.
    dead: bool,
}

impl State {
    fn tombstones(&self) -> usize {
        self.nodes.len() - self.entries.len()
    }
}

struct Partition {
    name: String,
    state: RwLock<State>,
    rebuilding: AtomicBool,
}

struct BookEntry {
    partition: Arc<Partition>,
    tick: u64,
    expires_at: u64,
}

/// Recency and expiry order over every entry of every partition.
#[derive(Default)]
struct Book {
    entries: HashMap<u64, BookEntry>,
    by_tick: BTreeMap<u64, u64>,
    by_expiry: BTreeSet<(u64, u64)>,
    tick: u64,
}

impl Book {
    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    fn insert(&mut self, key: u64, partition: Arc<Partition>, expires_at: u64) {
        let tick = self.next_tick();
        self.by_tick.insert(tick, key);
        self.by_expiry.insert((expires_at, key));
        self.entries.insert(
            key,
            BookEntry {
                partition,
                tick,
                expires_at,
            },
        );
    }

    fn remove(&mut self, key: u64) -> Option<BookEntry> {
        let e = self.entries.remove(&key)?;
        self.by_tick.remove(&e.tick);
        self.by_expiry.remove(&(e.expires_at, key));
        Some(e)
    }

    /// Marks `key` most recently used (no-op if it is gone).
    fn touch(&mut self, key: u64) {
        let tick = self.next_tick();
        if let Some(e) = self.entries.get_mut(&key) {
            self.by_tick.remove(&e.tick);
            e.tick = tick;
            self.by_tick.insert(tick, key);
        }
    }

    fn pop_least_recent(&mut self) -> Option<(u64, Arc<Partition>)> {
        let (_, key) = self.by_tick.pop_first()?;
        let e = self.entries.remove(&key)?;
        self.by_expiry.remove(&(e.expires_at, key));
        Some((key, e.partition))
    }

    fn pop_expired(&mut self, now: u64, out: &mut Vec<(u64, Arc<Partition>)>) {
        while let Some(&(at, key)) = self.by_expiry.first() {
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(e) = self.entries.remove(&key) {
                self.by_tick.remove(&e.tick);
                out.push((key, e.partition));
            }
        }
    }
}

/// The in-process backend.
pub struct MemoryCache {
    dim: usize,
    max_entries: usize,
    params: HnswParams,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    partitions: RwLock<HashMap<String, Arc<Partition>>>,
    book: Mutex<Book>,
    next_key: AtomicU64,
    /// Rebuild every partition on the calling thread (deterministic tests).
    inline_rebuilds: bool,
}

/// Counts of what a call removed (for metrics and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub capacity: usize,
    pub expired: usize,
}

impl MemoryCache {
    pub fn new(
        dim: usize,
        max_entries: usize,
        params: HnswParams,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            dim,
            max_entries: max_entries.max(1),
            params,
            clock,
            metrics,
            partitions: RwLock::new(HashMap::new()),
            book: Mutex::new(Book::default()),
            next_key: AtomicU64::new(1),
            inline_rebuilds: false,
        }
    }

    /// Rebuilds run on the calling thread whatever the partition size.
    pub fn with_inline_rebuilds(mut self) -> Self {
        self.inline_rebuilds = true;
        self
    }

    /// Live entries (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.book.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn partition_count(&self) -> usize {
        self.partitions.read().len()
    }

    /// (graph nodes, live entries) of a partition, if it exists.
    pub fn partition_stats(&self, name: &str) -> Option<(usize, usize)> {
        let p = self.partitions.read().get(name).cloned()?;
        let st = p.state.read();
        Some((st.nodes.len(), st.entries.len()))
    }

    /// True while some partition is being rebuilt in the background.
    pub fn rebuilding(&self) -> bool {
        self.partitions
            .read()
            .values()
            .any(|p| p.rebuilding.load(Ordering::Acquire))
    }

    /// Synchronous lookup (the async trait method only wraps it).
    pub fn lookup_now(&self, partition: &str, q: &[f32], threshold: f32) -> Lookup {
        let Some(p) = self.partitions.read().get(partition).cloned() else {
            return Lookup::Miss { similarity: 0.0 };
        };
        let now = self.clock.now_ms();
        let mut expired = Vec::new();
        let best = {
            let st = p.state.read();
            let mut best = best_live(&st, q, self.params.ef_search, now, &mut expired);
            if best.is_none()
                && st.entries.len() > expired.len()
                && st.nodes.len() > BRUTE_FORCE_MAX
            {
                // Every candidate was dead: widen once.
                let ef = (self.params.ef_search * 8).min(st.nodes.len());
                best = best_live(&st, q, ef, now, &mut expired);
            }
            best.map(|(key, sim)| {
                let response = st.entries.get(&key).map(|e| e.response.clone());
                (key, sim, response)
            })
        };
        if !expired.is_empty() {
            expired.sort_unstable();
            expired.dedup();
            let mut victims = Vec::with_capacity(expired.len());
            {
                let mut book = self.book.lock();
                for key in expired {
                    if book.remove(key).is_some() {
                        victims.push((key, p.clone()));
                    }
                }
                self.metrics.cache_entries.set(book.entries.len() as i64);
            }
            let n = victims.len();
            self.remove(victims);
            self.count_evictions(Removed {
                capacity: 0,
                expired: n,
            });
        }
        match best {
            Some((key, sim, Some(response))) if sim >= threshold => {
                self.book.lock().touch(key);
                Lookup::Hit {
                    response,
                    similarity: sim,
                }
            }
            Some((_, sim, _)) => Lookup::Miss { similarity: sim },
            None => Lookup::Miss { similarity: 0.0 },
        }
    }

    /// Synchronous store; returns what it evicted.
    pub fn store_now(&self, partition: &str, v: &[f32], response: Bytes, ttl: Duration) -> Removed {
        let now = self.clock.now_ms();
        let ttl_ms = ttl.as_millis().min(u128::from(u64::MAX)) as u64;
        let expires_at = now.saturating_add(ttl_ms.max(1));
        let content = content_id(v);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (p, replaced) = loop {
            let p = self.partition(partition);
            let mut st = p.state.write();
            if st.dead {
                continue;
            }
            let same = st
                .by_content
                .get(&content)
                .copied()
                .and_then(|old| st.entries.remove(&old).map(|e| (old, e)));
            let replaced = match same {
                Some((old, mut e)) => {
                    e.response = response.clone();
                    e.expires_at = expires_at;
                    st.nodes[e.node as usize] = Some(key);
                    st.entries.insert(key, e);
                    st.by_content.insert(content, key);
                    Some(old)
                }
                None => {
                    let node = st.index.insert(v);
                    st.nodes.push(Some(key));
                    st.entries.insert(
                        key,
                        Entry {
                            node,
                            response: response.clone(),
                            expires_at,
                            content,
                        },
                    );
                    st.by_content.insert(content, key);
                    None
                }
            };
            drop(st);
            break (p, replaced);
        };
        let mut expired = Vec::new();
        let mut evicted = Vec::new();
        {
            let mut book = self.book.lock();
            if let Some(old) = replaced {
                book.remove(old);
            }
            book.insert(key, p, expires_at);
            book.pop_expired(now, &mut expired);
            while book.entries.len() > self.max_entries {
                match book.pop_least_recent() {
                    Some(v) => evicted.push(v),
                    None => break,
                }
            }
            self.metrics.cache_entries.set(book.entries.len() as i64);
        }
        let removed = Removed {
            capacity: evicted.len(),
            expired: expired.len(),
        };
        expired.extend(evicted);
        self.remove(expired);
        self.count_evictions(removed);
        removed
    }

    /// Removes every expired entry; returns how many.
    pub fn sweep(&self) -> usize {
        let mut expired = Vec::new();
        {
            let mut book = self.book.lock();
            book.pop_expired(self.clock.now_ms(), &mut expired);
            self.metrics.cache_entries.set(book.entries.len() as i64);
        }
        let n = expired.len();
        self.remove(expired);
        self.count_evictions(Removed {
            capacity: 0,
            expired: n,
        });
        n
    }

    fn count_evictions(&self, r: Removed) {
        if r.capacity > 0 {
            self.metrics
                .cache_evictions
                .with_label_values(&["capacity"])
                .inc_by(r.capacity as u64);
        }
        if r.expired > 0 {
            self.metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .inc_by(r.expired as u64);
        }
    }

    fn partition(&self, name: &str) -> Arc<Partition> {
        if let Some(p) = self.partitions.read().get(name) {
            return p.clone();
        }
        self.partitions
            .write()
            .entry(name.to_string())
            .or_insert_with(|| {
                Arc::new(Partition {
                    name: name.to_string(),
                    state: RwLock::new(State {
                        index: Hnsw::new(self.dim, self.params),
                        nodes: Vec::new(),
                        entries: HashMap::new(),
                        by_content: HashMap::new(),
                        dead: false,
                    }),
                    rebuilding: AtomicBool::new(false),
                })
            })
            .clone()
    }

    /// Tombstones `victims` (already out of the book) in their partitions,
    /// then drops emptied partitions and rebuilds crowded ones.
    fn remove(&self, mut victims: Vec<(u64, Arc<Partition>)>) {
        if victims.is_empty() {
            return;
        }
        victims.sort_unstable_by_key(|(_, p)| Arc::as_ptr(p) as usize);
        let mut i = 0;
        while i < victims.len() {
            let p = victims[i].1.clone();
            let (empty, crowded) = {
                let mut st = p.state.write();
                while i < victims.len() && Arc::ptr_eq(&victims[i].1, &p) {
                    let key = victims[i].0;
                    if let Some(e) = st.entries.remove(&key) {
                        st.nodes[e.node as usize] = None;
                        if st.by_content.get(&e.content) == Some(&key) {
                            st.by_content.remove(&e.content);
                        }
                    }
                    i += 1;
                }
                let t = st.tombstones();
                (
                    st.entries.is_empty(),
                    t >= REBUILD_MIN_TOMBSTONES && t > st.entries.len(),
                )
            };
            if empty {
                self.drop_if_empty(&p);
            } else if crowded {
                self.start_rebuild(p);
            }
        }
    }

    fn drop_if_empty(&self, p: &Arc<Partition>) {
        let mut map = self.partitions.write();
        let mut st = p.state.write();
        if st.entries.is_empty() && !st.dead {
            st.dead = true;
            if map.get(&p.name).is_some_and(|x| Arc::ptr_eq(x, p)) {
                map.remove(&p.name);
            }
        }
    }

    fn start_rebuild(&self, p: Arc<Partition>) {
        if p.rebuilding.swap(true, Ordering::AcqRel) {
            return;
        }
        let nodes = p.state.read().nodes.len();
        if self.inline_rebuilds || nodes <= INLINE_REBUILD_MAX {
            rebuild(&p, self.dim, self.params);
            return;
        }
        let (dim, params) = (self.dim, self.params);
        let spawned = std::thread::Builder::new()
            .name("vsr-cache-rebuild".into())
            .spawn({
                let p = p.clone();
                move || rebuild(&p, dim, params)
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a cache rebuild thread; rebuilding inline");
            rebuild(&p, dim, params);
        }
    }
}

/// Builds a fresh graph of `p`'s live entries without holding its lock,
/// then swaps it in, reconciling entries added or removed meanwhile.
fn rebuild(p: &Partition, dim: usize, params: HnswParams) {
    let snapshot: Vec<(u64, Vec<f32>)> = {
        let st = p.state.read();
        let mut s: Vec<(u64, Vec<f32>)> = st
            .entries
            .iter()
            .map(|(&k, e)| (k, st.index.vector(e.node).to_vec()))
            .collect();
        // Insertion order = age order, for a deterministic graph.
        s.sort_unstable_by_key(|(k, _)| *k);
        s
    };
    let mut index = Hnsw::new(dim, params);
    let mut nodes = Vec::with_capacity(snapshot.len());
    let mut node_of = HashMap::with_capacity(snapshot.len());
    for (k, v) in &snapshot {
        let n = index.insert(v);
        nodes.push(Some(*k));
        node_of.insert(*k, n);
    }
    drop(snapshot);
    {
        let mut st = p.state.write();
        if !st.dead {
            let State {
                index: old,
                entries,
                ..
            } = &mut *st;
            // Removed since the snapshot: tombstones in the new graph.
            for (k, &n) in &node_of {
                if !entries.contains_key(k) {
                    nodes[n as usize] = None;
                }
            }
            for (k, e) in entries.iter_mut() {
                e.node = match node_of.get(k) {
                    Some(&n) => n,
                    // Added since the snapshot.
                    None => {
                        let n = index.insert(old.vector(e.node));
                        nodes.push(Some(*k));
                        n
                    }
                };
            }
            st.index = index;
            st.nodes = nodes;
        }
    }
    p.rebuilding.store(false, Ordering::Release);
}

/// Best live, unexpired entry for `q` (key, similarity); collects expired
/// keys met on the way.
fn best_live(
    st: &State,
    q: &[f32],
    ef: usize,
    now: u64,
    expired: &mut Vec<u64>,
) -> Option<(u64, f32)> {
    let mut consider = |s: Scored, best: &mut Option<(u64, f32)>| {
        let Some(key) = st.nodes[s.id as usize] else {
            return;
        };
        let Some(e) = st.entries.get(&key) else {
            return;
        };
        if e.expires_at <= now {
            expired.push(key);
        } else if best.is_none_or(|(_, b)| s.sim > b) {
            *best = Some((key, s.sim));
        }
    };
    let mut best = None;
    if st.nodes.len() <= BRUTE_FORCE_MAX {
        for (id, key) in st.nodes.iter().enumerate() {
            if key.is_some() {
                let sim = dot(q, st.index.vector(id as u32));
                consider(Scored { sim, id: id as u32 }, &mut best);
            }
        }
    } else {
        for mut s in st.index.search(q, ef) {
            // Past the re-ranked head the similarity is the 8-bit estimate.
            s.sim = dot(q, st.index.vector(s.id));
            consider(s, &mut best);
            // Results come best first: the first live one wins, but keep
            // collecting expired ones met before it.
            if best.is_some() {
                break;
            }
        }
    }
    best
}

#[tonic::async_trait]
impl CacheBackend for MemoryCache {
    async fn lookup(&self, partition: &str, embedding: &[f32], threshold: f32) -> Lookup {
        self.lookup_now(partition, embedding, threshold)
    }

    async fn store(
        &self,
        partition: &str,
        embedding: &[f32],
        response: Bytes,
        ttl: Duration,
    ) -> Stored {
        self.store_now(partition, embedding, response, ttl);
        Stored::Stored
    }
}

/// Sweeps `cache` every `every` until it is dropped.
pub fn spawn_sweeper(cache: &Arc<MemoryCache>, every: Duration) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(cache);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(c) = weak.upgrade() else {
                return;
            };
            let n = c.sweep();
            if n > 0 {
                tracing::debug!(expired = n, "cache sweep");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::hnsw::{normalize, SplitMix64};
    use super::*;

    #[derive(Default)]
    struct ManualClock(AtomicU64);

    impl ManualClock {
        fn advance(&self, ms: u64) {
            self.0.fetch_add(ms, Ordering::SeqCst);
        }
    }

    impl Clock for ManualClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    fn cache(dim: usize, max: usize) -> (MemoryCache, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::default());
        let c = MemoryCache::new(
            dim,
            max,
            HnswParams::default(),
            clock.clone(),
            Arc::new(Metrics::new().unwrap()),
        )
        .with_inline_rebuilds();
        (c, clock)
    }

    fn axis(dim: usize, i: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[i] = 1.0;
        v
    }

    /// Unit vector with cos = `cos` to axis 0, rest on axis `j`.
    fn tilted(dim: usize, cos: f32, j: usize) -> Vec<f32> {
        let mut v = vec![0.0; dim];
        v[0] = cos;
        v[j] = (1.0 - cos * cos).sqrt();
        v
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn hit(l: &Lookup) -> Option<&[u8]> {
        match l {
            Lookup::Hit { response, .. } => Some(response),
            _ => None,
        }
    }

    #[test]
    fn store_then_hit_and_threshold() {
        let (c, _) = cache(8, 100);
        c.store_now("p", &axis(8, 0), Bytes::from_static(b"A"), HOUR);
        let q = tilted(8, 0.9, 3);
        match c.lookup_now("p", &q, 0.95) {
            Lookup::Miss { similarity } => assert!((similarity - 0.9).abs() < 1e-6),
            other => panic!("{other:?}"),
        }
        match c.lookup_now("p", &q, 0.85) {
            Lookup::Hit {
                response,
                similarity,
            } => {
                assert_eq!(&response[..], b"A");
                assert!((similarity - 0.9).abs() < 1e-6);
            }
            other => panic!("{other:?}"),
        }
        // Exactly at the threshold is a hit.
        assert!(hit(&c.lookup_now("p", &axis(8, 0), 1.0)).is_some());
    }

    #[test]
    fn best_of_several_wins() {
        let (c, _) = cache(8, 100);
        c.store_now("p", &tilted(8, 0.7, 1), Bytes::from_static(b"far"), HOUR);
        c.store_now("p", &tilted(8, 0.95, 2), Bytes::from_static(b"near"), HOUR);
        c.store_now("p", &tilted(8, 0.8, 3), Bytes::from_static(b"mid"), HOUR);
        assert_eq!(
            hit(&c.lookup_now("p", &axis(8, 0), 0.5)),
            Some(&b"near"[..])
        );
    }

    #[test]
    fn partitions_are_isolated() {
        let (c, _) = cache(4, 100);
        c.store_now("a", &axis(4, 0), Bytes::from_static(b"A"), HOUR);
        assert_eq!(
            c.lookup_now("b", &axis(4, 0), 0.5),
            Lookup::Miss { similarity: 0.0 }
        );
        c.store_now("b", &axis(4, 1), Bytes::from_static(b"B"), HOUR);
        match c.lookup_now("b", &axis(4, 0), 0.5) {
            Lookup::Miss { similarity } => assert_eq!(similarity, 0.0),
            other => panic!("{other:?}"),
        }
        assert_eq!(hit(&c.lookup_now("a", &axis(4, 0), 0.5)), Some(&b"A"[..]));
        assert_eq!(c.partition_count(), 2);
    }

    #[test]
    fn ttl_expiry_without_sleeping() {
        let (c, clock) = cache(4, 100);
        c.store_now(
            "p",
            &axis(4, 0),
            Bytes::from_static(b"short"),
            Duration::from_secs(10),
        );
        c.store_now(
            "p",
            &axis(4, 1),
            Bytes::from_static(b"long"),
            Duration::from_secs(60),
        );
        clock.advance(9_999);
        assert!(hit(&c.lookup_now("p", &axis(4, 0), 0.9)).is_some());
        clock.advance(1);
        // Expired: never returned, even before any sweep; the next-best
        // live entry is what the miss reports.
        match c.lookup_now("p", &axis(4, 0), 0.9) {
            Lookup::Miss { similarity } => assert!(similarity.abs() < 1e-6),
            other => panic!("{other:?}"),
        }
        // The lookup removed it lazily.
        assert_eq!(c.len(), 1);
        assert!(hit(&c.lookup_now("p", &axis(4, 1), 0.9)).is_some());
        clock.advance(50_000);
        assert_eq!(c.sweep(), 1);
        assert!(c.is_empty());
        assert_eq!(c.partition_count(), 0, "an emptied partition is dropped");
        assert_eq!(
            c.metrics
                .cache_evictions
                .with_label_values(&["expired"])
                .get(),
            2
        );
        assert_eq!(c.metrics.cache_entries.get(), 0);
    }

    #[test]
    fn expired_entries_are_swept_by_stores() {
        let (c, clock) = cache(4, 100);
        c.store_now(
            "a",
            &axis(4, 0),
            Bytes::from_static(b"x"),
            Duration::from_secs(1),
        );
        clock.advance(1_000);
        let r = c.store_now("b", &axis(4, 1), Bytes::from_static(b"y"), HOUR);
        assert_eq!(r.expired, 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.partition_count(), 1);
    }

    #[test]
    fn lru_eviction_order() {
        let (c, _) = cache(8, 3);
        for i in 0..3 {
            c.store_now("p", &axis(8, i), Bytes::from(vec![i as u8]), HOUR);
        }
        // Use 0: now 1 is the least recently used.
        assert!(hit(&c.lookup_now("p", &axis(8, 0), 0.99)).is_some());
        let r = c.store_now("p", &axis(8, 3), Bytes::from_static(b"3"), HOUR);
        assert_eq!(r.capacity, 1);
        assert!(hit(&c.lookup_now("p", &axis(8, 1), 0.99)).is_none());
        for i in [0, 2, 3] {
            assert!(hit(&c.lookup_now("p", &axis(8, i), 0.99)).is_some(), "{i}");
        }
        // A miss does not refresh: 0 was used before 2 and 3 were read.
        assert!(hit(&c.lookup_now("p", &axis(8, 5), 0.99)).is_none());
        c.store_now("p", &axis(8, 4), Bytes::from_static(b"4"), HOUR);
        assert!(hit(&c.lookup_now("p", &axis(8, 0), 0.99)).is_none());
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.metrics
                .cache_evictions
                .with_label_values(&["capacity"])
                .get(),
            2
        );
    }

    #[test]
    fn eviction_is_global_across_partitions() {
        let (c, _) = cache(4, 2);
        c.store_now("a", &axis(4, 0), Bytes::from_static(b"a"), HOUR);
        c.store_now("b", &axis(4, 0), Bytes::from_static(b"b"), HOUR);
        c.store_now("c", &axis(4, 0), Bytes::from_static(b"c"), HOUR);
        assert_eq!(
            c.lookup_now("a", &axis(4, 0), 0.5),
            Lookup::Miss { similarity: 0.0 }
        );
        assert_eq!(c.partition_count(), 2);
    }

    #[test]
    fn duplicates_replace() {
        let (c, clock) = cache(4, 10);
        c.store_now(
            "p",
            &axis(4, 0),
            Bytes::from_static(b"old"),
            Duration::from_secs(5),
        );
        clock.advance(4_000);
        c.store_now(
            "p",
            &axis(4, 0),
            Bytes::from_static(b"new"),
            Duration::from_secs(5),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c.partition_stats("p"), Some((1, 1)));
        assert_eq!(hit(&c.lookup_now("p", &axis(4, 0), 0.9)), Some(&b"new"[..]));
        // The TTL restarted with the replacement.
        clock.advance(4_000);
        assert!(hit(&c.lookup_now("p", &axis(4, 0), 0.9)).is_some());
        clock.advance(1_000);
        assert!(hit(&c.lookup_now("p", &axis(4, 0), 0.9)).is_none());
        // A near (not identical) vector is a separate entry.
        c.store_now("p", &tilted(4, 0.999, 1), Bytes::from_static(b"a"), HOUR);
        c.store_now("p", &axis(4, 0), Bytes::from_static(b"b"), HOUR);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn replaced_entry_keeps_one_book_slot_under_eviction() {
        let (c, _) = cache(4, 2);
        c.store_now("p", &axis(4, 0), Bytes::from_static(b"0"), HOUR);
        c.store_now("p", &axis(4, 1), Bytes::from_static(b"1"), HOUR);
        // Replacing 0 makes it the most recent; storing 2 evicts 1.
        c.store_now("p", &axis(4, 0), Bytes::from_static(b"0'"), HOUR);
        c.store_now("p", &axis(4, 2), Bytes::from_static(b"2"), HOUR);
        assert_eq!(hit(&c.lookup_now("p", &axis(4, 0), 0.9)), Some(&b"0'"[..]));
        assert!(hit(&c.lookup_now("p", &axis(4, 1), 0.9)).is_none());
        assert_eq!(c.len(), 2);
    }

    fn random_unit(rng: &mut SplitMix64, dim: usize) -> Vec<f32> {
        let mut v: Vec<f32> = (0..dim).map(|_| rng.gaussian()).collect();
        normalize(&mut v);
        v
    }

    /// Past the brute-force size the graph answers; evictions tombstone
    /// nodes, and a rebuild compacts them without losing live entries.
    #[test]
    fn tombstones_and_rebuild() {
        let dim = 32;
        let (c, _) = cache(dim, 400);
        let mut rng = SplitMix64::new(5);
        let vs: Vec<Vec<f32>> = (0..1_600).map(|_| random_unit(&mut rng, dim)).collect();
        for (i, v) in vs.iter().enumerate() {
            c.store_now("p", v, Bytes::from((i as u32).to_le_bytes().to_vec()), HOUR);
        }
        assert_eq!(c.len(), 400);
        let (nodes, live) = c.partition_stats("p").unwrap();
        assert_eq!(live, 400);
        assert!(
            nodes - live <= live,
            "{nodes} nodes for {live} live: not rebuilt"
        );
        // The 1200 oldest are gone, the rest all found with their own answer.
        for (i, v) in vs.iter().enumerate() {
            let l = c.lookup_now("p", v, 0.9999);
            if i < 1_200 {
                assert!(hit(&l).is_none(), "{i} was evicted");
            } else {
                assert_eq!(hit(&l), Some(&(i as u32).to_le_bytes()[..]), "{i}");
            }
        }
    }

    /// Background rebuild: entries stored and evicted while it runs are
    /// reconciled when the new graph is swapped in.
    #[test]
    fn rebuild_reconciles_concurrent_changes() {
        let dim = 16;
        let clock = Arc::new(ManualClock::default());
        let c = MemoryCache::new(
            dim,
            100_000,
            HnswParams::default(),
            clock,
            Arc::new(Metrics::new().unwrap()),
        );
        let mut rng = SplitMix64::new(9);
        let vs: Vec<Vec<f32>> = (0..1_200).map(|_| random_unit(&mut rng, dim)).collect();
        for (i, v) in vs[..1_000].iter().enumerate() {
            c.store_now("p", v, Bytes::from(vec![(i % 251) as u8]), HOUR);
        }
        let p = c.partitions.read().get("p").cloned().unwrap();
        // Build from a snapshot by hand: take the snapshot, then change the
        // partition, then let the rebuild swap.
        let victims: Vec<(u64, Arc<Partition>)> = {
            let mut book = c.book.lock();
            let keys: Vec<u64> = book.by_tick.values().take(300).copied().collect();
            keys.into_iter()
                .filter_map(|k| book.remove(k).map(|e| (k, e.partition)))
                .collect()
        };
        std::thread::scope(|s| {
            p.rebuilding.store(true, Ordering::SeqCst);
            let h = s.spawn(|| rebuild(&p, dim, HnswParams::default()));
            for (i, v) in vs[1_000..].iter().enumerate() {
                c.store_now("p", v, Bytes::from(vec![((1_000 + i) % 251) as u8]), HOUR);
            }
            c.remove(victims);
            h.join().unwrap();
        });
        // Whatever the interleaving, the result is consistent.
        let st = p.state.read();
        assert_eq!(st.entries.len(), 900);
        for (k, e) in &st.entries {
            assert_eq!(st.nodes[e.node as usize], Some(*k));
        }
        drop(st);
        for (i, v) in vs.iter().enumerate() {
            let l = c.lookup_now("p", v, 0.9999);
            if i < 300 {
                assert!(hit(&l).is_none(), "{i} was removed");
            } else {
                assert_eq!(hit(&l), Some(&[(i % 251) as u8][..]), "{i}");
            }
        }
    }

    #[test]
    fn concurrent_lookups_and_stores() {
        let dim = 32;
        let (c, _) = cache(dim, 500);
        let c = Arc::new(c);
        std::thread::scope(|s| {
            for t in 0..4u64 {
                let c = c.clone();
                s.spawn(move || {
                    let mut rng = SplitMix64::new(100 + t);
                    for i in 0..400 {
                        let v = random_unit(&mut rng, dim);
                        let part = format!("p{}", i % 3);
                        c.store_now(&part, &v, Bytes::from_static(b"x"), HOUR);
                        assert!(hit(&c.lookup_now(&part, &v, 0.999)).is_some() || c.len() >= 500);
                    }
                });
            }
        });
        assert_eq!(c.len(), 500);
        let live: usize = ["p0", "p1", "p2"]
            .iter()
            .filter_map(|p| c.partition_stats(p))
            .map(|(_, l)| l)
            .sum();
        assert_eq!(live, 500, "book and partitions agree");
    }
}
