//! `vsr ensemble`: joins task directories that `vsr train` wrote with one
//! layout on one split (other `--train-seed`s) into one task directory whose
//! members the sidecar averages, scores it as served, and writes its card.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use candle_core::DType;

use crate::sidecar::loader::resolve_base;
use crate::sidecar::tasks::write_task;
use crate::sidecar::DEFAULT_BASE_MODEL;
use crate::training::{card, data, ensemble, evaluate};

#[derive(clap::Args, Debug)]
pub struct EnsembleArgs {
    /// Task the members were trained for (checked against their `task.json`).
    #[arg(long)]
    pub task: String,
    /// Datasets root: the ensemble and each member are scored on the
    /// members' validation split.
    #[arg(long)]
    pub data: PathBuf,
    /// Output task directory, e.g. `models/domain` (not one of the members).
    #[arg(long)]
    pub out: PathBuf,
    /// Member task directories written by `vsr train` (two or more).
    #[arg(required = true, num_args = 2..)]
    pub members: Vec<PathBuf>,
    /// Store the joined weights as f16 (half the file; the sidecar loads
    /// them as f32): for ensembles whose members add up to megabytes. The
    /// card's metrics are measured on what is stored.
    #[arg(long)]
    pub f16: bool,
    /// Base encoder: a local directory or a Hugging Face hub id.
    #[arg(long, env = "VSR_BASE_MODEL", default_value = DEFAULT_BASE_MODEL)]
    pub base_model: String,
}

pub fn run(args: EnsembleArgs) -> anyhow::Result<ExitCode> {
    let command = super::train::command_line();
    let out = args.out.canonicalize().ok();
    if let Some(m) = args
        .members
        .iter()
        .find(|m| out.is_some() && m.canonicalize().ok() == out)
    {
        bail!(
            "--out {} is member {}: write the ensemble elsewhere",
            args.out.display(),
            m.display()
        );
    }
    let members = args
        .members
        .iter()
        .map(|d| ensemble::read_member(d))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(m) = members.iter().find(|m| m.spec.name != args.task) {
        bail!(
            "{} holds task `{}`, not `{}`",
            m.dir.display(),
            m.spec.name,
            args.task
        );
    }
    let (spec, mut tensors) = ensemble::merge(&members)?;
    if args.f16 {
        for t in tensors.values_mut() {
            *t = t.to_dtype(DType::F16)?;
        }
    }
    let (base_dir, _) = resolve_base(&args.base_model)?;
    let dataset = data::load(&args.task, &args.data)?;
    let validation = data::recorded_validation(&spec, &dataset)
        .context("the members' task.json records no validation split (metadata.split)")?;
    let eval_tokens = 512;
    let mut alone = Vec::with_capacity(members.len());
    for m in &members {
        let task = evaluate::load_task(&base_dir, &m.dir, eval_tokens)?;
        let report = task.score(&dataset, &validation, 32)?.report;
        let card = std::fs::read_to_string(m.dir.join("model-card.md")).unwrap_or_default();
        alone.push(card::MemberRow {
            dir: m.dir.display().to_string(),
            accuracy: report.accuracy,
            macro_f1: report.macro_f1,
            command: card::reproduce_command(&card).map(str::to_string),
            card,
        });
    }
    write_task(&args.out, &spec, &tensors)?;
    let task = evaluate::load_task(&base_dir, &args.out, eval_tokens)?;
    let scored = task.score(&dataset, &validation, 32)?;
    let md = card::render_ensemble(&card::EnsembleCard {
        task: &args.task,
        members: &alone,
        scored: &scored,
        eval_max_tokens: eval_tokens,
        command: &command,
    });
    std::fs::write(args.out.join("model-card.md"), md)?;
    println!("{}", scored.to_markdown());
    for m in &alone {
        println!(
            "member {}: validation accuracy {:.4}, macro-F1 {:.4}",
            m.dir, m.accuracy, m.macro_f1
        );
    }
    println!(
        "wrote {} ({} members, validation accuracy {:.4}, macro-F1 {:.4})",
        args.out.display(),
        members.len(),
        scored.report.accuracy,
        scored.report.macro_f1
    );
    Ok(ExitCode::SUCCESS)
}
