//! The inference sidecar: a TEI-style engine (backend trait, candle BERT,
//! token-budget batching on one backend thread) behind a tonic gRPC server
//! and an axum HTTP server. Layout:
//!
//! * [`backend`]: the `Backend` trait and the candle implementation;
//! * [`model::bert`]: our BERT (layer-by-layer, LoRA, differentiable mode);
//! * [`tasks`]: task-head files, discovery and logits decoding;
//! * [`tokenize`], [`queue`] (batching + backend thread), [`infer`] (the
//!   protocol-agnostic engine API), [`candidates`];
//! * [`grpc`], [`http`], [`metrics`]; [`error`] (mapped once per protocol);
//! * [`cache`]: the semantic cache behind `CacheLookup` / `CacheStore`.

pub mod backend;
pub mod cache;
pub mod candidates;
pub mod error;
pub mod grpc;
pub mod http;
pub mod infer;
pub mod loader;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod tasks;
pub mod tokenize;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::sync::watch;

use crate::sidecar::backend::candle::{parse_device, CandleBackend};
use crate::sidecar::backend::Backend;
use crate::sidecar::cache::{Cache, CacheConfig};
use crate::sidecar::infer::{EngineLimits, Infer};
use crate::sidecar::metrics::Metrics;
use crate::sidecar::queue::{BatchLimits, Queue};
use crate::sidecar::tokenize::Tokenization;

/// Default base encoder directory.
pub const DEFAULT_BASE_MODEL: &str = "models/base/all-MiniLM-L6-v2";

/// Everything the sidecar needs to start (filled from `vsr serve` flags).
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Local directory or Hugging Face hub id of the base encoder.
    pub base_model: String,
    /// Directory whose `<task>/task.json` subdirectories are loaded.
    pub models_dir: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: String,
    /// Tokens per text, special tokens included (longer is truncated).
    pub max_input_tokens: usize,
    /// Calls admitted at once (queued + running); more is RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
    pub batch: BatchLimits,
    pub limits: EngineLimits,
    /// Largest gRPC message / HTTP body.
    pub max_message_bytes: usize,
    /// The semantic cache (`CacheLookup` / `CacheStore`).
    pub cache: CacheConfig,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            base_model: DEFAULT_BASE_MODEL.into(),
            models_dir: PathBuf::from("models"),
            device: "cpu".into(),
            max_input_tokens: 512,
            max_concurrent_requests: 512,
            batch: BatchLimits {
                max_batch_tokens: 16_384,
                max_forward_tokens: 8_192,
                max_forward_rows: 64,
            },
            limits: EngineLimits {
                max_text_bytes: 256 * 1024,
                max_batch_texts: 64,
                max_candidate_sets: 64,
                max_candidates_per_set: 1_024,
            },
            max_message_bytes: 4 * 1024 * 1024,
            cache: CacheConfig::default(),
        }
    }
}

/// Loads the model, tasks and tokenizer, and starts the backend thread.
pub fn build_engine(cfg: &SidecarConfig) -> anyhow::Result<(Infer, std::thread::JoinHandle<()>)> {
    let (base_dir, model_id) = loader::resolve_base(&cfg.base_model)?;
    let device = parse_device(&cfg.device)?;
    let cfg_text = std::fs::read_to_string(base_dir.join("config.json"))?;
    let bert: model::bert::BertConfig =
        serde_json::from_str(&cfg_text).context("base config.json")?;
    let task_files = tasks::discover(&cfg.models_dir, bert.num_hidden_layers)?;
    let backend = CandleBackend::load(&base_dir, &task_files, device)?;
    backend.health().context("backend health check")?;
    let info = backend.info();
    let max_tokens = cfg.max_input_tokens.min(info.max_positions);
    let tokenization = Tokenization::load(&base_dir.join("tokenizer.json"), max_tokens)?;
    let metrics = Arc::new(Metrics::new().context("metrics registry")?);
    let queue = Arc::new(Queue::new(cfg.batch, metrics.clone()));
    tracing::info!(model = %model_id, device = %info.device, tasks = ?task_files.iter().map(|t| &t.spec.name).collect::<Vec<_>>(), max_tokens, "engine loaded");
    let q = queue.clone();
    let boxed: Box<dyn Backend> = Box::new(backend);
    let thread = std::thread::Builder::new()
        .name("vsr-backend".into())
        .spawn(move || queue::backend_loop(boxed, q))
        .context("spawning the backend thread")?;
    let specs = task_files.into_iter().map(|t| t.spec).collect();
    let infer = Infer::new(
        tokenization,
        specs,
        cfg.models_dir.clone(),
        queue,
        cfg.max_concurrent_requests,
        metrics,
        cfg.limits.clone(),
        info,
        model_id,
    );
    Ok((infer, thread))
}

