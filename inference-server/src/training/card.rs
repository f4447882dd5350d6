//! `model-card.md` of a trained task.

use std::fmt::Write;

use super::evaluate::Scored;
use super::trainer::{TrainConfig, TrainOutcome};
use crate::sidecar::tasks::Pooling;

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
    base_line(&mut s, c.base_model, c.base_sha256);
    let _ = writeln!(
        s,
        "* trained: LoRA rank {} (alpha {}) on {} of the top {} layer(s), {} pooling, {}",
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
        match cfg.pooling {
            Pooling::Cls => "CLS",
            Pooling::Mean => "mean",
        },
        head_text(cfg)
    );
    hyper_line(
        &mut s,
        cfg,
        o.best_epoch,
        o.epochs_run,
        "validation accuracy",
        "inputs cut to",
    );
    let _ = match o.features_loaded {
        None => writeln!(
            s,
            "* training wall time: {:.0} s (of which {:.0} s caching the frozen layers), CPU",
            c.wall_secs, o.cache_secs
        ),
        Some(computed) => writeln!(
            s,
            "* training wall time: {:.0} s, CPU, with the frozen layers' features loaded from `--feature-cache` \
             ({:.0} s); computing them took {computed:.0} s in the run that saved them",
            c.wall_secs, o.cache_secs
        ),
    };
    epoch_table(
        &mut s,
        "Per epoch (validation on cached features)",
        ["val accuracy", "val macro-F1"],
        &o.history,
    );
    let _ = writeln!(
        s,
        "\n## Validation metrics\n\nComputed after saving, by loading this directory through the sidecar's task discovery and `CandleBackend` (inputs up to {} tokens, as served). The validation split also chose the epoch (early stopping), so these numbers are slightly optimistic for unseen data:\n",
        c.eval_max_tokens
    );
    s.push_str(&c.scored.to_markdown());
    reproduce(&mut s, c.command);
    s
}

// === sections every card kind shares (sequence, token, pair-token) ===

/// `* base: ...` with the checksum, so a card names the exact trunk.
pub(crate) fn base_line(s: &mut String, model: &str, sha256: &str) {
    let _ = writeln!(
        s,
        "* base: `{model}` (frozen), model.safetensors sha256 `{sha256}`"
    );
}

/// The head's shape in words.
pub(crate) fn head_text(cfg: &TrainConfig) -> String {
    let shape = if cfg.head_hidden.is_empty() {
        "linear head".to_string()
    } else {
        format!("head with hidden layer(s) {:?} (tanh)", cfg.head_hidden)
    };
    let shape = if cfg.head_embedding {
        format!("{shape} over the pooled output and the shared sentence embedding (base encoder's mean pool, L2-normalised, × √hidden)")
    } else {
        shape
    };
    if cfg.head_dropout > 0.0 {
        format!(
            "{shape}; in training, dropout {} on the head's inputs",
            cfg.head_dropout
        )
    } else {
        shape
    }
}

/// `* hyper-parameters: ...`; `metric` is what early stopping watched,
/// `inputs` how training inputs were cut (followed by the token count).
pub(crate) fn hyper_line(
    s: &mut String,
    cfg: &TrainConfig,
    best_epoch: usize,
    epochs_run: usize,
    metric: &str,
    inputs: &str,
) {
    let _ = writeln!(
        s,
        "* hyper-parameters: epochs ≤ {} (early stopping on {metric}, patience {}; best epoch {best_epoch} of {epochs_run} run), \
         AdamW lr {} (linear decay to 10%), weight decay {}, batch {}, {inputs} {} tokens for training",
        cfg.epochs, cfg.patience, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.max_tokens
    );
    if cfg.train_seed != cfg.seed {
        let _ = writeln!(
            s,
            "* training seed {} (initial weights, batch order, dropout masks; the split's seed is {})",
            cfg.train_seed, cfg.seed
        );
    }
}

/// The per-epoch table: epoch, train loss and the two validation numbers
/// [`super::trainer::fit`] records.
pub(crate) fn epoch_table(
    s: &mut String,
    caption: &str,
    columns: [&str; 2],
    history: &[(usize, f64, f64, f64)],
) {
    let _ = writeln!(
        s,
        "\n{caption}:\n\n| epoch | train loss | {} | {} |\n|---:|---:|---:|---:|",
        columns[0], columns[1]
    );
    for (e, l, a, b) in history {
        let _ = writeln!(s, "| {e} | {l:.4} | {a:.4} | {b:.4} |");
    }
}

