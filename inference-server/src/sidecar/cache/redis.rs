//! The shared backend: vectors and answers live in Redis, so every sidecar
//! replica sees every entry. Key layout, for a partition `P` (hashed so
//! keys stay short and all of a partition's keys share one cluster slot):
//!
//! ```text
//! vsr:cache:v1:{<hex sha256(P), 32 chars>}:vec     HASH  id -> expiry (u64 LE, unix ms) ++ dim × f32 LE
//! vsr:cache:v1:{<hex sha256(P), 32 chars>}:lru     ZSET  id -> recency tick (last store or hit)
//! vsr:cache:v1:{<hex sha256(P), 32 chars>}:seq     STRING the partition's tick counter (INCR)
//! vsr:cache:v1:{<hex sha256(P), 32 chars>}:a:<id>  STRING the answer, PEXPIRE = its TTL
//! ```
//!
//! Recency is a counter, not a clock: stores in the same millisecond (or
//! from replicas with skewed clocks) still evict in the order they happened.
//!
//! `id` is the hex of [`content_id`] of the normalised vector, so storing
//! the same vector again (from any replica) replaces the entry. A store is
//! one Lua script: write the entry, evict the least recently used past
//! `max_partition_entries`, and extend the partition keys' own expiry to
//! the longest TTL they hold (an abandoned partition disappears).
//!
//! A lookup reads the whole `vec` hash (HGETALL) and scores every vector
//! here, so its cost grows with the partition: about 1.5 KiB per 384-d
//! entry, hence the per-partition bound. A hit then reads the answer and
//! refreshes its recency in one more script call. Expired vectors met
//! on the way are removed in the background (compare-and-delete, so a
//! fresh store of the same id by another replica is kept).
//!
//! Every call has one deadline (`--cache-redis-timeout-ms`) covering the
//! connect and every round trip. Redis down, slow or failing → the call is
//! a bypass (`redis_unavailable`), with a warning at most every 10 s. The
//! connection is re-established on a later call (at most one attempt per
//! 250 ms; other calls bypass meanwhile instead of waiting).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script};
use bytes::Bytes;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::time::timeout_at;

use super::hnsw::dot;
use super::memory::content_id;
use super::{CacheBackend, CacheConfig, Lookup, RateLimitedWarn, Stored, BYPASS_REDIS};
use crate::sidecar::metrics::Metrics;

/// Prefix of every key (bump the version if the layout changes).
pub const KEY_PREFIX: &str = "vsr:cache:v1";
/// Least time between two connection attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// Consecutive timeouts after which the connection is replaced.
const TIMEOUTS_BEFORE_RECONNECT: u32 = 3;

const STORE_LUA: &str = r#"
-- KEYS: vectors hash, recency zset, tick counter
-- ARGV: answer key prefix, id, vector blob, answer, ttl ms, max entries
local vec, lru, seq, prefix, id = KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2]
local ttl = tonumber(ARGV[5])
redis.call('HSET', vec, id, ARGV[3])
redis.call('SET', prefix .. id, ARGV[4], 'PX', ttl)
redis.call('ZADD', lru, redis.call('INCR', seq), id)
local evicted = 0
local over = redis.call('ZCARD', lru) - tonumber(ARGV[6])
if over > 0 then
  local old = redis.call('ZPOPMIN', lru, over)
  for i = 1, #old, 2 do
    redis.call('HDEL', vec, old[i])
    redis.call('DEL', prefix .. old[i])
    evicted = evicted + 1
  end
end
for _, k in ipairs({vec, lru, seq}) do
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
return {evicted, redis.call('HLEN', vec)}
"#;

const HIT_LUA: &str = r#"
-- KEYS: answer, recency zset, tick counter; ARGV: id
local answer = redis.call('GET', KEYS[1])
if answer then
  redis.call('ZADD', KEYS[2], 'XX', redis.call('INCR', KEYS[3]), ARGV[1])
end
return answer
"#;

const REMOVE_LUA: &str = r#"
-- KEYS: vectors hash, recency zset
-- ARGV: answer key prefix, then (id, blob as read) pairs; an id is removed
-- only if its blob is unchanged
local n = 0
for i = 2, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('DEL', ARGV[1] .. ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// The keys of one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionKeys {
    pub vectors: String,
    pub recency: String,
    pub ticks: String,
    /// Append the entry id.
    pub answer_prefix: String,
}

