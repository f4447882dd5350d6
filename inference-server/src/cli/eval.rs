//! `vsr eval`: scores a trained task directory, loaded exactly as the
//! sidecar loads it, on the task's validation split (or the whole file), or
//! classifies given texts.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::sidecar::loader::resolve_base;
use crate::sidecar::DEFAULT_BASE_MODEL;
use crate::training::{checked, data, evaluate};

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Task name (must match `name` in the directory's task.json).
    #[arg(long)]
    pub task: String,
    /// Task directory, e.g. `models/domain`.
    #[arg(long)]
    pub model: PathBuf,
    /// Datasets root or the task's data folder (not needed with --text or --labelled).
    #[arg(long, required_unless_present_any = ["text", "labelled"])]
    pub data: Option<PathBuf>,
    /// Score every example of the file, not only the validation split
    /// recorded in task.json (seed, fraction, subset).
    #[arg(long)]
    pub all: bool,
    /// Classify these texts instead of scoring a dataset (repeatable).
    #[arg(long)]
    pub text: Vec<String>,
    /// Score the hand-checked sample in this file (see `training::checked`)
    /// instead of the proxy labels of the validation split.
    #[arg(long, conflicts_with_all = ["all", "text"])]
    pub checked: Option<PathBuf>,
    /// Score hand-written labelled texts from this file (`label<TAB>text`
    /// per line, `#` comments), e.g. `models/domain/probe-prompts.tsv`.
    #[arg(long, conflicts_with_all = ["all", "text", "checked"])]
    pub labelled: Option<PathBuf>,
    /// Print a seeded sheet of this many validation examples per label
    /// (`key<TAB>proxy<TAB>text`) for checking by hand, and exit.
    #[arg(long, conflicts_with_all = ["all", "text", "checked", "labelled"])]
    pub checking_sheet: Option<usize>,
    /// With --checking-sheet: only examples from origins starting with
    /// these names (e.g. `GoEmotions`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub origins: Vec<String>,
    /// Token tasks: also print up to this many scored texts whose served
    /// spans differ from the gold ones (`-` missed gold, `+` extra prediction).
    #[arg(long, default_value_t = 0)]
    pub errors: usize,
    /// Token tasks: score only these entity types (comma-separated), for
    /// data that labels a few types, e.g. `PERSON,GPE,ORGANIZATION` for
    /// WNUT-17: other types found there would count as false positives.
    #[arg(long, value_delimiter = ',')]
    pub types: Vec<String>,
    /// Sequence and pair tasks: also write every scored example's class
    /// probabilities, as served, to this file (JSON lines: `text`, `second`,
    /// `gold`, `probabilities` in label order), for error analysis.
    #[arg(long, conflicts_with_all = ["text", "labelled", "checked", "checking_sheet"])]
    pub predictions: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Inputs are cut to this many tokens (the sidecar's default is 512).
    #[arg(long, default_value_t = 512)]
    pub max_tokens: usize,
    /// Base encoder: a local directory or a Hugging Face hub id.
    #[arg(long, env = "VSR_BASE_MODEL", default_value = DEFAULT_BASE_MODEL)]
    pub base_model: String,
}

pub fn run(args: EvalArgs) -> anyhow::Result<ExitCode> {
    if crate::training::token_data::is_token_task(&args.task) {
        anyhow::ensure!(
            args.labelled.is_none()
                && args.checked.is_none()
                && args.checking_sheet.is_none()
                && args.predictions.is_none(),
            "--labelled, --checked, --checking-sheet and --predictions do not apply to the \
             token task `{}`",
            args.task
        );
        return crate::training::token::eval_cli(&args);
    }
    let (base_dir, _) = resolve_base(&args.base_model)?;
    let task = evaluate::load_task(&base_dir, &args.model, args.max_tokens)?;
    anyhow::ensure!(
        task.files.spec.name == args.task,
        "{} holds task `{}`, not `{}`",
        args.model.display(),
        task.files.spec.name,
        args.task
    );
    if !args.text.is_empty() {
        let texts: Vec<&str> = args.text.iter().map(String::as_str).collect();
        let preds = if task.files.spec.kind == crate::sidecar::tasks::TaskKind::Pair {
            // Pair tasks (`nli`): each text is `premise<TAB>hypothesis`.
            let pairs = texts
                .iter()
                .map(|t| {
                    t.split_once('\t').with_context(|| {
                        format!(
                            "`{}` is a pair task: give --text \"premise<TAB>hypothesis\"",
                            args.task
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            task.predict_pairs(&pairs, 32)?
        } else {
            task.predict(&texts, 32)?
        };
        let rows: Vec<serde_json::Value> = texts
            .iter()
            .zip(preds)
            .map(|(t, (l, p))| serde_json::json!({"text": t, "label": task.labels()[l], "confidence": p}))
            .collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for r in rows {
                println!(
                    "{}\t{:.3}\t{}",
                    r["label"].as_str().unwrap_or_default(),
                    r["confidence"].as_f64().unwrap_or_default(),
                    r["text"].as_str().unwrap_or_default()
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.labelled {
        anyhow::ensure!(
            task.files.spec.kind == crate::sidecar::tasks::TaskKind::Sequence,
            "--labelled scores single texts: `{}` is not a sequence task",
            args.task
        );
        let report = score_labelled(&task, path)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{} on {}:\n", args.task, path.display());
            println!("{}", report.to_markdown());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let data_dir = args.data.context("--data is required")?;
    let dataset = data::load(&args.task, &data_dir)?;
    let validation = data::recorded_validation(&task.files.spec, &dataset).filter(|_| !args.all);
    let indices: Vec<usize> = match &validation {
        Some(val) => val.clone(),
        None => (0..dataset.validated).collect(),
    };
    if let Some(per_label) = args.checking_sheet {
        let origins: Vec<&str> = args.origins.iter().map(String::as_str).collect();
        println!("key\tproxy\ttext");
        for line in checked::sheet(&dataset, &indices, &origins, per_label, 42) {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.checked {
        let rows = checked::read(path, &dataset.labels)?;
        let (sample, none) = checked::relabel(&dataset, &rows)?;
        let all: Vec<usize> = (0..sample.examples.len()).collect();
        let scored = task.score(&sample, &all, 32)?;
        if args.json {
            let mut v = serde_json::to_value(&scored)?;
            v["checked_none"] = serde_json::json!(none);
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "{} on the hand-checked sample {} ({} rows, {none} checked `{}` and left out):\n",
                args.task,
                path.display(),
                rows.len(),
                checked::NONE
            );
            println!("{}", scored.to_markdown());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(path) = &args.predictions {
        write_predictions(&task, &dataset, &indices, path)?;
    }
    let scored = task.score(&dataset, &indices, 32)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&scored)?);
    } else {
        println!(
            "{} on {} ({}):\n",
            args.task,
            dataset.source.display(),
            if validation.is_some() {
                "validation split"
            } else {
                "all examples"
            }
        );
        println!("{}", scored.to_markdown());
    }
    Ok(ExitCode::SUCCESS)
}

/// One JSON line per example of `indices`: its texts, gold label and the
/// served class probabilities.
fn write_predictions(
    task: &evaluate::LoadedTask,
    dataset: &data::Dataset,
    indices: &[usize],
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let probs = task.example_probs(dataset, indices, 32)?;
    let mut out = String::new();
    for (&i, p) in indices.iter().zip(probs) {
        let e = &dataset.examples[i];
        let row = serde_json::json!({
            "text": e.text,
            "second": e.second,
            "gold": dataset.labels[e.label],
            "probabilities": p,
        });
        out.push_str(&row.to_string());
        out.push('\n');
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Scores `label<TAB>text` lines; an unknown label is an error naming the line.
fn score_labelled(
    task: &evaluate::LoadedTask,
    path: &std::path::Path,
) -> anyhow::Result<crate::training::metrics::Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let labels = task.labels();
    let mut gold = Vec::new();
    let mut texts = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let (label, t) = line
            .split_once('\t')
            .with_context(|| format!("{}:{}: expected `label<TAB>text`", path.display(), n + 1))?;
        let l = labels.iter().position(|x| x == label).with_context(|| {
            format!(
                "{}:{}: `{label}` is not a label of the task ({})",
                path.display(),
                n + 1,
                labels.join(", ")
            )
        })?;
        gold.push(l);
        texts.push(t);
    }
    anyhow::ensure!(!texts.is_empty(), "{}: no labelled lines", path.display());
    let mut c = crate::training::metrics::Confusion::new(labels.to_vec());
    for (g, (p, _)) in gold.into_iter().zip(task.predict(&texts, 32)?) {
        c.add(g, p);
    }
    Ok(c.report())
}
