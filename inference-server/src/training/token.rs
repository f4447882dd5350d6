//! `vsr train` / `vsr eval` for token tasks (`pii`): BIO tags per token.
//!
//! Training: character spans become BIO labels per token through the
//! tokenizer's offsets ([`token_data::align`]); the frozen lower layers run
//! once per example and are cached; each step runs the task's top layers
//! (base weights + LoRA) over every token in [`Mode::Train`] (layer norm and
//! softmax with a backward pass) and the linear head; the loss is the
//! cross-entropy over real (non-special) tokens. Validation after each epoch
//! decodes spans exactly as the sidecar does and keeps the best strict
//! micro-F1.
//!
//! Evaluation loads the written directory through `CandleBackend` and scores
//! entity spans per type (strict: same type and offsets; overlap: same type,
//! overlapping), for the head alone and for the task as served (head ∪
//! recognizers, [`crate::sidecar::tasks::pii`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder};
use serde::Serialize;

use super::token_data::{self, Aligned, Span, TokenDataset, IGNORE};
use super::trainer::{self, TrainConfig};
use super::Rng;
use crate::sidecar::backend::candle::{CandleBackend, TaskBranch};
use crate::sidecar::backend::{Backend, Batch, HeadOutput, TaskFiles, Wants};
use crate::sidecar::model::bert::{BertModel, Mode};
use crate::sidecar::tasks::decode::{self, Entity};
use crate::sidecar::tasks::{self, pii, HeadSpec, LoraSpec, Pooling, TaskKind, TaskSpec};
use crate::sidecar::tokenize::Tokenization;

// === span metrics ===

/// Counts of one entity type.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Counts {
    /// Gold spans.
    pub gold: usize,
    /// Predicted spans.
    pub predicted: usize,
    /// Predictions with the gold type and exactly the gold offsets.
    pub strict: usize,
    /// Predictions of the gold type overlapping a gold span (one-to-one).
    pub overlap: usize,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Prf {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

fn prf(hit: usize, predicted: usize, gold: usize) -> Prf {
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let (p, r) = (ratio(hit, predicted), ratio(hit, gold));
    Prf {
        precision: p,
        recall: r,
        f1: if p + r > 0.0 {
            2.0 * p * r / (p + r)
        } else {
            0.0
        },
    }
}

/// Entity-level scores per type.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpanReport {
    pub texts: usize,
    pub per_type: BTreeMap<String, Counts>,
}

impl SpanReport {
    /// Adds one text's predicted and gold spans (byte offsets).
    pub fn add(&mut self, predicted: &[(usize, usize, &str)], gold: &[(usize, usize, &str)]) {
        self.texts += 1;
        for (_, _, k) in gold {
            self.per_type.entry(k.to_string()).or_default().gold += 1;
        }
        let mut used = vec![false; gold.len()];
        let mut used_overlap = vec![false; gold.len()];
        for &(s, e, k) in predicted {
            let c = self.per_type.entry(k.to_string()).or_default();
            c.predicted += 1;
            if let Some(j) = (0..gold.len()).find(|&j| !used[j] && gold[j] == (s, e, k)) {
                used[j] = true;
                c.strict += 1;
            }
            if let Some(j) = (0..gold.len())
                .find(|&j| !used_overlap[j] && gold[j].2 == k && s < gold[j].1 && e > gold[j].0)
            {
                used_overlap[j] = true;
                c.overlap += 1;
            }
        }
    }

    fn total(&self) -> Counts {
        self.per_type
            .values()
            .fold(Counts::default(), |a, c| Counts {
                gold: a.gold + c.gold,
                predicted: a.predicted + c.predicted,
                strict: a.strict + c.strict,
                overlap: a.overlap + c.overlap,
            })
    }

    /// Micro-averaged strict scores.
    pub fn micro_strict(&self) -> Prf {
        let t = self.total();
        prf(t.strict, t.predicted, t.gold)
    }

    pub fn micro_overlap(&self) -> Prf {
        let t = self.total();
        prf(t.overlap, t.predicted, t.gold)
    }

