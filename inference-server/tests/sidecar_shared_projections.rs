//! The trunk and the branches entering one layer share that layer's frozen
//! query/key/value projections (computed once a batch). A task's outputs
//! must not depend on whether it got them shared or projected its own: a
//! task asked alone, with no embedding, is the one case that projects its
//! own (the trunk stops where it enters), so it is the reference.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use inference_server::sidecar::backend::candle::CandleBackend;
use inference_server::sidecar::backend::Backend;
use inference_server::sidecar::tasks::random::write_random_task;
use inference_server::sidecar::tasks::{Pooling, TaskKind};
use inference_server::sidecar::tokenize::Tokenization;
use sidecar_common::*;

const TEXTS: [&str; 3] = [
    "Emilie Nielsen\nWeatherford International plc\n3369 Clarke Avenue",
    "What is the capital of France?",
    "Call Maja Hermansen at 555-0134 before Friday, or write to her office in Oslo.",
];

/// Every head output of every text, in task order.
fn run(
    backend: &CandleBackend,
    tok: &Tokenization,
    embedding: bool,
    tasks: &[usize],
) -> Vec<Vec<Vec<f32>>> {
    let batch = batch_of(tok, &TEXTS, embedding, tasks);
    head_logits(backend.forward(&batch).unwrap())
        .into_iter()
        .map(|row| row.into_iter().map(|(_, l)| l).collect())
        .collect()
}

#[test]
fn shared_projections_give_each_task_its_own_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = vec![
        // CLS-pooled, entering the last layer (the shipped prompt tasks).
        random_task(
            dir.path(),
            "cls1",
            TaskKind::Sequence,
            &["a", "b"],
            1,
            Some(4),
        ),
        // Mean-pooled over two layers.
        random_task(
            dir.path(),
            "mean2",
            TaskKind::Sequence,
            &["a", "b", "c"],
            2,
            Some(4),
        ),
        // Token task entering the last layer.
        random_task(
            dir.path(),
            "tok1",
            TaskKind::Token,
            &["O", "B-X", "I-X"],
            1,
            Some(4),
        ),
        // Token task over two layers adding its line-break vector to its
        // input: its shared projections are moved by that vector's.
        random_task(
            dir.path(),
            "tok2",
            TaskKind::Token,
            &["O", "B-X", "I-X"],
            2,
            Some(4),
        ),
    ];
    specs[0].pooling = Pooling::Cls;
    write_random_task(dir.path(), &specs[0], 384, 1536, 6).unwrap();
    specs[3].line_breaks = true;
    write_random_task(dir.path(), &specs[3], 384, 1536, 6).unwrap();
    let tasks = specs.len();
    let (backend, tok) = backend_of(dir.path(), specs);

    let alone: Vec<_> = (0..tasks)
        .map(|t| run(&backend, &tok, false, &[t]))
        .collect();
    // All tasks and the embedding: the trunk runs every layer and shares
    // the projections of layers 4 and 5 with the tasks entering there.
    // Text 0 has line breaks, so `tok2`'s shared projections only match
    // with its line-break vector's offset added (a random vector of norm
    // ~20: missing it moves the logits far past the tolerance).
    let together = run(&backend, &tok, true, &[0, 1, 2, 3]);
    // No embedding, the two tasks entering layer 5 only: the trunk stops at
    // layer 5 and the two share its projections there.
    let at_stop = run(&backend, &tok, false, &[0, 2]);
    for (row, text) in TEXTS.iter().enumerate() {
        for t in 0..tasks {
            let reference = &alone[t][row][0];
            let d = max_abs_diff(reference, &together[row][t]);
            assert!(d < 1e-4, "task {t} on {text:?}: shared differs by {d}");
        }
        for (j, t) in [0, 2].into_iter().enumerate() {
            let d = max_abs_diff(&alone[t][row][0], &at_stop[row][j]);
            assert!(d < 1e-4, "task {t} on {text:?} at the stop: differs by {d}");
        }
    }
}
