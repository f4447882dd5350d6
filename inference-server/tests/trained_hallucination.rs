//! The shipped `hallucination` head under `models/hallucination`, served by
//! the real sidecar (task discovery of `models/`, the real base model, gRPC
//! `ClassifyTokens` with the default task): "It was completed in 1889." is
//! mostly `supported`, the year the context states included; in "It was completed in 1920
//! by Napoleon." the changed year and the invented name are `hallucinated`;
//! every label is one its task.json and model card declare. A missing head
//! fails the test.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use sidecar_common::*;
use vsr_proto::v1 as pb;

const LABELS: [&str; 2] = ["supported", "hallucinated"];

const CONTEXT: &str =
    "The Eiffel Tower is in Paris, completed in 1889. When was the Eiffel Tower completed?";
const SUPPORTED: &str = "It was completed in 1889.";
const FABRICATED: &str = "It was completed in 1920 by Napoleon.";

#[test]
fn hallucination_task_and_card_declare_the_labels() {
    let (spec, card) = shipped_task("hallucination");
    assert_eq!(spec["kind"], "pair_token");
    assert_eq!(spec["labels"], serde_json::json!(LABELS));
    assert!(
        card.contains("* labels (task.json order): supported, hallucinated"),
        "model-card.md does not list the labels in task.json order"
    );
}

/// (token text, label, score) of each answer token.
fn tokens(r: &pb::TokenLabels, answer: &str) -> Vec<(String, String, f32)> {
    r.tokens
        .iter()
        .map(|t| {
            (
                answer[t.byte_start as usize..t.byte_end as usize].to_lowercase(),
                t.label.clone(),
                t.score,
            )
        })
        .collect()
}

/// P(hallucinated) of a token (the response carries the winning label's score).
fn p_hallucinated(label: &str, score: f32) -> f32 {
    if label == "hallucinated" {
        score
    } else {
        1.0 - score
    }
}

#[tokio::test]
async fn shipped_hallucination_head_flags_the_fabricated_answer() {
    let models = repo_root().join("models");
    assert!(
        models.join("hallucination/task.json").is_file(),
        "models/hallucination/task.json is missing: the head is not shipped"
    );
    let s = start(config(&models)).await;
    let mut c = client(&s).await;
    let resp = c
        .classify_tokens(pb::ClassifyTokensRequest {
            inputs: [SUPPORTED, FABRICATED]
                .iter()
                .map(|a| pb::TokenPair {
                    context: CONTEXT.into(),
                    answer: a.to_string(),
                })
                .collect(),
            // Empty: the default task, `hallucination`.
            task: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    s.shutdown().await.unwrap();
    assert_eq!(resp.results.len(), 2);
    let good = tokens(&resp.results[0], SUPPORTED);
    let bad = tokens(&resp.results[1], FABRICATED);
    // it / was / completed / in / 1889 / .
    assert_eq!(good.len(), 6, "{good:?}");
    for (t, l, _) in good.iter().chain(&bad) {
        assert!(LABELS.contains(&l.as_str()), "{t:?}: label {l:?}");
    }

    let supported = good.iter().filter(|t| t.1 == "supported").count();
    assert!(
        supported * 2 > good.len(),
        "the supported answer should be mostly `supported`: {good:?}"
    );
    let mean = |ts: &[(String, String, f32)]| {
        ts.iter().map(|t| p_hallucinated(&t.1, t.2)).sum::<f32>() / ts.len() as f32
    };
    assert!(
        mean(&bad) > mean(&good),
        "mean P(hallucinated): fabricated {:.3} vs supported {:.3}",
        mean(&bad),
        mean(&good)
    );
    // The contested fact: the year. In the context → supported; changed →
    // hallucinated, and more likely so than the context's year.
    let year = good.iter().find(|t| t.0 == "1889").unwrap();
    assert_eq!(year.1, "supported", "1889 is in the context: {good:?}");
    let fake = bad.iter().find(|t| t.0 == "1920").unwrap();
    assert_eq!(
        fake.1, "hallucinated",
        "1920 is not in the context: {bad:?}"
    );
    let name = bad.iter().find(|t| t.0.starts_with("napoleon")).unwrap();
    assert_eq!(
        name.1, "hallucinated",
        "Napoleon is not in the context: {bad:?}"
    );
    assert!(
        p_hallucinated(&fake.1, fake.2) > p_hallucinated(&year.1, year.2) + 0.3,
        "P(hallucinated): 1920 {:.3} vs 1889 {:.3}",
        p_hallucinated(&fake.1, fake.2),
        p_hallucinated(&year.1, year.2)
    );
}
