//! Sidecar benchmark (run in release; see scripts/bench-sidecar.sh).
//!
//! ```text
//! sidecar-bench prompts                 # the benchmark prompts as JSON (for the Python side)
//! sidecar-bench flops                   # peak f32 matmul GFLOP/s through candle
//! sidecar-bench forward                # embedding-only forward pass: ms and GFLOP/s
//! sidecar-bench multitask [ABCST]       # cost(5 tasks + embedding) / cost(embedding); layouts A-C random, S = shipped models/
//!                                       # (letters: which layouts to run, default ABCS; T = each
//!                                       # shipped task alone with the embedding, its marginal cost)
//! sidecar-bench grpc                    # embeddings/s, p50/p99: batch 1/8/32, 1/8/32 clients
//! sidecar-bench cache [N]               # memory cache, N (100000) random 384-d entries in one
//!                                       # partition: fill time, lookup p50/p99, recall@1 vs brute
//!                                       # force; in-process and through CacheLookup over gRPC
//! sidecar-bench cache-redis URL         # Redis cache lookup p50/p99 by partition size
//! ```
//! `multitask` uses RANDOM-WEIGHT heads/adapters with the real shapes,
//! written to a temporary directory: they measure cost, never answer anything.

/// As in `vsr` (src/main.rs), so the numbers are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::{Device, Tensor};
use inference_server::sidecar::backend::candle::CandleBackend;
use inference_server::sidecar::backend::{Backend, Batch, TaskFiles, Wants};
use inference_server::sidecar::cache::hnsw::{dot, normalize, HnswParams, SplitMix64};
use inference_server::sidecar::cache::redis::RedisCache;
use inference_server::sidecar::cache::{CacheBackend, CacheBackendKind, CacheConfig, Lookup};
use inference_server::sidecar::metrics::Metrics;
use inference_server::sidecar::tasks::random::write_random_task;
use inference_server::sidecar::tasks::{self, HeadSpec, LoraSpec, Pooling, TaskKind, TaskSpec};
use inference_server::sidecar::tokenize::Tokenization;
use inference_server::sidecar::{Sidecar, SidecarConfig, DEFAULT_BASE_MODEL};
use vsr_proto::v1 as pb;
use vsr_proto::v1::inference_client::InferenceClient;

const WORDS: &[&str] = &[
    "how",
    "do",
    "i",
    "configure",
    "the",
    "router",
    "to",
    "send",
    "math",
    "questions",
    "to",
    "a",
    "larger",
    "model",
    "while",
    "keeping",
    "simple",
    "chat",
    "on",
    "the",
    "small",
    "one",
    "and",
    "what",
    "happens",
    "when",
    "a",
    "request",
    "contains",
    "personal",
    "data",
    "like",
    "an",
    "email",
    "address",
    "or",
    "phone",
    "number",
    "please",
    "explain",
    "with",
    "examples",
    "in",
    "python",
    "code",
];

/// Deterministic prompts of about `tokens` word-piece tokens.
fn prompts(tokens: usize, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let words: Vec<&str> = (0..tokens.saturating_sub(2))
                .map(|j| WORDS[(i * 7 + j * 13) % WORDS.len()])
                .collect();
            format!("{} #{i}", words.join(" "))
        })
        .collect()
}

fn base_dir() -> PathBuf {
    PathBuf::from(std::env::var("VSR_BASE_MODEL").unwrap_or_else(|_| DEFAULT_BASE_MODEL.into()))
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    match cmd.as_str() {
        "prompts" => {
            let v = serde_json::json!({"short": prompts(30, 64), "long": prompts(128, 64)});
            println!("{v}");
            Ok(())
        }
        "flops" => flops(),
        "multitask" => multitask(&std::env::args().nth(2).unwrap_or_else(|| "ABCS".into())),
        "forward" => forward(),
        "grpc" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
            .block_on(grpc()),
        "cache" => {
            let n = match std::env::args().nth(2) {
                Some(n) => n.parse().context("entries")?,
                None => 100_000,
            };
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
                .block_on(cache_memory(n))
        }
        "cache-redis" => {
            let url = std::env::args()
                .nth(2)
                .context("usage: sidecar-bench cache-redis redis://host:port")?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build()?
                .block_on(cache_redis(url))
        }
        _ => anyhow::bail!(
            "usage: sidecar-bench prompts|flops|multitask|grpc|cache [N]|cache-redis URL"
        ),
    }
}