impl PartitionKeys {
    pub fn of(partition: &str) -> Self {
        let d = Sha256::digest(partition.as_bytes());
        let base = format!("{KEY_PREFIX}:{{{}}}", hex(&d[..16]));
        Self {
            vectors: format!("{base}:vec"),
            recency: format!("{base}:lru"),
            ticks: format!("{base}:seq"),
            answer_prefix: format!("{base}:a:"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
        .unwrap_or(0)
}

/// Expiry ++ vector, little-endian.
fn pack(expires_at: u64, v: &[f32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + 4 * v.len());
    b.extend_from_slice(&expires_at.to_le_bytes());
    for x in v {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b
}

/// (expiry, vector) of a blob of the expected dimension.
fn unpack(blob: &[u8], dim: usize, out: &mut Vec<f32>) -> Option<u64> {
    if blob.len() != 8 + 4 * dim {
        return None;
    }
    let (head, body) = blob.split_at(8);
    let expires_at = u64::from_le_bytes(head.try_into().ok()?);
    out.clear();
    out.extend(
        body.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
    );
    Some(expires_at)
}

#[derive(Default)]
struct Link {
    conn: Option<MultiplexedConnection>,
    /// No connection attempt before this.
    retry_at: Option<Instant>,
    timeouts: u32,
    /// The last attempt failed (log the recovery).
    was_down: bool,
}

/// Clears a flag when dropped (a cancelled connect must not leave it set).
struct ClearOnDrop<'a>(&'a AtomicBool);

impl Drop for ClearOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Why a call bypassed (for the log).
enum Failure {
    NotConnected,
    Timeout(&'static str),
    Redis(&'static str, RedisError),
}

pub struct RedisCache {
    client: Client,
    conn_config: AsyncConnectionConfig,
    url: String,
    timeout: Duration,
    dim: usize,
    max_partition_entries: usize,
    metrics: Arc<Metrics>,
    link: Mutex<Link>,
    connecting: AtomicBool,
    warn: RateLimitedWarn,
    store_script: Script,
    hit_script: Script,
    remove_script: Script,
}

impl RedisCache {
    /// Parses the URL (an error is fatal) and tries to connect once (a
    /// failure is only logged: calls bypass until Redis answers).
    pub async fn connect(
        cfg: &CacheConfig,
        dim: usize,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Self> {
        let client = Client::open(cfg.redis_url.as_str())
            .map_err(|e| anyhow::anyhow!("--redis-url {:?}: {e}", cfg.redis_url))?;
        let c = Self {
            client,
            conn_config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(cfg.redis_timeout))
                .set_response_timeout(Some(cfg.redis_timeout)),
            url: redact(&cfg.redis_url),
            timeout: cfg.redis_timeout,
            dim,
            max_partition_entries: cfg.redis_max_partition_entries,
            metrics,
            link: Mutex::new(Link::default()),
            connecting: AtomicBool::new(false),
            warn: RateLimitedWarn::new(Duration::from_secs(10)),
            store_script: Script::new(STORE_LUA),
            hit_script: Script::new(HIT_LUA),
            remove_script: Script::new(REMOVE_LUA),
        };
        let deadline = tokio::time::Instant::now() + cfg.redis_timeout.max(Duration::from_secs(1));
        if c.connection(deadline).await.is_some() {
            tracing::info!(url = %c.url, "semantic cache: connected to Redis");
        } else {
            tracing::warn!(url = %c.url, "semantic cache: Redis is not reachable yet; cache calls bypass until it is");
        }
        Ok(c)
    }

    /// The current connection, or one attempt to make it within `deadline`
    /// (unless another call is making it, or the last attempt was too
    /// recent: then `None` at once).
    async fn connection(&self, deadline: tokio::time::Instant) -> Option<MultiplexedConnection> {
        {
            let l = self.link.lock();
            if let Some(c) = &l.conn {
                return Some(c.clone());
            }
            if l.retry_at.is_some_and(|t| Instant::now() < t) {
                return None;
            }
        }
        if self.connecting.swap(true, Ordering::AcqRel) {
            return None;
        }
        let _clear = ClearOnDrop(&self.connecting);
        let r = timeout_at(
            deadline,
            self.client
                .get_multiplexed_async_connection_with_config(&self.conn_config),
        )
        .await;
        let mut l = self.link.lock();
        match r {
            Ok(Ok(c)) => {
                if l.was_down {
                    tracing::info!(url = %self.url, "semantic cache: reconnected to Redis");
                }
                *l = Link {
                    conn: Some(c.clone()),
                    ..Link::default()
                };
                Some(c)
            }
            Ok(Err(e)) => {
                l.retry_at = Some(Instant::now() + RECONNECT_EVERY);
                l.was_down = true;
                drop(l);
                self.log(Failure::Redis("connect", e));
                None
            }
            Err(_) => {
                l.retry_at = Some(Instant::now() + RECONNECT_EVERY);
                l.was_down = true;
                drop(l);
                self.log(Failure::Timeout("connect"));
                None
            }
        }
    }

    /// Runs one round trip within `deadline`; failures drop the connection
    /// when it looks broken, and are logged.
    async fn run<T>(
        &self,
        op: &'static str,
        deadline: tokio::time::Instant,
        fut: impl Future<Output = Result<T, RedisError>>,
    ) -> Option<T> {
        match timeout_at(deadline, fut).await {
            Ok(Ok(v)) => {
                self.link.lock().timeouts = 0;
                Some(v)
            }
            Ok(Err(e)) => {
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                {
                    let mut l = self.link.lock();
                    l.conn = None;
                    l.was_down = true;
                }
                self.log(Failure::Redis(op, e));
                None
            }
            Err(_) => {
                let mut l = self.link.lock();
                l.timeouts += 1;
                if l.timeouts >= TIMEOUTS_BEFORE_RECONNECT {
                    l.conn = None;
                    l.timeouts = 0;
                    l.was_down = true;
                }
                drop(l);
                self.log(Failure::Timeout(op));
                None
            }
        }
    }

    fn log(&self, f: Failure) {
        let Some(n) = self.warn.tick() else {
            return;
        };
        match f {
            Failure::NotConnected => {
                tracing::warn!(url = %self.url, occurrences = n, "semantic cache: Redis unavailable (not connected); serving uncached")
            }
            Failure::Timeout(op) => {
                tracing::warn!(url = %self.url, op, timeout_ms = self.timeout.as_millis() as u64, occurrences = n, "semantic cache: Redis did not answer in time; serving uncached")
            }
            Failure::Redis(op, e) => {
                tracing::warn!(url = %self.url, op, error = %e, occurrences = n, "semantic cache: Redis call failed; serving uncached")
            }
        }
    }

    fn bypass_lookup(&self) -> Lookup {
        Lookup::Bypass {
            reason: BYPASS_REDIS,
        }
    }

    /// Removes expired entries in the background (best effort).
    fn clean_up(
        &self,
        conn: MultiplexedConnection,
        keys: PartitionKeys,
        stale: Vec<(Vec<u8>, Vec<u8>)>,
    ) {
        let script = self.remove_script.clone();
        let metrics = self.metrics.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut conn = conn;
            let mut inv = script.prepare_invoke();
            inv.key(&keys.vectors)
                .key(&keys.recency)
                .arg(&keys.answer_prefix);
            for (id, blob) in &stale {
                inv.arg(id).arg(blob);
            }
            if let Ok(Ok(n)) =
                tokio::time::timeout(timeout * 4, inv.invoke_async::<u64>(&mut conn)).await
            {
                metrics
                    .cache_evictions
                    .with_label_values(&["expired"])
                    .inc_by(n);
            }
        });
    }
}

/// The URL without its password (for logs).
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[tonic::async_trait]
impl CacheBackend for RedisCache {
    async fn lookup(&self, partition: &str, q: &[f32], threshold: f32) -> Lookup {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let Some(mut conn) = self.connection(deadline).await else {
            self.log(Failure::NotConnected);
            return self.bypass_lookup();
        };
        let keys = PartitionKeys::of(partition);
        let fields: Vec<(Vec<u8>, Vec<u8>)> = match self
            .run(
                "HGETALL",
                deadline,
                ::redis::cmd("HGETALL")
                    .arg(&keys.vectors)
                    .query_async(&mut conn),
            )
            .await
        {
            Some(f) => f,
            None => return self.bypass_lookup(),
        };
        let now = unix_ms();
        let mut v = Vec::with_capacity(self.dim);
        let mut best: Option<(f32, usize)> = None;
        let mut stale = Vec::new();
        for (i, (id, blob)) in fields.iter().enumerate() {
            // Another dimension (a replica with another model): not ours.
            let Some(expires_at) = unpack(blob, self.dim, &mut v) else {
                continue;
            };
            if expires_at <= now {
                stale.push((id.clone(), blob.clone()));
                continue;
            }
            let sim = dot(q, &v);
            if best.is_none_or(|(b, _)| sim > b) {
                best = Some((sim, i));
            }
        }
        if !stale.is_empty() {
            self.clean_up(conn.clone(), keys.clone(), stale);
        }
        let Some((sim, i)) = best else {
            return Lookup::Miss { similarity: 0.0 };
        };
        if sim < threshold {
            return Lookup::Miss { similarity: sim };
        }
        let id = &fields[i].0;
        let mut answer_key = keys.answer_prefix.clone().into_bytes();
        answer_key.extend_from_slice(id);
        let mut inv = self.hit_script.prepare_invoke();
        inv.key(&answer_key)
            .key(&keys.recency)
            .key(&keys.ticks)
            .arg(id);
        let got: Option<Vec<u8>> =
            match self.run("hit", deadline, inv.invoke_async(&mut conn)).await {
                Some(g) => g,
                None => return self.bypass_lookup(),
            };
        match got {
            Some(answer) => Lookup::Hit {
                response: Bytes::from(answer),
                similarity: sim,
            },
            // Expired (by Redis's clock) or evicted since the HGETALL.
            None => Lookup::Miss { similarity: sim },
        }
    }

    async fn store(&self, partition: &str, v: &[f32], response: Bytes, ttl: Duration) -> Stored {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let bypass = Stored::Bypass {
            reason: BYPASS_REDIS,
        };
        let Some(mut conn) = self.connection(deadline).await else {
            self.log(Failure::NotConnected);
            return bypass;
        };
        let keys = PartitionKeys::of(partition);
        let now = unix_ms();
        let ttl_ms = (ttl.as_millis().min(u128::from(u64::MAX)) as u64).max(1);
        let id = hex(&content_id(v));
        let mut inv = self.store_script.prepare_invoke();
        inv.key(&keys.vectors)
            .key(&keys.recency)
            .key(&keys.ticks)
            .arg(&keys.answer_prefix)
            .arg(&id)
            .arg(pack(now.saturating_add(ttl_ms), v))
            .arg(&response[..])
            .arg(ttl_ms)
            .arg(self.max_partition_entries);
        match self
            .run("store", deadline, inv.invoke_async::<(u64, u64)>(&mut conn))
            .await
        {
            Some((evicted, _len)) => {
                if evicted > 0 {
                    self.metrics
                        .cache_evictions
                        .with_label_values(&["capacity"])
                        .inc_by(evicted);
                }
                Stored::Stored
            }
            None => bypass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_and_slot_tagged() {
        let k = PartitionKeys::of("gpt-4o|abc");
        assert!(k.vectors.starts_with("vsr:cache:v1:{"));
        assert!(k.vectors.ends_with("}:vec"));
        assert_eq!(k.vectors.len(), "vsr:cache:v1:{}:vec".len() + 32);
        assert_eq!(k, PartitionKeys::of("gpt-4o|abc"));
        assert_ne!(k.vectors, PartitionKeys::of("gpt-4o|abd").vectors);
        assert_eq!(k.recency.replace(":lru", ""), k.vectors.replace(":vec", ""));
    }

    #[test]
    fn pack_roundtrip() {
        let v = vec![0.5f32, -0.25, 1.0];
        let b = pack(1234, &v);
        let mut out = Vec::new();
        assert_eq!(unpack(&b, 3, &mut out), Some(1234));
        assert_eq!(out, v);
        assert_eq!(unpack(&b, 4, &mut out), None);
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact("redis://:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn hex_is_lowercase() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
    }
}
