//! `vsr train`: fine-tunes a task head (LoRA on the top encoder layers + a
//! linear head) and writes `task.json`, `adapter.safetensors` and
//! `model-card.md` in the format the sidecar loads.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::sidecar::loader::resolve_base;
use crate::sidecar::tasks::Pooling;
use crate::sidecar::DEFAULT_BASE_MODEL;
use crate::training::{card, data, evaluate, trainer};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Task to train: `domain`, `jailbreak`, `fact_check`, `feedback` or `nli`.
    #[arg(long)]
    pub task: String,
    /// Datasets root (with a `<task>/` folder) or the task's data folder.
    #[arg(long)]
    pub data: PathBuf,
    /// Output task directory, e.g. `models/domain`.
    #[arg(long)]
    pub out: PathBuf,
    /// Maximum epochs (early stopping on validation accuracy).
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// AdamW learning rate (decays linearly to 10%).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
    /// LoRA rank on query and value of the trained layers (alpha = 2 × rank).
    #[arg(long, default_value_t = 8)]
    pub lora_rank: usize,
    /// How many top encoder layers the task re-runs with LoRA.
    #[arg(long, default_value_t = 1)]
    pub top_layers: usize,
    /// Seed of the split, and (without `--train-seed`) of the shuffles and
    /// the initial weights.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Seed of the initial weights, the shuffles and the dropout masks
    /// only (default: `--seed`): other values train again on the same
    /// split, which measures run-to-run noise.
    #[arg(long)]
    pub train_seed: Option<u64>,
    /// Train on a seeded subset of at most this many examples.
    #[arg(long)]
    pub max_examples: Option<usize>,
    /// Examples per optimizer step.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Inputs are cut to this many tokens for training (incl. [CLS]/[SEP]).
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Fraction of each label held out for validation.
    #[arg(long, default_value_t = 0.1)]
    pub val_fraction: f64,
    /// Stop after this many epochs without a better validation accuracy.
    #[arg(long, default_value_t = 2)]
    pub patience: usize,
    /// Linear modules of the trained layers that carry LoRA, comma-separated
    /// (`attention.self.{query,key,value}`, `attention.output.dense`,
    /// `intermediate.dense`, `output.dense`).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "attention.self.query,attention.self.value"
    )]
    pub lora_targets: Vec<String>,
    /// Widths of hidden dense layers in the head (tanh), comma-separated;
    /// none: a linear head.
    #[arg(long, value_delimiter = ',')]
    pub head_hidden: Vec<usize>,
    /// Sequence tasks: the head also reads the shared sentence embedding
    /// (the base encoder's mean pool, computed per request anyway).
    #[arg(long)]
    pub head_embedding: bool,
    /// Token tasks: learn a vector added to the trained layers' input at
    /// every token that starts a new line of its text (the tokenizer drops
    /// line breaks; business cards and addresses put one entity per line).
    #[arg(long)]
    pub line_breaks: bool,
    /// Sequence tasks: fraction of the head's input features zeroed at
    /// random (seeded) in each training step; 0 = off. Keeps the head from
    /// fitting its training set (the shipped `domain` head uses 0.3).
    #[arg(long, default_value_t = 0.0)]
    pub head_dropout: f64,
    /// Sequence tasks: what the head reads from the last trained layer,
    /// `cls` (the [CLS] row) or `mean` (the mean over real tokens, the
    /// pooling the base sentence encoder was trained with).
    #[arg(long, default_value = "cls")]
    pub pooling: Pooling,
    /// Sequence tasks: keep the frozen layers' features in this directory
    /// and reuse them when a later run has the same data, base, token limit
    /// and branch point (skips most of the training time). The key does not
    /// cover the encoder code: clear the directory after changing it.
    #[arg(long)]
    pub feature_cache: Option<PathBuf>,
    /// `domain` only: also train on the MMLU questions in `domain/mmlu/`
    /// (training only; the validation split stays MMLU-Pro's).
    #[arg(long)]
    pub mmlu_extra: bool,
    /// `domain` only: also train on TruthfulQA's short questions whose
    /// category names a domain (training only).
    #[arg(long)]
    pub truthfulqa_extra: bool,
    /// `pii` only: also train on WNUT-17's training and dev tweets (training
    /// only; its test file is left for `vsr eval --all`).
    #[arg(long)]
    pub wnut_extra: bool,
    /// Token tasks: loss weight of the training-only extra data
    /// (`--wnut-extra`) against 1 for the validated sources.
    #[arg(long, default_value_t = 1.0)]
    pub extra_weight: f64,
    /// Base encoder: a local directory or a Hugging Face hub id.
    #[arg(long, env = "VSR_BASE_MODEL", default_value = DEFAULT_BASE_MODEL)]
    pub base_model: String,
}

