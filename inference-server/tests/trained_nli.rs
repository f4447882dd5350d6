//! The shipped `nli` head under `models/nli`, served by the real sidecar
//! (task discovery of `models/`, the real base model, gRPC `Nli` with the
//! default task), labels obvious premise/hypothesis pairs, and answers with
//! the label set its task.json and model card declare. A missing head fails
//! the test.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use sidecar_common::*;
use vsr_proto::v1 as pb;

const LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// (premise, hypothesis, expected label): the pairs the model card lists.
fn expected() -> &'static [(&'static str, &'static str, &'static str)] {
    let pairs = inference_server::training::data::pair_acceptance_examples("nli");
    assert!(!pairs.is_empty(), "no nli acceptance pairs");
    pairs
}

#[test]
fn nli_task_and_card_declare_the_snli_labels() {
    let (spec, card) = shipped_task("nli");
    assert_eq!(spec["kind"], "pair");
    assert_eq!(spec["labels"], serde_json::json!(LABELS));
    assert!(
        card.contains("* label list (task.json order): `entailment`, `neutral`, `contradiction`"),
        "model-card.md does not list the labels in task.json order"
    );
}

#[tokio::test]
async fn shipped_nli_head_labels_obvious_pairs() {
    let models = repo_root().join("models");
    assert!(
        models.join("nli/task.json").is_file(),
        "models/nli/task.json is missing: the head is not shipped"
    );
    let s = start(config(&models)).await;
    let mut c = client(&s).await;
    let resp = c
        .nli(pb::NliRequest {
            pairs: expected()
                .iter()
                .map(|(p, h, _)| pb::NliPair {
                    premise: p.to_string(),
                    hypothesis: h.to_string(),
                })
                .collect(),
            // Empty: the default task, `nli`.
            task: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.results.len(), expected().len());
    let mut failures = Vec::new();
    for ((p, h, want), r) in expected().iter().zip(&resp.results) {
        let labels: Vec<&str> = r.scores.iter().map(|x| x.label.as_str()).collect();
        assert_eq!(labels, LABELS, "scores of {p:?} / {h:?}");
        let sum: f32 = r.scores.iter().map(|x| x.score).sum();
        assert!((sum - 1.0).abs() < 1e-3, "probabilities sum to {sum}");
        assert!(LABELS.contains(&r.label.as_str()), "label {}", r.label);
        if r.label != *want {
            failures.push(format!(
                "{p:?} ⇒ {h:?}: {} ({:.3}), want {want} ({:.3})",
                r.label,
                r.confidence,
                r.scores.iter().find(|x| x.label == *want).unwrap().score
            ));
        }
    }
    // Swapping the texts changes the question: the head sees which is which
    // (token type ids), so an entailment does not simply hold backwards.
    let back = c
        .nli(pb::NliRequest {
            pairs: vec![pb::NliPair {
                premise: "A person is playing an instrument.".into(),
                hypothesis: "A man is playing a guitar on stage.".into(),
            }],
            task: "nli".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let fwd = &resp.results[0];
    let p_ent = |r: &pb::SequenceClassification| r.scores[0].score;
    if p_ent(&back.results[0]) >= p_ent(fwd) {
        failures.push(format!(
            "P(entailment) of the swapped pair {:.3} is not below the forward pair's {:.3}",
            p_ent(&back.results[0]),
            p_ent(fwd)
        ));
    }
    s.shutdown().await.unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
