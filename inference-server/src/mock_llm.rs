//! An OpenAI-compatible backend that answers at once and echoes what it received, so
//! tests can see exactly what the router sent upstream and benchmarks measure the router,
//! not the model.
//!
//! Every answer carries a top-level `mock` object (in streaming: in the first chunk):
//! `{backend, model, path, headers: {lowercased name: value}, request: <parsed body>}`,
//! and the response header `x-mock-backend: <name>`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{json, Map, Value};

/// Response header naming the backend that answered.
pub const BACKEND_HEADER: &str = "x-mock-backend";

#[derive(Clone)]
struct Mock {
    name: Arc<str>,
    header: HeaderValue,
    requests: Arc<AtomicU64>,
}

/// Serves the mock on `listener` until the future is dropped or the listener fails.
pub async fn serve_mock(listener: tokio::net::TcpListener, name: &str) -> std::io::Result<()> {
    axum::serve(listener, app(name)).await
}

/// The mock's routes, for embedding in another server or a test.
pub fn app(name: &str) -> axum::Router {
    let mock = Mock {
        name: name.into(),
        header: HeaderValue::from_str(name).unwrap_or_else(|_| HeaderValue::from_static("mock")),
        requests: Arc::default(),
    };
    axum::Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .fallback(fallback)
        .layer(axum::middleware::map_response_with_state(
            mock.clone(),
            tag_backend,
        ))
        .with_state(mock)
}

async fn tag_backend(State(mock): State<Mock>, mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(BACKEND_HEADER, mock.header.clone());
    response
}

async fn models(State(mock): State<Mock>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": &*mock.name, "object": "model", "created": 0, "owned_by": "vsr-mock"}],
    }))
    .into_response()
}

/// Accepts chat completions under any path prefix, so an endpoint with a path
/// (`host:port/openai`) can be tested against the mock.
async fn fallback(
    state: State<Mock>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method == Method::POST && uri.path().ends_with("/v1/chat/completions") {
        return chat(state, uri, headers, body).await;
    }
    let error = json!({
        "error": {"message": format!("no route for {method} {}", uri.path()), "type": "invalid_request_error", "param": null, "code": "not_found"},
        "mock": {"backend": &*state.name, "path": uri.path()},
    });
    (StatusCode::NOT_FOUND, axum::Json(error)).into_response()
}

async fn chat(State(mock): State<Mock>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let request: Value = match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => v,
        _ => {
            let error = json!({"error": {"message": "request body must be a JSON object", "type": "invalid_request_error", "param": null, "code": "invalid_json"}});
            return (StatusCode::BAD_REQUEST, axum::Json(error)).into_response();
        }
    };
    let model = request["model"].as_str().unwrap_or_default().to_string();
    let stream = request["stream"].as_bool().unwrap_or(false);
    let messages = request["messages"].as_array().map_or(0, Vec::len);
    let content = format!(
        "[mock {}] model={model} messages={messages} stream={stream}",
        mock.name
    );
    let echo = json!({
        "backend": &*mock.name,
        "model": model,
        "path": uri.path(),
        "headers": header_map(&headers),
        "request": request,
    });
    let n = mock.requests.fetch_add(1, Ordering::Relaxed);
    let id = format!("chatcmpl-mock-{n}");
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    if stream {
        return sse(stream_chunks(&id, created, &model, &content, echo));
    }
    let prompt_tokens = body.len() / 4;
    let completion_tokens = content.split_whitespace().count();
    axum::Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        "mock": echo,
    }))
    .into_response()
}

/// Header names are already lowercase in `HeaderMap`; repeated headers are joined with ", ".
fn header_map(headers: &HeaderMap) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                out.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    out
}

/// The OpenAI streaming shape: a role-only first chunk (carrying the echo), content
/// chunks, a final chunk with `finish_reason`, then `[DONE]`.
fn stream_chunks(id: &str, created: u64, model: &str, content: &str, echo: Value) -> Vec<String> {
    let chunk = |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut first = chunk(json!({"role": "assistant"}), None);
    first["mock"] = echo;
    let mut events = vec![first];
    let words: Vec<&str> = content.split_inclusive(' ').collect();
    for piece in words.chunks(words.len().div_ceil(3).max(1)) {
        events.push(chunk(json!({"content": piece.concat()}), None));
    }
    events.push(chunk(json!({}), Some("stop")));
    let mut out: Vec<String> = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    out.push("data: [DONE]\n\n".to_string());
    out
}

fn sse(events: Vec<String>) -> Response {
    let body = Body::from_stream(futures::stream::iter(
        events
            .into_iter()
            .map(|e| Ok::<_, Infallible>(Bytes::from(e))),
    ));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start() -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { serve_mock(listener, "m1").await });
        addr
    }

    /// A minimal HTTP/1.0 exchange, enough to check the mock without a client crate.
    async fn exchange(addr: std::net::SocketAddr, request: String) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    fn post(path: &str, body: &str) -> String {
        format!("POST {path} HTTP/1.0\r\ncontent-type: application/json\r\nx-probe: 1\r\ncontent-length: {}\r\n\r\n{body}", body.len())
    }

    fn json_body(response: &str) -> Value {
        serde_json::from_str(response.split_once("\r\n\r\n").unwrap().1).unwrap()
    }

    #[tokio::test]
    async fn echoes_the_request() {
        let addr = start().await;
        let body = r#"{"model":"qwen","messages":[{"role":"user","content":"hi"}],"extra":[1]}"#;
        let response = exchange(addr, post("/v1/chat/completions", body)).await;
        assert!(response.starts_with("HTTP/1.0 200"), "{response}");
        assert!(response.contains("x-mock-backend: m1"));
        let v = json_body(&response);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["mock"]["model"], "qwen");
        assert_eq!(v["mock"]["headers"]["x-probe"], "1");
        assert_eq!(
            v["mock"]["request"],
            serde_json::from_str::<Value>(body).unwrap()
        );
        assert!(v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("[mock m1] model=qwen"));
    }

    #[tokio::test]
    async fn streams_sse_ending_in_done() {
        let addr = start().await;
        let body = r#"{"model":"q","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let response = exchange(addr, post("/prefix/v1/chat/completions", body)).await;
        assert!(
            response.contains("content-type: text/event-stream"),
            "{response}"
        );
        let events: Vec<&str> = response
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(events.last(), Some(&"[DONE]"));
        let first: Value = serde_json::from_str(events[0]).unwrap();
        assert_eq!(first["choices"][0]["delta"], json!({"role": "assistant"}));
        assert_eq!(first["mock"]["path"], "/prefix/v1/chat/completions");
        let last: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
        assert_eq!(last["choices"][0]["finish_reason"], "stop");
        let text: String = events[1..events.len() - 2]
            .iter()
            .map(|e| {
                serde_json::from_str::<Value>(e).unwrap()["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(text, "[mock m1] model=q messages=1 stream=true");
    }

    #[tokio::test]
    async fn rejects_non_json_and_unknown_paths() {
        let addr = start().await;
        assert!(exchange(addr, post("/v1/chat/completions", "nope"))
            .await
            .starts_with("HTTP/1.0 400"));
        assert!(exchange(addr, "GET /nothing HTTP/1.0\r\n\r\n".into())
            .await
            .starts_with("HTTP/1.0 404"));
        let models = exchange(addr, "GET /v1/models HTTP/1.0\r\n\r\n".into()).await;
        assert_eq!(json_body(&models)["data"][0]["id"], "m1");
    }
}
