//! Sidecar benchmark (run in release; see scripts/bench-sidecar.sh).
//!
//! ```text
//! sidecar-bench prompts                 # the benchmark prompts as JSON (for the Python side)
//! sidecar-bench flops                   # peak f32 matmul GFLOP/s through candle
//! sidecar-bench forward                # embedding-only forward pass: ms and GFLOP/s
//! sidecar-bench multitask               # cost(5 tasks + embedding) / cost(embedding)
//! sidecar-bench grpc                    # embeddings/s, p50/p99: batch 1/8/32, 1/8/32 clients
//! ```
//! `multitask` uses RANDOM-WEIGHT heads/adapters with the real shapes,
//! written to a temporary directory: they measure cost, never answer anything.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use candle_core::{Device, Tensor};
use inference_server::sidecar::backend::candle::CandleBackend;
use inference_server::sidecar::backend::{Backend, Batch, Wants};
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
        "multitask" => multitask(),
        "forward" => forward(),
        "grpc" => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
            .block_on(grpc()),
        _ => anyhow::bail!("usage: sidecar-bench prompts|flops|multitask|grpc"),
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

/// Embedding-only forward pass of the candle backend, fastest of N.
fn forward() -> anyhow::Result<()> {
    let base = base_dir();
    let tok = Tokenization::load(&base.join("tokenizer.json"), 512)?;
    let backend = CandleBackend::load(&base, &[], Device::Cpu)?;
    println!("| prompt | batch | forward ms (min) | GFLOP/s |");
    println!("|---|---:|---:|---:|");
    for (pname, texts) in [("~30 tok", prompts(30, 32)), ("~128 tok", prompts(128, 32))] {
        for bs in [1usize, 8, 32] {
            let encs: Vec<_> = texts[..bs]
                .iter()
                .map(|t| tok.encode(t))
                .collect::<Result<_, _>>()?;
            let batch = Batch::from_rows(encs.iter().map(|e| {
                (
                    &e.ids[..],
                    &e.type_ids[..],
                    Wants {
                        embedding: true,
                        tasks: vec![],
                    },
                )
            }));
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

fn multitask() -> anyhow::Result<()> {
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
    for (label, specs) in layouts {
        let _ = std::fs::remove_dir_all(&dir);
        for s in &specs {
            write_random_task(&dir, s, 384, 1536, 6)?;
        }
        let files = tasks::discover(&dir, 6)?;
        let backend = CandleBackend::load(&base, &files, Device::Cpu)?;
        let all: Vec<usize> = (0..files.len()).collect();
        for (pname, texts) in [("~30 tok", prompts(30, 32)), ("~128 tok", prompts(128, 32))] {
            for bs in [1usize, 8, 32] {
                let encs: Vec<_> = texts[..bs]
                    .iter()
                    .map(|t| tok.encode(t))
                    .collect::<Result<_, _>>()?;
                let mk = |tasks: &Vec<usize>| {
                    Batch::from_rows(encs.iter().map(|e| {
                        (
                            &e.ids[..],
                            &e.type_ids[..],
                            Wants {
                                embedding: true,
                                tasks: tasks.clone(),
                            },
                        )
                    }))
                };
                let reps = if bs == 32 {
                    5
                } else if bs == 8 {
                    15
                } else {
                    41
                };
                let (only, multi) = time_pair(&backend, &mk(&vec![]), &mk(&all), reps)?;
                println!(
                    "| {} | {pname} | {bs} | {:.2} | {:.2} | {:.2}x |",
                    &label[..1],
                    only * 1e3,
                    multi * 1e3,
                    multi / only
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
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
