//! The semantic cache behind `CacheLookup` / `CacheStore`: an answer is
//! stored under (partition, embedding); a lookup returns the answer of the
//! most similar live entry of the same partition if its cosine similarity
//! reaches the caller's threshold.
//!
//! [`Cache`] is the protocol-agnostic front: it validates the request,
//! L2-normalises the embedding, times the call and counts it, then asks a
//! [`CacheBackend`]:
//!
//! * [`memory::MemoryCache`]: one HNSW graph per partition in this process,
//!   bounded entry count with LRU eviction, per-entry TTL;
//! * [`redis::RedisCache`]: vectors and answers in Redis, shared by every
//!   sidecar replica; Redis down or slow is a miss with a bypass reason;
//! * [`Disabled`]: `--cache-backend off`, every call is a bypass.

pub mod hnsw;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::sidecar::error::InferError;
use crate::sidecar::metrics::Metrics;

/// `bypass_reason` when the cache is switched off.
pub const BYPASS_OFF: &str = "cache_off";
/// `bypass_reason` when Redis could not be asked in time.
pub const BYPASS_REDIS: &str = "redis_unavailable";

/// Longest accepted partition, in bytes.
pub const MAX_PARTITION_BYTES: usize = 4096;

/// Which backend `vsr serve` uses (`--cache-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheBackendKind {
    /// HNSW per partition in this process.
    Memory,
    /// Shared by every replica through Redis.
    Redis,
    /// Every lookup is a miss and nothing is stored (bypass `cache_off`).
    Off,
}

impl CacheBackendKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            CacheBackendKind::Memory => "memory",
            CacheBackendKind::Redis => "redis",
            CacheBackendKind::Off => "off",
        }
    }
}

/// Cache settings (from `vsr serve` flags).
#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub backend: CacheBackendKind,
    /// memory: entries held in total (all partitions); the least recently
    /// used goes first.
    pub max_entries: usize,
    /// Lifetime of an entry stored with `ttl_seconds: 0`.
    pub default_ttl: Duration,
    pub redis_url: String,
    /// Bound on every Redis round trip (connect included); past it the call
    /// is a bypass.
    pub redis_timeout: Duration,
    /// redis: entries per partition (a lookup reads the whole partition).
    pub redis_max_partition_entries: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: CacheBackendKind::Memory,
            max_entries: 10_000,
            default_ttl: Duration::from_secs(3_600),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_timeout: Duration::from_millis(50),
            redis_max_partition_entries: 1_000,
        }
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// The best live entry reaches the threshold.
    Hit { response: Bytes, similarity: f32 },
    /// Nothing similar enough; `similarity` of the best live entry (0 when
    /// the partition is empty).
    Miss { similarity: f32 },
    /// The backend could not be asked; served as a miss.
    Bypass { reason: &'static str },
}

/// What a store did.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    Stored,
    Bypass { reason: &'static str },
}

/// A cache backend. Inputs are already validated: `partition` is not
/// empty, `embedding` is L2-normalised with the configured dimension,
/// `threshold` is in (0, 1], `ttl` is positive.
#[tonic::async_trait]
pub trait CacheBackend: Send + Sync {
    async fn lookup(&self, partition: &str, embedding: &[f32], threshold: f32) -> Lookup;
    async fn store(
        &self,
        partition: &str,
        embedding: &[f32],
        response: Bytes,
        ttl: Duration,
    ) -> Stored;
}

/// `--cache-backend off`.
pub struct Disabled;

#[tonic::async_trait]
impl CacheBackend for Disabled {
    async fn lookup(&self, _: &str, _: &[f32], _: f32) -> Lookup {
        Lookup::Bypass { reason: BYPASS_OFF }
    }

    async fn store(&self, _: &str, _: &[f32], _: Bytes, _: Duration) -> Stored {
        Stored::Bypass { reason: BYPASS_OFF }
    }
}

