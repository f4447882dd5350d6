//! The filter calling the real sidecar (shipped models under `models/`) through the real
//! Envoy: model-signal routing, the PII guard and the semantic cache
//! (`configs/sidecar.yaml`).

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use vsr_e2e::{Reply, SidecarStack, Stack};

fn stack() -> &'static Stack {
    static WORLD: OnceLock<SidecarStack> = OnceLock::new();
    &WORLD
        .get_or_init(|| SidecarStack::start(include_str!("../configs/sidecar.yaml")))
        .stack
}

fn routed(r: &Reply) -> (Option<&str>, Option<&str>) {
    assert_eq!(r.header("x-vsr-degraded"), None, "{r:?}");
    (
        r.header("x-vsr-selected-model"),
        r.header("x-vsr-selected-decision"),
    )
}

fn user(text: &str) -> Value {
    json!({"model": "MoM", "messages": [{"role": "user", "content": text}]})
}

#[test]
fn domain_and_keyword_combine() {
    let r = stack().ask("Is a verbal contract enforceable in court, or does the statute of frauds require it to be in writing?");
    assert_eq!(
        routed(&r),
        (Some("law-model"), Some("legal_contract")),
        "{r:?}"
    );
    assert_eq!(r.header("x-vsr-selected-category"), Some("law"));
    assert_eq!(r.header("x-vsr-matched-domains"), Some("law"));
    assert_eq!(r.header("x-vsr-matched-keywords"), Some("legal_words"));
    assert_eq!(r.echo()["request"]["model"], "law-model");

    // The domain alone is not enough for the AND rule.
    let r = stack()
        .ask("What is the difference between a misdemeanor and a felony under criminal law?");
    assert_eq!(r.header("x-vsr-selected-category"), Some("law"), "{r:?}");
    assert_ne!(r.header("x-vsr-selected-decision"), Some("legal_contract"));
}

#[test]
fn embedding_signal_routes_billing() {
    let r = stack().ask("Please give me my money back for the order, I was charged twice");
    assert_eq!(
        routed(&r),
        (Some("support-model"), Some("billing_support")),
        "{r:?}"
    );
    assert_eq!(r.header("x-vsr-matched-embeddings"), Some("billing"));

    let r = stack().ask("Write a short poem about autumn leaves");
    assert_eq!(r.header("x-vsr-matched-embeddings"), None, "{r:?}");
    assert_ne!(r.header("x-vsr-selected-decision"), Some("billing_support"));
}

#[test]
fn pii_is_masked_before_the_request_leaves_envoy() {
    let r = stack().chat(&json!({"model": "MoM", "messages": [
        {"role": "system", "content": "You are a math tutor. Contact: tutor@school.example"},
        {"role": "user", "content": "Solve for x: 3x + 7 = 22. My email is ann.lee@example.com and see https://example.com/hw"}]}));
    assert_eq!(routed(&r), (Some("math-model"), Some("math")), "{r:?}");
    assert_eq!(r.header("x-vsr-pii-masked"), Some("EMAIL_ADDRESS"), "{r:?}");
    let echo = r.echo();
    let msgs = &echo["request"]["messages"];
    assert_eq!(
        msgs[1]["content"],
        "Solve for x: 3x + 7 = 22. My email is <EMAIL_ADDRESS> and see https://example.com/hw"
    );
    // Earlier messages are masked too; the allowed URL type is kept.
    assert_eq!(
        msgs[0]["content"],
        "You are a math tutor. Contact: <EMAIL_ADDRESS>"
    );
    assert!(!r.body.contains("ann.lee@example.com"));
}

#[test]
fn pii_block_and_allow_list() {
    let r = stack().ask("This is confidential: my social security number is 078-05-1120");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-vsr-pii-violation"), Some("true"));
    assert_eq!(r.header("x-vsr-pii-types"), Some("US_SSN"));
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(
        v.get("mock").is_none(),
        "the backend must not be called: {v}"
    );
    assert!(!r.body.contains("078-05-1120"));

    // EMAIL_ADDRESS is allowed for this decision.
    let r = stack().ask("This is confidential: reply to ann.lee@example.com please");
    assert_eq!(
        routed(&r),
        (Some("general-model"), Some("private")),
        "{r:?}"
    );
    assert_eq!(r.header("x-vsr-pii-violation"), None);
    assert_eq!(
        r.echo()["request"]["messages"][0]["content"],
        "This is confidential: reply to ann.lee@example.com please"
    );
}

fn cache_hit(r: &Reply) -> bool {
    r.header("x-vsr-cache-hit") == Some("true")
}

#[test]
fn semantic_cache_miss_store_hit_negation_and_system_prompt() {
    let s = stack();
    let first = s.ask("What is the derivative of x cubed plus five x?");
    assert_eq!(
        routed(&first),
        (Some("math-model"), Some("math")),
        "{first:?}"
    );
    assert!(!cache_hit(&first));
    let original = first.echo()["request"]["messages"][0]["content"].clone();

    // A paraphrase hits and replays the stored answer (the mock echo of the first request).
    let hit = s.ask("What's the derivative of x cubed plus five x?");
    assert!(cache_hit(&hit), "{hit:?}");
    assert_eq!(
        hit.json()["mock"]["request"]["messages"][0]["content"],
        original
    );
    assert_eq!(hit.header("x-vsr-selected-model"), Some("math-model"));

    // Served as SSE to a streaming client.
    let mut streaming = user("What's the derivative of x cubed plus five x?");
    streaming["stream"] = json!(true);
    let sse = s.chat(&streaming);
    assert!(cache_hit(&sse), "{sse:?}");
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert!(sse.body.trim_end().ends_with("data: [DONE]"), "{sse:?}");
    assert!(sse.body.contains("chat.completion.chunk"));

    // A negated question is not the same question.
    let neg = s.ask("What is not the derivative of x cubed plus five x?");
    assert!(!cache_hit(&neg), "{neg:?}");

    // Nor is the same question under another system prompt.
    let other = s.chat(&json!({"model": "MoM", "messages": [
        {"role": "system", "content": "Answer like a pirate."},
        {"role": "user", "content": "What is the derivative of x cubed plus five x?"}]}));
    assert!(!cache_hit(&other), "{other:?}");
}

#[test]
fn streamed_answers_are_stored_and_expire() {
    let s = stack();
    let mut req = user("Compute the integral of two x from zero to three.");
    req["stream"] = json!(true);
    let first = s.chat(&req);
    assert_eq!(first.status, 200);
    assert!(!cache_hit(&first), "{first:?}");
    assert!(first.body.contains("data: [DONE]"));

    // Stored from the reassembled stream; a JSON client gets a chat.completion.
    let hit = s.ask("Compute the integral of two x from zero to three.");
    assert!(cache_hit(&hit), "{hit:?}");
    assert_eq!(hit.json()["object"], "chat.completion");
    assert!(hit.json()["choices"][0]["message"]["content"]
        .as_str()
        .is_some_and(|c| !c.is_empty()));

    // ttl_seconds: 3 for this decision.
    std::thread::sleep(Duration::from_secs(4));
    let expired = s.ask("Compute the integral of two x from zero to three.");
    assert!(!cache_hit(&expired), "{expired:?}");
}
