//! Embeddings match sentence-transformers (fixture) to 1e-5, over gRPC and
//! HTTP, alone and batched (padding must not change results).

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use sidecar_common::*;
use vsr_proto::v1 as pb;

const TOL: f32 = 1e-5;

#[tokio::test]
async fn grpc_embed_matches_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path())).await;
    let mut c = client(&s).await;
    let refs = reference();
    // One call with every text (padded batch) ...
    let resp = c
        .embed(pb::EmbedRequest {
            texts: refs.iter().map(|r| r.0.clone()).collect(),
        })
        .await
        .unwrap();
    let md = resp.metadata().clone();
    let resp = resp.into_inner();
    assert_eq!(resp.embeddings.len(), refs.len());
    for ((text, tokens, want), got) in refs.iter().zip(&resp.embeddings) {
        let d = max_abs_diff(&got.values, want);
        assert!(d < TOL, "batched `{text}`: max |diff| {d}");
        let input = got.input.unwrap();
        assert_eq!(input.tokens as usize, *tokens, "token count of `{text}`");
        assert!(!input.truncated);
    }
    for key in [
        "x-queue-time-us",
        "x-tokenize-time-us",
        "x-inference-time-us",
        "x-total-time-us",
    ] {
        assert!(md.get(key).is_some(), "metadata {key} missing");
    }
    assert!(resp.timing.unwrap().total_us > 0);
    // ... and one call per text.
    for (text, _, want) in &refs {
        let got = c
            .embed(pb::EmbedRequest {
                texts: vec![text.clone()],
            })
            .await
            .unwrap()
            .into_inner();
        let d = max_abs_diff(&got.embeddings[0].values, want);
        assert!(d < TOL, "single `{text}`: max |diff| {d}");
    }
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn http_embeddings_openai_format() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path())).await;
    let refs = reference();
    let http = http_client::post_json(
        s.http_addr,
        "/v1/embeddings",
        &serde_json::json!({"model": "m", "input": [refs[0].0, refs[1].0]}),
    )
    .await;
    assert_eq!(http.0, 200, "{}", http.1);
    let v: serde_json::Value = serde_json::from_str(&http.1).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "m");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    for (i, d) in v["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let e: Vec<f32> = d["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        assert!(max_abs_diff(&e, &refs[i].2) < TOL);
    }
    assert_eq!(
        v["usage"]["prompt_tokens"].as_u64().unwrap() as usize,
        refs[0].1 + refs[1].1
    );
    // A single string works too.
    let one = http_client::post_json(
        s.http_addr,
        "/v1/embeddings",
        &serde_json::json!({"input": refs[2].0}),
    )
    .await;
    assert_eq!(one.0, 200);
    let v: serde_json::Value = serde_json::from_str(&one.1).unwrap();
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    s.shutdown().await.unwrap();
}

#[tokio::test]
async fn long_text_is_truncated_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let s = start(config(dir.path())).await;
    let mut c = client(&s).await;
    // ~4500 tokens, 22 KB: also takes the off-runtime tokenizer path.
    let long = "the quick brown fox jumps over the lazy dog ".repeat(500);
    let got = c
        .embed(pb::EmbedRequest { texts: vec![long] })
        .await
        .unwrap()
        .into_inner();
    let input = got.embeddings[0].input.unwrap();
    assert!(input.truncated);
    assert_eq!(input.tokens, 512);
    s.shutdown().await.unwrap();
}