    /// Per type: (type, counts, strict, overlap).
    pub fn rows(&self) -> Vec<(String, Counts, Prf, Prf)> {
        self.per_type
            .iter()
            .map(|(k, c)| {
                (
                    k.clone(),
                    *c,
                    prf(c.strict, c.predicted, c.gold),
                    prf(c.overlap, c.predicted, c.gold),
                )
            })
            .collect()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let (m, o) = (self.micro_strict(), self.micro_overlap());
        let _ = writeln!(
            s,
            "texts: {}; micro strict P {:.3} R {:.3} F1 {:.3}; micro overlap P {:.3} R {:.3} F1 {:.3}\n",
            self.texts, m.precision, m.recall, m.f1, o.precision, o.recall, o.f1
        );
        let _ = writeln!(
            s,
            "| type | gold | predicted | strict P | strict R | strict F1 | overlap P | overlap R | overlap F1 |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (k, c, st, ov) in self.rows() {
            let _ = writeln!(
                s,
                "| {k} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                c.gold, c.predicted, st.precision, st.recall, st.f1, ov.precision, ov.recall, ov.f1
            );
        }
        s
    }
}

fn spans_of(es: &[Entity]) -> Vec<(usize, usize, &str)> {
    es.iter()
        .map(|e| (e.byte_start, e.byte_end, e.kind.as_str()))
        .collect()
}

fn gold_of<'a>(spans: impl Iterator<Item = &'a Span>) -> Vec<(usize, usize, &'a str)> {
    spans.map(|s| (s.start, s.end, s.kind.as_str())).collect()
}

// === training ===

/// What a run produced.
pub struct TokenOutcome {
    pub spec: TaskSpec,
    pub tensors: HashMap<String, Tensor>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub train_indices: Vec<usize>,
    pub val_indices: Vec<usize>,
    /// (epoch, train loss, val strict micro-F1, val overlap micro-F1).
    pub history: Vec<(usize, f64, f64, f64)>,
    pub cache_secs: f64,
    pub train_secs: f64,
}

/// The spec `vsr train` writes for a token task.
pub fn token_spec(cfg: &TrainConfig, labels: &[String], metadata: serde_json::Value) -> TaskSpec {
    TaskSpec {
        name: cfg.task.clone(),
        kind: TaskKind::Token,
        labels: labels.to_vec(),
        pooling: Pooling::Mean,
        top_layers: cfg.top_layers,
        lora: (cfg.top_layers > 0 && cfg.lora_rank > 0).then(|| LoraSpec {
            rank: cfg.lora_rank,
            alpha: cfg.lora_alpha,
            targets: cfg.lora_targets.clone(),
        }),
        head: HeadSpec {
            hidden: cfg.head_hidden.clone(),
            ..HeadSpec::default()
        },
        metadata: Some(metadata),
    }
}

/// Frozen features of one example: `[len, h]` entering the first trained layer.
struct Cached {
    hidden: Tensor,
}

