//! Requests the filter answers itself with an OpenAI-shaped error (`configs/basic.yaml`,
//! default 1 MiB body limit), and that it keeps routing correctly afterwards.

use std::sync::OnceLock;

use serde_json::json;
use vsr_e2e::{http, Stack};

const LIMIT: usize = 1024 * 1024;

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| Stack::start(include_str!("../configs/basic.yaml"), &[]))
}

fn post_raw(body: &str) -> vsr_e2e::Reply {
    http::post(&stack().url("/v1/chat/completions"), &[], body.as_bytes())
}

/// A valid auto request of exactly `size` bytes (the user text is padded).
fn body_of_size(size: usize) -> String {
    let shell =
        json!({"model": "MoM", "messages": [{"role": "user", "content": "integral "}]}).to_string();
    let pad = size - shell.len();
    let body = json!({"model": "MoM", "messages": [{"role": "user", "content": format!("integral {}", "x".repeat(pad))}]}).to_string();
    assert_eq!(body.len(), size);
    body
}

/// The filter still routes after an error: a panic would have killed the VM.
fn assert_still_routes() {
    let r = stack().ask("an integral");
    assert_eq!(r.echo()["backend"], "a", "{r:?}");
    assert_eq!(r.header("x-vsr-selected-decision"), Some("math"));
}

#[test]
fn malformed_bodies_are_400_with_a_code() {
    let cases = [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_type"),
        (
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            "missing_required_parameter",
        ),
        (r#"{"model": "MoM"}"#, "missing_required_parameter"),
        (r#"{"model": "MoM", "messages": []}"#, "empty_array"),
        (r#"{"model": "MoM", "messages": "hi"}"#, "invalid_type"),
        (
            r#"{"model": 7, "messages": [{"role": "user", "content": "x"}]}"#,
            "invalid_type",
        ),
        (
            r#"{"model": "MoM", "messages": [{"role": "user", "content": 5}]}"#,
            "invalid_type",
        ),
        (
            r#"{"model": "MoM", "messages": [{"role": "robot", "content": "x"}]}"#,
            "invalid_value",
        ),
        (
            r#"{"model": "MoM", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}"#,
            "invalid_type",
        ),
        ("", "invalid_json"),
    ];
    for (body, code) in cases {
        assert_eq!(post_raw(body).error_code(400), code, "body {body:?}");
        assert_still_routes();
    }
}

#[test]
fn wrong_field_types_name_the_param() {
    let r = post_raw(r#"{"model": "MoM", "messages": [{"role": "user", "content": 5}]}"#);
    assert_eq!(r.json()["error"]["param"], "messages[0].content");
}

#[test]
fn unknown_explicit_model_is_404() {
    let r = stack()
        .chat(&json!({"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.error_code(404), "model_not_found");
    assert_eq!(r.json()["error"]["param"], "model");
    assert_still_routes();
}

#[test]
fn bodies_up_to_the_limit_are_routed() {
    let body = body_of_size(LIMIT);
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    let echo = post_raw(&body).echo();
    assert_eq!(echo["backend"], "a");
    assert_eq!(echo["request"]["messages"], sent["messages"]);
}

#[test]
fn over_the_limit_by_content_length_is_413_before_the_body() {
    // Only the headers and a little of the body are sent: the filter must not wait for the rest.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\ncontent-length: {}",
        LIMIT + 1
    );
    let r = http::raw(stack().port, &head, vec![b"{\"model\":\"MoM\"".to_vec()]);
    assert_eq!(r.error_code(413), "request_too_large");
    assert_still_routes();
}

#[test]
fn over_the_limit_chunked_is_413() {
    let body = body_of_size(LIMIT + 1).into_bytes();
    let chunks = body
        .chunks(64 * 1024)
        .map(|c| {
            [
                format!("{:x}\r\n", c.len()).into_bytes(),
                c.to_vec(),
                b"\r\n".to_vec(),
            ]
            .concat()
        })
        .chain([b"0\r\n\r\n".to_vec()])
        .collect();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: e2e\r\ncontent-type: application/json\r\ntransfer-encoding: chunked";
    let r = http::raw(stack().port, head, chunks);
    assert_eq!(r.error_code(413), "request_too_large");
    assert_still_routes();
}