/// Peak f32 matmul throughput through candle's CPU gemm.
fn flops() -> anyhow::Result<()> {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    a.matmul(&b)?; // warm-up
    let reps = 10;
    let t = Instant::now();
    for _ in 0..reps {
        a.matmul(&b)?;
    }
    let s = t.elapsed().as_secs_f64();
    let gflops = 2.0 * (n * n * n) as f64 * reps as f64 / s / 1e9;
    println!(
        "candle f32 matmul {n}x{n}x{n}: {gflops:.1} GFLOP/s ({threads} threads)",
        threads = candle_core::utils::get_num_threads()
    );
    Ok(())
}

fn spec(
    name: &str,
    kind: TaskKind,
    labels: usize,
    pooling: Pooling,
    top_layers: usize,
) -> TaskSpec {
    TaskSpec {
        line_breaks: false,
        name: name.into(),
        kind,
        labels: (0..labels)
            .map(|i| {
                if kind == TaskKind::Token {
                    if i == 0 {
                        "O".into()
                    } else {
                        format!("B-E{i}")
                    }
                } else {
                    format!("l{i}")
                }
            })
            .collect(),
        pooling,
        top_layers,
        lora: (top_layers > 0).then(|| LoraSpec {
            rank: 8,
            alpha: 16.0,
            targets: vec!["attention.self.query".into(), "attention.self.value".into()],
        }),
        head: HeadSpec::default(),
        members: 1,
        metadata: None,
    }
}

/// Fastest of `reps` interleaved passes of `a` and `b` (interleaving and
/// the minimum keep the ratio honest on a machine shared with other work).
fn time_pair(
    backend: &CandleBackend,
    a: &Batch,
    b: &Batch,
    reps: usize,
) -> anyhow::Result<(f64, f64)> {
    backend.forward(a)?;
    backend.forward(b)?;
    let (mut ta, mut tb) = (f64::MAX, f64::MAX);
    for _ in 0..reps {
        let t = Instant::now();
        backend.forward(a)?;
        ta = ta.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        backend.forward(b)?;
        tb = tb.min(t.elapsed().as_secs_f64());
    }
    Ok((ta, tb))
}

/// Matmul FLOPs of one MiniLM-L6 (h 384, ffn 1536, 6 layers) forward pass
/// over `rows` rows of `len` tokens: projections + FFN + attention.
fn encoder_flops(rows: usize, len: usize) -> f64 {
    let (h, i, l) = (384.0, 1536.0, 6.0);
    let t = (rows * len) as f64;
    l * (2.0 * t * (4.0 * h * h + 2.0 * h * i) + 4.0 * rows as f64 * (len * len) as f64 * h)
}

/// `texts` tokenized into one batch that wants the embedding and `tasks`.
fn encode_batch(tok: &Tokenization, texts: &[String], tasks: &[usize]) -> anyhow::Result<Batch> {
    let encs: Vec<_> = texts
        .iter()
        .map(|t| tok.encode(t))
        .collect::<Result<_, _>>()?;
    Ok(Batch::from_rows(encs.iter().map(|e| {
        (
            &e.ids[..],
            &e.type_ids[..],
            &e.line_starts[..],
            Wants {
                embedding: true,
                tasks: tasks.to_vec(),
            },
        )
    })))
}

/// Embedding-only forward pass of the candle backend, fastest of N.
fn forward() -> anyhow::Result<()> {
    let base = base_dir();
    let tok = Tokenization::load(&base.join("tokenizer.json"), 512)?;
    let backend = CandleBackend::load(&base, &[], Device::Cpu)?;
    println!("| prompt | batch | forward ms (min) | GFLOP/s |");
    println!("|---|---:|---:|---:|");
    for (pname, texts) in [("~30 tok", prompts(30, 32)), ("~128 tok", prompts(128, 32))] {
        for bs in [1usize, 8, 32] {
            let batch = encode_batch(&tok, &texts[..bs], &[])?;
            let reps = if bs == 32 { 5 } else { 20 };
            let (t, _) = time_pair(&backend, &batch, &batch, reps)?;
            println!(
                "| {pname} | {bs} | {:.2} | {:.1} |",
                t * 1e3,
                encoder_flops(bs, batch.max_len) / t / 1e9
            );
        }
    }
    Ok(())
}

