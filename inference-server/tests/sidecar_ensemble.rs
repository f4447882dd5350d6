//! An ensemble task (`members` > 1) as the sidecar serves it: its
//! probabilities are the mean of its members' probabilities, each member
//! run alone through the same backend; `vsr ensemble`'s merge refuses
//! members of another split.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use std::path::Path;

use inference_server::sidecar::tasks::random::write_random_task;
use inference_server::sidecar::tasks::{
    write_task, HeadSpec, LoraSpec, Pooling, TaskKind, TaskSpec,
};
use inference_server::training::{ensemble, evaluate};
use sidecar_common::*;

/// A member's layout: re-run layers, pooling, LoRA targets.
type Layout = (usize, Pooling, &'static [&'static str]);

/// The shipped domain layout: one CLS-pooled layer, LoRA on query and value.
const ONE_CLS_LAYER: Layout = (
    1,
    Pooling::Cls,
    &["attention.self.query", "attention.self.value"],
);
/// Two mean-pooled layers with a key adapter: the first layer's shared
/// frozen projections get a different key delta per member, and the second
/// layer runs on rows that already differ.
const TWO_MEAN_LAYERS: Layout = (
    2,
    Pooling::Mean,
    &["attention.self.key", "attention.self.value", "output.dense"],
);

/// A random-weight task reading the shared embedding, written to
/// `dir/custom`.
fn member(
    dir: &Path,
    split_seed: u64,
    (top_layers, pooling, targets): Layout,
) -> std::path::PathBuf {
    let spec = TaskSpec {
        name: "custom".into(),
        kind: TaskKind::Sequence,
        labels: vec!["a".into(), "b".into(), "c".into()],
        pooling,
        top_layers,
        lora: Some(LoraSpec {
            rank: 4,
            alpha: 8.0,
            targets: targets.iter().map(|t| t.to_string()).collect(),
        }),
        head: HeadSpec {
            with_embedding: true,
            ..HeadSpec::default()
        },
        line_breaks: false,
        members: 1,
        metadata: Some(serde_json::json!({"split": {"seed": split_seed}})),
    };
    write_random_task(dir, &spec, 384, 1536, 6).unwrap();
    dir.join("custom")
}

fn softmax_rows(logits: &[Vec<f32>]) -> Vec<Vec<f32>> {
    logits.iter().map(|l| evaluate::softmax(l)).collect()
}

#[test]
fn ensemble_averages_its_members_probabilities() {
    for layout in [ONE_CLS_LAYER, TWO_MEAN_LAYERS] {
        averages_members(layout);
    }
    refuses_another_split();
}

fn averages_members(layout: Layout) {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [
        member(&tmp.path().join("m0"), 42, layout),
        member(&tmp.path().join("m1"), 42, layout),
    ];
    let members: Vec<_> = dirs
        .iter()
        .map(|d| ensemble::read_member(d).unwrap())
        .collect();
    let (spec, tensors) = ensemble::merge(&members).unwrap();
    assert_eq!(spec.members, 2);
    let out = tmp.path().join("ens/custom");
    write_task(&out, &spec, &tensors).unwrap();

    let texts = [
        "How do I find the eigenvalues of a 2x2 matrix?",
        "What is the capital of France?",
        "Which organelle makes ATP in a cell, and how does it do that?",
    ];
    let probs = |dir: &Path| {
        let task = evaluate::load_task(&base_model(), dir, 128).unwrap();
        softmax_rows(&task.logits(&texts, 2).unwrap())
    };
    let (a, b, e) = (probs(&dirs[0]), probs(&dirs[1]), probs(&out));
    let mut members_differ = 0f32;
    for ((a, b), e) in a.iter().zip(&b).zip(&e) {
        for ((pa, pb), pe) in a.iter().zip(b).zip(e) {
            let mean = (pa + pb) / 2.0;
            assert!((pe - mean).abs() < 1e-5, "ensemble {pe} vs mean {mean}");
            members_differ = members_differ.max((pa - pb).abs());
        }
    }
    // Two random members answer differently, so the check above is not
    // satisfied by one member's answer alone.
    assert!(members_differ > 1e-3, "members agree to {members_differ}");

    // Stored as f16 (`vsr ensemble --f16`), loaded as f32: within f16's
    // rounding of the same probabilities.
    let half: std::collections::HashMap<_, _> = tensors
        .iter()
        .map(|(k, t)| (k.clone(), t.to_dtype(candle_core::DType::F16).unwrap()))
        .collect();
    let out_half = tmp.path().join("ens-f16/custom");
    write_task(&out_half, &spec, &half).unwrap();
    for (e, h) in e.iter().zip(&probs(&out_half)) {
        for (pe, ph) in e.iter().zip(h) {
            assert!((pe - ph).abs() < 1e-2, "f16 {ph} vs f32 {pe}");
        }
    }
}

fn refuses_another_split() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs = [member(&tmp.path().join("m0"), 42, ONE_CLS_LAYER)];
    // A member of another split could have trained on the other's
    // validation examples: refused, naming the field.
    let other = ensemble::read_member(&member(&tmp.path().join("m2"), 7, ONE_CLS_LAYER)).unwrap();
    let first = ensemble::read_member(&dirs[0]).unwrap();
    let e = ensemble::merge(&[first, other]).err().unwrap().to_string();
    assert!(e.contains("metadata.split"), "{e}");
}