fn cache_features(
    model: &BertModel,
    aligned: &HashMap<usize, Aligned>,
    first_layer: usize,
) -> anyhow::Result<HashMap<usize, Cached>> {
    let dev = model.device().clone();
    let mut order: Vec<usize> = aligned.keys().copied().collect();
    order.sort_by_key(|i| (aligned[i].ids.len(), *i));
    let mut out = HashMap::with_capacity(order.len());
    let start = Instant::now();
    for (n, chunk) in order.chunks(64).enumerate() {
        let max_len = chunk
            .iter()
            .map(|i| aligned[i].ids.len())
            .max()
            .unwrap_or(1);
        let mut ids = Vec::with_capacity(chunk.len() * max_len);
        let mut mask = Vec::with_capacity(chunk.len() * max_len);
        for i in chunk {
            let e = &aligned[i].ids;
            ids.extend_from_slice(e);
            ids.extend(std::iter::repeat_n(0u32, max_len - e.len()));
            mask.extend(std::iter::repeat_n(1u32, e.len()));
            mask.extend(std::iter::repeat_n(0u32, max_len - e.len()));
        }
        let b = chunk.len();
        let ids = Tensor::from_vec(ids, (b, max_len), &dev)?;
        let types = ids.zeros_like()?;
        let mask = Tensor::from_vec(mask, (b, max_len), &dev)?;
        let bias = BertModel::mask_bias(&mask)?;
        let mut x = model.embed(&ids, &types, Mode::Inference)?;
        for l in 0..first_layer {
            x = model.layer(l, &x, &bias, None, Mode::Inference)?;
        }
        let h = x.dim(2)?;
        for (row, i) in chunk.iter().enumerate() {
            let len = aligned[i].ids.len();
            // An exact-size copy (a view would keep the padded chunk alive).
            let v = x
                .get(row)?
                .narrow(0, 0, len)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            out.insert(
                *i,
                Cached {
                    hidden: Tensor::from_vec(v, (len, h), &dev)?,
                },
            );
        }
        if (n + 1) % 32 == 0 {
            eprintln!(
                "  features: {}/{} ({:.0} examples/s)",
                out.len(),
                order.len(),
                out.len() as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(out)
}

/// Padded `[b, s, h]` features, mask bias, and the flat positions
/// (`row * s + token`) of real tokens with their labels.
fn make_batch(
    cache: &HashMap<usize, Cached>,
    aligned: &HashMap<usize, Aligned>,
    rows: &[usize],
    dev: &Device,
) -> anyhow::Result<(Tensor, Tensor, Tensor, Tensor)> {
    let max_len = rows.iter().map(|i| aligned[i].ids.len()).max().unwrap_or(1);
    let mut xs = Vec::with_capacity(rows.len());
    let mut mask = Vec::with_capacity(rows.len() * max_len);
    let (mut pos, mut labels) = (Vec::new(), Vec::new());
    for (r, i) in rows.iter().enumerate() {
        let c = &cache[i].hidden;
        let (len, h) = c.dims2()?;
        xs.push(if len < max_len {
            Tensor::cat(
                &[c, &Tensor::zeros((max_len - len, h), DType::F32, dev)?],
                0,
            )?
        } else {
            c.clone()
        });
        mask.extend(std::iter::repeat_n(1u32, len));
        mask.extend(std::iter::repeat_n(0u32, max_len - len));
        for (t, &l) in aligned[i].labels.iter().enumerate() {
            if l != IGNORE {
                pos.push((r * max_len + t) as u32);
                labels.push(l);
            }
        }
    }
    let x = Tensor::stack(&xs, 0)?;
    let mask = Tensor::from_vec(mask, (rows.len(), max_len), dev)?;
    let bias = BertModel::mask_bias(&mask)?;
    let n = pos.len();
    Ok((
        x,
        bias,
        Tensor::from_vec(pos, n, dev)?,
        Tensor::from_vec(labels, n, dev)?,
    ))
}

/// The branch on cached features: logits `[b, s, labels]`.
fn branch_logits(
    model: &BertModel,
    branch: &TaskBranch,
    x: &Tensor,
    bias: &Tensor,
    mode: Mode,
) -> candle_core::Result<Tensor> {
    let mut h = x.clone();
    for (k, adapter) in branch.adapters.iter().enumerate() {
        h = model.layer(branch.first_layer + k, &h, bias, Some(adapter), mode)?;
    }
    branch.head.forward(&h)
}

/// Strict and overlap span scores of the current weights on cached features
/// (decoded as the sidecar decodes).
#[allow(clippy::too_many_arguments)]
fn validate(
    model: &BertModel,
    branch: &TaskBranch,
    cache: &HashMap<usize, Cached>,
    aligned: &HashMap<usize, Aligned>,
    data: &TokenDataset,
    rows: &[usize],
    dev: &Device,
) -> anyhow::Result<SpanReport> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|i| aligned[i].ids.len());
    let mut report = SpanReport::default();
    for chunk in sorted.chunks(64) {
        let (x, bias, _, _) = make_batch(cache, aligned, chunk, dev)?;
        let logits = branch_logits(model, branch, &x, &bias, Mode::Inference)?;
        let (_, s, c) = logits.dims3()?;
        let all = logits.flatten_all()?.to_vec1::<f32>()?;
        for (r, i) in chunk.iter().enumerate() {
            let a = &aligned[i];
            let ex = &data.examples[*i];
            let row = &all[r * s * c..(r * s + a.ids.len()) * c];
            let es = decode::token_entities(&data.labels, row, c, &a.offsets, &ex.text);
            report.add(&spans_of(&es), &gold_of(ex.model_spans()));
        }
    }
    Ok(report)
}

/// Trains a token task on `train`, early-stopping on strict micro-F1 over `val`.
pub fn train(
    cfg: &TrainConfig,
    base_dir: &Path,
    data: &TokenDataset,
    train_idx: Vec<usize>,
    val_idx: Vec<usize>,
    metadata: serde_json::Value,
) -> anyhow::Result<TokenOutcome> {
    let dev = Device::Cpu;
    let model = trainer::load_base(base_dir, &dev)?;
    let layers = model.num_layers();
    if cfg.top_layers == 0 || cfg.top_layers > layers {
        bail!("--top-layers must be in 1..={layers}");
    }
    let spec = token_spec(cfg, &data.labels, metadata);
    spec.validate(layers).map_err(anyhow::Error::msg)?;
    let tok = Tokenization::load(&base_dir.join("tokenizer.json"), cfg.max_tokens)?;
    let t0 = Instant::now();
    let mut aligned = HashMap::new();
    for &i in train_idx.iter().chain(&val_idx) {
        aligned.insert(i, token_data::align(&tok, &data.examples[i], &data.labels)?);
    }
    let mut tag_counts = vec![0usize; data.labels.len()];
    for i in &train_idx {
        for &l in &aligned[i].labels {
            if l != IGNORE {
                tag_counts[l as usize] += 1;
            }
        }
    }
    eprintln!(
        "{} train / {} validation texts; train tokens per tag: {}",
        train_idx.len(),
        val_idx.len(),
        data.labels
            .iter()
            .zip(&tag_counts)
            .map(|(l, n)| format!("{l} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let first_layer = layers - cfg.top_layers;
    eprintln!(
        "caching frozen layers 0..{first_layer} (max {} tokens)",
        cfg.max_tokens
    );
    let cache = cache_features(&model, &aligned, first_layer)?;
    let cache_secs = t0.elapsed().as_secs_f64();

    let mut rng = Rng::new(cfg.seed ^ 0x70CE);
    let varmap = trainer::init_vars(&spec, &model.config, &mut rng, &dev)?;
    let branch = TaskBranch::load(
        &spec,
        &model.config,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let mut named: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut opt = AdamW::new(
        named.iter().map(|(_, v)| v.clone()).collect(),
        ParamsAdamW {
            lr: cfg.lr,
            weight_decay: cfg.weight_decay,
            ..Default::default()
        },
    )?;
    let snapshot = |named: &[(String, Var)]| -> candle_core::Result<HashMap<String, Tensor>> {
        named
            .iter()
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().copy()?)))
            .collect()
    };
    let t_train = Instant::now();
    let mut best = (f64::NEG_INFINITY, 0usize, snapshot(&named)?);
    let mut history = Vec::new();
    let (mut step, mut stale, mut epochs_run) = (0usize, 0usize, 0usize);
    let total_steps = train_idx.len().div_ceil(cfg.batch_size) * cfg.epochs;
    for epoch in 1..=cfg.epochs {
        epochs_run = epoch;
        let mut order = train_idx.clone();
        rng.shuffle(&mut order);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for window in order.chunks(cfg.batch_size * 16) {
            let mut w = window.to_vec();
            w.sort_by_key(|i| aligned[i].ids.len());
            batches.extend(w.chunks(cfg.batch_size).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        let (start, mut loss_sum, mut loss_n) = (Instant::now(), 0f64, 0usize);
        for rows in &batches {
            let frac = step as f64 / total_steps.max(1) as f64;
            opt.set_learning_rate(cfg.lr * (1.0 - 0.9 * frac));
            let (x, bias, pos, labels) = make_batch(&cache, &aligned, rows, &dev)?;
            let logits = branch_logits(&model, &branch, &x, &bias, Mode::Train)?;
            let (b, s, c) = logits.dims3()?;
            let flat = logits.reshape((b * s, c))?.index_select(&pos, 0)?;
            let loss = candle_nn::loss::cross_entropy(&flat, &labels)?;
            let grads = loss.backward()?;
            if step == 0 {
                // LoRA B starts at zero, so A's gradient is zero at the first
                // step; B and the head must move.
                trainer::assert_grads(
                    &grads,
                    &named,
                    |n| n.starts_with("head.") || n.ends_with("lora_b"),
                    1,
                )?;
            } else if step == 1 {
                trainer::assert_grads(&grads, &named, |n| n.contains("lora_"), 2)?;
            }
            opt.step(&grads)?;
            step += 1;
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                bail!("loss is {l} at step {step}");
            }
            loss_sum += l;
            loss_n += 1;
            if step.is_multiple_of(50) {
                eprintln!(
                    "  epoch {epoch} step {step}/{total_steps} loss {:.4} ({:.1} steps/s)",
                    loss_sum / loss_n as f64,
                    loss_n as f64 / start.elapsed().as_secs_f64()
                );
            }
        }
        let r = validate(&model, &branch, &cache, &aligned, data, &val_idx, &dev)?;
        let (f1, ov) = (r.micro_strict().f1, r.micro_overlap().f1);
        let train_loss = loss_sum / loss_n.max(1) as f64;
        eprintln!(
            "epoch {epoch}: train loss {train_loss:.4}, validation strict micro-F1 {f1:.4}, overlap {ov:.4} ({:.0} s)",
            start.elapsed().as_secs_f64()
        );
        history.push((epoch, train_loss, f1, ov));
        if f1 > best.0 {
            best = (f1, epoch, snapshot(&named)?);
            stale = 0;
        } else {
            stale += 1;
            if stale >= cfg.patience {
                eprintln!("early stop: no validation improvement for {stale} epochs");
                break;
            }
        }
    }
    Ok(TokenOutcome {
        spec,
        tensors: best.2,
        best_epoch: best.1,
        epochs_run,
        train_indices: train_idx,
        val_indices: val_idx,
        history,
        cache_secs,
        train_secs: t_train.elapsed().as_secs_f64(),
    })
}

// === evaluation through the serving path ===

/// A token task directory loaded as `vsr serve` loads it.
pub struct LoadedTokenTask {
    pub files: TaskFiles,
    backend: CandleBackend,
    tokenizer: Tokenization,
}

/// Parses and validates `model_dir/task.json` as discovery does, then loads
/// the candle backend with this one task.
pub fn load_token_task(
    base_dir: &Path,
    model_dir: &Path,
    max_tokens: usize,
) -> anyhow::Result<LoadedTokenTask> {
    let model = trainer::load_base(base_dir, &Device::Cpu)?;
    let file = model_dir.join(tasks::TASK_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    let spec: TaskSpec = serde_json::from_str(&text).with_context(|| file.display().to_string())?;
    spec.validate(model.num_layers())
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    if spec.kind != TaskKind::Token {
        bail!(
            "task `{}` is of kind `{}`, not `token`",
            spec.name,
            spec.kind.as_str()
        );
    }
    let files = TaskFiles {
        spec,
        dir: model_dir.to_path_buf(),
    };
    let backend = CandleBackend::load(base_dir, std::slice::from_ref(&files), Device::Cpu)?;
    let tokenizer = Tokenization::load(&base_dir.join("tokenizer.json"), max_tokens)?;
    Ok(LoadedTokenTask {
        files,
        backend,
        tokenizer,
    })
}

impl LoadedTokenTask {
    /// Per text: the head's spans, and the task's spans as served (for
    /// `pii`: united with the recognizers).
    pub fn entities(
        &self,
        texts: &[&str],
        batch_size: usize,
    ) -> anyhow::Result<Vec<(Vec<Entity>, Vec<Entity>)>> {
        let enc = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| enc[i].ids.len());
        let mut out = vec![(Vec::new(), Vec::new()); texts.len()];
        let labels = &self.files.spec.labels;
        for chunk in order.chunks(batch_size.max(1)) {
            let batch = Batch::from_rows(chunk.iter().map(|&i| {
                (
                    &enc[i].ids[..],
                    &enc[i].type_ids[..],
                    Wants {
                        embedding: false,
                        tasks: vec![0],
                    },
                )
            }));
            for (&i, r) in chunk.iter().zip(self.backend.forward(&batch)?) {
                let Some((_, HeadOutput::Tokens { logits, num_labels })) =
                    r.heads.into_iter().next()
                else {
                    bail!("backend returned no token logits");
                };
                let model =
                    decode::token_entities(labels, &logits, num_labels, &enc[i].offsets, texts[i]);
                let served = if self.files.spec.name == pii::PII_TASK {
                    pii::union(texts[i], model.clone())
                } else {
                    model.clone()
                };
                out[i] = (model, served);
            }
        }
        Ok(out)
    }

    /// (head alone vs the head's types, as served vs every gold type).
    pub fn score(
        &self,
        data: &TokenDataset,
        indices: &[usize],
        batch_size: usize,
    ) -> anyhow::Result<(SpanReport, SpanReport)> {
        let texts: Vec<&str> = indices
            .iter()
            .map(|&i| data.examples[i].text.as_str())
            .collect();
        let (mut head, mut served) = (SpanReport::default(), SpanReport::default());
        for (&i, (m, s)) in indices.iter().zip(self.entities(&texts, batch_size)?) {
            let ex = &data.examples[i];
            head.add(&spans_of(&m), &gold_of(ex.model_spans()));
            served.add(&spans_of(&s), &gold_of(ex.gold.iter()));
        }
        Ok((head, served))
    }
}

// === model card ===

pub struct TokenCard<'a> {
    pub cfg: &'a TrainConfig,
    pub outcome: &'a TokenOutcome,
    pub data: &'a TokenDataset,
    pub base_model: &'a str,
    pub base_sha256: &'a str,
    pub head: &'a SpanReport,
    pub served: &'a SpanReport,
    pub eval_max_tokens: usize,
    pub wall_secs: f64,
    pub command: &'a str,
}

pub fn render_card(c: &TokenCard) -> String {
    let (cfg, o) = (c.cfg, c.outcome);
    let mut s = String::new();
    let _ = writeln!(s, "# `{}` task head\n", cfg.task);
    let _ = writeln!(
        s,
        "Token classifier (BIO) for the inference sidecar (docs/SIDECAR.md), trained by `vsr train`. \
         The served `{}` task is this head's spans united with the deterministic recognizers \
         (`sidecar/tasks/recognizers.rs`, policy in `sidecar/tasks/pii.rs`).\n",
        cfg.task
    );
    let _ = writeln!(s, "## Data\n");
    for src in &c.data.sources {
        let n = c
            .data
            .examples
            .iter()
            .filter(|e| src.display().to_string().contains(e.source_path_hint()))
            .count();
        let _ = writeln!(s, "* `{}` ({n} texts)", src.display());
    }
    let _ = writeln!(s, "* labels: {}", c.data.labels.join(", "));
    let _ = writeln!(s, "* mapping: {}", c.data.note);
    let _ = writeln!(
        s,
        "* split: seeded by group (seed {}): the sentences of one presidio template, or one CoNLL sentence, \
         are all in train or all in validation; {} train / {} validation texts ({:.0}% of the groups){}",
        cfg.seed,
        o.train_indices.len(),
        o.val_indices.len(),
        cfg.val_fraction * 100.0,
        match cfg.max_examples {
            Some(m) => format!(", from a seeded subset of {m} texts"),
            None => String::new(),
        }
    );
    let _ = writeln!(s, "\n## Model\n");
    let _ = writeln!(
        s,
        "* base: `{}` (frozen), model.safetensors sha256 `{}`",
        c.base_model, c.base_sha256
    );
    let _ = writeln!(
        s,
        "* trained: LoRA rank {} (alpha {}) on {} of the top {} layer(s), head {} over every token; \
         loss: cross-entropy over real tokens (not [CLS]/[SEP])",
        cfg.lora_rank,
        cfg.lora_alpha,
        cfg.lora_targets.join(", "),
        cfg.top_layers,
        if cfg.head_hidden.is_empty() {
            "linear".to_string()
        } else {
            format!("dense {:?} + tanh + linear", cfg.head_hidden)
        }
    );
    let _ = writeln!(
        s,
        "* hyper-parameters: epochs ≤ {} (early stopping on validation strict micro-F1, patience {}; best epoch {} of {} run), \
         AdamW lr {} (linear decay to 10%), weight decay {}, batch {}, texts cut to {} tokens for training",
        cfg.epochs, cfg.patience, o.best_epoch, o.epochs_run, cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.max_tokens
    );
    let _ = writeln!(
        s,
        "* training wall time: {:.0} s in all ({:.0} s caching the frozen layers, {:.0} s training), CPU",
        c.wall_secs, o.cache_secs, o.train_secs
    );
    let _ = writeln!(
        s,
        "\nPer epoch (validation, decoded as served, on training-length inputs):\n"
    );
    let _ = writeln!(
        s,
        "| epoch | train loss | strict micro-F1 | overlap micro-F1 |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|");
    for (e, l, f, ov) in &o.history {
        let _ = writeln!(s, "| {e} | {l:.4} | {f:.4} | {ov:.4} |");
    }
    let _ = writeln!(
        s,
        "\n## Validation metrics\n\nComputed after saving, by loading this directory through `CandleBackend` \
         (inputs up to {} tokens, as served). Strict: same type and the same character offsets; \
         overlap: same type and overlapping offsets (one prediction per gold span).\n",
        c.eval_max_tokens
    );
    let _ = writeln!(s, "### The head alone (its own types)\n");
    s.push_str(&c.head.to_markdown());
    let _ = writeln!(
        s,
        "\n### The `{}` task as served (head ∪ recognizers, every gold type it can produce)\n",
        cfg.task
    );
    s.push_str(&c.served.to_markdown());
    let _ = writeln!(s, "\n## Reproduce\n\n```sh\n{}\n```", c.command);
    s
}

impl token_data::TokenExample {
    /// The part of a source path that identifies this example's file.
    fn source_path_hint(&self) -> &'static str {
        match self.source {
            "presidio_synth_v2" => "synth_dataset_v2",
            "presidio_generated_large" => "generated_large",
            "wikigold" => "wikigold",
            other => other,
        }
    }
}

// === CLI entry points (dispatched from `vsr train` / `vsr eval`) ===

/// `vsr train --task pii ...`.
pub fn train_cli(args: &crate::cli::train::TrainArgs) -> anyhow::Result<ExitCode> {
    let wall = Instant::now();
    let command = std::iter::once("vsr".to_string())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let (base_dir, base_id) = crate::sidecar::loader::resolve_base(&args.base_model)?;
    let data = token_data::load(&args.task, &args.data)?;
    let cfg = TrainConfig {
        task: args.task.clone(),
        epochs: args.epochs,
        lr: args.lr,
        lora_rank: args.lora_rank,
        lora_alpha: 2.0 * args.lora_rank as f64,
        top_layers: args.top_layers,
        seed: args.seed,
        max_examples: args.max_examples,
        batch_size: args.batch_size.max(1),
        max_tokens: args.max_tokens,
        val_fraction: args.val_fraction,
        patience: args.patience.max(1),
        weight_decay: 0.01,
        lora_targets: args.lora_targets.clone(),
        head_hidden: args.head_hidden.clone(),
    };
    let (train_idx, val_idx) = split(&data, cfg.max_examples, cfg.val_fraction, cfg.seed);
    let base_sha = trainer::sha256_file(&base_dir.join("model.safetensors"))?;
    let metadata = serde_json::json!({
        "trained_by": "vsr train",
        "datasets": data.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "split": {"by": "group", "seed": cfg.seed, "val_fraction": cfg.val_fraction, "max_examples": cfg.max_examples},
        "base_model": base_id,
        "base_model_sha256": base_sha,
    });
    let outcome = train(&cfg, &base_dir, &data, train_idx, val_idx, metadata)?;
    trainer::write_task(&args.out, &outcome.spec, &outcome.tensors)?;

    let eval_tokens = 512;
    let task = load_token_task(&base_dir, &args.out, eval_tokens)?;
    let (head, served) = task.score(&data, &outcome.val_indices, 32)?;
    let wall_secs = wall.elapsed().as_secs_f64();
    let md = render_card(&TokenCard {
        cfg: &cfg,
        outcome: &outcome,
        data: &data,
        base_model: &base_id,
        base_sha256: &base_sha,
        head: &head,
        served: &served,
        eval_max_tokens: eval_tokens,
        wall_secs,
        command: &command,
    });
    std::fs::write(args.out.join("model-card.md"), md)?;
    println!(
        "head alone:\n{}\nas served:\n{}",
        head.to_markdown(),
        served.to_markdown()
    );
    println!(
        "wrote {} (best epoch {}, head strict micro-F1 {:.4}, served {:.4}, {:.0} s)",
        args.out.display(),
        outcome.best_epoch,
        head.micro_strict().f1,
        served.micro_strict().f1,
        wall_secs
    );
    Ok(ExitCode::SUCCESS)
}

/// The seeded subset and group split (the same for train and eval).
pub fn split(
    data: &TokenDataset,
    max_examples: Option<usize>,
    val_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let used = super::data::subsample(data.examples.len(), max_examples, seed);
    let subset: Vec<_> = used.iter().map(|&i| data.examples[i].clone()).collect();
    let (t, v) = token_data::group_split(&subset, val_fraction, seed);
    (
        t.into_iter().map(|j| used[j]).collect(),
        v.into_iter().map(|j| used[j]).collect(),
    )
}

/// `vsr eval --task pii ...`.
pub fn eval_cli(args: &crate::cli::eval::EvalArgs) -> anyhow::Result<ExitCode> {
    let (base_dir, _) = crate::sidecar::loader::resolve_base(&args.base_model)?;
    let task = load_token_task(&base_dir, &args.model, args.max_tokens)?;
    anyhow::ensure!(
        task.files.spec.name == args.task,
        "{} holds task `{}`, not `{}`",
        args.model.display(),
        task.files.spec.name,
        args.task
    );
    if !args.text.is_empty() {
        let texts: Vec<&str> = args.text.iter().map(String::as_str).collect();
        let rows: Vec<serde_json::Value> = texts
            .iter()
            .zip(task.entities(&texts, 32)?)
            .map(|(t, (_, served))| {
                serde_json::json!({"text": t, "entities": served.iter().map(|e| serde_json::json!({
                    "type": e.kind, "start": e.start, "end": e.end, "score": e.score,
                    "source": e.source, "text": &t[e.byte_start..e.byte_end],
                })).collect::<Vec<_>>()})
            })
            .collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for r in rows {
                println!("{}", r["text"].as_str().unwrap_or_default());
                for e in r["entities"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    println!(
                        "  {}\t{:.3}\t{}\t{:?}",
                        e["type"].as_str().unwrap_or_default(),
                        e["score"].as_f64().unwrap_or_default(),
                        e["source"].as_str().unwrap_or_default(),
                        e["text"].as_str().unwrap_or_default()
                    );
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let data_dir = args.data.as_ref().context("--data is required")?;
    let split_meta = task
        .files
        .spec
        .metadata
        .as_ref()
        .and_then(|m| m.get("split"))
        .cloned()
        .unwrap_or_default();
    let data = token_data::load(&args.task, data_dir)?;
    let indices: Vec<usize> = if args.all || split_meta.is_null() {
        (0..data.examples.len()).collect()
    } else {
        let seed = split_meta["seed"].as_u64().unwrap_or(42);
        let frac = split_meta["val_fraction"].as_f64().unwrap_or(0.1);
        let max = split_meta["max_examples"].as_u64().map(|m| m as usize);
        split(&data, max, frac, seed).1
    };
    let (head, served) = task.score(&data, &indices, 32)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"head": head, "served": served}))?
        );
    } else {
        println!(
            "{} ({}):\n\nhead alone:\n{}\nas served (head ∪ recognizers):\n{}",
            args.task,
            if args.all || split_meta.is_null() {
                "all examples"
            } else {
                "validation split"
            },
            head.to_markdown(),
            served.to_markdown()
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_report_counts_strict_and_overlap() {
        let mut r = SpanReport::default();
        r.add(
            &[(0, 4, "PERSON"), (10, 14, "LOCATION"), (20, 25, "PERSON")],
            &[(0, 4, "PERSON"), (9, 14, "LOCATION"), (30, 35, "PERSON")],
        );
        let p = &r.per_type["PERSON"];
        assert_eq!((p.gold, p.predicted, p.strict, p.overlap), (2, 2, 1, 1));
        let l = &r.per_type["LOCATION"];
        assert_eq!((l.gold, l.predicted, l.strict, l.overlap), (1, 1, 0, 1));
        let m = r.micro_strict();
        assert!((m.precision - 1.0 / 3.0).abs() < 1e-12 && (m.recall - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.micro_overlap().f1 - 2.0 / 3.0).abs() < 1e-12);
        assert!(r.to_markdown().contains("| PERSON | 2 | 2 |"));
    }
}
