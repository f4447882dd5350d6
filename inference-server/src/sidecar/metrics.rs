//! Every Prometheus metric of the sidecar, named in one place (`vsr_` prefix,
//! durations in seconds). Exposed as text at `GET /metrics`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The fixed values of the `status` label besides error codes
/// (`InferError::code`).
pub const STATUS_OK: &str = "ok";

pub struct Metrics {
    registry: Registry,
    /// `vsr_requests_total{method, status}`: finished calls; `status` is
    /// `ok` or the error code.
    pub requests: IntCounterVec,
    /// `vsr_task_requests_total{task, status}`: per task asked for, where
    /// `task` is an installed or catalogued task, `embedding`,
    /// `similarity`, or `other`.
    pub task_requests: IntCounterVec,
    /// `vsr_request_duration_seconds`: end to end inside the engine.
    pub request_duration: Histogram,
    pub queue_duration: Histogram,
    pub tokenize_duration: Histogram,
    /// Per forward pass.
    pub inference_duration: Histogram,
    /// Rows per forward pass.
    pub batch_size: Histogram,
    /// Padded tokens (rows × longest) per forward pass.
    pub batch_tokens: Histogram,
    /// Entries waiting for the backend thread.
    pub queue_depth: IntGauge,
    /// Entries dropped because their caller went away before compute.
    pub cancelled: IntCounter,
    /// `vsr_cache_lookups_total{result}`: `hit`, `miss` or `bypass`.
    pub cache_lookups: IntCounterVec,
    /// `vsr_cache_stores_total{result}`: `stored` or `bypass`.
    pub cache_stores: IntCounterVec,
    /// `vsr_cache_entries`: entries held (memory backend).
    pub cache_entries: IntGauge,
    /// `vsr_cache_evictions_total{reason}`: `capacity` (LRU) or `expired`.
    pub cache_evictions: IntCounterVec,
    /// `vsr_cache_lookup_duration_seconds`: validation + backend.
    pub cache_lookup_duration: Histogram,
}

fn seconds(name: &str, help: &str) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(vec![
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ]))
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new(
                    "vsr_requests_total",
                    "Finished inference calls by method and status",
                ),
                &["method", "status"],
            )?,
            task_requests: IntCounterVec::new(
                Opts::new(
                    "vsr_task_requests_total",
                    "Tasks asked for, by task and call status",
                ),
                &["task", "status"],
            )?,
            request_duration: seconds(
                "vsr_request_duration_seconds",
                "Engine time per call (tokenize + queue + inference + decode)",
            )?,
            queue_duration: seconds(
                "vsr_queue_duration_seconds",
                "Time requests wait before their batch starts",
            )?,
            tokenize_duration: seconds(
                "vsr_tokenize_duration_seconds",
                "Tokenization time per call",
            )?,
            inference_duration: seconds(
                "vsr_inference_duration_seconds",
                "Backend time per forward pass",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("vsr_batch_size", "Rows per forward pass")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            batch_tokens: Histogram::with_opts(
                HistogramOpts::new("vsr_batch_tokens", "Padded tokens per forward pass")
                    .buckets(prometheus::exponential_buckets(16.0, 2.0, 12)?),
            )?,
            queue_depth: IntGauge::new(
                "vsr_queue_depth",
                "Requests waiting for the backend thread",
            )?,
            cancelled: IntCounter::new(
                "vsr_cancelled_total",
                "Requests dropped from the queue because the caller went away",
            )?,
            cache_lookups: IntCounterVec::new(
                Opts::new(
                    "vsr_cache_lookups_total",
                    "Semantic cache lookups by result (hit, miss, bypass)",
                ),
                &["result"],
            )?,
            cache_stores: IntCounterVec::new(
                Opts::new(
                    "vsr_cache_stores_total",
                    "Semantic cache stores by result (stored, bypass)",
                ),
                &["result"],
            )?,
            cache_entries: IntGauge::new(
                "vsr_cache_entries",
                "Entries held by the in-memory semantic cache",
            )?,
            cache_evictions: IntCounterVec::new(
                Opts::new(
                    "vsr_cache_evictions_total",
                    "Semantic cache entries removed, by reason (capacity, expired)",
                ),
                &["reason"],
            )?,
            cache_lookup_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "vsr_cache_lookup_duration_seconds",
                    "Semantic cache lookup time (validation + backend)",
                )
                .buckets(vec![
                    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.025, 0.05, 0.1, 0.25,
                ]),
            )?,
            registry,
        };
        m.registry.register(Box::new(m.requests.clone()))?;
        m.registry.register(Box::new(m.task_requests.clone()))?;
        m.registry.register(Box::new(m.request_duration.clone()))?;
        m.registry.register(Box::new(m.queue_duration.clone()))?;
        m.registry.register(Box::new(m.tokenize_duration.clone()))?;
        m.registry
            .register(Box::new(m.inference_duration.clone()))?;
        m.registry.register(Box::new(m.batch_size.clone()))?;
        m.registry.register(Box::new(m.batch_tokens.clone()))?;
        m.registry.register(Box::new(m.queue_depth.clone()))?;
        m.registry.register(Box::new(m.cancelled.clone()))?;
        m.registry.register(Box::new(m.cache_lookups.clone()))?;
        m.registry.register(Box::new(m.cache_stores.clone()))?;
        m.registry.register(Box::new(m.cache_entries.clone()))?;
        m.registry.register(Box::new(m.cache_evictions.clone()))?;
        m.registry
            .register(Box::new(m.cache_lookup_duration.clone()))?;
        Ok(m)
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
