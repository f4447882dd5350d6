//! `vsr train` / `vsr eval` for token tasks: `pii` (BIO tags per token) and
//! the pair-token task `hallucination` (`supported` / `hallucinated` per
//! answer token; data: [`super::hallucination_data`]).
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
//!
//! Pair-token tasks: each example is encoded as served
//! (`Tokenization::encode_pair`: `[CLS] first [SEP] answer [SEP]`, real type
//! ids, the first text in overlapping windows when long); every window is a
//! training row and the loss covers the answer tokens only. Validation and
//! evaluation average the per-token softmax over an example's windows, as
//! `ClassifyTokens` does, and score tokens of the positive label
//! (`hallucinated`): token-level P/R/F1 (the target metric) and spans of
//! consecutive positive tokens (strict / overlap).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Serialize;

use super::token_data::{self, Aligned, Span, TokenDataset, IGNORE};
use super::trainer::{self, TrainConfig};
use super::Rng;
use super::{card, hallucination_data};
use crate::sidecar::backend::candle::{CandleBackend, TaskBranch};
use crate::sidecar::backend::{Backend, Batch, HeadOutput, TaskFiles, Wants};
use crate::sidecar::model::bert::{BertModel, Mode};
use crate::sidecar::tasks::decode::{self, Entity, TokenLabel};
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

    /// The scores of `types` alone (all types when empty). Exact: a span
    /// only ever matches a gold span of its own type.
    pub fn only(mut self, types: &[String]) -> Self {
        if !types.is_empty() {
            self.per_type.retain(|k, _| types.contains(k));
        }
        self
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

/// One row per source: texts, gold spans, micro strict and overlap F1.
/// CoNLL sources label only PERSON, GPE and ORGANIZATION, so any other
/// type found in them counts as a false positive here.
pub fn sources_markdown(by_source: &BTreeMap<&str, SpanReport>) -> String {
    let mut s = String::from(
        "| source | texts | gold spans | strict F1 | overlap F1 |\n|---|---:|---:|---:|---:|\n",
    );
    for (source, r) in by_source {
        let _ = writeln!(
            s,
            "| {source} | {} | {} | {:.3} | {:.3} |",
            r.texts,
            r.total().gold,
            r.micro_strict().f1,
            r.micro_overlap().f1
        );
    }
    s
}

fn spans_of(es: &[Entity]) -> Vec<(usize, usize, &str)> {
    es.iter()
        .map(|e| (e.byte_start, e.byte_end, e.kind.as_str()))
        .collect()
}

fn gold_of<'a>(spans: impl Iterator<Item = &'a Span>) -> Vec<(usize, usize, &'a str)> {
    spans.map(|s| (s.start, s.end, s.kind.as_str())).collect()
}

/// Token-level counts of the positive label (pair-token tasks).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct TokenCounts {
    /// Answer tokens scored.
    pub tokens: usize,
    /// Tokens inside a gold span.
    pub gold: usize,
    /// Tokens predicted positive.
    pub predicted: usize,
    /// Both.
    pub hit: usize,
}

impl TokenCounts {
    fn add(&mut self, gold: bool, predicted: bool) {
        self.tokens += 1;
        self.gold += usize::from(gold);
        self.predicted += usize::from(predicted);
        self.hit += usize::from(gold && predicted);
    }

    pub fn prf(&self) -> Prf {
        prf(self.hit, self.predicted, self.gold)
    }

    /// Share of tokens labelled right (both labels).
    pub fn accuracy(&self) -> f64 {
        let right = self.tokens + 2 * self.hit - self.gold - self.predicted;
        right as f64 / self.tokens.max(1) as f64
    }
}

/// Scores of a pair-token task: per answer token (overall and per source)
/// and per span of consecutive positive tokens.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PairTokenReport {
    pub positive_label: String,
    pub answers: usize,
    pub tokens: TokenCounts,
    pub per_source: BTreeMap<String, TokenCounts>,
    pub spans: SpanReport,
}

impl PairTokenReport {
    fn new(positive: &str) -> Self {
        Self {
            positive_label: positive.to_string(),
            ..Self::default()
        }
    }

    /// One answer: its tokens `(byte_start, byte_end, predicted positive)`
    /// in order, and its gold spans. A token is gold-positive when it
    /// overlaps a gold span; predicted spans are runs of consecutive
    /// positive tokens.
    /// Tokens overlapping an [`token_data::IGNORED_KIND`] span are not scored.
    pub fn add(&mut self, source: &str, tokens: &[(usize, usize, bool)], gold: &[Span]) {
        let ignored: Vec<&Span> = gold
            .iter()
            .filter(|s| s.kind == token_data::IGNORED_KIND)
            .collect();
        let gold: Vec<Span> = gold
            .iter()
            .filter(|s| s.kind != token_data::IGNORED_KIND)
            .cloned()
            .collect();
        self.answers += 1;
        let per = self.per_source.entry(source.to_string()).or_default();
        let mut predicted: Vec<(usize, usize)> = Vec::new();
        let mut prev = false;
        for &(s, e, p) in tokens {
            if ignored.iter().any(|sp| s < sp.end && e > sp.start) {
                continue;
            }
            let g = gold.iter().any(|sp| s < sp.end && e > sp.start);
            self.tokens.add(g, p);
            per.add(g, p);
            if p {
                match predicted.last_mut() {
                    Some(last) if prev => last.1 = e,
                    _ => predicted.push((s, e)),
                }
            }
            prev = p;
        }
        let k = self.positive_label.as_str();
        let pred: Vec<(usize, usize, &str)> = predicted.iter().map(|&(s, e)| (s, e, k)).collect();
        let gold: Vec<(usize, usize, &str)> = gold.iter().map(|s| (s.start, s.end, k)).collect();
        self.spans.add(&pred, &gold);
    }

    pub fn token_prf(&self) -> Prf {
        self.tokens.prf()
    }

