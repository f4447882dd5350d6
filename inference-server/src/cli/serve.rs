//! `vsr serve`: the inference sidecar (gRPC + HTTP over one engine).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;

use crate::sidecar::cache::{CacheBackendKind, CacheConfig};
use crate::sidecar::infer::EngineLimits;
use crate::sidecar::queue::BatchLimits;
use crate::sidecar::{Sidecar, SidecarConfig, DEFAULT_BASE_MODEL};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// gRPC port (`vsr.inference.v1.Inference`, health, reflection).
    #[arg(long, env = "VSR_GRPC_PORT", default_value_t = 50051)]
    pub grpc_port: u16,
    /// HTTP port (`/v1/embeddings`, `/v1/classify`, `/health`, `/metrics`).
    #[arg(long, env = "VSR_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// Address both servers listen on.
    #[arg(long, env = "VSR_LISTEN", default_value = "127.0.0.1")]
    pub listen: IpAddr,
    /// Directory of task heads: every `<dir>/<task>/task.json` is loaded.
    #[arg(long, env = "VSR_MODELS", default_value = "models")]
    pub models: PathBuf,
    /// Base encoder: a local directory or a Hugging Face hub id
    /// (`owner/name[@revision]`).
    #[arg(long, env = "VSR_BASE_MODEL", default_value = DEFAULT_BASE_MODEL)]
    pub base_model: String,
    /// Compute device: `cpu`, or `cuda[:N]` in a build with `--features cuda`.
    #[arg(long, env = "VSR_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Threads for the matmul kernels (default: all cores).
    #[arg(long, env = "VSR_THREADS")]
    pub threads: Option<usize>,
    /// Tokens per text incl. special tokens; longer texts are truncated.
    #[arg(long, env = "VSR_MAX_INPUT_TOKENS", default_value_t = 512)]
    pub max_input_tokens: usize,
    /// Calls admitted at once (queued + running); more get RESOURCE_EXHAUSTED / 429.
    #[arg(long, env = "VSR_MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,
    /// Unpadded tokens taken from the queue per batch.
    #[arg(long, env = "VSR_MAX_BATCH_TOKENS", default_value_t = 16_384)]
    pub max_batch_tokens: usize,
    /// Padded tokens (rows × longest row) per forward pass.
    #[arg(long, env = "VSR_MAX_FORWARD_TOKENS", default_value_t = 8_192)]
    pub max_forward_tokens: usize,
    /// Rows per forward pass.
    #[arg(long, env = "VSR_MAX_FORWARD_ROWS", default_value_t = 64)]
    pub max_forward_rows: usize,
    /// Texts per Embed / Nli / ClassifyTokens call.
    #[arg(long, env = "VSR_MAX_BATCH_TEXTS", default_value_t = 64)]
    pub max_batch_texts: usize,
    /// Largest text in bytes.
    #[arg(long, env = "VSR_MAX_TEXT_BYTES", default_value_t = 256 * 1024)]
    pub max_text_bytes: usize,
    /// Largest gRPC message / HTTP body in bytes.
    #[arg(long, env = "VSR_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Semantic cache backend: `memory` (this process), `redis` (shared by
    /// every replica) or `off` (every lookup misses with bypass `cache_off`).
    #[arg(long, env = "VSR_CACHE_BACKEND", value_enum, default_value_t = CacheBackendKind::Memory)]
    pub cache_backend: CacheBackendKind,
    /// Memory cache: entries held in total; the least recently used go first.
    #[arg(long, env = "VSR_CACHE_MAX_ENTRIES", default_value_t = 10_000)]
    pub cache_max_entries: usize,
    /// Lifetime of an entry stored with `ttl_seconds: 0`.
    #[arg(long, env = "VSR_CACHE_TTL_SECONDS", default_value_t = 3_600)]
    pub cache_ttl_seconds: u64,
    /// Redis cache: server URL (`redis://[:password@]host:port[/db]`).
    #[arg(long, env = "VSR_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Redis cache: deadline of one cache call's Redis work (connect and
    /// round trips); past it the call misses with bypass `redis_unavailable`.
    #[arg(long, env = "VSR_CACHE_REDIS_TIMEOUT_MS", default_value_t = 50)]
    pub cache_redis_timeout_ms: u64,
    /// Redis cache: entries per partition (a lookup reads the whole
    /// partition, ~1.5 KiB per 384-d entry); the least recently used go first.
    #[arg(
        long,
        env = "VSR_CACHE_REDIS_MAX_PARTITION_ENTRIES",
        default_value_t = 1_000
    )]
    pub cache_redis_max_partition_entries: usize,
}

impl ServeArgs {
    pub fn config(&self) -> SidecarConfig {
        let d = SidecarConfig::default();
        SidecarConfig {
            grpc_addr: SocketAddr::new(self.listen, self.grpc_port),
            http_addr: SocketAddr::new(self.listen, self.http_port),
            base_model: self.base_model.clone(),
            models_dir: self.models.clone(),
            device: self.device.clone(),
            max_input_tokens: self.max_input_tokens,
            max_concurrent_requests: self.max_concurrent_requests,
            batch: BatchLimits {
                max_batch_tokens: self.max_batch_tokens,
                max_forward_tokens: self.max_forward_tokens,
                max_forward_rows: self.max_forward_rows,
            },
            limits: EngineLimits {
                max_text_bytes: self.max_text_bytes,
                max_batch_texts: self.max_batch_texts,
                ..d.limits
            },
            max_message_bytes: self.max_message_bytes,
            cache: CacheConfig {
                backend: self.cache_backend,
                max_entries: self.cache_max_entries,
                default_ttl: Duration::from_secs(self.cache_ttl_seconds),
                redis_url: self.redis_url.clone(),
                redis_timeout: Duration::from_millis(self.cache_redis_timeout_ms),
                redis_max_partition_entries: self.cache_redis_max_partition_entries,
            },
        }
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let threads = args.threads.unwrap_or(cores).max(1);
    // candle's CPU matmul (gemm) runs on rayon's global pool.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("vsr-matmul-{i}"))
        .build_global()
        .context("configuring the matmul thread pool")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.clamp(1, 4))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let sidecar = Sidecar::start(args.config()).await?;
        eprintln!(
            "vsr serve: gRPC on {}, HTTP on {}",
            sidecar.grpc_addr, sidecar.http_addr
        );
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining");
        sidecar.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