/// The closing `## Reproduce` section with the exact command.
pub(crate) fn reproduce(s: &mut String, command: &str) {
    let _ = writeln!(s, "\n## Reproduce\n\n```sh\n{command}\n```");
}

/// One member of an ensemble, scored alone as served.
pub struct MemberRow {
    pub dir: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    /// The `vsr train` command of its card, when it has one.
    pub command: Option<String>,
    /// Its `model-card.md` (empty when missing).
    pub card: String,
}

pub struct EnsembleCard<'a> {
    pub task: &'a str,
    pub members: &'a [MemberRow],
    pub scored: &'a Scored,
    pub eval_max_tokens: usize,
    pub command: &'a str,
}

/// The command of a card's closing `## Reproduce` section.
pub fn reproduce_command(card: &str) -> Option<&str> {
    let (_, rest) = card.rsplit_once("## Reproduce")?;
    let (_, rest) = rest.split_once("```sh\n")?;
    rest.lines().next().filter(|l| !l.trim().is_empty())
}

/// `model-card.md` of an ensemble: its members alone and together, the
/// commands that rebuild it, and the first member's card (data, layout,
/// hyper-parameters: the same for every member but the training seed).
pub fn render_ensemble(c: &EnsembleCard) -> String {
    let mut s = String::new();
    let n = c.members.len();
    let _ = writeln!(s, "# `{}` task head (ensemble of {n})\n", c.task);
    let _ = writeln!(
        s,
        "Classifier for the inference sidecar (docs/SIDECAR.md): {n} branches of one layout, \
         trained by `vsr train` on the same data and validation split with different training \
         seeds and joined by `vsr ensemble`. The sidecar runs every member and averages their \
         softmax outputs (`members` in `task.json`; member k ≥ 1's tensors under `member.<k>.`).\n"
    );
    let _ = writeln!(s, "## Members\n");
    let _ = writeln!(
        s,
        "Each member alone, scored as served on the validation split below:\n"
    );
    let _ = writeln!(s, "| member | from | val accuracy | val macro-F1 |");
    let _ = writeln!(s, "|---:|---|---:|---:|");
    for (k, m) in c.members.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {k} | `{}` | {:.4} | {:.4} |",
            m.dir, m.accuracy, m.macro_f1
        );
    }
    let mean = c.members.iter().map(|m| m.accuracy).sum::<f64>() / n as f64;
    let _ = writeln!(
        s,
        "\nMean of the members alone: accuracy {mean:.4}; the ensemble: {:.4}.",
        c.scored.report.accuracy
    );
    let _ = writeln!(
        s,
        "\n## Validation metrics\n\nComputed after joining, by loading this directory through the sidecar's task discovery and `CandleBackend` (inputs up to {} tokens, as served). The split also chose each member's epoch (early stopping), so these numbers are slightly optimistic for unseen data:\n",
        c.eval_max_tokens
    );
    let _ = writeln!(s, "{}", c.scored.to_markdown());
    let _ = writeln!(s, "## Reproduce\n\n```sh");
    for m in c.members {
        match &m.command {
            Some(cmd) => {
                let _ = writeln!(s, "{cmd}");
            }
            None => {
                let _ = writeln!(s, "# {}: its card names no command", m.dir);
            }
        }
    }
    let _ = writeln!(s, "{}\n```", c.command);
    if let Some(first) = c.members.first().filter(|m| !m.card.is_empty()) {
        let _ = writeln!(
            s,
            "\n## Member 0's card\n\nData, labels, layout and hyper-parameters are the same for \
             every member; only the training seed differs (see the commands above).\n"
        );
        for line in first.card.lines() {
            // One level down, under this card's own headings.
            if line.starts_with('#') {
                let _ = writeln!(s, "##{line}");
            } else {
                let _ = writeln!(s, "{line}");
            }
        }
    }
    s
}

#[cfg(test)]
mod ensemble_tests {
    use super::*;

    #[test]
    fn reproduce_command_is_the_closing_sh_line() {
        let card = "# t\n\n## Reproduce\n\n```sh\nvsr train --task domain --seed 1\n```\n";
        assert_eq!(
            reproduce_command(card),
            Some("vsr train --task domain --seed 1")
        );
        assert_eq!(reproduce_command("# t\n\nno section\n"), None);
    }
}