    pub fn to_markdown(&self) -> String {
        let mut s = String::new();
        let t = self.tokens.prf();
        let _ = writeln!(
            s,
            "answers: {}, answer tokens: {} ({} gold `{}`); token-level `{}`: P {:.3} R {:.3} F1 {:.3}; token accuracy {:.3}\n",
            self.answers,
            self.tokens.tokens,
            self.tokens.gold,
            self.positive_label,
            self.positive_label,
            t.precision,
            t.recall,
            t.f1,
            self.tokens.accuracy()
        );
        let _ = writeln!(
            s,
            "| source | answers' tokens | gold {k} | predicted {k} | P | R | F1 | token accuracy |",
            k = self.positive_label
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (src, c) in self
            .per_source
            .iter()
            .chain([(&"all".to_string(), &self.tokens)])
        {
            let p = c.prf();
            let _ = writeln!(
                s,
                "| {src} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                c.tokens,
                c.gold,
                c.predicted,
                p.precision,
                p.recall,
                p.f1,
                c.accuracy()
            );
        }
        let _ = writeln!(
            s,
            "\nSpans (runs of consecutive `{}` tokens vs gold spans):\n",
            self.positive_label
        );
        s.push_str(&self.spans.to_markdown());
        s
    }
}

/// Per-token probability rows of one example's windows (answer tokens only,
/// the same in every window) → their mean, as `ClassifyTokens` averages.
fn mean_rows(windows: &[Vec<Vec<f32>>]) -> Vec<Vec<f32>> {
    let mut mean: Vec<Vec<f32>> = Vec::new();
    for rows in windows {
        if mean.is_empty() {
            mean = vec![vec![0.0; rows.first().map_or(0, Vec::len)]; rows.len()];
        }
        for (m, p) in mean.iter_mut().zip(rows) {
            m.iter_mut()
                .zip(p)
                .for_each(|(m, p)| *m += p / windows.len() as f32);
        }
    }
    mean
}

/// Served token labels → `(byte_start, byte_end, is positive)`.
fn positive_tokens(labels: &[TokenLabel], positive: &str) -> Vec<(usize, usize, bool)> {
    labels
        .iter()
        .map(|l| (l.byte_start, l.byte_end, l.label == positive))
        .collect()
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
    /// (epoch, train loss, val strict micro-F1, val overlap micro-F1); pair
    /// tasks: (epoch, train loss, val token F1 of the positive label, val
    /// span overlap F1).
    pub history: Vec<(usize, f64, f64, f64)>,
    pub cache_secs: f64,
    pub train_secs: f64,
}

/// The spec `vsr train` writes for a token task.
pub fn token_spec(
    cfg: &TrainConfig,
    labels: &[String],
    kind: TaskKind,
    metadata: serde_json::Value,
) -> TaskSpec {
    TaskSpec {
        name: cfg.task.clone(),
        kind,
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
        line_breaks: cfg.line_breaks,
        members: 1,
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
    let mut order: Vec<usize> = aligned.keys().copied().collect();
    order.sort_by_key(|i| (aligned[i].ids.len(), *i));
    let mut out = HashMap::with_capacity(order.len());
    let start = Instant::now();
    for (n, chunk) in order.chunks(64).enumerate() {
        let rows: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|i| (&aligned[i].ids[..], &aligned[i].type_ids[..]))
            .collect();
        let x = trainer::frozen_chunk(model, &rows, first_layer)?.x;
        for (row, i) in chunk.iter().enumerate() {
            let hidden = trainer::unpadded_row(&x, row, aligned[i].ids.len())?;
            out.insert(*i, Cached { hidden });
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

/// Padded `[b, s, h]` features, the mask bias and the `[b, s]` line-start
/// flags of `rows`.
fn make_batch(
    cache: &HashMap<usize, Cached>,
    aligned: &HashMap<usize, Aligned>,
    rows: &[usize],
    dev: &Device,
) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
    let p = trainer::pad_hidden(rows.iter().map(|i| &cache[i].hidden), dev)?;
    let s = p.x.dim(1)?;
    let mut lines = vec![0u32; rows.len() * s];
    for (r, i) in rows.iter().enumerate() {
        let f = &aligned[i].line_starts;
        lines[r * s..r * s + f.len()].copy_from_slice(f);
    }
    let lines = Tensor::from_vec(lines, (rows.len(), s), dev)?;
    Ok((p.x, p.bias, lines))
}

fn padded_len(aligned: &HashMap<usize, Aligned>, rows: &[usize]) -> usize {
    rows.iter().map(|i| aligned[i].ids.len()).max().unwrap_or(1)
}

/// Loss weights of each row's labelled tokens.
struct LossPlan {
    /// Per row: the example's weight (`--extra-weight` for training-only rows).
    row_weight: Vec<f32>,
    /// Per label: a weight multiplying the row's (pair-token tasks).
    label_weight: Option<Vec<f32>>,
}

impl LossPlan {
    /// The flat positions (`row * s + token`) of labelled tokens, their
    /// labels and weights.
    fn targets(
        &self,
        aligned: &HashMap<usize, Aligned>,
        rows: &[usize],
        dev: &Device,
    ) -> anyhow::Result<(Tensor, Tensor, Tensor)> {
        let max_len = padded_len(aligned, rows);
        let (mut pos, mut labels, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        for (r, i) in rows.iter().enumerate() {
            for (t, &l) in aligned[i].labels.iter().enumerate() {
                if l == IGNORE {
                    continue;
                }
                pos.push((r * max_len + t) as u32);
                labels.push(l);
                let by_label = self
                    .label_weight
                    .as_ref()
                    .and_then(|w| w.get(l as usize).copied())
                    .unwrap_or(1.0);
                weights.push(self.row_weight[*i] * by_label);
            }
        }
        let n = pos.len();
        Ok((
            Tensor::from_vec(pos, n, dev)?,
            Tensor::from_vec(labels, n, dev)?,
            Tensor::from_vec(weights, n, dev)?,
        ))
    }
}

/// Cross-entropy with a weight per token: `Σ w·nll / Σ w`.
fn weighted_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    weights: &Tensor,
) -> candle_core::Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, 1)?;
    let nll = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?;
    let total = weights.sum_all()?.to_scalar::<f32>()?;
    (nll * weights)?.sum_all()? / f64::from(total.max(1e-6))
}

/// The branch on cached features: logits `[b, s, labels]`.
fn branch_logits(
    model: &BertModel,
    branch: &TaskBranch,
    x: &Tensor,
    bias: &Tensor,
    line_starts: &Tensor,
    mode: Mode,
) -> candle_core::Result<Tensor> {
    let mut h = branch.with_line_breaks(x.clone(), line_starts)?;
    for (k, adapter) in branch.adapters.iter().enumerate() {
        h = model.layer(branch.first_layer + k, &h, bias, Some(adapter), mode)?;
    }
    branch.head.forward(&h)
}

/// What validation measured.
enum ValReport {
    /// Entity spans (`pii`).
    Spans(SpanReport),
    /// Pair-token tasks.
    Pair(PairTokenReport),
}

impl ValReport {
    /// (early-stopping score, second score): strict and overlap micro-F1;
    /// pair tasks: token F1 and span overlap F1 of the positive label.
    fn scores(&self) -> (f64, f64) {
        match self {
            ValReport::Spans(r) => (r.micro_strict().f1, r.micro_overlap().f1),
            ValReport::Pair(r) => (r.token_prf().f1, r.spans.micro_overlap().f1),
        }
    }
}

/// Scores the current weights on cached features (decoded as the sidecar
/// decodes; pair tasks: softmax averaged over an example's windows).
#[allow(clippy::too_many_arguments)]
fn validate(
    model: &BertModel,
    branch: &TaskBranch,
    cache: &HashMap<usize, Cached>,
    aligned: &HashMap<usize, Aligned>,
    row_example: &[usize],
    data: &TokenDataset,
    rows: &[usize],
    dev: &Device,
) -> anyhow::Result<ValReport> {
    let pair = is_pair(data);
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|i| aligned[i].ids.len());
    let mut report = SpanReport::default();
    let mut windows: BTreeMap<usize, Vec<Vec<Vec<f32>>>> = BTreeMap::new();
    let mut answer_offsets: HashMap<usize, Vec<Option<(usize, usize)>>> = HashMap::new();
    for chunk in sorted.chunks(64) {
        let (x, bias, lines) = make_batch(cache, aligned, chunk, dev)?;
        let logits = branch_logits(model, branch, &x, &bias, &lines, Mode::Inference)?;
        let (_, s, c) = logits.dims3()?;
        let all = logits.flatten_all()?.to_vec1::<f32>()?;
        for (r, i) in chunk.iter().enumerate() {
            let a = &aligned[i];
            let e = row_example[*i];
            let ex = &data.examples[e];
            let row = &all[r * s * c..(r * s + a.ids.len()) * c];
            if pair {
                let probs: Vec<Vec<f32>> = row
                    .chunks_exact(c)
                    .zip(&a.offsets)
                    .filter(|(_, o)| o.is_some())
                    .map(|(l, _)| decode::softmax(l))
                    .collect();
                windows.entry(e).or_default().push(probs);
                answer_offsets
                    .entry(e)
                    .or_insert_with(|| a.offsets.iter().filter(|o| o.is_some()).copied().collect());
            } else {
                let es = decode::token_entities(&data.labels, row, c, &a.offsets, &ex.text);
                report.add(&spans_of(&es), &gold_of(ex.model_spans()));
            }
        }
    }
    if !pair {
        return Ok(ValReport::Spans(report));
    }
    let positive = hallucination_data::HALLUCINATED;
    let mut pr = PairTokenReport::new(positive);
    for (e, w) in windows {
        let ex = &data.examples[e];
        let labels =
            decode::token_labels(&data.labels, &mean_rows(&w), &answer_offsets[&e], &ex.text);
        pr.add(ex.source, &positive_tokens(&labels, positive), &ex.gold);
    }
    Ok(ValReport::Pair(pr))
}