/// A running sidecar (both servers + engine).
pub struct Sidecar {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    infer: Infer,
    cache: Cache,
    /// Periodic TTL sweep of the memory cache.
    sweeper: Option<tokio::task::JoinHandle<()>>,
    serving: Arc<AtomicBool>,
    stop: watch::Sender<bool>,
    health: tonic_health::server::HealthReporter,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    http: tokio::task::JoinHandle<std::io::Result<()>>,
    backend: std::thread::JoinHandle<()>,
}

impl Sidecar {
    /// Loads everything, binds both ports (port 0 picks a free one) and
    /// starts serving.
    pub async fn start(cfg: SidecarConfig) -> anyhow::Result<Self> {
        let c = cfg.clone();
        let (infer, backend) = tokio::task::spawn_blocking(move || build_engine(&c))
            .await
            .context("engine loader panicked")??;
        let cache = Cache::new(
            &cfg.cache,
            infer.info().hidden_size,
            infer.metrics().clone(),
        )
        .await
        .context("semantic cache")?;
        let sweeper = cache
            .memory()
            .map(|m| cache::memory::spawn_sweeper(m, cache::memory::SWEEP_EVERY));
        let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc_addr)
            .await
            .with_context(|| format!("binding gRPC {}", cfg.grpc_addr))?;
        let http_listener = tokio::net::TcpListener::bind(cfg.http_addr)
            .await
            .with_context(|| format!("binding HTTP {}", cfg.http_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<vsr_proto::v1::inference_server::InferenceServer<grpc::GrpcService>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vsr_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("reflection service")?;

        let (stop, stopped) = watch::channel(false);
        let until_stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(health_service)
                .add_service(reflection)
                .add_service(grpc::GrpcService::server(
                    infer.clone(),
                    cache.clone(),
                    cfg.max_message_bytes,
                ))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(grpc_listener)
                        .with_nodelay(Some(true)),
                    until_stopped(stopped.clone()),
                ),
        );
        let serving = Arc::new(AtomicBool::new(true));
        let app = http::router(infer.clone(), serving.clone(), cfg.max_message_bytes);
        let http = tokio::spawn(std::future::IntoFuture::into_future(
            axum::serve(
                // Small request/response pairs: Nagle + delayed ACK would add ~40 ms.
                http_listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                }),
                app,
            )
            .with_graceful_shutdown(until_stopped(stopped)),
        ));
        tracing::info!(%grpc_addr, %http_addr, "sidecar serving");
        Ok(Self {
            grpc_addr,
            http_addr,
            infer,
            cache,
            sweeper,
            serving,
            stop,
            health,
            grpc,
            http,
            backend,
        })
    }

    pub fn infer(&self) -> &Infer {
        &self.infer
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Graceful stop: health turns NOT_SERVING, servers stop accepting and
    /// finish in-flight calls, then the queue closes and the backend thread
    /// drains and exits.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.serving.store(false, Ordering::SeqCst);
        self.health
            .set_not_serving::<vsr_proto::v1::inference_server::InferenceServer<grpc::GrpcService>>(
            )
            .await;
        let _ = self.stop.send(true);
        let grpc = self.grpc.await.context("gRPC server task")?;
        let http = self.http.await.context("HTTP server task")?;
        self.infer.close();
        if let Some(s) = self.sweeper {
            s.abort();
        }
        let backend = self.backend;
        tokio::task::spawn_blocking(move || backend.join())
            .await?
            .map_err(|_| anyhow::anyhow!("backend thread panicked"))?;
        grpc.context("gRPC server")?;
        http.context("HTTP server")?;
        tracing::info!("sidecar stopped");
        Ok(())
    }
}
