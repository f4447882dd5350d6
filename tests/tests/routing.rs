//! Routing through the real Envoy + filter (`configs/routing.yaml`, priority strategy):
//! what each request looks like when it reaches the mock backend, and what the client sees.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use serde_json::{json, Value};
use vsr_e2e::{http, Reply, Stack};

const ENV_KEY: &str = "sk-from-env-e2e-456";

fn stack() -> &'static Stack {
    static STACK: OnceLock<Stack> = OnceLock::new();
    STACK.get_or_init(|| {
        Stack::start(
            include_str!("../configs/routing.yaml"),
            &[("VSR_E2E_KEY", ENV_KEY)],
        )
    })
}

/// The routing outcome a client sees in response headers.
fn routed(r: &Reply) -> (Option<&str>, Option<&str>) {
    (
        r.header("x-vsr-selected-model"),
        r.header("x-vsr-selected-decision"),
    )
}

fn messages(echo: &Value) -> &Value {
    &echo["request"]["messages"]
}

#[test]
fn or_keyword_routes_math_with_reasoning_on_and_prompt_replaced() {
    let r = stack().chat(&json!({"model": "MoM", "messages": [
        {"role": "system", "content": "old prompt"},
        {"role": "user", "content": "What is the integral of x^2?"}]}));
    let echo = r.echo();
    assert_eq!(routed(&r), (Some("qwen3-8b"), Some("math")));
    assert_eq!(echo["backend"], "qwen");
    assert_eq!(echo["request"]["model"], "qwen3-8b");
    assert_eq!(
        echo["request"]["chat_template_kwargs"],
        json!({"enable_thinking": true})
    );
    assert_eq!(
        messages(&echo),
        &json!([{"role": "system", "content": "You are a math tutor."}, {"role": "user", "content": "What is the integral of x^2?"}])
    );
    assert_eq!(r.header("x-vsr-selected-reasoning"), Some("on"));
    assert_eq!(r.header("x-vsr-injected-system-prompt"), Some("true"));
    let matched: BTreeSet<&str> = r
        .header("x-vsr-matched-keywords")
        .unwrap()
        .split(',')
        .collect();
    assert_eq!(matched, BTreeSet::from(["math", "no_secrets"]));
    // The upstream sees the routing headers the filter set.
    assert_eq!(echo["headers"]["x-selected-model"], "qwen3-8b");
    assert_eq!(echo["headers"]["x-gateway-model-name"], "qwen3-8b");
    assert_eq!(echo["headers"]["x-vsr-selected-decision"], "math");
}