/// A token's byte range in the labelled text (`None`: not labelled).
type ByteRange = Option<(usize, usize)>;

/// Whether the dataset's examples are text pairs.
fn is_pair(data: &TokenDataset) -> bool {
    data.examples.iter().any(|e| e.first.is_some())
}

/// `--extra-weight` must be a finite weight ≥ 0 and have rows to weigh.
fn check_extra_weight(w: f64, data: &TokenDataset) -> anyhow::Result<()> {
    if !w.is_finite() || w < 0.0 {
        bail!("--extra-weight must be a finite number ≥ 0, got {w}");
    }
    if w != 1.0 && data.validated == data.examples.len() {
        bail!("--extra-weight weighs training-only data, and this run has none (add --wnut-extra)");
    }
    Ok(())
}

/// The run's [`LossPlan`]: `--extra-weight` weighs the training-only rows.
fn loss_plan(
    extra_weight: f64,
    data: &TokenDataset,
    row_example: &[usize],
    label_weight: Option<Vec<f32>>,
) -> LossPlan {
    let row_weight: Vec<f32> = row_example
        .iter()
        .map(|&e| {
            if e >= data.validated {
                extra_weight as f32
            } else {
                1.0
            }
        })
        .collect();
    if extra_weight != 1.0 {
        let extra = row_weight.iter().filter(|&&w| w != 1.0).count();
        eprintln!("loss: {extra} training-only rows weighted {extra_weight}");
    }
    LossPlan {
        row_weight,
        label_weight,
    }
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
    let kind = if is_pair(data) {
        TaskKind::PairToken
    } else {
        TaskKind::Token
    };
    let spec = token_spec(cfg, &data.labels, kind, metadata);
    spec.validate(layers).map_err(anyhow::Error::msg)?;
    let tok = Tokenization::load(&base_dir.join("tokenizer.json"), cfg.max_tokens)?;
    let t0 = Instant::now();
    // Rows: one per example, or one per window of a pair example.
    let mut aligned = HashMap::new();
    let mut row_example: Vec<usize> = Vec::new();
    let (mut train_rows, mut val_rows) = (Vec::new(), Vec::new());
    for (val, &i) in train_idx
        .iter()
        .map(|i| (false, i))
        .chain(val_idx.iter().map(|i| (true, i)))
    {
        for a in token_data::align_windows(&tok, &data.examples[i], &data.labels)? {
            let r = row_example.len();
            row_example.push(i);
            aligned.insert(r, a);
            if val {
                val_rows.push(r);
            } else {
                train_rows.push(r);
            }
        }
    }
    let mut tag_counts = vec![0usize; data.labels.len()];
    for i in &train_rows {
        for &l in &aligned[i].labels {
            if l != IGNORE {
                tag_counts[l as usize] += 1;
            }
        }
    }
    eprintln!(
        "{} train / {} validation texts ({} / {} rows); train tokens per tag: {}",
        train_idx.len(),
        val_idx.len(),
        train_rows.len(),
        val_rows.len(),
        data.labels
            .iter()
            .zip(&tag_counts)
            .map(|(l, n)| format!("{l} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Pair-token tasks: the positive label is rare (most answer tokens are
    // supported); its tokens weigh sqrt(negative / positive) in the loss.
    let class_weights: Option<Vec<f32>> = (kind == TaskKind::PairToken && tag_counts.len() == 2)
        .then(|| {
            let ratio = tag_counts[0] as f64 / tag_counts[1].max(1) as f64;
            vec![1.0, ratio.sqrt().max(1.0) as f32]
        });
    if let Some(w) = &class_weights {
        eprintln!("loss weights per label: {w:?}");
    }
    let plan = loss_plan(cfg.extra_weight, data, &row_example, class_weights);
    let first_layer = layers - cfg.top_layers;
    eprintln!(
        "caching frozen layers 0..{first_layer} (max {} tokens)",
        cfg.max_tokens
    );
    let cache = cache_features(&model, &aligned, first_layer)?;
    let cache_secs = t0.elapsed().as_secs_f64();

    let mut rng = Rng::new(cfg.train_seed ^ 0x70CE);
    let varmap = trainer::init_vars(&spec, &model.config, &mut rng, &dev)?;
    let branch = TaskBranch::load(
        &spec,
        &model.config,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let t_train = Instant::now();
    let train_loop = trainer::fit(
        cfg,
        &varmap,
        &mut rng,
        &train_rows,
        |i| aligned[&i].ids.len(),
        |rows| {
            let (x, bias, lines) = make_batch(&cache, &aligned, rows, &dev)?;
            let (pos, labels, weights) = plan.targets(&aligned, rows, &dev)?;
            let logits = branch_logits(&model, &branch, &x, &bias, &lines, Mode::Train)?;
            let (b, s, c) = logits.dims3()?;
            let flat = logits.reshape((b * s, c))?.index_select(&pos, 0)?;
            Ok(weighted_cross_entropy(&flat, &labels, &weights)?)
        },
        || {
            let r = validate(
                &model,
                &branch,
                &cache,
                &aligned,
                &row_example,
                data,
                &val_rows,
                &dev,
            )?;
            let (f1, ov) = r.scores();
            let what = match &r {
                ValReport::Spans(_) => "strict micro-F1",
                ValReport::Pair(_) => "token F1 (positive label)",
            };
            Ok((
                f1,
                ov,
                format!("validation {what} {f1:.4}, span overlap {ov:.4}"),
            ))
        },
    )?;
    Ok(TokenOutcome {
        spec,
        tensors: train_loop.tensors,
        best_epoch: train_loop.best_epoch,
        epochs_run: train_loop.epochs_run,
        train_indices: train_idx,
        val_indices: val_idx,
        history: train_loop.history,
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
    if !spec.kind.per_token() {
        bail!(
            "task `{}` is of kind `{}`, not `token` or `pair_token`",
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
    /// Pair-token tasks, as `ClassifyTokens` serves them: per (first,
    /// answer) pair, every window of `encode_pair` through the backend, the
    /// per-token softmax averaged over the windows, then
    /// `decode::token_labels` (labels of the answer's tokens).
    pub fn pair_token_labels(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<TokenLabel>>> {
        let mut rows = Vec::new();
        for (p, (first, second)) in pairs.iter().enumerate() {
            for enc in self.tokenizer.encode_pair(first, second)? {
                rows.push((p, enc));
            }
        }
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&r| rows[r].1.ids.len());
        let mut windows: Vec<Vec<Vec<Vec<f32>>>> = vec![Vec::new(); pairs.len()];
        let mut offsets: Vec<Vec<Option<(usize, usize)>>> = vec![Vec::new(); pairs.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let batch = Batch::from_rows(chunk.iter().map(|&r| {
                (
                    &rows[r].1.ids[..],
                    &rows[r].1.type_ids[..],
                    &rows[r].1.line_starts[..],
                    Wants {
                        embedding: false,
                        tasks: vec![0],
                    },
                )
            }));
            for (&r, out) in chunk.iter().zip(self.backend.forward(&batch)?) {
                let Some((_, HeadOutput::Tokens { logits, num_labels })) =
                    out.heads.into_iter().next()
                else {
                    bail!("backend returned no token logits");
                };
                let (p, enc) = &rows[r];
                let kept: Vec<(ByteRange, Vec<f32>)> = enc
                    .offsets
                    .iter()
                    .zip(logits.chunks_exact(num_labels))
                    .filter(|(o, _)| o.is_some())
                    .map(|(o, l)| (*o, decode::softmax(l)))
                    .collect();
                if offsets[*p].is_empty() {
                    offsets[*p] = kept.iter().map(|k| k.0).collect();
                }
                windows[*p].push(kept.into_iter().map(|k| k.1).collect());
            }
        }
        let labels = &self.files.spec.labels;
        Ok(pairs
            .iter()
            .enumerate()
            .map(|(p, (_, second))| {
                decode::token_labels(labels, &mean_rows(&windows[p]), &offsets[p], second)
            })
            .collect())
    }

    /// Pair-token scores of `indices` (see [`PairTokenReport`]), as served.
    pub fn score_pairs(
        &self,
        data: &TokenDataset,
        indices: &[usize],
        batch_size: usize,
    ) -> anyhow::Result<PairTokenReport> {
        let pairs: Vec<(&str, &str)> = indices
            .iter()
            .map(|&i| {
                let e = &data.examples[i];
                (e.first.as_deref().unwrap_or_default(), e.text.as_str())
            })
            .collect();
        let positive = hallucination_data::HALLUCINATED;
        let mut report = PairTokenReport::new(positive);
        for (&i, labels) in indices
            .iter()
            .zip(self.pair_token_labels(&pairs, batch_size)?)
        {
            let e = &data.examples[i];
            report.add(e.source, &positive_tokens(&labels, positive), &e.gold);
        }
        Ok(report)
    }

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
                    &enc[i].line_starts[..],
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

    /// Scores the head alone (against the head's types) and as served
    /// (against every gold type); the served entities of each text (in
    /// `indices` order) come back too, for error listings.
    pub fn score(
        &self,
        data: &TokenDataset,
        indices: &[usize],
        batch_size: usize,
    ) -> anyhow::Result<Scored> {
        let texts: Vec<&str> = indices
            .iter()
            .map(|&i| data.examples[i].text.as_str())
            .collect();
        let mut out = Scored::default();
        for (&i, (m, s)) in indices.iter().zip(self.entities(&texts, batch_size)?) {
            let ex = &data.examples[i];
            let (predicted, gold) = (spans_of(&s), gold_of(ex.gold.iter()));
            out.head.add(&spans_of(&m), &gold_of(ex.model_spans()));
            out.served.add(&predicted, &gold);
            out.served_by_source
                .entry(ex.source)
                .or_default()
                .add(&predicted, &gold);
            out.served_entities.push(s);
        }
        Ok(out)
    }
}

/// What [`LoadedTokenTask::score`] measured.
#[derive(Default)]
pub struct Scored {
    /// The head alone, against the head's own types.
    pub head: SpanReport,
    /// Head ∪ recognizers, against every gold type.
    pub served: SpanReport,
    /// [`Scored::served`] per source file (short name): where the errors are.
    pub served_by_source: BTreeMap<&'static str, SpanReport>,
    /// The served entities of each scored text, in order.
    pub served_entities: Vec<Vec<Entity>>,
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
    pub served_by_source: &'a BTreeMap<&'static str, SpanReport>,
    pub eval_max_tokens: usize,
    pub wall_secs: f64,
    pub command: &'a str,
}

/// `* trained: ...` of a token card: the LoRA layout, the per-token head and `loss`.
fn trained_line(s: &mut String, cfg: &TrainConfig, loss: &str) {
    let _ = writeln!(
        s,
        "* trained: LoRA rank {} (alpha {}) on {} of the top {} layer(s), {} over every token{}; \
         loss: {loss}",
        cfg.lora_rank,
        cfg.lora_alpha,
        cfg.lora_targets.join(", "),
        cfg.top_layers,
        card::head_text(cfg),
        if cfg.line_breaks {
            ", and a line-break vector added to the trained layers' input at every token that \
             starts a new line (`--line-breaks`: the tokenizer drops line breaks)"
        } else {
            ""
        }
    );
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
         are all in train or all in validation; {} train / {} validation texts ({:.0}% of the groups){}{}",
        cfg.seed,
        o.train_indices.len(),
        o.val_indices.len(),
        cfg.val_fraction * 100.0,
        match cfg.max_examples {
            Some(m) => format!(", from a seeded subset of {m} texts"),
            None => String::new(),
        },
        match c.data.examples.len() - c.data.validated {
            0 => String::new(),
            n => format!("; the train side includes {n} training-only texts"),
        }
    );
    let _ = writeln!(s, "\n## Model\n");
    card::base_line(&mut s, c.base_model, c.base_sha256);
    let mut loss = "cross-entropy over real tokens (not [CLS]/[SEP])".to_string();
    if cfg.extra_weight != 1.0 {
        loss.push_str(&format!(
            "; training-only texts weigh {} (the validated sources 1)",
            cfg.extra_weight
        ));
    }
    trained_line(&mut s, cfg, &loss);
    card::hyper_line(
        &mut s,
        cfg,
        o.best_epoch,
        o.epochs_run,
        "validation strict micro-F1",
        "texts cut to",
    );
    let _ = writeln!(
        s,
        "* training wall time: {:.0} s in all ({:.0} s caching the frozen layers, {:.0} s training), CPU",
        c.wall_secs, o.cache_secs, o.train_secs
    );
    card::epoch_table(
        &mut s,
        "Per epoch (validation, decoded as served, on training-length inputs)",
        ["strict micro-F1", "overlap micro-F1"],
        &o.history,
    );
    let _ = writeln!(
        s,
        "\n## Validation metrics\n\nComputed after saving, by loading this directory through `CandleBackend` \
         (inputs up to {} tokens, as served; spans decoded as `sidecar/tasks/decode.rs` does: the \
         most probable BIO-consistent tag path over each word's first piece, then spans of one \
         type split only by spaces joined). Strict: same type and the same character offsets; \
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
    let _ = writeln!(s, "\n### As served, per source\n");
    s.push_str(&sources_markdown(c.served_by_source));
    card::reproduce(&mut s, c.command);
    s
}

/// The card of a pair-token task (`hallucination`).
pub struct PairTokenCard<'a> {
    pub cfg: &'a TrainConfig,
    pub outcome: &'a TokenOutcome,
    pub data: &'a TokenDataset,
    pub base_model: &'a str,
    pub base_sha256: &'a str,
    pub report: &'a PairTokenReport,
    pub eval_max_tokens: usize,
    pub wall_secs: f64,
    pub command: &'a str,
    /// The token F1 the task aims at.
    pub target_f1: f64,
}

pub fn render_pair_card(c: &PairTokenCard) -> String {
    let (cfg, o, r) = (c.cfg, c.outcome, c.report);
    let positive = &r.positive_label;
    let mut s = String::new();
    let _ = writeln!(s, "# `{}` task head\n", cfg.task);
    let _ = writeln!(
        s,
        "Pair-token classifier for the inference sidecar (docs/SIDECAR.md), trained by `vsr train`, \
         served by `ClassifyTokens`: first text = context + question, second text = an answer; \
         every answer token gets one of {} (plain labels, not BIO: `ClassifyTokens` returns a \
         label and score per token, and a per-token `supported`/`hallucinated` decision is what a \
         caller highlights or thresholds; runs of `{positive}` tokens are the spans).\n",
        c.data
            .labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let t = r.token_prf();
    let met = t.f1 >= c.target_f1;
    let _ = writeln!(
        s,
        "**Target** (token-level F1 of `{positive}` ≥ {:.2} on the validation split, as served): \
         {} — F1 {:.3} (P {:.3}, R {:.3}).\n",
        c.target_f1,
        if met { "met" } else { "not met" },
        t.f1,
        t.precision,
        t.recall
    );
    let _ = writeln!(s, "## Data\n");
    for src in &c.data.sources {
        let _ = writeln!(s, "* `{}`", src.display());
    }
    let _ = writeln!(
        s,
        "* labels (task.json order): {}",
        c.data.labels.join(", ")
    );
    let _ = writeln!(s, "* derivation: {}", c.data.note);
    let _ = writeln!(
        s,
        "* split: seeded by group (seed {}): every example derived from one HaluEval question \
         (its knowledge, right and hallucinated answers, knowledge sentences) is in train or in \
         validation, never both; {} train / {} validation examples ({:.0}% of the questions){}",
        cfg.seed,
        o.train_indices.len(),
        o.val_indices.len(),
        cfg.val_fraction * 100.0,
        match cfg.max_examples {
            Some(m) => format!(", from a seeded subset of {m} examples"),
            None => String::new(),
        }
    );
    let _ = writeln!(s, "\n## Model\n");
    card::base_line(&mut s, c.base_model, c.base_sha256);
    let _ = writeln!(
        s,
        "* input: `[CLS] context+question [SEP] answer [SEP]` with type ids 0/1 (`encode_pair`); a \
         long first text is covered by windows overlapping by half (training: every window is a row; \
         serving and the metrics below: per-token softmax averaged over the windows)"
    );
    trained_line(
        &mut s,
        cfg,
        "cross-entropy over the answer's tokens only (not [CLS]/[SEP], not the first text), \
         the positive label's tokens weighted sqrt(#negative / #positive training tokens)",
    );
    card::hyper_line(
        &mut s,
        cfg,
        o.best_epoch,
        o.epochs_run,
        &format!("validation token F1 of `{positive}`"),
        "pairs encoded with at most",
    );
    let _ = writeln!(
        s,
        "* training wall time: {:.0} s in all ({:.0} s caching the frozen layers, {:.0} s training, \
         the rest the served evaluation), CPU (2 shared cores)",
        c.wall_secs, o.cache_secs, o.train_secs
    );
    card::epoch_table(
        &mut s,
        "Per epoch (validation on training-length windows)",
        [&format!("token F1 `{positive}`"), "span overlap F1"],
        &o.history,
    );
    let _ = writeln!(
        s,
        "\n## Validation metrics\n\nComputed after saving, by loading this directory through \
         `CandleBackend` and encoding each pair as `ClassifyTokens` does (up to {} tokens, windows, \
         softmax averaged over windows). A token is gold `{positive}` when it overlaps a gold span; tokens without a label \
         (see the derivation) are not scored. \
         The validation split also chose the epoch, so these numbers are slightly optimistic.\n",
        c.eval_max_tokens
    );
    s.push_str(&r.to_markdown());
    let _ = writeln!(
        s,
        "\n## Limits\n\n\
         * HaluEval QA is labelled per answer: in a hallucinated answer every new word counts as \
           `{positive}` (words restating the context or question and function words are left \
           unlabelled); token-precise labels come only from the synthetic substitutions in \
           knowledge sentences (numbers and capitalised names).\n\
         * The head judges an answer against the first text, not against world knowledge: a claim \
           that is true but absent from the context tends to be flagged.\n\
         * English Wikipedia-style (HotpotQA) contexts only; no long-form answers in training."
    );
    card::reproduce(&mut s, c.command);
    s
}

impl token_data::TokenExample {
    /// The part of a source path that identifies this example's file.
    fn source_path_hint(&self) -> &'static str {
        match self.source {
            "presidio_synth_v2" => "synth_dataset_v2",
            "presidio_generated_large" => "generated_large",
            "wikigold" => "wikigold",
            super::pii_synth::SOURCE => super::pii_synth::RAW_DIR,
            other => other,
        }
    }
}

// === CLI entry points (dispatched from `vsr train` / `vsr eval`) ===

/// `vsr train --task pii ...`.
pub fn train_cli(args: &crate::cli::train::TrainArgs) -> anyhow::Result<ExitCode> {
    let wall = Instant::now();
    let command = crate::cli::train::command_line();
    let (base_dir, base_id) = crate::sidecar::loader::resolve_base(&args.base_model)?;
    let data = token_data::load_with(&args.task, &args.data, args.load_options())?;
    let cfg = args.config();
    check_extra_weight(cfg.extra_weight, &data)?;
    let (train_idx, val_idx) = split(&data, cfg.max_examples, cfg.val_fraction, cfg.seed);
    let base_sha = trainer::sha256_file(&base_dir.join("model.safetensors"))?;
    let metadata = serde_json::json!({
        "trained_by": "vsr train",
        "datasets": data.sources.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "split": {"by": "group", "seed": cfg.seed, "val_fraction": cfg.val_fraction, "max_examples": cfg.max_examples},
        "extra_training_data": crate::cli::train::extra_data_name(args),
        "base_model": base_id,
        "base_model_sha256": base_sha,
    });
    let outcome = train(&cfg, &base_dir, &data, train_idx, val_idx, metadata)?;
    trainer::write_task(&args.out, &outcome.spec, &outcome.tensors)?;

    let eval_tokens = 512;
    let task = load_token_task(&base_dir, &args.out, eval_tokens)?;
    if is_pair(&data) {
        let report = task.score_pairs(&data, &outcome.val_indices, 32)?;
        let wall_secs = wall.elapsed().as_secs_f64();
        let md = render_pair_card(&PairTokenCard {
            cfg: &cfg,
            outcome: &outcome,
            data: &data,
            base_model: &base_id,
            base_sha256: &base_sha,
            report: &report,
            eval_max_tokens: eval_tokens,
            wall_secs,
            command: &command,
            target_f1: TARGET_TOKEN_F1,
        });
        std::fs::write(args.out.join("model-card.md"), md)?;
        println!("{}", report.to_markdown());
        println!("{}", serde_json::to_string(&report)?);
        println!(
            "wrote {} (best epoch {}, validation token F1 `{}` {:.4}, {:.0} s)",
            args.out.display(),
            outcome.best_epoch,
            report.positive_label,
            report.token_prf().f1,
            wall_secs
        );
        return Ok(ExitCode::SUCCESS);
    }
    let Scored {
        head,
        served,
        served_by_source,
        ..
    } = task.score(&data, &outcome.val_indices, 32)?;
    let wall_secs = wall.elapsed().as_secs_f64();
    let md = render_card(&TokenCard {
        cfg: &cfg,
        outcome: &outcome,
        data: &data,
        base_model: &base_id,
        base_sha256: &base_sha,
        head: &head,
        served: &served,
        served_by_source: &served_by_source,
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

/// Token F1 of the positive label a pair-token head should reach.
pub const TARGET_TOKEN_F1: f64 = 0.6;

/// The seeded subset and group split (the same for train and eval);
/// training-only examples (past [`TokenDataset::validated`]) join train.
pub fn split(
    data: &TokenDataset,
    max_examples: Option<usize>,
    val_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let used = super::data::subsample(data.validated, max_examples, seed);
    let subset: Vec<_> = used.iter().map(|&i| data.examples[i].clone()).collect();
    let (t, v) = token_data::group_split(&subset, val_fraction, seed);
    (
        t.into_iter()
            .map(|j| used[j])
            .chain(data.validated..data.examples.len())
            .collect(),
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
    let pair = task.files.spec.kind == TaskKind::PairToken;
    if pair && !args.text.is_empty() {
        // `--text "context and question<TAB>answer"`.
        let pairs: Vec<(&str, &str)> = args
            .text
            .iter()
            .map(|t| t.split_once('\t').unwrap_or(("", t.as_str())))
            .collect();
        let rows: Vec<serde_json::Value> = pairs
            .iter()
            .zip(task.pair_token_labels(&pairs, 32)?)
            .map(|((first, answer), labels)| {
                serde_json::json!({"first": first, "answer": answer, "tokens": labels.iter().map(|l| serde_json::json!({
                    "text": &answer[l.byte_start..l.byte_end], "label": l.label, "score": l.score,
                    "start": l.start, "end": l.end,
                })).collect::<Vec<_>>()})
            })
            .collect();
        if args.json {
            println!("{}", serde_json::to_string_pretty(&rows)?);
        } else {
            for r in rows {
                println!("{}", r["answer"].as_str().unwrap_or_default());
                for t in r["tokens"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                    println!(
                        "  {:?}\t{}\t{:.3}",
                        t["text"].as_str().unwrap_or_default(),
                        t["label"].as_str().unwrap_or_default(),
                        t["score"].as_f64().unwrap_or_default()
                    );
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
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
    let which = if args.all || split_meta.is_null() {
        "all examples"
    } else {
        "validation split"
    };
    if pair {
        let report = task.score_pairs(&data, &indices, 32)?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!("{} ({which}):\n\n{}", args.task, report.to_markdown());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Scored {
        head,
        served,
        served_by_source,
        served_entities,
    } = task.score(&data, &indices, 32)?;
    if let Some(t) = args
        .types
        .iter()
        .find(|t| !served.per_type.contains_key(*t))
    {
        bail!(
            "--types: no gold or predicted span of type `{t}` (types here: {})",
            served
                .per_type
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let (head, served) = (head.only(&args.types), served.only(&args.types));
    let served_by_source: BTreeMap<_, _> = served_by_source
        .into_iter()
        .map(|(k, r)| (k, r.only(&args.types)))
        .collect();
    if args.errors > 0 {
        print_errors(&data, &indices, &served_entities, args.errors);
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "head": head, "served": served, "served_by_source": served_by_source,
            }))?
        );
    } else {
        println!(
            "{} ({which}{}):\n\nhead alone:\n{}\nas served (head ∪ recognizers):\n{}\nas served, per source:\n{}",
            args.task,
            if args.types.is_empty() {
                String::new()
            } else {
                format!("; types {}", args.types.join(", "))
            },
            head.to_markdown(),
            served.to_markdown(),
            sources_markdown(&served_by_source)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints up to `limit` texts whose served spans (`served[k]` for
/// `indices[k]`) differ from the gold spans (to stderr, so `--json` output
/// stays machine-readable).
fn print_errors(data: &TokenDataset, indices: &[usize], served: &[Vec<Entity>], limit: usize) {
    let mut shown = 0;
    for (&i, served) in indices.iter().zip(served) {
        let ex = &data.examples[i];
        let predicted = spans_of(served);
        let gold = gold_of(ex.gold.iter());
        let missed: Vec<_> = gold.iter().filter(|g| !predicted.contains(g)).collect();
        let extra: Vec<_> = predicted.iter().filter(|p| !gold.contains(p)).collect();
        if missed.is_empty() && extra.is_empty() {
            continue;
        }
        eprintln!("{:?}", ex.text);
        let piece = |s: usize, e: usize| ex.text.get(s..e).unwrap_or("?");
        for (s, e, kind) in missed {
            eprintln!("  - {kind}\t{:?}", piece(*s, *e));
        }
        for (s, e, kind) in extra {
            eprintln!("  + {kind}\t{:?}", piece(*s, *e));
        }
        shown += 1;
        if shown >= limit {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_weights_rows_and_labels() {
        let ex = |source: &'static str| token_data::TokenExample {
            first: None,
            text: "x".into(),
            gold: vec![],
            group: source.into(),
            source,
        };
        let data = TokenDataset {
            labels: token_data::bio_labels(&["PERSON"]),
            examples: vec![ex("presidio"), ex("wikigold"), ex("wnut")],
            sources: vec![],
            note: String::new(),
            validated: 2,
        };
        // Rows 0..3 are the examples; row 3 is a second window of example 2.
        let plan = loss_plan(0.5, &data, &[0, 1, 2, 2], Some(vec![1.0, 4.0, 1.0]));
        assert!(check_extra_weight(0.5, &data).is_ok());
        assert!(check_extra_weight(-1.0, &data).is_err());
        assert!(check_extra_weight(f64::NAN, &data).is_err());
        let no_extra = TokenDataset {
            validated: 3,
            examples: data.examples.clone(),
            labels: data.labels.clone(),
            sources: vec![],
            note: String::new(),
        };
        assert!(check_extra_weight(1.0, &no_extra).is_ok());
        let e = check_extra_weight(0.5, &no_extra).unwrap_err().to_string();
        assert!(e.contains("--wnut-extra"), "{e}");
        assert_eq!(plan.row_weight, vec![1.0, 1.0, 0.5, 0.5]);
        let aligned: HashMap<usize, Aligned> = (0..4)
            .map(|r| {
                let a = Aligned {
                    ids: vec![101, 7, 8, 102],
                    type_ids: vec![0; 4],
                    labels: vec![IGNORE, 0, 1, IGNORE],
                    offsets: vec![None, Some((0, 1)), Some((2, 3)), None],
                    line_starts: vec![0; 4],
                };
                (r, a)
            })
            .collect();
        let (pos, labels, w) = plan.targets(&aligned, &[0, 3], &Device::Cpu).unwrap();
        assert_eq!(pos.to_vec1::<u32>().unwrap(), vec![1, 2, 5, 6]);
        assert_eq!(labels.to_vec1::<u32>().unwrap(), vec![0, 1, 0, 1]);
        assert_eq!(w.to_vec1::<f32>().unwrap(), vec![1.0, 4.0, 0.5, 2.0]);

        // Σ w·nll / Σ w, and equal to plain cross-entropy at equal weights.
        let raw = [0.5f32, -1.0, 2.0, 0.1, 1.5, 0.3];
        let logits = candle_core::Var::from_vec(raw.to_vec(), (2, 3), &Device::Cpu).unwrap();
        let labels = Tensor::new(&[2u32, 0], &Device::Cpu).unwrap();
        let loss = |w: &[f32]| {
            let w = Tensor::new(w, &Device::Cpu).unwrap();
            weighted_cross_entropy(logits.as_tensor(), &labels, &w).unwrap()
        };
        let plain = candle_nn::loss::cross_entropy(logits.as_tensor(), &labels).unwrap();
        let f = |t: &Tensor| t.to_scalar::<f32>().unwrap();
        assert!((f(&loss(&[2.0, 2.0])) - f(&plain)).abs() < 1e-5);
        let nll =
            |row: &[f32], j: usize| -(row[j].exp() / row.iter().map(|x| x.exp()).sum::<f32>()).ln();
        let want = (nll(&raw[..3], 2) + 3.0 * nll(&raw[3..], 0)) / 4.0;
        let weighted = loss(&[1.0, 3.0]);
        assert!((f(&weighted) - want).abs() < 1e-5);
        let g = weighted.backward().unwrap();
        let g = g.get(&logits).unwrap().to_vec2::<f32>().unwrap();
        assert!(g.iter().flatten().any(|x| x.abs() > 1e-4), "{g:?}");
    }

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

        // Restricted to PERSON: LOCATION's gold and prediction leave the micro scores.
        let only = r.clone().only(&["PERSON".to_string()]);
        assert_eq!(only.per_type.len(), 1);
        assert!((only.micro_strict().f1 - 0.5).abs() < 1e-12);
        assert_eq!(r.clone().only(&[]).per_type.len(), 2);
    }

    /// The per-source table has a row per source with its micro scores.
    #[test]
    fn sources_table_rows() {
        let mut a = SpanReport::default();
        a.add(&[(0, 4, "PERSON")], &[(0, 4, "PERSON")]);
        let mut b = SpanReport::default();
        b.add(&[(0, 4, "DATE_TIME")], &[(0, 4, "GPE")]);
        let md = sources_markdown(&BTreeMap::from([("presidio", a), ("wikigold", b)]));
        assert!(md.contains("| presidio | 1 | 1 | 1.000 | 1.000 |"), "{md}");
        assert!(md.contains("| wikigold | 1 | 1 | 0.000 | 0.000 |"), "{md}");
    }
}