/// Milliseconds on some monotonic clock (injectable for TTL tests).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// The process's monotonic clock.
pub struct MonotonicClock(Instant);

impl Default for MonotonicClock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock for MonotonicClock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis().min(u128::from(u64::MAX)) as u64
    }
}

/// The validating front over a backend. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
    memory: Option<Arc<memory::MemoryCache>>,
    kind: CacheBackendKind,
    dim: usize,
    default_ttl: Duration,
    metrics: Arc<Metrics>,
}

impl Cache {
    /// Builds the configured backend for embeddings of `dim` floats. A Redis
    /// that cannot be reached is not fatal (calls bypass until it answers);
    /// a malformed `--redis-url` is.
    pub async fn new(cfg: &CacheConfig, dim: usize, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        if cfg.default_ttl.is_zero() {
            anyhow::bail!("--cache-ttl-seconds must be at least 1");
        }
        let mut memory = None;
        let backend: Arc<dyn CacheBackend> = match cfg.backend {
            CacheBackendKind::Memory => {
                if cfg.max_entries == 0 {
                    anyhow::bail!("--cache-max-entries must be at least 1 (use --cache-backend off to disable the cache)");
                }
                let m = Arc::new(memory::MemoryCache::new(
                    dim,
                    cfg.max_entries,
                    hnsw::HnswParams::default(),
                    Arc::new(MonotonicClock::default()),
                    metrics.clone(),
                ));
                memory = Some(m.clone());
                m
            }
            CacheBackendKind::Redis => {
                if cfg.redis_max_partition_entries == 0 {
                    anyhow::bail!("--cache-redis-max-partition-entries must be at least 1");
                }
                if cfg.redis_timeout.is_zero() {
                    anyhow::bail!("--cache-redis-timeout-ms must be at least 1");
                }
                Arc::new(redis::RedisCache::connect(cfg, dim, metrics.clone()).await?)
            }
            CacheBackendKind::Off => Arc::new(Disabled),
        };
        tracing::info!(backend = cfg.backend.as_str(), dim, "semantic cache ready");
        Ok(Self {
            backend,
            memory,
            kind: cfg.backend,
            dim,
            default_ttl: cfg.default_ttl,
            metrics,
        })
    }

    /// A front over any backend (tests, benchmarks).
    pub fn with_backend(
        backend: Arc<dyn CacheBackend>,
        kind: CacheBackendKind,
        dim: usize,
        default_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            backend,
            memory: None,
            kind,
            dim,
            default_ttl,
            metrics,
        }
    }

    pub fn kind(&self) -> CacheBackendKind {
        self.kind
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The memory backend, when that is the one in use.
    pub fn memory(&self) -> Option<&Arc<memory::MemoryCache>> {
        self.memory.as_ref()
    }

    /// Looks up `embedding` in `partition`; also returns the time taken.
    pub async fn lookup(
        &self,
        partition: &str,
        mut embedding: Vec<f32>,
        threshold: f32,
    ) -> Result<(Lookup, Duration), InferError> {
        let started = Instant::now();
        check_partition(partition)?;
        if !(threshold > 0.0 && threshold <= 1.0) {
            return Err(InferError::InvalidArgument {
                param: "similarity_threshold",
                message: format!("must be in (0, 1], got {threshold}"),
            });
        }
        self.prepare(&mut embedding)?;
        let out = self.backend.lookup(partition, &embedding, threshold).await;
        let took = started.elapsed();
        let result = match out {
            Lookup::Hit { .. } => "hit",
            Lookup::Miss { .. } => "miss",
            Lookup::Bypass { .. } => "bypass",
        };
        self.metrics
            .cache_lookups
            .with_label_values(&[result])
            .inc();
        self.metrics
            .cache_lookup_duration
            .observe(took.as_secs_f64());
        Ok((out, took))
    }

    /// Stores `response` under (`partition`, `embedding`) for `ttl_seconds`
    /// (0 = the default).
    pub async fn store(
        &self,
        partition: &str,
        mut embedding: Vec<f32>,
        response: Vec<u8>,
        ttl_seconds: u32,
    ) -> Result<(Stored, Duration), InferError> {
        let started = Instant::now();
        check_partition(partition)?;
        if response.is_empty() {
            return Err(InferError::EmptyInput { param: "response" });
        }
        self.prepare(&mut embedding)?;
        let ttl = if ttl_seconds == 0 {
            self.default_ttl
        } else {
            Duration::from_secs(u64::from(ttl_seconds))
        };
        let out = self
            .backend
            .store(partition, &embedding, Bytes::from(response), ttl)
            .await;
        let result = match out {
            Stored::Stored => "stored",
            Stored::Bypass { .. } => "bypass",
        };
        self.metrics.cache_stores.with_label_values(&[result]).inc();
        Ok((out, started.elapsed()))
    }

    /// Checks the dimension and values, then normalises in place.
    fn prepare(&self, embedding: &mut [f32]) -> Result<(), InferError> {
        let bad = |message: String| InferError::InvalidArgument {
            param: "embedding",
            message,
        };
        if embedding.is_empty() {
            return Err(InferError::EmptyInput { param: "embedding" });
        }
        if embedding.len() != self.dim {
            return Err(bad(format!(
                "has {} values, the cache holds {}-dimensional embeddings (the model's)",
                embedding.len(),
                self.dim
            )));
        }
        if let Some(i) = embedding.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("value {i} is not finite")));
        }
        // f64 norm: f32 squares of large finite values could overflow.
        let norm = embedding
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 || !norm.is_finite() {
            return Err(bad("has zero length (all values are 0)".into()));
        }
        for x in embedding.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
        Ok(())
    }
}

