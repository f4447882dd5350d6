//! The semantic cache through the real gRPC server: memory backend (store →
//! hit, paraphrase hit with real MiniLM embeddings, far miss, TTL, bad
//! input, `off`), and the Redis backend against real `redis-server`
//! processes started here (two sidecars sharing one Redis; Redis killed →
//! bypass, restarted → works; Redis frozen → bypass within the deadline;
//! per-partition bound).

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use inference_server::sidecar::cache::redis::PartitionKeys;
use inference_server::sidecar::cache::{CacheBackendKind, CacheConfig};
use inference_server::sidecar::{Sidecar, SidecarConfig};
use sidecar_common::*;
use tonic::transport::Channel;
use tonic::Code;
use vsr_proto::v1 as pb;
use vsr_proto::v1::inference_client::InferenceClient;

type Client = InferenceClient<Channel>;

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    d / (na * nb)
}

/// `v` turned towards another axis so that cos(v, result) = `cos` exactly
/// (up to rounding); `v` is a unit vector.
fn turned(v: &[f32], cos: f32) -> Vec<f32> {
    // Orthogonalise a fixed direction against v.
    let mut u: Vec<f32> = (0..v.len()).map(|i| ((i * 7 % 13) as f32) - 6.0).collect();
    let p: f32 = u.iter().zip(v).map(|(a, b)| a * b).sum();
    for (a, b) in u.iter_mut().zip(v) {
        *a -= p * b;
    }
    let n: f32 = u.iter().map(|x| x * x).sum::<f32>().sqrt();
    let s = (1.0 - cos * cos).sqrt();
    v.iter().zip(&u).map(|(a, b)| cos * a + s * b / n).collect()
}

async fn lookup(
    c: &mut Client,
    partition: &str,
    e: &[f32],
    threshold: f32,
) -> Result<pb::CacheLookupResponse, tonic::Status> {
    c.cache_lookup(pb::CacheLookupRequest {
        partition: partition.into(),
        embedding: e.to_vec(),
        similarity_threshold: threshold,
    })
    .await
    .map(|r| r.into_inner())
}

async fn store(
    c: &mut Client,
    partition: &str,
    e: &[f32],
    response: &[u8],
    ttl_seconds: u32,
) -> Result<pb::CacheStoreResponse, tonic::Status> {
    c.cache_store(pb::CacheStoreRequest {
        partition: partition.into(),
        embedding: e.to_vec(),
        response: response.to_vec(),
        ttl_seconds,
    })
    .await
    .map(|r| r.into_inner())
}

fn cache_config(models: &Path, cache: CacheConfig) -> SidecarConfig {
    SidecarConfig {
        cache,
        ..config(models)
    }
}