/// `which`: the letters of the layouts to run (A–C random, S shipped).
fn multitask(which: &str) -> anyhow::Result<()> {
    let base = base_dir();
    let tok = Tokenization::load(&base.join("tokenizer.json"), 512)?;
    let dir = std::env::temp_dir().join(format!("vsr-bench-tasks-{}", std::process::id()));
    let layouts: [(&str, Vec<TaskSpec>); 3] = [
        (
            "A: 4 sequence heads CLS-pooled + LoRA on top 1 layer; pii token head + LoRA on top 1 layer",
            vec![
                spec("domain", TaskKind::Sequence, 14, Pooling::Cls, 1),
                spec("jailbreak", TaskKind::Sequence, 2, Pooling::Cls, 1),
                spec("fact_check", TaskKind::Sequence, 2, Pooling::Cls, 1),
                spec("feedback", TaskKind::Sequence, 4, Pooling::Cls, 1),
                spec("pii", TaskKind::Token, 35, Pooling::Mean, 1),
            ],
        ),
        (
            "B: same, sequence heads mean-pooled (whole top layer per task)",
            vec![
                spec("domain", TaskKind::Sequence, 14, Pooling::Mean, 1),
                spec("jailbreak", TaskKind::Sequence, 2, Pooling::Mean, 1),
                spec("fact_check", TaskKind::Sequence, 2, Pooling::Mean, 1),
                spec("feedback", TaskKind::Sequence, 4, Pooling::Mean, 1),
                spec("pii", TaskKind::Token, 35, Pooling::Mean, 1),
            ],
        ),
        (
            "C: LoRA on top 2 layers, sequence heads CLS-pooled",
            vec![
                spec("domain", TaskKind::Sequence, 14, Pooling::Cls, 2),
                spec("jailbreak", TaskKind::Sequence, 2, Pooling::Cls, 2),
                spec("fact_check", TaskKind::Sequence, 2, Pooling::Cls, 2),
                spec("feedback", TaskKind::Sequence, 4, Pooling::Cls, 2),
                spec("pii", TaskKind::Token, 35, Pooling::Mean, 2),
            ],
        ),
    ];
    println!(
        "| layout | prompt | batch | embedding only (ms) | 5 tasks + embedding (ms) | ratio |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    let wanted = |label: &str| label.chars().next().is_some_and(|c| which.contains(c));
    for (label, specs) in layouts.into_iter().filter(|(l, _)| wanted(l)) {
        let _ = std::fs::remove_dir_all(&dir);
        for s in &specs {
            write_random_task(&dir, s, 384, 1536, 6)?;
        }
        time_tasks(&base, &tok, &label[..1], tasks::discover(&dir, 6)?)?;
    }
    // What is shipped: the trained prompt-task heads in models/ (real
    // weights, each with the top_layers / pooling it was trained with).
    if wanted("S") || wanted("T") {
        let shipped: Vec<_> = tasks::discover(std::path::Path::new("models"), 6)?
            .into_iter()
            .filter(|f| PROMPT_TASKS.contains(&f.spec.name.as_str()))
            .collect();
        if shipped.len() != PROMPT_TASKS.len() {
            eprintln!(
                "layouts S, T skipped: models/ lacks some of {PROMPT_TASKS:?} (run from the repo root)"
            );
        } else {
            if wanted("T") {
                // Where the multi-task cost goes: one shipped task at a time.
                for f in &shipped {
                    time_tasks(&base, &tok, &format!("T {}", f.spec.name), vec![f.clone()])?;
                }
            }
            if wanted("S") {
                time_tasks(&base, &tok, "S", shipped)?;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The five tasks a routed prompt can ask for (besides the embedding).
const PROMPT_TASKS: [&str; 5] = ["domain", "jailbreak", "fact_check", "feedback", "pii"];

/// One table row per prompt size and batch: forward pass with the
/// embedding only against the embedding plus every task in `files`.
fn time_tasks(
    base: &std::path::Path,
    tok: &Tokenization,
    layout: &str,
    files: Vec<TaskFiles>,
) -> anyhow::Result<()> {
    let backend = CandleBackend::load(base, &files, Device::Cpu)?;
    let all: Vec<usize> = (0..files.len()).collect();
    for (pname, texts) in [("~30 tok", prompts(30, 32)), ("~128 tok", prompts(128, 32))] {
        for bs in [1usize, 8, 32] {
            let reps = if bs == 32 {
                5
            } else if bs == 8 {
                15
            } else {
                41
            };
            let (only, multi) = time_pair(
                &backend,
                &encode_batch(tok, &texts[..bs], &[])?,
                &encode_batch(tok, &texts[..bs], &all)?,
                reps,
            )?;
            println!(
                "| {layout} | {pname} | {bs} | {:.2} | {:.2} | {:.2}x |",
                only * 1e3,
                multi * 1e3,
                multi / only
            );
        }
    }
    Ok(())
}

/// Median server-side queue and inference times (ms) from response timing.
fn server_p50(t: &[pb::Timing]) -> (f64, f64) {
    let med = |mut v: Vec<u64>| {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or(0) as f64 / 1e3
    };
    (
        med(t.iter().map(|x| x.queue_us).collect()),
        med(t.iter().map(|x| x.inference_us).collect()),
    )
}

async fn grpc() -> anyhow::Result<()> {
    let empty = std::env::temp_dir().join(format!("vsr-bench-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty)?;
    let cfg = SidecarConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        http_addr: "127.0.0.1:0".parse()?,
        base_model: base_dir().display().to_string(),
        models_dir: empty.clone(),
        ..SidecarConfig::default()
    };
    let sidecar = Sidecar::start(cfg).await?;
    let client = InferenceClient::connect(format!("http://{}", sidecar.grpc_addr))
        .await
        .context("connect")?;
    println!("| prompt | mode | embeddings/s | p50 ms | p99 ms | server queue p50 ms | server inference p50 ms | requests |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for (pname, texts) in [("~30 tok", prompts(30, 64)), ("~128 tok", prompts(128, 64))] {
        // Client-side batches, one client.
        for bs in [1usize, 8, 32] {
            let mut c = client.clone();
            let reps = (256 / bs).max(8);
            let req = |i: usize| pb::EmbedRequest {
                texts: (0..bs)
                    .map(|j| texts[(i * bs + j) % texts.len()].clone())
                    .collect(),
            };
            c.embed(req(0)).await?;
            let mut lat = Vec::with_capacity(reps);
            let mut srv = Vec::with_capacity(reps);
            let t = Instant::now();
            for i in 0..reps {
                let t0 = Instant::now();
                let r = c.embed(req(i)).await?.into_inner();
                lat.push(t0.elapsed());
                srv.push(r.timing.unwrap_or_default());
            }
            let total = t.elapsed().as_secs_f64();
            lat.sort();
            let (q, inf) = server_p50(&srv);
            println!(
                "| {pname} | batch {bs}, 1 client | {:.1} | {:.2} | {:.2} | {q:.2} | {inf:.2} | {reps} |",
                (reps * bs) as f64 / total,
                pct(&lat, 0.5),
                pct(&lat, 0.99)
            );
        }
        // Concurrent single-text clients: server-side dynamic batching.
        for clients in [1usize, 8, 32] {
            let window = Duration::from_secs(if pname.starts_with("~30") { 4 } else { 6 });
            let t = Instant::now();
            let mut handles = Vec::new();
            for k in 0..clients {
                let mut c = client.clone();
                let texts = texts.clone();
                handles.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut srv = Vec::new();
                    let mut i = k;
                    while t.elapsed() < window {
                        let t0 = Instant::now();
                        let r = c
                            .embed(pb::EmbedRequest {
                                texts: vec![texts[i % texts.len()].clone()],
                            })
                            .await?
                            .into_inner();
                        lat.push(t0.elapsed());
                        srv.push(r.timing.unwrap_or_default());
                        i += clients;
                    }
                    Ok::<_, tonic::Status>((lat, srv))
                }));
            }
            let mut lat = Vec::new();
            let mut srv = Vec::new();
            for h in handles {
                let (l, s) = h.await??;
                lat.extend(l);
                srv.extend(s);
            }
            let total = t.elapsed().as_secs_f64();
            lat.sort();
            let (q, inf) = server_p50(&srv);
            println!("| {pname} | {clients} concurrent clients, 1 text each | {:.1} | {:.2} | {:.2} | {q:.2} | {inf:.2} | {} |", lat.len() as f64 / total, pct(&lat, 0.5), pct(&lat, 0.99), lat.len());
        }
    }
    sidecar.shutdown().await?;
    let _ = std::fs::remove_dir_all(&empty);
    Ok(())
}

/// A unit vector at cosine `cos` from unit vector `v` (a paraphrase-like
/// query of a stored entry).
fn near(v: &[f32], cos: f32, rng: &mut SplitMix64) -> Vec<f32> {
    let mut u = rng.unit_vector(v.len());
    let p = dot(&u, v);
    for (a, b) in u.iter_mut().zip(v) {
        *a -= p * b;
    }
    normalize(&mut u);
    let s = (1.0 - cos * cos).sqrt();
    v.iter().zip(&u).map(|(a, b)| cos * a + s * b).collect()
}

/// (similarity, index) of the exact nearest stored vector.
fn exact_best(stored: &[Vec<f32>], q: &[f32]) -> (f32, usize) {
    let mut best = (f32::NEG_INFINITY, 0);
    for (i, v) in stored.iter().enumerate() {
        let s = dot(q, v);
        if s > best.0 {
            best = (s, i);
        }
    }
    best
}

fn answer_index(l: &Lookup) -> Option<usize> {
    match l {
        Lookup::Hit { response, .. } if response.len() == 4 => {
            Some(u32::from_le_bytes([response[0], response[1], response[2], response[3]]) as usize)
        }
        _ => None,
    }
}

fn similarity(l: &Lookup) -> f32 {
    match l {
        Lookup::Hit { similarity, .. } | Lookup::Miss { similarity } => *similarity,
        Lookup::Bypass { .. } => 0.0,
    }
}

/// CPU time this thread has run (`CLOCK_THREAD_CPUTIME_ID`). On a machine
/// shared with other work, wall-clock p99 is mostly time spent preempted;
/// CPU time shows what the lookup itself costs.
fn thread_cpu() -> Option<Duration> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

/// The threshold at which hit/miss decisions are compared with brute force.
const DECISION_THRESHOLD: f32 = 0.8;

/// Memory cache: fill one partition of a real sidecar's cache with `n`
/// random 384-d unit vectors, then time lookups (near-duplicate and uniform
/// random queries) in-process and over gRPC, and compare their answers with
/// brute force.
async fn cache_memory(n: usize) -> anyhow::Result<()> {
    let dim = 384;
    let params = HnswParams::default();
    let mut rng = SplitMix64::new(42);
    let stored: Vec<Vec<f32>> = (0..n).map(|_| rng.unit_vector(dim)).collect();
    let empty = std::env::temp_dir().join(format!("vsr-bench-empty-{}", std::process::id()));
    std::fs::create_dir_all(&empty)?;
    let cfg = SidecarConfig {
        grpc_addr: "127.0.0.1:0".parse()?,
        http_addr: "127.0.0.1:0".parse()?,
        base_model: base_dir().display().to_string(),
        models_dir: empty.clone(),
        cache: CacheConfig {
            max_entries: n,
            ..CacheConfig::default()
        },
        ..SidecarConfig::default()
    };
    let sidecar = Sidecar::start(cfg).await?;
    let cache = sidecar.cache().clone();
    anyhow::ensure!(cache.dim() == dim, "the model's embeddings are not {dim}-d");
    let mem = cache
        .memory()
        .context("the sidecar's cache is not the memory backend")?
        .clone();
    let t = Instant::now();
    for (i, v) in stored.iter().enumerate() {
        mem.store_now(
            "bench",
            v,
            bytes::Bytes::from((i as u32).to_le_bytes().to_vec()),
            Duration::from_secs(3_600),
        );
    }
    let fill = t.elapsed().as_secs_f64();
    println!(
        "- {n} entries × {dim} d in one partition, HNSW m={} ef_construction={} ef_search={}: filled in {fill:.1} s ({:.0} inserts/s, one thread)",
        params.m, params.ef_construction, params.ef_search, n as f64 / fill
    );
    println!();
    println!("| queries | path | lookups | p50 ms | p99 ms | max ms | CPU p50 / p99 ms | recall@1 vs brute force | same hit/miss as brute force at {DECISION_THRESHOLD} |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let queries = 1_000;
    let sets: [(&str, Vec<Vec<f32>>); 2] = [
        (
            "near-duplicate (cos 0.9 to a stored entry)",
            (0..queries)
                .map(|i| near(&stored[(i * 7_919) % n], 0.9, &mut rng))
                .collect(),
        ),
        (
            "uniform random (nothing close)",
            (0..queries).map(|_| rng.unit_vector(dim)).collect(),
        ),
    ];
    for (label, qs) in &sets {
        let truth: Vec<(f32, usize)> = qs.iter().map(|q| exact_best(&stored, q)).collect();
        // Warm-up.
        for q in qs.iter().take(100) {
            cache.lookup("bench", q.clone(), f32::MIN_POSITIVE).await?;
        }
        let mut lat = Vec::with_capacity(qs.len());
        let (mut found, mut same) = (0, 0);
        let mut cpu = Vec::with_capacity(qs.len());
        for (q, (best, want)) in qs.iter().zip(&truth) {
            let q = q.clone();
            let c0 = thread_cpu();
            let t = Instant::now();
            let (l, _) = cache.lookup("bench", q, f32::MIN_POSITIVE).await?;
            lat.push(t.elapsed());
            if let (Some(a), Some(b)) = (c0, thread_cpu()) {
                cpu.push(b.saturating_sub(a));
            }
            found += usize::from(answer_index(&l) == Some(*want));
            same += usize::from(
                (similarity(&l) >= DECISION_THRESHOLD) == (*best >= DECISION_THRESHOLD),
            );
        }
        lat.sort();
        cpu.sort();
        println!(
            "| {label} | in-process (`Cache::lookup`: validate, normalise, search) | {} | {:.3} | {:.3} | {:.3} | {:.3} / {:.3} | {:.3} | {:.3} |",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
            pct(&cpu, 0.5),
            pct(&cpu, 0.99),
            found as f64 / qs.len() as f64,
            same as f64 / qs.len() as f64,
        );
    }

    // Through gRPC: the same sidecar.
    let mut client = InferenceClient::connect(format!("http://{}", sidecar.grpc_addr))
        .await
        .context("connect")?;
    for (label, qs) in &sets {
        let req = |q: &Vec<f32>| pb::CacheLookupRequest {
            partition: "bench".into(),
            embedding: q.clone(),
            similarity_threshold: f32::MIN_POSITIVE,
        };
        for q in qs.iter().take(100) {
            client.cache_lookup(req(q)).await?;
        }
        let mut lat = Vec::with_capacity(qs.len());
        let mut hits = 0;
        for q in qs {
            let r = req(q);
            let t = Instant::now();
            let out = client.cache_lookup(r).await?.into_inner();
            lat.push(t.elapsed());
            hits += usize::from(out.hit);
        }
        lat.sort();
        println!(
            "| {label} | gRPC `CacheLookup` (tonic client, same machine) | {} | {:.3} | {:.3} | {:.3} | | (hits {hits}) | |",
            lat.len(),
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
        );
    }
    sidecar.shutdown().await?;
    let _ = std::fs::remove_dir_all(&empty);
    Ok(())
}

/// Redis cache: lookup latency as the partition grows (a lookup reads the
/// whole partition).
async fn cache_redis(url: String) -> anyhow::Result<()> {
    let dim = 384;
    let mut rng = SplitMix64::new(7);
    println!("| partition entries | lookups | p50 ms | p99 ms | hits |");
    println!("|---:|---:|---:|---:|---:|");
    for n in [10usize, 100, 1_000, 5_000] {
        let cfg = CacheConfig {
            backend: CacheBackendKind::Redis,
            redis_url: url.clone(),
            redis_timeout: Duration::from_secs(2),
            redis_max_partition_entries: n,
            ..CacheConfig::default()
        };
        let redis = RedisCache::connect(&cfg, dim, Arc::new(Metrics::new()?)).await?;
        let part = format!("bench-{n}-{}", std::process::id());
        let stored: Vec<Vec<f32>> = (0..n).map(|_| rng.unit_vector(dim)).collect();
        for (i, v) in stored.iter().enumerate() {
            let out = redis
                .store(
                    &part,
                    v,
                    bytes::Bytes::from((i as u32).to_le_bytes().to_vec()),
                    Duration::from_secs(600),
                )
                .await;
            anyhow::ensure!(
                out == inference_server::sidecar::cache::Stored::Stored,
                "store failed: is Redis up at {url}?"
            );
        }
        let reps = if n >= 1_000 { 100 } else { 300 };
        let mut lat = Vec::with_capacity(reps);
        let mut hits = 0;
        for i in 0..reps {
            let q = near(&stored[(i * 31) % n], 0.95, &mut rng);
            let t = Instant::now();
            let l = redis.lookup(&part, &q, 0.9).await;
            lat.push(t.elapsed());
            hits += usize::from(matches!(l, Lookup::Hit { .. }));
        }
        lat.sort();
        println!(
            "| {n} | {reps} | {:.3} | {:.3} | {hits} |",
            pct(&lat, 0.5),
            pct(&lat, 0.99)
        );
    }
    Ok(())
}