impl TrainArgs {
    /// The run's hyper-parameters (alpha = 2 × rank; batch and patience at least 1).
    pub fn config(&self) -> trainer::TrainConfig {
        trainer::TrainConfig {
            task: self.task.clone(),
            epochs: self.epochs,
            lr: self.lr,
            lora_rank: self.lora_rank,
            lora_alpha: 2.0 * self.lora_rank as f64,
            top_layers: self.top_layers,
            seed: self.seed,
            train_seed: self.train_seed.unwrap_or(self.seed),
            max_examples: self.max_examples,
            batch_size: self.batch_size.max(1),
            max_tokens: self.max_tokens,
            val_fraction: self.val_fraction,
            patience: self.patience.max(1),
            weight_decay: 0.01,
            lora_targets: self.lora_targets.clone(),
            head_hidden: self.head_hidden.clone(),
            head_embedding: self.head_embedding,
            head_dropout: self.head_dropout,
            pooling: self.pooling,
            feature_cache: self.feature_cache.clone(),
            extra_weight: self.extra_weight,
            line_breaks: self.line_breaks,
        }
    }

    /// The extra training data asked for.
    pub fn load_options(&self) -> data::LoadOptions {
        data::LoadOptions {
            mmlu_extra: self.mmlu_extra,
            truthfulqa_extra: self.truthfulqa_extra,
            wnut_extra: self.wnut_extra,
        }
    }
}

/// The training-only data sets a run adds (`task.json` metadata): `mmlu`,
/// `truthfulqa`, `wnut17`, joined by `+`, or none.
pub fn extra_data_name(args: &TrainArgs) -> Option<String> {
    let names: Vec<&str> = [
        args.mmlu_extra.then_some("mmlu"),
        args.truthfulqa_extra.then_some("truthfulqa"),
        args.wnut_extra.then_some("wnut17"),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!names.is_empty()).then(|| names.join("+"))
}

/// `vsr` and its arguments as typed, for the model card.
pub fn command_line() -> String {
    std::iter::once("vsr".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn run(args: TrainArgs) -> anyhow::Result<ExitCode> {
    let token_task = crate::training::token_data::is_token_task(&args.task);
    if !(0.0..1.0).contains(&args.head_dropout) {
        anyhow::bail!(
            "--head-dropout must be in [0, 1), got {}",
            args.head_dropout
        );
    }
    if token_task && args.head_dropout > 0.0 {
        anyhow::bail!("--head-dropout is for sequence tasks");
    }
    if token_task && args.pooling != Pooling::Cls {
        anyhow::bail!("--pooling is for sequence tasks (token tasks classify every token)");
    }
    if token_task {
        return crate::training::token::train_cli(&args);
    }
    if args.extra_weight != 1.0 {
        anyhow::bail!("--extra-weight is for token tasks (pii, hallucination)");
    }
    let wall = Instant::now();
    let command = command_line();
    let (base_dir, base_id) = resolve_base(&args.base_model)?;
    let dataset = data::load_with(&args.task, &args.data, args.load_options())?;
    let cfg = args.config();
    let base_sha = trainer::sha256_file(&base_dir.join("model.safetensors"))?;
    let metadata = serde_json::json!({
        "trained_by": "vsr train",
        "dataset": dataset.source.file_name().map(|f| f.to_string_lossy().into_owned()),
        "split": {"seed": cfg.seed, "val_fraction": cfg.val_fraction, "max_examples": cfg.max_examples},
        "extra_training_data": extra_data_name(&args),
        "base_model": base_id,
        "base_model_sha256": base_sha,
    });
    let outcome = trainer::train(&cfg, &base_dir, &dataset, metadata)?;
    trainer::write_task(&args.out, &outcome.spec, &outcome.tensors)?;

    // Prove the directory loads as served and measure it that way.
    let eval_tokens = 512;
    let task = evaluate::load_task(&base_dir, &args.out, eval_tokens)?;
    let scored = task.score(&dataset, &outcome.val_indices, 32)?;
    let report = &scored.report;
    let wall_secs = wall.elapsed().as_secs_f64();
    let md = card::render(&card::CardInputs {
        cfg: &cfg,
        outcome: &outcome,
        sources: &dataset.sources,
        label_note: &dataset.label_note,
        total_examples: dataset.validated,
        extra_examples: dataset.examples.len() - dataset.validated,
        base_model: &base_id,
        base_sha256: &base_sha,
        scored: &scored,
        eval_max_tokens: eval_tokens,
        wall_secs,
        command: &command,
    });
    std::fs::write(args.out.join("model-card.md"), md)?;
    println!("{}", scored.to_markdown());
    println!(
        "wrote {} (best epoch {}, validation accuracy {:.4}, macro-F1 {:.4}, {:.0} s)",
        args.out.display(),
        outcome.best_epoch,
        report.accuracy,
        report.macro_f1,
        wall_secs
    );
    Ok(ExitCode::SUCCESS)
}
