//! `model-card.md` of a trained task.

use std::fmt::Write;

use super::evaluate::Scored;
use super::trainer::{TrainConfig, TrainOutcome};

pub struct CardInputs<'a> {
    pub cfg: &'a TrainConfig,
    pub outcome: &'a TrainOutcome,
    /// One line per input file.
    pub sources: &'a [String],
    pub label_note: &'a str,
    pub total_examples: usize,
    /// Training-only examples (not in the split).
    pub extra_examples: usize,
    pub base_model: &'a str,
    pub base_sha256: &'a str,
    pub scored: &'a Scored,
    pub eval_max_tokens: usize,
    pub wall_secs: f64,
    pub command: &'a str,
}

pub fn render(c: &CardInputs) -> String {
    let mut s = String::new();
    let cfg = c.cfg;
    let o = c.outcome;
    let _ = writeln!(s, "# `{}` task head\n", cfg.task);
    let pair = o.spec.kind == crate::sidecar::tasks::TaskKind::Pair;
    let _ = writeln!(
        s,
        "{} for the inference sidecar (docs/SIDECAR.md), trained by `vsr train`.\n",
        if pair {
            "Pair classifier (`[CLS] premise [SEP] hypothesis [SEP]` → label, served by the `Nli` RPC: softmax averaged over the premise's windows)"
        } else {
            "Sequence classifier"
        }
    );
    let _ = writeln!(s, "## Data\n");
    for src in c.sources {
        let _ = writeln!(s, "* source: {src}");
    }
    let _ = writeln!(
        s,
        "* label list (task.json order): {}",
        c.outcome
            .spec
            .labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(s, "* labels: {}", c.label_note);
    let used = o.train_examples - c.extra_examples + o.val_indices.len();
    let subset = match cfg.max_examples {
        Some(m) if m < c.total_examples => format!(
            " — a seeded subset (`--max-examples {m}`) of the {} examples in the file",
            c.total_examples
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        s,
        "* examples used: {used}{subset}; split {}, seed {}: {} train / {} validation ({:.0}%)",
        if pair {
            "grouped by premise (no premise on both sides)"
        } else {
            "stratified by label"
        },
        cfg.seed,
        o.train_examples - c.extra_examples,
        o.val_indices.len(),
        cfg.val_fraction * 100.0
    );
    if c.extra_examples > 0 {
        let _ = writeln!(
            s,
            "* plus {} training-only examples (extra data above), never in validation",
            c.extra_examples
        );
    }
    let _ = writeln!(s, "\n## Model\n");
    let _ = writeln!(
        s,
        "* base: `{}` (frozen), model.safetensors sha256 `{}`",
        c.base_model, c.base_sha256
    );
    let _ = writeln!(
        s,
        "* trained: LoRA rank {} (alpha {}) on {} of the top {} layer(s), CLS pooling, {}",
        cfg.lora_rank,
        cfg.lora_alpha,
        if cfg.lora_targets.len() == 2
            && cfg.lora_targets.iter().any(|t| t == "attention.self.query")
            && cfg.lora_targets.iter().any(|t| t == "attention.self.value")
        {
            "query+value".to_string()
        } else {
            cfg.lora_targets
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        cfg.top_layers,
        if cfg.head_hidden.is_empty() {
            "linear head".to_string()
        } else {
            format!("head with hidden layer(s) {:?} (tanh)", cfg.head_hidden)
        }
    );
    let _ = writeln!(
        s,
        "* hyper-parameters: epochs ≤ {} (early stopping on validation accuracy, patience {}; best epoch {} of {} run), AdamW lr {} (linear decay to 10%), weight decay {}, batch {}, inputs cut to {} tokens for training",
        cfg.epochs, cfg.patience, o.best_epoch, o.epochs_run, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.max_tokens
    );
    let _ = writeln!(
        s,
        "* training wall time: {:.0} s (of which {:.0} s caching the frozen layers), CPU",
        c.wall_secs, o.cache_secs
    );
    let _ = writeln!(s, "\nPer epoch (validation on cached features):\n");
    let _ = writeln!(s, "| epoch | train loss | val accuracy | val macro-F1 |");
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    for (e, l, a, f) in &o.history {
        let _ = writeln!(s, "| {e} | {l:.4} | {a:.4} | {f:.4} |");
    }
    let _ = writeln!(
        s,
        "\n## Validation metrics\n\nComputed after saving, by loading this directory through the sidecar's task discovery and `CandleBackend` (inputs up to {} tokens, as served). The validation split also chose the epoch (early stopping), so these numbers are slightly optimistic for unseen data:\n",
        c.eval_max_tokens
    );
    s.push_str(&c.scored.to_markdown());
    let _ = writeln!(s, "\n## Reproduce\n\n```sh\n{}\n```", c.command);
    s
}
