//! Chat completion answers the router writes itself (blocked requests, cache hits) as
//! JSON or as SSE chunks, and the reassembly of a streamed answer into one completion
//! (what the semantic cache stores).

use serde_json::{json, Map, Value};

/// An answer sent from the filter; the upstream is never called.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_SSE: &str = "text/event-stream";

/// A one-choice `chat.completion` with `content` and `finish_reason`.
pub fn completion(id: &str, model: &str, created: u64, content: &str, finish: &str) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish,
        }],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    })
}

/// Renders a stored or local `chat.completion` the way the client asked: the JSON itself,
/// or SSE chunks (role + content per choice, then the finish reason) ending in `[DONE]`.
pub fn render(completion: &Value, stream: bool) -> (&'static str, Vec<u8>) {
    if !stream {
        return (CONTENT_TYPE_JSON, completion.to_string().into_bytes());
    }
    let base = |choices: Value| {
        json!({
            "id": completion.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": completion.get("created").cloned().unwrap_or(Value::from(0)),
            "model": completion.get("model").cloned().unwrap_or(Value::Null),
            "choices": choices,
        })
    };
    let mut out = String::new();
    let mut push = |v: Value| {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    let empty = Vec::new();
    let choices = completion
        .get("choices")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    for (i, c) in choices.iter().enumerate() {
        let index = c.get("index").cloned().unwrap_or(Value::from(i));
        let message = c.get("message").cloned().unwrap_or(json!({}));
        let mut delta = Map::new();
        delta.insert("role".into(), Value::from("assistant"));
        if let Some(content) = message.get("content") {
            delta.insert("content".into(), content.clone());
        }
        if let Some(tc) = message.get("tool_calls") {
            delta.insert("tool_calls".into(), tc.clone());
        }
        push(base(
            json!([{"index": index, "delta": delta, "finish_reason": null}]),
        ));
        let finish = c.get("finish_reason").cloned().unwrap_or(Value::Null);
        push(base(
            json!([{"index": index, "delta": {}, "finish_reason": finish}]),
        ));
    }
    out.push_str("data: [DONE]\n\n");
    (CONTENT_TYPE_SSE, out.into_bytes())
}

/// Rebuilds one `chat.completion` from an SSE body. Content deltas are concatenated per
/// choice; a first chunk with only `role` is fine. None when the stream is not a chat
/// completion stream or carries tool calls (those are not replayed from cache).
pub fn reassemble_sse(body: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(body).ok()?;
    let mut id = Value::Null;
    let mut model = Value::Null;
    let mut created = Value::from(0);
    let mut usage = None;
    // (content, finish_reason) per choice index.
    let mut choices: Vec<(String, Value)> = Vec::new();
    let mut saw_done = false;
    for line in text.lines() {
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let data = data.trim();
        if data == "[DONE]" {
            saw_done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(data).ok()?;
        if chunk.get("object").and_then(Value::as_str) != Some("chat.completion.chunk") {
            return None;
        }
        if id.is_null() {
            id = chunk.get("id").cloned().unwrap_or(Value::Null);
            model = chunk.get("model").cloned().unwrap_or(Value::Null);
            created = chunk.get("created").cloned().unwrap_or(Value::from(0));
        }
        if let Some(u) = chunk.get("usage").filter(|u| !u.is_null()) {
            usage = Some(u.clone());
        }
        for c in chunk
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = c.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            if index > 64 {
                return None;
            }
            if choices.len() <= index {
                choices.resize(index + 1, (String::new(), Value::Null));
            }
            let delta = c.get("delta");
            if delta
                .and_then(|d| d.get("tool_calls"))
                .is_some_and(|t| !t.is_null())
            {
                return None;
            }
            if let Some(s) = delta.and_then(|d| d.get("content")).and_then(Value::as_str) {
                choices[index].0.push_str(s);
            }
            if let Some(f) = c.get("finish_reason").filter(|f| !f.is_null()) {
                choices[index].1 = f.clone();
            }
        }
    }
    if !saw_done || choices.is_empty() {
        return None;
    }
    let mut out = json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices.into_iter().enumerate().map(|(i, (content, finish))| json!({
            "index": i,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish,
        })).collect::<Vec<_>>(),
    });
    if let (Some(u), Some(map)) = (usage, out.as_object_mut()) {
        map.insert("usage".into(), u);
    }
    Some(out)
}

/// A JSON `chat.completion` body worth caching (parsed), or None.
pub fn parse_completion(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    (v.get("object").and_then(Value::as_str) == Some("chat.completion")
        && v.get("choices")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty()))
    .then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_round_trip_with_role_only_first_chunk() {
        let sse = concat!(
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: [DONE]\n\n"
        );
        let c = reassemble_sse(sse.as_bytes()).unwrap();
        assert_eq!(c["choices"][0]["message"]["content"], "Hello");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert_eq!(c["model"], "m");

        let (ct, body) = render(&c, true);
        assert_eq!(ct, CONTENT_TYPE_SSE);
        let again = reassemble_sse(&body).unwrap();
        assert_eq!(again["choices"], c["choices"]);
        let (ct, body) = render(&c, false);
        assert_eq!(ct, CONTENT_TYPE_JSON);
        assert_eq!(parse_completion(&body).unwrap(), c);
    }

    #[test]
    fn incomplete_or_foreign_streams_are_not_reassembled() {
        let no_done = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\n";
        assert!(reassemble_sse(no_done.as_bytes()).is_none());
        assert!(reassemble_sse(b"data: {\"object\":\"other\"}\n\ndata: [DONE]\n\n").is_none());
        let tools = "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{}]}}]}\n\ndata: [DONE]\n\n";
        assert!(reassemble_sse(tools.as_bytes()).is_none());
        assert!(parse_completion(b"{\"error\":{}}").is_none());
    }

    #[test]
    fn blocked_completion_streams_with_content_filter() {
        let c = completion("x", "m", 1, "blocked", "content_filter");
        let (_, body) = render(&c, true);
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"));
        assert!(text.contains("\"finish_reason\":\"content_filter\""));
    }
}
