//! `TaskSpec::line_breaks`: the tokenizer drops whitespace, so a token
//! task sees a line break only through the learned vector its branch adds
//! at line-start tokens. Tasks without it see no difference, and the shared
//! embedding never does.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use inference_server::sidecar::backend::candle::CandleBackend;
use inference_server::sidecar::backend::{Backend, HeadOutput, TaskFiles};
use inference_server::sidecar::tasks::random::write_random_task;
use inference_server::sidecar::tasks::TaskKind;
use inference_server::sidecar::tokenize::Tokenization;
use sidecar_common::*;

/// Token logits and the embedding of each text, through a backend holding
/// one random token task, with or without `line_breaks`.
fn outputs(line_breaks: bool, texts: &[&str]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = random_task(
        dir.path(),
        "pii",
        TaskKind::Token,
        &["O", "B-PERSON", "I-PERSON"],
        1,
        Some(4),
    );
    spec.line_breaks = line_breaks;
    write_random_task(dir.path(), &spec, 384, 1536, 6).unwrap();
    let files = TaskFiles {
        spec,
        dir: dir.path().join("pii"),
    };
    let base = base_model();
    let backend = CandleBackend::load(
        &base,
        std::slice::from_ref(&files),
        candle_core::Device::Cpu,
    )
    .unwrap();
    let tok = Tokenization::load(&base.join("tokenizer.json"), 64).unwrap();
    let batch = batch_of(&tok, texts, true, &[0]);
    backend
        .forward(&batch)
        .unwrap()
        .into_iter()
        .map(|o| {
            let Some((_, HeadOutput::Tokens { logits, .. })) = o.heads.into_iter().next() else {
                panic!("no token logits");
            };
            (logits, o.embedding.unwrap())
        })
        .collect()
}

#[test]
fn only_a_line_break_task_sees_line_breaks() {
    let texts = [
        "Emilie Nielsen\nWeatherford plc",
        "Emilie Nielsen Weatherford plc",
    ];
    let plain = outputs(false, &texts);
    assert_eq!(plain[0].0.len(), plain[1].0.len());
    assert!(max_abs_diff(&plain[0].0, &plain[1].0) < 1e-5);

    // Other whitespace (two spaces, a tab) is not a line break.
    let lines = outputs(
        true,
        &[texts[0], texts[1], "Emilie  Nielsen\tWeatherford plc"],
    );
    assert!(
        max_abs_diff(&lines[0].0, &lines[1].0) > 1e-3,
        "the line-break vector did not change the token logits"
    );
    assert!(max_abs_diff(&lines[1].0, &lines[2].0) < 1e-5);
    // The shared embedding ignores line breaks either way.
    assert!(max_abs_diff(&lines[0].1, &lines[1].1) < 1e-5);
}
