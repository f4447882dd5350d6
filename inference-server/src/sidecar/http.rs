//! HTTP/JSON over the same engine (axum): OpenAI-style `POST /v1/embeddings`,
//! `POST /v1/classify`, `GET /health`, `GET /metrics`. `IntoResponse for
//! ApiError` is the only place engine errors become HTTP responses, always
//! OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::sidecar::error::InferError;
use crate::sidecar::infer::TaskOutput;
use crate::sidecar::infer::{ClassifyRequest, ExtraText, Infer, Timing};

/// An engine error on its way to an HTTP client.
#[derive(Debug)]
pub struct ApiError(pub InferError);

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        let (status, kind) = match &e {
            InferError::EmptyInput { .. }
            | InferError::InvalidArgument { .. }
            | InferError::UnknownTask(_)
            | InferError::WrongKind { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error"),
            InferError::MissingHead { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request_error")
            }
            InferError::Unimplemented { .. } => {
                (StatusCode::NOT_IMPLEMENTED, "invalid_request_error")
            }
            InferError::UnknownCandidateSet(_) => (StatusCode::NOT_FOUND, "invalid_request_error"),
            InferError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error"),
            InferError::Overloaded => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error"),
            InferError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "server_error"),
            InferError::Tokenize(_) | InferError::Backend(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
            }
        };
        let body = json!({"error": {"message": e.to_string(), "type": kind, "param": e.param(), "code": e.code()}});
        (status, Json(body)).into_response()
    }
}

#[derive(Clone)]
struct AppState {
    infer: Infer,
    serving: Arc<AtomicBool>,
    max_body_bytes: usize,
}

/// The router. `serving` turns `/health` to 503 during shutdown.
pub fn router(infer: Infer, serving: Arc<AtomicBool>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/classify", post(classify))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(AppState {
            infer,
            serving,
            max_body_bytes,
        })
}

/// Parses a JSON body, mapping every failure into [`InferError`].
fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            InferError::TooLarge { limit }
        } else {
            InferError::InvalidArgument {
                param: "body",
                message: r.body_text(),
            }
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError(InferError::InvalidArgument {
            param: "body",
            message: e.to_string(),
        })
    })
}

fn timing_headers(t: &Timing) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, d) in [
        ("x-queue-time-us", t.queue),
        ("x-tokenize-time-us", t.tokenize),
        ("x-inference-time-us", t.inference),
        ("x-total-time-us", t.total),
    ] {
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from(d.as_micros().min(u128::from(u64::MAX)) as u64),
        );
    }
    h
}

#[derive(Deserialize)]
#[serde(untagged)]
enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct EmbeddingsRequest {
    input: EmbeddingInput,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    encoding_format: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    user: Option<String>,
}

#[derive(Serialize)]
struct EmbeddingData {
    object: &'static str,
    index: usize,
    embedding: Vec<f32>,
}

async fn embeddings(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: EmbeddingsRequest = parse(body, s.max_body_bytes)?;
    if req.encoding_format.as_deref().is_some_and(|f| f != "float") {
        return Err(ApiError(InferError::InvalidArgument {
            param: "encoding_format",
            message: "only `float` is supported".into(),
        }));
    }
    let texts = match req.input {
        EmbeddingInput::One(t) => vec![t],
        EmbeddingInput::Many(v) => v,
    };
    let out = s.infer.embed(texts).await?;
    let tokens: usize = out.embeddings.iter().map(|(_, i)| i.tokens).sum();
    let data: Vec<EmbeddingData> = out
        .embeddings
        .into_iter()
        .enumerate()
        .map(|(index, (embedding, _))| EmbeddingData {
            object: "embedding",
            index,
            embedding,
        })
        .collect();
    let body = json!({
        "object": "list",
        "data": data,
        "model": req.model.unwrap_or_else(|| s.infer.model_id().to_string()),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Ok((timing_headers(&out.timing), Json(body)).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassifyBody {
    text: String,
    tasks: Vec<String>,
    #[serde(default)]
    candidate_sets: Vec<String>,
    #[serde(default)]
    top_k: usize,
    #[serde(default)]
    extra_texts: Vec<ExtraTextBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraTextBody {
    text: String,
    tasks: Vec<String>,
}

/// Task results as a JSON object keyed by task name.
fn results_json(results: Vec<(String, TaskOutput)>) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    for (task, o) in results {
        let v = match o {
            TaskOutput::Sequence(r) => {
                let scores: BTreeMap<String, f32> = r.scores.into_iter().collect();
                json!({"label": r.label, "confidence": r.confidence, "scores": scores})
            }
            TaskOutput::Entities(es) => json!({"entities": es.into_iter().map(|e| json!({
                "type": e.kind, "start": e.start, "end": e.end, "score": e.score, "source": e.source,
                "byte_start": e.byte_start, "byte_end": e.byte_end,
            })).collect::<Vec<_>>()}),
        };
        out.insert(task, v);
    }
    out
}

async fn classify(
    State(s): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ClassifyBody = parse(body, s.max_body_bytes)?;
    let out = s
        .infer
        .classify(ClassifyRequest {
            text: req.text,
            tasks: req.tasks,
            candidate_sets: req.candidate_sets,
            top_k: req.top_k,
            extra_texts: req
                .extra_texts
                .into_iter()
                .map(|x| ExtraText {
                    text: x.text,
                    tasks: x.tasks,
                })
                .collect(),
        })
        .await?;
    let mut results = results_json(out.results);
    if let Some(e) = out.embedding {
        results.insert("embedding".into(), json!({"embedding": e}));
    }
    let mut body = json!({
        "results": results,
        "input": {"tokens": out.input.tokens, "truncated": out.input.truncated},
        "model": s.infer.model_id(),
    });
    if !out.similarities.is_empty() {
        let sims: serde_json::Map<String, Value> = out
            .similarities
            .into_iter()
            .map(|(set, scores)| {
                (
                    set,
                    json!(scores
                        .into_iter()
                        .map(|c| json!({"id": c.id, "index": c.index, "score": c.score}))
                        .collect::<Vec<_>>()),
                )
            })
            .collect();
        body["similarities"] = Value::Object(sims);
    }
    if !out.extra_results.is_empty() {
        body["extra_results"] = Value::Array(
            out.extra_results
                .into_iter()
                .map(|x| {
                    json!({
                        "results": results_json(x.results),
                        "input": {"tokens": x.input.tokens, "truncated": x.input.truncated},
                    })
                })
                .collect(),
        );
    }
    Ok((timing_headers(&out.timing), Json(body)).into_response())
}

async fn health(State(s): State<AppState>) -> Response {
    if s.serving.load(Ordering::SeqCst) {
        let tasks: Vec<&str> = s.infer.tasks().iter().map(|t| t.name.as_str()).collect();
        (StatusCode::OK, Json(json!({"status": "ok", "model": s.infer.model_id(), "device": s.infer.info().device, "tasks": tasks}))).into_response()
    } else {
        ApiError(InferError::ShuttingDown).into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.infer.metrics().render(),
    )
        .into_response()
}