fn check_partition(partition: &str) -> Result<(), InferError> {
    if partition.is_empty() {
        return Err(InferError::EmptyInput { param: "partition" });
    }
    if partition.len() > MAX_PARTITION_BYTES {
        return Err(InferError::InvalidArgument {
            param: "partition",
            message: format!(
                "is {} bytes, at most {MAX_PARTITION_BYTES} are accepted (hash long parts)",
                partition.len()
            ),
        });
    }
    Ok(())
}

/// A warning that is logged at most once per `every`, with the number of
/// occurrences it stood for.
pub(crate) struct RateLimitedWarn {
    every: Duration,
    state: parking_lot::Mutex<(Option<Instant>, u64)>,
}

impl RateLimitedWarn {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            state: parking_lot::Mutex::new((None, 0)),
        }
    }

    /// Counts one occurrence; returns how many to report if it is time to
    /// log, `None` otherwise.
    pub(crate) fn tick(&self) -> Option<u64> {
        let mut s = self.state.lock();
        s.1 += 1;
        let due = s.0.is_none_or(|t| t.elapsed() >= self.every);
        if due {
            s.0 = Some(Instant::now());
            let n = s.1;
            s.1 = 0;
            Some(n)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn front(dim: usize) -> Cache {
        let metrics = Arc::new(Metrics::new().unwrap());
        let mem = Arc::new(memory::MemoryCache::new(
            dim,
            100,
            hnsw::HnswParams::default(),
            Arc::new(MonotonicClock::default()),
            metrics.clone(),
        ));
        Cache::with_backend(
            mem,
            CacheBackendKind::Memory,
            dim,
            Duration::from_secs(60),
            metrics,
        )
    }

    fn invalid(r: Result<impl std::fmt::Debug, InferError>) -> String {
        match r {
            Err(e @ (InferError::InvalidArgument { .. } | InferError::EmptyInput { .. })) => {
                e.to_string()
            }
            other => panic!("expected an invalid-argument error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn validation() {
        let c = front(3);
        let ok = vec![1.0, 2.0, 3.0];
        assert!(invalid(c.lookup("", ok.clone(), 0.9).await).contains("partition"));
        assert!(invalid(c.lookup("p", vec![], 0.9).await).contains("embedding"));
        assert!(invalid(c.lookup("p", vec![1.0, 2.0], 0.9).await).contains("has 2 values"));
        assert!(invalid(c.lookup("p", vec![1.0, f32::NAN, 0.0], 0.9).await).contains("value 1"));
        assert!(
            invalid(c.lookup("p", vec![1.0, f32::INFINITY, 0.0], 0.9).await).contains("value 1")
        );
        assert!(invalid(c.lookup("p", vec![0.0; 3], 0.9).await).contains("zero length"));
        for t in [0.0, -0.5, 1.01, f32::NAN] {
            assert!(invalid(c.lookup("p", ok.clone(), t).await).contains("similarity_threshold"));
        }
        assert!(invalid(c.store("p", ok.clone(), vec![], 0).await).contains("response"));
        let long = "x".repeat(MAX_PARTITION_BYTES + 1);
        assert!(invalid(c.store(&long, ok.clone(), vec![1], 0).await).contains("partition"));
        // Threshold 1 is allowed, and a scaled copy is the same direction.
        c.store("p", ok.clone(), b"a".to_vec(), 0).await.unwrap();
        let (got, _) = c.lookup("p", vec![2.0, 4.0, 6.0], 1.0).await.unwrap();
        assert!(matches!(got, Lookup::Hit { .. }), "{got:?}");
    }

    #[tokio::test]
    async fn huge_finite_values_normalise() {
        let c = front(2);
        c.store("p", vec![3e38, 3e38], b"x".to_vec(), 0)
            .await
            .unwrap();
        let (got, _) = c.lookup("p", vec![1.0, 1.0], 0.999).await.unwrap();
        assert!(matches!(got, Lookup::Hit { .. }), "{got:?}");
    }

    #[tokio::test]
    async fn off_is_a_bypass() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let c = Cache::with_backend(
            Arc::new(Disabled),
            CacheBackendKind::Off,
            2,
            Duration::from_secs(1),
            metrics.clone(),
        );
        let (l, _) = c.lookup("p", vec![1.0, 0.0], 0.5).await.unwrap();
        assert_eq!(l, Lookup::Bypass { reason: BYPASS_OFF });
        let (s, _) = c.store("p", vec![1.0, 0.0], vec![1], 0).await.unwrap();
        assert_eq!(s, Stored::Bypass { reason: BYPASS_OFF });
        assert_eq!(
            metrics.cache_lookups.with_label_values(&["bypass"]).get(),
            1
        );
    }

    #[tokio::test]
    async fn startup_settings_are_checked() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let bad = [
            CacheConfig {
                default_ttl: Duration::ZERO,
                ..CacheConfig::default()
            },
            CacheConfig {
                max_entries: 0,
                ..CacheConfig::default()
            },
            CacheConfig {
                backend: CacheBackendKind::Redis,
                redis_timeout: Duration::ZERO,
                ..CacheConfig::default()
            },
            CacheConfig {
                backend: CacheBackendKind::Redis,
                redis_url: "http://127.0.0.1:6379".into(),
                ..CacheConfig::default()
            },
        ];
        for cfg in bad {
            let err = Cache::new(&cfg, 3, metrics.clone()).await.err();
            assert!(err.is_some(), "{cfg:?} was accepted");
        }
        let off = CacheConfig {
            backend: CacheBackendKind::Off,
            ..CacheConfig::default()
        };
        assert!(Cache::new(&off, 3, metrics).await.is_ok());
    }

    #[test]
    fn rate_limited_warn_counts() {
        let w = RateLimitedWarn::new(Duration::from_secs(3600));
        assert_eq!(w.tick(), Some(1));
        assert_eq!(w.tick(), None);
        assert_eq!(w.tick(), None);
        let w = RateLimitedWarn::new(Duration::ZERO);
        assert_eq!(w.tick(), Some(1));
        assert_eq!(w.tick(), Some(1));
    }
}