#[test]
fn and_keyword_needs_every_word_and_insert_keeps_client_prompt() {
    let s = stack();
    let r = s.chat(&json!({"model": "MoM", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Is this a security vulnerability?"}]}));
    let echo = r.echo();
    assert_eq!(routed(&r), (Some("gpt-oss-20b"), Some("security")));
    assert_eq!(echo["request"]["reasoning_effort"], "low");
    assert_eq!(
        messages(&echo)[0],
        json!({"role": "system", "content": "Security review mode.\n\nBe brief."})
    );

    let r = s.ask("a security review, please");
    assert_eq!(
        routed(&r),
        (Some("plain-model"), None),
        "one of two AND keywords must not match"
    );
}

#[test]
fn nor_keyword_matches_only_without_the_words() {
    let s = stack();
    let r = s.chat(
        &json!({"model": "MoM", "chat_template_kwargs": {"enable_thinking": true, "other": 1},
        "messages": [{"role": "user", "content": "tell me a joke"}]}),
    );
    let echo = r.echo();
    assert_eq!(routed(&r), (Some("qwen3-8b"), Some("jokes")));
    // Reasoning off is written into the client's kwargs, keeping its other keys.
    assert_eq!(
        echo["request"]["chat_template_kwargs"],
        json!({"enable_thinking": false, "other": 1})
    );
    assert_eq!(r.header("x-vsr-selected-reasoning"), Some("off"));
    assert_eq!(r.header("x-vsr-injected-system-prompt"), Some("false"));

    let r = s.ask("tell me a joke about my password");
    assert_eq!(routed(&r), (Some("plain-model"), None));
    assert_eq!(r.header("x-vsr-matched-keywords"), Some("chitchat"));
}

#[test]
fn case_sensitive_keyword_and_reasoning_effort_off() {
    let s = stack();
    let r = s.chat(&json!({"model": "MoM", "reasoning_effort": "high",
        "messages": [{"role": "user", "content": "write SQL for the users table"}]}));
    let echo = r.echo();
    assert_eq!(routed(&r), (Some("gpt-oss-20b"), Some("sql")));
    assert!(
        echo["request"].get("reasoning_effort").is_none(),
        "reasoning off removes the effort: {echo}"
    );
    assert_eq!(r.header("x-vsr-selected-reasoning"), Some("off"));

    let r = s.ask("write sql for the users table");
    assert_eq!(
        routed(&r),
        (Some("plain-model"), None),
        "lowercase must not match a case-sensitive rule"
    );
}

#[test]
fn priority_picks_the_highest_matching_decision() {
    let r = stack().ask("urgent: compute this integral");
    assert_eq!(routed(&r), (Some("plain-model"), Some("urgent")));
    assert_eq!(r.echo()["backend"], "plain");
}

#[test]
fn no_match_falls_back_to_the_default_model() {
    let r = stack().ask("hello there");
    let echo = r.echo();
    assert_eq!(routed(&r), (Some("plain-model"), None));
    assert_eq!(echo["request"]["model"], "plain-model");
    assert!(echo["headers"].get("x-vsr-selected-decision").is_none());
    assert_eq!(r.header("x-vsr-selected-reasoning"), Some("off"));
}

#[test]
fn explicit_model_body_is_forwarded_unchanged() {
    let body = json!({"model": "gpt-oss-20b", "temperature": 0.3, "custom": {"a": [1, 2]},
        "messages": [{"role": "system", "content": "mine"}, {"role": "user", "content": "an integral, urgent"}]});
    let r = stack().chat(&body);
    let echo = r.echo();
    assert_eq!(echo["request"], body);
    assert_eq!(echo["backend"], "gptoss");
    assert_eq!(routed(&r), (Some("gpt-oss-20b"), None));
    assert!(
        echo["headers"].get("x-route-tag").is_none(),
        "no decision plugins for explicit models"
    );
}

#[test]
fn header_mutation_adds_updates_and_deletes() {
    let r = stack().chat_with(
        &[
            ("x-tenant", "client"),
            ("x-debug", "1"),
            ("x-route-tag", "from-client"),
        ],
        &json!({"model": "MoM", "messages": [{"role": "user", "content": "urgent!"}]}),
    );
    let headers = &r.echo()["headers"];
    assert_eq!(headers["x-tenant"], "router");
    assert!(headers.get("x-debug").is_none(), "{headers}");
    // `add` appends to what the client sent.
    assert_eq!(headers["x-route-tag"], "from-client, urgent");
}

#[test]
fn access_keys_are_injected_and_never_returned() {
    let s = stack();
    for (model, key) in [
        ("literal-key-model", "sk-literal-e2e-123"),
        ("env-key-model", ENV_KEY),
    ] {
        let r = s.chat_with(
            &[("authorization", "Bearer client-key")],
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        );
        let echo = r.echo();
        assert_eq!(
            echo["headers"]["authorization"],
            format!("Bearer {key}"),
            "{model}"
        );
        for (name, value) in &r.headers {
            assert!(
                !value.contains(key),
                "{model}: key leaked in response header {name}"
            );
        }
    }
    // A model without a key leaves the client's Authorization alone.
    let r = s.chat_with(
        &[("authorization", "Bearer client-key")],
        &json!({"model": "plain-model", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.echo()["headers"]["authorization"], "Bearer client-key");
}

#[test]
fn client_routing_headers_are_ignored() {
    let r = stack().chat_with(
        &[
            ("x-selected-model", "gpt-oss-20b"),
            ("x-vsr-selected-decision", "math"),
            ("x-gateway-model-name", "evil"),
        ],
        &json!({"model": "MoM", "messages": [{"role": "user", "content": "hello there"}]}),
    );
    let echo = r.echo();
    assert_eq!(echo["backend"], "plain");
    assert_eq!(echo["headers"]["x-selected-model"], "plain-model");
    assert_eq!(echo["headers"]["x-gateway-model-name"], "plain-model");
    assert!(echo["headers"].get("x-vsr-selected-decision").is_none());
}

#[test]
fn models_endpoint_lists_auto_names_then_models() {
    let r = http::get(&stack().url("/v1/models"));
    assert_eq!(r.status, 200);
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        [
            "MoM",
            "auto",
            "qwen3-8b",
            "gpt-oss-20b",
            "plain-model",
            "split-model",
            "prefixed-model",
            "literal-key-model",
            "env-key-model"
        ]
    );
    assert!(
        r.header("x-mock-backend").is_none(),
        "answered by the filter, not a backend"
    );
}

#[test]
fn streaming_passes_sse_through() {
    let r = stack().chat(&json!({"model": "auto", "stream": true, "messages": [{"role": "user", "content": "derivative of sin"}]}));
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "{r:?}"
    );
    assert_eq!(routed(&r), (Some("qwen3-8b"), Some("math")));
    let events: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{}", r.body);
    let first: Value = serde_json::from_str(events[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["mock"]["request"]["stream"], true);
    assert_eq!(first["mock"]["request"]["model"], "qwen3-8b");
    let finish: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert!(
        events.len() >= 5,
        "role, content chunks, finish, [DONE]: {events:?}"
    );
}

#[test]
fn weighted_endpoints_share_the_traffic() {
    let s = stack();
    let backends: BTreeSet<String> = (0..40)
        .map(|_| {
            s.ask("check my balance").echo()["backend"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        backends,
        BTreeSet::from(["split-a".to_string(), "split-b".to_string()])
    );
}

#[test]
fn endpoint_path_prefixes_the_upstream_path() {
    let r = stack().ask("the legacy system");
    let echo = r.echo();
    assert_eq!(echo["backend"], "prefixed");
    assert_eq!(echo["path"], "/openai/v1/chat/completions");
}

#[test]
fn other_paths_pass_through_to_the_default_model() {
    let r = http::get(&stack().url("/health"));
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));
    assert_eq!(r.header("x-mock-backend"), Some("plain"));
}