/// The value of one sample line of `/metrics`, e.g.
/// `vsr_cache_lookups_total{result="hit"}`.
async fn metric(s: &Sidecar, sample: &str) -> f64 {
    let (status, text) = http_client::request(s.http_addr, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

const QUESTION: &str = "How do I reset my password?";
const PARAPHRASE: &str = "How can I reset my password?";
const FAR: &str = "What is the boiling point of water at sea level?";

#[tokio::test]
async fn memory_store_hit_paraphrase_far_and_metrics() {
    let models = tempfile::tempdir().unwrap();
    let s = start(config(models.path())).await;
    let mut c = client(&s).await;
    let e = embed(&mut c, &[QUESTION, PARAPHRASE, FAR]).await;
    let (q, para, far) = (&e[0], &e[1], &e[2]);
    let part = "gpt-4o|ctx=1f2e";

    let r = lookup(&mut c, part, q, 0.9).await.unwrap();
    assert!(!r.hit);
    assert_eq!(r.similarity, 0.0);
    assert_eq!(r.bypass_reason, "");

    let st = store(&mut c, part, q, b"answer about passwords", 0)
        .await
        .unwrap();
    assert!(st.stored);
    assert_eq!(st.bypass_reason, "");

    let r = lookup(&mut c, part, q, 0.99).await.unwrap();
    assert!(r.hit);
    assert_eq!(r.response, b"answer about passwords");
    assert!((r.similarity - 1.0).abs() < 1e-5, "{}", r.similarity);
    assert!(r.timing.is_some());

    // A real paraphrase: similarity is the cosine of the two embeddings.
    let want = cosine(q, para);
    assert!(want > 0.9, "MiniLM paraphrase cosine {want}");
    let r = lookup(&mut c, part, para, 0.85).await.unwrap();
    assert!(r.hit, "paraphrase at {} missed", r.similarity);
    assert!((r.similarity - want).abs() < 1e-4);
    // The same paraphrase above its similarity misses, reporting it.
    let r = lookup(&mut c, part, para, want + (1.0 - want) / 2.0)
        .await
        .unwrap();
    assert!(!r.hit);
    assert!(r.response.is_empty());
    assert!((r.similarity - want).abs() < 1e-4);

    // A different question misses.
    let want_far = cosine(q, far);
    assert!(want_far < 0.5, "{want_far}");
    let r = lookup(&mut c, part, far, 0.85).await.unwrap();
    assert!(!r.hit);
    assert!((r.similarity - want_far).abs() < 1e-4);

    // A synthetic near vector (cos 0.97), unnormalised on the wire.
    let near: Vec<f32> = turned(q, 0.97).iter().map(|x| x * 3.0).collect();
    let r = lookup(&mut c, part, &near, 0.95).await.unwrap();
    assert!(r.hit);
    assert!((r.similarity - 0.97).abs() < 1e-3, "{}", r.similarity);
    let r = lookup(&mut c, part, &turned(q, 0.93), 0.95).await.unwrap();
    assert!(!r.hit);

    // Partitions are exact.
    let r = lookup(&mut c, "gpt-4o|ctx=other", q, 0.5).await.unwrap();
    assert!(!r.hit);
    assert_eq!(r.similarity, 0.0);

    // Storing the same vector again replaces the answer.
    store(&mut c, part, q, b"newer answer", 0).await.unwrap();
    let r = lookup(&mut c, part, q, 0.99).await.unwrap();
    assert_eq!(r.response, b"newer answer");
    assert_eq!(s.cache().memory().unwrap().len(), 1);

    // Timing also comes back as metadata.
    let resp = c
        .cache_lookup(pb::CacheLookupRequest {
            partition: part.into(),
            embedding: q.clone(),
            similarity_threshold: 0.9,
        })
        .await
        .unwrap();
    assert!(resp.metadata().get("x-total-time-us").is_some());

    // hits: q, para, near, q (replaced), metadata call = 5; misses: empty
    // partition, para above, far, 0.93, other partition = 5.
    assert_eq!(
        metric(&s, "vsr_cache_lookups_total{result=\"hit\"}").await,
        5.0
    );
    assert_eq!(
        metric(&s, "vsr_cache_lookups_total{result=\"miss\"}").await,
        5.0
    );
    assert_eq!(
        metric(&s, "vsr_cache_stores_total{result=\"stored\"}").await,
        2.0
    );
    assert_eq!(metric(&s, "vsr_cache_entries").await, 1.0);
    assert_eq!(
        metric(&s, "vsr_cache_lookup_duration_seconds_count").await,
        10.0
    );
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn memory_ttl_and_capacity() {
    let models = tempfile::tempdir().unwrap();
    let s = start(cache_config(
        models.path(),
        CacheConfig {
            max_entries: 2,
            ..CacheConfig::default()
        },
    ))
    .await;
    let mut c = client(&s).await;
    let e = embed(&mut c, &[QUESTION, FAR, "Tell me a joke about cats"]).await;

    // TTL: a one-second entry is served, then never again.
    store(&mut c, "p", &e[0], b"short-lived", 1).await.unwrap();
    assert!(lookup(&mut c, "p", &e[0], 0.99).await.unwrap().hit);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = lookup(&mut c, "p", &e[0], 0.99).await.unwrap();
    assert!(!r.hit, "expired entry served");
    assert_eq!(s.cache().memory().unwrap().len(), 0);
    assert_eq!(
        metric(&s, "vsr_cache_evictions_total{reason=\"expired\"}").await,
        1.0
    );

    // Capacity 2, LRU: touch the first, the second goes.
    for (i, v) in e.iter().enumerate().take(2) {
        store(&mut c, "p", v, &[i as u8], 0).await.unwrap();
    }
    assert!(lookup(&mut c, "p", &e[0], 0.99).await.unwrap().hit);
    store(&mut c, "p", &e[2], b"cats", 0).await.unwrap();
    assert!(!lookup(&mut c, "p", &e[1], 0.99).await.unwrap().hit);
    assert!(lookup(&mut c, "p", &e[0], 0.99).await.unwrap().hit);
    assert!(lookup(&mut c, "p", &e[2], 0.99).await.unwrap().hit);
    assert_eq!(
        metric(&s, "vsr_cache_evictions_total{reason=\"capacity\"}").await,
        1.0
    );
    assert_eq!(metric(&s, "vsr_cache_entries").await, 2.0);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_input_statuses() {
    let models = tempfile::tempdir().unwrap();
    let s = start(config(models.path())).await;
    let mut c = client(&s).await;
    let ok = embed(&mut c, &[QUESTION]).await.remove(0);
    let expect = |r: Result<(), tonic::Status>, needle: &str| {
        let st = r.unwrap_err();
        assert_eq!(st.code(), Code::InvalidArgument, "{st:?}");
        assert!(
            st.message().contains(needle),
            "{:?} lacks {needle:?}",
            st.message()
        );
    };
    let l = |p: &str, e: Vec<f32>, t: f32| {
        let mut c = c.clone();
        let p = p.to_string();
        async move { lookup(&mut c, &p, &e, t).await.map(|_| ()) }
    };
    expect(l("", ok.clone(), 0.9).await, "partition");
    expect(l("p", vec![], 0.9).await, "embedding");
    expect(l("p", ok[..100].to_vec(), 0.9).await, "has 100 values");
    let mut nan = ok.clone();
    nan[7] = f32::NAN;
    expect(l("p", nan, 0.9).await, "value 7 is not finite");
    let mut inf = ok.clone();
    inf[3] = f32::NEG_INFINITY;
    expect(l("p", inf, 0.9).await, "value 3 is not finite");
    expect(l("p", vec![0.0; ok.len()], 0.9).await, "zero length");
    expect(l("p", ok.clone(), 0.0).await, "similarity_threshold");
    expect(l("p", ok.clone(), 1.5).await, "similarity_threshold");
    expect(l("p", ok.clone(), -0.2).await, "similarity_threshold");
    expect(
        store(&mut c, "p", &ok, b"", 0).await.map(|_| ()),
        "response",
    );
    expect(
        store(&mut c, "", &ok, b"x", 0).await.map(|_| ()),
        "partition",
    );
    expect(
        store(&mut c, "p", &ok[..3], b"x", 0).await.map(|_| ()),
        "has 3 values",
    );
    // Nothing was stored by the refused calls.
    assert_eq!(s.cache().memory().unwrap().len(), 0);
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn backend_off_bypasses() {
    let models = tempfile::tempdir().unwrap();
    let s = start(cache_config(
        models.path(),
        CacheConfig {
            backend: CacheBackendKind::Off,
            ..CacheConfig::default()
        },
    ))
    .await;
    let mut c = client(&s).await;
    let e = embed(&mut c, &[QUESTION]).await.remove(0);
    let st = store(&mut c, "p", &e, b"x", 0).await.unwrap();
    assert!(!st.stored);
    assert_eq!(st.bypass_reason, "cache_off");
    let r = lookup(&mut c, "p", &e, 0.5).await.unwrap();
    assert!(!r.hit);
    assert_eq!(r.bypass_reason, "cache_off");
    // Validation still applies.
    let err = lookup(&mut c, "", &e, 0.5).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        metric(&s, "vsr_cache_lookups_total{result=\"bypass\"}").await,
        1.0
    );
    s.shutdown().await.unwrap();
}

// ------------------------------------------------------------------ Redis

/// A `redis-server` child on a fixed port, without persistence.
struct RedisServer {
    child: Child,
    running: bool,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): run scripts/setup.sh to install it")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            running: true,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        assert!(self.running);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn kill(&mut self) {
        if self.running {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.running = false;
        }
    }

    async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // A stopped process still dies of SIGKILL.
        self.kill();
    }
}

fn redis_cache(url: String, timeout_ms: u64) -> CacheConfig {
    CacheConfig {
        backend: CacheBackendKind::Redis,
        redis_url: url,
        redis_timeout: Duration::from_millis(timeout_ms),
        ..CacheConfig::default()
    }
}

/// Repeats `f` until it returns true (every 50 ms, at most `secs`).
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_shared_by_two_sidecars_and_survives_a_restart() {
    let models = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");

    // Replica B starts while Redis is down: it serves, bypassing.
    let b = start(cache_config(models.path(), redis_cache(url.clone(), 500))).await;
    let mut cb = client(&b).await;
    let e = embed(&mut cb, &[QUESTION, PARAPHRASE, FAR]).await;
    let part = "llama|ctx=9";
    let r = lookup(&mut cb, part, &e[0], 0.9).await.unwrap();
    assert!(!r.hit);
    assert_eq!(r.bypass_reason, "redis_unavailable");

    let mut redis = RedisServer::start(port);
    let a = start(cache_config(models.path(), redis_cache(url.clone(), 500))).await;
    let mut ca = client(&a).await;

    // Store through A, hit through B.
    let st = store(&mut ca, part, &e[0], b"shared answer", 0)
        .await
        .unwrap();
    assert!(st.stored, "{st:?}");
    assert!(
        eventually(5, || {
            let mut cb = cb.clone();
            let q = e[0].clone();
            async move {
                lookup(&mut cb, part, &q, 0.99)
                    .await
                    .map(|r| r.hit && r.response == b"shared answer")
                    .unwrap_or(false)
            }
        })
        .await,
        "B never saw A's entry"
    );
    let r = lookup(&mut cb, part, &e[1], 0.85).await.unwrap();
    assert!(r.hit, "paraphrase through B: {}", r.similarity);
    assert!((r.similarity - cosine(&e[0], &e[1])).abs() < 1e-4);
    let r = lookup(&mut cb, part, &e[2], 0.85).await.unwrap();
    assert!(!r.hit);
    assert!((r.similarity - cosine(&e[0], &e[2])).abs() < 1e-4);
    let r = lookup(&mut cb, "llama|ctx=10", &e[0], 0.5).await.unwrap();
    assert!(!r.hit);
    assert_eq!((r.similarity, r.bypass_reason.as_str()), (0.0, ""));

    // What is in Redis: one vector, one recency entry, the answer with a TTL
    // of about the default hour, and partition keys that expire too.
    let keys = PartitionKeys::of(part);
    let mut rc = redis.redis().await;
    let hlen: u64 = redis::cmd("HLEN")
        .arg(&keys.vectors)
        .query_async(&mut rc)
        .await
        .unwrap();
    assert_eq!(hlen, 1);
    let ids: Vec<String> = redis::cmd("HKEYS")
        .arg(&keys.vectors)
        .query_async(&mut rc)
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{}{}", keys.answer_prefix, ids[0]))
        .query_async(&mut rc)
        .await
        .unwrap();
    assert!((3_590_000..=3_600_000).contains(&pttl), "{pttl}");
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&keys.vectors)
        .query_async(&mut rc)
        .await
        .unwrap();
    assert!(pttl > 3_590_000, "{pttl}");

    // TTL through Redis: one second, then gone for both replicas.
    store(&mut ca, "short", &e[2], b"brief", 1).await.unwrap();
    assert!(lookup(&mut cb, "short", &e[2], 0.99).await.unwrap().hit);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let r = lookup(&mut cb, "short", &e[2], 0.99).await.unwrap();
    assert!(!r.hit && r.bypass_reason.is_empty(), "{r:?}");
    // The expired vector is removed in the background.
    let short = PartitionKeys::of("short");
    assert!(
        eventually(5, || {
            let mut rc = rc.clone();
            let k = short.vectors.clone();
            async move {
                redis::cmd("HLEN")
                    .arg(k)
                    .query_async::<u64>(&mut rc)
                    .await
                    .unwrap()
                    == 0
            }
        })
        .await
    );

    // Redis dies: calls still succeed, as bypass misses, quickly.
    redis.kill();
    let t = Instant::now();
    let r = lookup(&mut cb, part, &e[0], 0.9).await.unwrap();
    assert!(!r.hit);
    assert_eq!(r.bypass_reason, "redis_unavailable");
    let st = store(&mut ca, part, &e[1], b"lost", 0).await.unwrap();
    assert!(!st.stored);
    assert_eq!(st.bypass_reason, "redis_unavailable");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(metric(&b, "vsr_cache_lookups_total{result=\"bypass\"}").await >= 2.0);
    assert!(metric(&a, "vsr_cache_stores_total{result=\"bypass\"}").await >= 1.0);

    // Redis is back (empty: no persistence): both replicas recover.
    let _redis = RedisServer::start(port);
    assert!(
        eventually(10, || {
            let mut ca = ca.clone();
            let q = e[0].clone();
            async move {
                store(&mut ca, part, &q, b"after restart", 0)
                    .await
                    .map(|s| s.stored)
                    .unwrap_or(false)
            }
        })
        .await,
        "A never stored again"
    );
    assert!(
        eventually(10, || {
            let mut cb = cb.clone();
            let q = e[1].clone();
            async move {
                lookup(&mut cb, part, &q, 0.85)
                    .await
                    .map(|r| r.hit && r.response == b"after restart")
                    .unwrap_or(false)
            }
        })
        .await,
        "B never hit again"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_is_a_bypass_within_the_deadline_and_partitions_are_bounded() {
    let models = tempfile::tempdir().unwrap();
    let redis = RedisServer::start(free_port());
    let s = start(cache_config(
        models.path(),
        CacheConfig {
            redis_max_partition_entries: 3,
            ..redis_cache(redis.url(), 400)
        },
    ))
    .await;
    let mut c = client(&s).await;
    let texts = [
        QUESTION,
        FAR,
        "Tell me a joke about cats",
        "Translate good morning into French",
        "Which planet is the largest?",
    ];
    let e = embed(&mut c, &texts).await;

    // Bounded partition (3): stores in the same millisecond still evict in
    // order, and a hit counts as a use: store 0, 1, 2, hit 0, store 3, 4 →
    // 1 and 2 go.
    for (i, v) in e.iter().enumerate().take(3) {
        assert!(store(&mut c, "p", v, &[i as u8], 0).await.unwrap().stored);
    }
    assert!(lookup(&mut c, "p", &e[0], 0.99).await.unwrap().hit);
    for (i, v) in e.iter().enumerate().skip(3) {
        assert!(store(&mut c, "p", v, &[i as u8], 0).await.unwrap().stored);
    }
    let keys = PartitionKeys::of("p");
    let mut rc = redis.redis().await;
    let hlen: u64 = redis::cmd("HLEN")
        .arg(&keys.vectors)
        .query_async(&mut rc)
        .await
        .unwrap();
    assert_eq!(hlen, 3);
    for (i, v) in e.iter().enumerate() {
        let r = lookup(&mut c, "p", v, 0.99).await.unwrap();
        assert_eq!(r.hit, i == 0 || i >= 3, "entry {i}: {r:?}");
        if r.hit {
            assert_eq!(r.response, [i as u8]);
        }
    }
    assert_eq!(
        metric(&s, "vsr_cache_evictions_total{reason=\"capacity\"}").await,
        2.0
    );

    // Frozen Redis (SIGSTOP): each call gives up at its deadline.
    redis.signal(nix::sys::signal::Signal::SIGSTOP);
    for _ in 0..4 {
        let t = Instant::now();
        let r = lookup(&mut c, "p", &e[3], 0.99).await.unwrap();
        let took = t.elapsed();
        assert_eq!(r.bypass_reason, "redis_unavailable");
        assert!(took < Duration::from_millis(2_000), "{took:?}");
    }
    let t = Instant::now();
    let st = store(&mut c, "p", &e[0], b"x", 0).await.unwrap();
    assert_eq!(st.bypass_reason, "redis_unavailable");
    assert!(
        t.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        t.elapsed()
    );

    // Thawed: served again.
    redis.signal(nix::sys::signal::Signal::SIGCONT);
    assert!(
        eventually(10, || {
            let mut c = c.clone();
            let q = e[3].clone();
            async move {
                lookup(&mut c, "p", &q, 0.99)
                    .await
                    .map(|r| r.hit && r.response == [3u8])
                    .unwrap_or(false)
            }
        })
        .await,
        "no hit after SIGCONT"
    );
    s.shutdown().await.unwrap();
}
