//! The train loop ([`fit`], shared by sequence and token tasks) and the
//! sequence-task trainer around it.
//!
//! The lower `L - top_layers` layers are frozen, so their output is computed
//! once per example ([`Mode::Inference`], no graph) and cached. Each step runs
//! only the task's top layers (base weights + LoRA, the last one for `[CLS]`
//! only when the task is CLS-pooled) and the head in [`Mode::Train`], whose
//! layer norm and softmax have a backward pass.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, VarBuilder, VarMap};

use super::data::Dataset;
use super::metrics::Confusion;
use super::Rng;
use crate::sidecar::backend::candle::{sentence_embedding, shared_embedding, TaskBranch};
use crate::sidecar::model::bert::{cls_pool, mean_pool, BertConfig, BertModel, Mode};
use crate::sidecar::tasks::{HeadSpec, LoraSpec, Pooling, TaskKind, TaskSpec};
use crate::sidecar::tokenize::Tokenization;

/// Hyper-parameters of one run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainConfig {
    pub task: String,
    pub epochs: usize,
    pub lr: f64,
    pub lora_rank: usize,
    pub lora_alpha: f64,
    pub top_layers: usize,
    /// Seed of the split (and of `--max-examples`' subset).
    pub seed: u64,
    /// Seed of the initial weights, the batch order and the dropout masks;
    /// apart from `seed` so run-to-run noise can be measured on one split.
    pub train_seed: u64,
    pub max_examples: Option<usize>,
    pub batch_size: usize,
    pub max_tokens: usize,
    pub val_fraction: f64,
    pub patience: usize,
    pub weight_decay: f64,
    /// Linear modules of the trained layers carrying LoRA (Hugging Face names).
    pub lora_targets: Vec<String>,
    /// Widths of hidden dense layers of the head (empty: linear head).
    pub head_hidden: Vec<usize>,
    /// The head also reads the shared sentence embedding (sequence tasks).
    pub head_embedding: bool,
    /// Fraction of the head's input features dropped per training step
    /// (sequence tasks; 0 = off).
    pub head_dropout: f64,
    /// What the head reads from the last trained layer (sequence tasks).
    pub pooling: Pooling,
    /// Directory for frozen-layer features reused across runs (sequence tasks).
    #[serde(skip)]
    pub feature_cache: Option<std::path::PathBuf>,
    /// Token tasks: loss weight of the training-only extra examples
    /// (`--wnut-extra`); the validated sources weigh 1.
    pub extra_weight: f64,
    /// Token tasks: learn a vector added to the branch input at tokens that
    /// start a line (`TaskSpec::line_breaks`).
    pub line_breaks: bool,
}

/// What a run produced.
pub struct TrainOutcome {
    pub spec: TaskSpec,
    pub tensors: HashMap<String, Tensor>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    pub train_examples: usize,
    pub val_indices: Vec<usize>,
    pub history: Vec<(usize, f64, f64, f64)>,
    pub cache_secs: f64,
    /// Features came from `--feature-cache`; computing them took this long
    /// in the run that saved them.
    pub features_loaded: Option<f64>,
}

/// Frozen features of one example: hidden state entering the first trained
/// layer, `[len, h]`.
struct Cached {
    hidden: Tensor,
    /// The frozen encoder's [`shared_embedding`] `[h]`, for heads that read it.
    embedding: Option<Tensor>,
    label: u32,
}

pub fn load_base(base_dir: &Path, device: &Device) -> anyhow::Result<BertModel> {
    let cfg_path = base_dir.join("config.json");
    let config: BertConfig = serde_json::from_str(
        &std::fs::read_to_string(&cfg_path).with_context(|| cfg_path.display().to_string())?,
    )?;
    let bytes = std::fs::read(base_dir.join("model.safetensors"))
        .with_context(|| format!("{}/model.safetensors", base_dir.display()))?;
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, device)?;
    Ok(BertModel::load(config, vb)?)
}

/// The spec `vsr train` writes for a sequence task.
pub fn sequence_spec(
    cfg: &TrainConfig,
    labels: &[String],
    metadata: serde_json::Value,
) -> TaskSpec {
    // A task the router knows as a pair task (`nli`) is written as one.
    let kind = match crate::sidecar::tasks::CATALOGUE
        .iter()
        .find(|(n, _)| *n == cfg.task)
    {
        Some((_, TaskKind::Pair)) => TaskKind::Pair,
        _ => TaskKind::Sequence,
    };
    TaskSpec {
        name: cfg.task.clone(),
        kind,
        labels: labels.to_vec(),
        pooling: cfg.pooling,
        top_layers: cfg.top_layers,
        lora: (cfg.top_layers > 0 && cfg.lora_rank > 0).then(|| LoraSpec {
            rank: cfg.lora_rank,
            alpha: cfg.lora_alpha,
            targets: cfg.lora_targets.clone(),
        }),
        head: HeadSpec {
            hidden: cfg.head_hidden.clone(),
            with_embedding: cfg.head_embedding,
            ..HeadSpec::default()
        },
        line_breaks: cfg.line_breaks,
        members: 1,
        metadata: Some(metadata),
    }
}

/// Creates every trainable tensor under its `adapter.safetensors` name:
/// head `N(0, 1/in)`, LoRA `A ~ N(0, 1/in)`, `B = 0` (the adapter starts as
/// the identity).
pub(crate) fn init_vars(
    spec: &TaskSpec,
    cfg: &BertConfig,
    rng: &mut Rng,
    dev: &Device,
) -> anyhow::Result<VarMap> {
    let varmap = VarMap::new();
    let h = cfg.hidden_size;
    let mut normal = |rows: usize, cols: usize, std: f64| -> candle_core::Result<Tensor> {
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.normal() * std) as f32)
            .collect();
        Tensor::from_vec(v, (rows, cols), dev)
    };
    let mut t: Vec<(String, Tensor)> = Vec::new();
    let mut width = spec.head.input_width(h);
    for (j, &w) in spec.head.hidden.iter().enumerate() {
        t.push((
            format!("head.dense.{j}.weight"),
            normal(w, width, 1.0 / (width as f64).sqrt())?,
        ));
        t.push((
            format!("head.dense.{j}.bias"),
            Tensor::zeros(w, DType::F32, dev)?,
        ));
        width = w;
    }
    t.push((
        "head.out.weight".into(),
        normal(spec.labels.len(), width, 1.0 / (width as f64).sqrt())?,
    ));
    t.push((
        "head.out.bias".into(),
        Tensor::zeros(spec.labels.len(), DType::F32, dev)?,
    ));
    if spec.line_breaks {
        // Zero: training starts from the plain branch.
        t.push(("line_break".into(), Tensor::zeros(h, DType::F32, dev)?));
    }
    if let Some(l) = &spec.lora {
        let layers = cfg.num_hidden_layers;
        for i in layers - spec.top_layers..layers {
            for target in &l.targets {
                let (inn, out) = match target.as_str() {
                    "intermediate.dense" => (h, cfg.intermediate_size),
                    "output.dense" => (cfg.intermediate_size, h),
                    _ => (h, h),
                };
                let p = format!("encoder.layer.{i}.{target}");
                t.push((
                    format!("{p}.lora_a"),
                    normal(l.rank, inn, 1.0 / (inn as f64).sqrt())?,
                ));
                t.push((
                    format!("{p}.lora_b"),
                    Tensor::zeros((out, l.rank), DType::F32, dev)?,
                ));
            }
        }
    }
    {
        let mut data = varmap
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("varmap lock poisoned"))?;
        for (name, tensor) in t {
            data.insert(name, Var::from_tensor(&tensor)?);
        }
    }
    Ok(varmap)
}

/// Token ids and token type ids of one input row.
type IdsAndTypes = (Vec<u32>, Vec<u32>);

/// What the frozen features of a run are computed from.
struct FrozenPass<'a> {
    model: &'a BertModel,
    tok: &'a Tokenization,
    data: &'a Dataset,
    indices: &'a [usize],
    /// The first trained layer: features are its input.
    first_layer: usize,
    /// Also run the frozen top layers for the shared embedding.
    with_embedding: bool,
}

/// Runs embeddings and the frozen lower layers once for every example (and,
/// with `with_embedding`, the frozen top layers for the shared embedding).
fn cache_features(pass: &FrozenPass) -> anyhow::Result<HashMap<usize, Cached>> {
    let FrozenPass {
        model,
        tok,
        data,
        indices,
        first_layer,
        with_embedding,
    } = *pass;
    let dev = model.device().clone();
    // Pairs as served (`[CLS] premise [SEP] hypothesis [SEP]`, type ids 0
    // then 1); a premise too long for one window is trained on its first.
    let enc: Vec<(usize, IdsAndTypes)> = indices
        .iter()
        .map(|&i| {
            let e = &data.examples[i];
            let enc = match &e.second {
                Some(second) => tok
                    .encode_pair(&e.text, second)?
                    .into_iter()
                    .next()
                    .context("pair encoded to no window")?,
                None => tok.encode(&e.text)?,
            };
            Ok((i, (enc.ids, enc.type_ids)))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut order: Vec<usize> = (0..enc.len()).collect();
    order.sort_by_key(|&j| enc[j].1 .0.len());
    let mut out = HashMap::with_capacity(enc.len());
    let start = Instant::now();
    let mut done = 0usize;
    for chunk in order.chunks(64) {
        let rows: Vec<(&[u32], &[u32])> = chunk
            .iter()
            .map(|&j| (&enc[j].1 .0[..], &enc[j].1 .1[..]))
            .collect();
        let n = chunk.len();
        let Padded { x, mask, bias } = frozen_chunk(model, &rows, first_layer)?;
        let embeddings = if with_embedding {
            let mut top = x.clone();
            for l in first_layer..model.num_layers() {
                top = model.layer(l, &top, &bias, None, Mode::Inference)?;
            }
            Some(shared_embedding(&sentence_embedding(&top, &mask)?)?)
        } else {
            None
        };
        for (row, &j) in chunk.iter().enumerate() {
            let (i, (e, _)) = &enc[j];
            // An exact-size copy: `copy()`/`contiguous()` of a view would
            // keep (or clone) the whole padded chunk's storage.
            let h = x.dim(2)?;
            let embedding = match &embeddings {
                Some(e) => Some(Tensor::from_vec(e.get(row)?.to_vec1::<f32>()?, h, &dev)?),
                None => None,
            };
            let hidden = unpadded_row(&x, row, e.len())?;
            out.insert(
                *i,
                Cached {
                    hidden,
                    embedding,
                    label: data.examples[*i].label as u32,
                },
            );
        }
        done += n;
        if done % 1024 < n || done == enc.len() {
            eprintln!(
                "  features: {done}/{} ({:.0} examples/s)",
                enc.len(),
                done as f64 / start.elapsed().as_secs_f64()
            );
        }
    }
    Ok(out)
}

/// [`cache_features`] through a file under `dir` (when given; also returns
/// the seconds the features took to compute when they were loaded), keyed by
/// everything the features depend on: the base weights (path, size, mtime),
/// the examples' texts, the token limit, the branch point and whether the
/// shared embedding is wanted. Re-running a task with other
/// hyper-parameters then skips the frozen layers (most of a sequence
/// task's training time).
fn cache_features_on_disk(
    pass: &FrozenPass,
    dir: Option<&Path>,
    base_dir: &Path,
    max_tokens: usize,
) -> anyhow::Result<(HashMap<usize, Cached>, Option<f64>)> {
    use sha2::{Digest, Sha256};
    let Some(dir) = dir else {
        return Ok((cache_features(pass)?, None));
    };
    let weights = std::fs::metadata(base_dir.join("model.safetensors"))?;
    let mut key = Sha256::new();
    key.update(format!(
        "{}|{}|{:?}|{max_tokens}|{}|{}|",
        base_dir.display(),
        weights.len(),
        weights.modified().ok(),
        pass.first_layer,
        pass.with_embedding
    ));
    for &i in pass.indices {
        let e = &pass.data.examples[i];
        key.update(format!(
            "{i}\u{1}{}\u{1}{:?}\u{1}{}\u{2}",
            e.text, e.second, e.label
        ));
    }
    let file = dir.join(format!("features-{:x}.safetensors", key.finalize()));
    let dev = pass.model.device();
    if file.is_file() {
        eprintln!("frozen features from {}", file.display());
        let (out, computed) = load_features(&file, dev)?;
        return Ok((out, Some(computed)));
    }
    let start = Instant::now();
    let out = cache_features(pass)?;
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    save_features(
        &file,
        &out,
        pass.indices,
        start.elapsed().as_secs_f64(),
        dev,
    )?;
    eprintln!("frozen features saved to {}", file.display());
    Ok((out, None))
}

/// Writes features in `indices` order: `hidden` (all rows' tokens
/// concatenated), `index`, `lengths`, `labels`, `embedding` (when every row
/// has one) and `compute_secs`.
fn save_features(
    file: &Path,
    features: &HashMap<usize, Cached>,
    indices: &[usize],
    compute_secs: f64,
    dev: &Device,
) -> anyhow::Result<()> {
    let rows: Vec<&Cached> = indices.iter().map(|i| &features[i]).collect();
    let u32s = |v: Vec<u32>| {
        let n = v.len();
        Tensor::from_vec(v, n, dev)
    };
    let lengths = rows
        .iter()
        .map(|c| c.hidden.dim(0).map(|d| d as u32))
        .collect::<candle_core::Result<_>>()?;
    let mut t: HashMap<String, Tensor> = HashMap::from([
        (
            "hidden".to_string(),
            Tensor::cat(&rows.iter().map(|c| &c.hidden).collect::<Vec<_>>(), 0)?,
        ),
        (
            "index".to_string(),
            u32s(indices.iter().map(|&i| i as u32).collect())?,
        ),
        ("lengths".to_string(), u32s(lengths)?),
        (
            "labels".to_string(),
            u32s(rows.iter().map(|c| c.label).collect())?,
        ),
        (
            "compute_secs".to_string(),
            Tensor::new(&[compute_secs as f32], dev)?,
        ),
    ]);
    if let Some(e) = rows
        .iter()
        .map(|c| c.embedding.as_ref())
        .collect::<Option<Vec<_>>>()
    {
        t.insert("embedding".into(), Tensor::stack(&e, 0)?);
    }
    candle_core::safetensors::save(&t, file)?;
    Ok(())
}

/// Reads what [`save_features`] wrote; also returns its `compute_secs`.
fn load_features(file: &Path, dev: &Device) -> anyhow::Result<(HashMap<usize, Cached>, f64)> {
    let t = candle_core::safetensors::load(file, dev)?;
    let get = |name: &str| {
        t.get(name)
            .with_context(|| format!("{}: no `{name}`", file.display()))
    };
    let hidden = get("hidden")?;
    let index = get("index")?.to_vec1::<u32>()?;
    let lengths = get("lengths")?.to_vec1::<u32>()?;
    let labels = get("labels")?.to_vec1::<u32>()?;
    let embedding = t.get("embedding");
    let mut out = HashMap::with_capacity(index.len());
    let mut at = 0;
    for (k, (i, len)) in index.into_iter().zip(lengths).enumerate() {
        let len = len as usize;
        out.insert(
            i as usize,
            Cached {
                hidden: hidden.narrow(0, at, len)?,
                embedding: embedding.map(|e| e.get(k)).transpose()?,
                label: labels[k],
            },
        );
        at += len;
    }
    let computed = match t.get("compute_secs") {
        Some(c) => c.to_vec1::<f32>()?.first().copied().unwrap_or(0.0),
        None => 0.0,
    };
    Ok((out, computed as f64))
}

/// Cached features of a batch, padded.
struct Batch {
    /// `[b, s, h]`
    x: Tensor,
    bias: Tensor,
    mask: Tensor,
    /// `[b, h]`, when the examples carry a shared embedding.
    embedding: Option<Tensor>,
    labels: Tensor,
}

/// A padded chunk: `x` `[b, s, h]`, `mask` `[b, s]` (1 = real token) for
/// pooling, and the attention `bias` built from it.
pub(crate) struct Padded {
    pub x: Tensor,
    pub mask: Tensor,
    pub bias: Tensor,
}

/// Token rows (ids, type ids) padded to the longest (as the sidecar pads a
/// batch) and run through the frozen layers `0..first_layer`: the pass both
/// trainers cache once.
pub(crate) fn frozen_chunk(
    model: &BertModel,
    rows: &[(&[u32], &[u32])],
    first_layer: usize,
) -> anyhow::Result<Padded> {
    let dev = model.device();
    let batch = crate::sidecar::backend::Batch::from_rows(
        rows.iter()
            .map(|&(ids, types)| (ids, types, &[][..], Default::default())),
    );
    let shape = (batch.size(), batch.max_len);
    let ids = Tensor::from_slice(&batch.input_ids, shape, dev)?;
    let types = Tensor::from_slice(&batch.type_ids, shape, dev)?;
    let mask = Tensor::from_slice(&batch.attention_mask, shape, dev)?;
    let bias = BertModel::mask_bias(&mask)?;
    let mut x = model.embed(&ids, &types, Mode::Inference)?;
    for l in 0..first_layer {
        x = model.layer(l, &x, &bias, None, Mode::Inference)?;
    }
    Ok(Padded { x, mask, bias })
}

/// Row `row` of a padded `[b, s, h]` output cut to its `len` real tokens,
/// as an exact-size copy: `copy()`/`contiguous()` of a view would keep (or
/// clone) the whole padded chunk's storage.
pub(crate) fn unpadded_row(x: &Tensor, row: usize, len: usize) -> anyhow::Result<Tensor> {
    let h = x.dim(2)?;
    let v = x
        .get(row)?
        .narrow(0, 0, len)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok(Tensor::from_vec(v, (len, h), x.device())?)
}

/// Cached `[len, h]` features zero-padded to the longest and stacked.
pub(crate) fn pad_hidden<'a>(
    hidden: impl ExactSizeIterator<Item = &'a Tensor>,
    dev: &Device,
) -> anyhow::Result<Padded> {
    let hidden: Vec<&Tensor> = hidden.collect();
    let max_len = hidden
        .iter()
        .map(|t| t.dim(0))
        .collect::<candle_core::Result<Vec<_>>>()?
        .into_iter()
        .max()
        .unwrap_or(1);
    let mut xs = Vec::with_capacity(hidden.len());
    let mut mask = Vec::with_capacity(hidden.len() * max_len);
    for t in &hidden {
        let (len, h) = t.dims2()?;
        xs.push(if len < max_len {
            Tensor::cat(
                &[*t, &Tensor::zeros((max_len - len, h), DType::F32, dev)?],
                0,
            )?
        } else {
            (*t).clone()
        });
        mask.extend(std::iter::repeat_n(1u32, len));
        mask.extend(std::iter::repeat_n(0u32, max_len - len));
    }
    let x = Tensor::stack(&xs, 0)?;
    let mask = Tensor::from_vec(mask, (hidden.len(), max_len), dev)?;
    let bias = BertModel::mask_bias(&mask)?;
    Ok(Padded { x, mask, bias })
}

/// Pads cached features into `[b, s, h]`, the mask bias and pooling mask.
fn make_batch(
    cache: &HashMap<usize, Cached>,
    rows: &[usize],
    dev: &Device,
) -> anyhow::Result<Batch> {
    let Padded { x, mask, bias } = pad_hidden(rows.iter().map(|i| &cache[i].hidden), dev)?;
    let labels: Vec<u32> = rows.iter().map(|i| cache[i].label).collect();
    let labels = Tensor::from_vec(labels, rows.len(), dev)?;
    let embedding = rows
        .iter()
        .map(|i| cache[i].embedding.clone())
        .collect::<Option<Vec<_>>>()
        .map(|e| Tensor::stack(&e, 0))
        .transpose()?;
    Ok(Batch {
        x,
        bias,
        mask,
        embedding,
        labels,
    })
}

/// The task branch on cached features: logits `[b, labels]`. With
/// `dropout` (rate, mask source) the head's inputs are dropped first
/// (training only).
fn branch_logits(
    model: &BertModel,
    branch: &TaskBranch,
    batch: &Batch,
    mode: Mode,
    dropout: Option<(f64, &mut Rng)>,
) -> candle_core::Result<Tensor> {
    let (bias, mask) = (&batch.bias, &batch.mask);
    let mut h = batch.x.clone();
    let cls_only = branch.pooling == Pooling::Cls;
    let last = branch.adapters.len().saturating_sub(1);
    for (k, adapter) in branch.adapters.iter().enumerate() {
        let index = branch.first_layer + k;
        h = if cls_only && k == last {
            model.layer_cls(index, &h, bias, Some(adapter), mode)?
        } else {
            model.layer(index, &h, bias, Some(adapter), mode)?
        };
    }
    let pooled = match branch.pooling {
        Pooling::Cls => cls_pool(&h)?,
        Pooling::Mean => mean_pool(&h, mask)?,
    };
    let (pooled, embedding) = match dropout {
        Some((p, rng)) if p > 0.0 => (
            drop_features(&pooled, p, rng)?,
            (batch.embedding.as_ref())
                .map(|e| drop_features(e, p, rng))
                .transpose()?,
        ),
        _ => (pooled, batch.embedding.clone()),
    };
    branch.classify(&pooled, embedding.as_ref())
}

/// Inverted dropout with a mask from the run's seeded [`Rng`] (candle's own
/// dropout draws from an unseeded generator): each component is kept with
/// probability 1 − `p` and scaled by 1 / (1 − `p`), so serving needs no
/// rescaling.
fn drop_features(x: &Tensor, p: f64, rng: &mut Rng) -> candle_core::Result<Tensor> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.next_f64() < p { 0.0 } else { keep })
        .collect();
    x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?)
}

fn grad_norm(grads: &candle_core::backprop::GradStore, var: &Var) -> anyhow::Result<f32> {
    match grads.get(var.as_tensor()) {
        Some(g) => Ok(g.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?),
        None => Ok(0.0),
    }
}

/// Fails unless every listed parameter got a non-zero, finite gradient.
pub(crate) fn assert_grads(
    grads: &candle_core::backprop::GradStore,
    named: &[(String, Var)],
    which: impl Fn(&str) -> bool,
    step: usize,
) -> anyhow::Result<()> {
    let mut checked = 0;
    for (name, var) in named.iter().filter(|(n, _)| which(n)) {
        let g = grad_norm(grads, var)?;
        if g == 0.0 || !g.is_finite() {
            bail!("gradient of `{name}` is {g} at step {step}: autograd does not reach it (a kernel without backward in the trained path?)");
        }
        checked += 1;
    }
    eprintln!("  step {step}: {checked} parameter gradients checked non-zero");
    Ok(())
}

/// Accuracy and macro-F1 of the current weights on cached features.
fn validate(
    model: &BertModel,
    branch: &TaskBranch,
    cache: &HashMap<usize, Cached>,
    rows: &[usize],
    labels: &[String],
    dev: &Device,
) -> anyhow::Result<Confusion> {
    let mut sorted = rows.to_vec();
    sorted.sort_by_key(|i| cache[i].hidden.dims()[0]);
    let mut c = Confusion::new(labels.to_vec());
    for chunk in sorted.chunks(64) {
        let batch = make_batch(cache, chunk, dev)?;
        let gold = &batch.labels;
        let pred = branch_logits(model, branch, &batch, Mode::Inference, None)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        for (g, p) in gold.to_vec1::<u32>()?.into_iter().zip(pred) {
            c.add(g as usize, p as usize);
        }
    }
    Ok(c)
}

/// Trains a sequence task; returns the best (validation accuracy) weights.
pub fn train(
    cfg: &TrainConfig,
    base_dir: &Path,
    data: &Dataset,
    metadata: serde_json::Value,
) -> anyhow::Result<TrainOutcome> {
    let dev = Device::Cpu;
    let model = load_base(base_dir, &dev)?;
    let layers = model.num_layers();
    if cfg.top_layers == 0 || cfg.top_layers > layers {
        bail!("--top-layers must be in 1..={layers}");
    }
    let spec = sequence_spec(cfg, &data.labels, metadata);
    spec.validate(layers).map_err(anyhow::Error::msg)?;
    let tok = Tokenization::load(&base_dir.join("tokenizer.json"), cfg.max_tokens)?;

    let used = super::data::subsample(data.validated, cfg.max_examples, cfg.seed);
    let (mut train_idx, val_idx) =
        super::data::split_examples(data, &used, cfg.val_fraction, cfg.seed);
    // Extra data is only trained on.
    let extra = data.examples.len() - data.validated;
    train_idx.extend(data.validated..data.examples.len());
    let used: Vec<usize> = used
        .into_iter()
        .chain(data.validated..data.examples.len())
        .collect();
    eprintln!(
        "{}: {} examples ({} train of which {extra} extra, {} validation), {} labels",
        data.source.display(),
        used.len(),
        train_idx.len(),
        val_idx.len(),
        data.labels.len()
    );
    let first_layer = layers - cfg.top_layers;
    let t0 = Instant::now();
    eprintln!(
        "caching frozen layers 0..{first_layer} (max {} tokens)",
        cfg.max_tokens
    );
    let pass = FrozenPass {
        model: &model,
        tok: &tok,
        data,
        indices: &used,
        first_layer,
        with_embedding: spec.head.with_embedding,
    };
    let (cache, features_loaded) = cache_features_on_disk(
        &pass,
        cfg.feature_cache.as_deref(),
        base_dir,
        cfg.max_tokens,
    )?;
    let cache_secs = t0.elapsed().as_secs_f64();

    let mut rng = Rng::new(cfg.train_seed ^ 0x1A17);
    let mut drop_rng = Rng::new(cfg.train_seed ^ 0xD209);
    let varmap = init_vars(&spec, &model.config, &mut rng, &dev)?;
    let branch = TaskBranch::load(
        &spec,
        &model.config,
        VarBuilder::from_varmap(&varmap, DType::F32, &dev),
    )?;
    let train_loop = fit(
        cfg,
        &varmap,
        &mut rng,
        &train_idx,
        |i| cache[&i].hidden.dims()[0],
        |rows| {
            let batch = make_batch(&cache, rows, &dev)?;
            let dropout = Some((cfg.head_dropout, &mut drop_rng));
            let logits = branch_logits(&model, &branch, &batch, Mode::Train, dropout)?;
            Ok(candle_nn::loss::cross_entropy(&logits, &batch.labels)?)
        },
        || {
            let c = validate(&model, &branch, &cache, &val_idx, &data.labels, &dev)?;
            let (acc, f1) = (c.accuracy(), c.macro_f1());
            Ok((
                acc,
                f1,
                format!("validation accuracy {acc:.4}, macro-F1 {f1:.4}"),
            ))
        },
    )?;
    Ok(TrainOutcome {
        spec,
        tensors: train_loop.tensors,
        best_epoch: train_loop.best_epoch,
        epochs_run: train_loop.epochs_run,
        train_examples: train_idx.len(),
        val_indices: val_idx,
        history: train_loop.history,
        cache_secs,
        features_loaded,
    })
}

/// What [`fit`] returns: the best epoch's weights and the per-epoch record.
pub(crate) struct Fitted {
    pub tensors: HashMap<String, Tensor>,
    pub best_epoch: usize,
    pub epochs_run: usize,
    /// (epoch, train loss, validation score, second validation number).
    pub history: Vec<(usize, f64, f64, f64)>,
}

/// The optimisation loop every task kind shares, over the trainable
/// variables of `varmap`: AdamW with linear decay to 10% of `cfg.lr`;
/// batches of similar length (`len_of` a row) in a seeded order; gradient
/// checks on the first two steps (so a kernel without backward fails the
/// run instead of training nothing); early stopping on the first number
/// `validate` returns (score, second number, log text), keeping the best
/// epoch's weights.
pub(crate) fn fit(
    cfg: &TrainConfig,
    varmap: &VarMap,
    rng: &mut Rng,
    rows: &[usize],
    len_of: impl Fn(usize) -> usize,
    mut batch_loss: impl FnMut(&[usize]) -> anyhow::Result<Tensor>,
    mut validate: impl FnMut() -> anyhow::Result<(f64, f64, String)>,
) -> anyhow::Result<Fitted> {
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
    let mut best = (f64::NEG_INFINITY, 0usize, snapshot(&named)?);
    let mut history = Vec::new();
    let (mut step, mut stale, mut epochs_run) = (0usize, 0usize, 0usize);
    let total_steps = rows.len().div_ceil(cfg.batch_size) * cfg.epochs;
    for epoch in 1..=cfg.epochs {
        epochs_run = epoch;
        // Shuffle, then sort within windows of 16 batches by length (less
        // padding), then shuffle the batch order.
        let mut order = rows.to_vec();
        rng.shuffle(&mut order);
        let mut batches: Vec<Vec<usize>> = Vec::new();
        for window in order.chunks(cfg.batch_size * 16) {
            let mut w = window.to_vec();
            w.sort_by_key(|&i| len_of(i));
            batches.extend(w.chunks(cfg.batch_size).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        let (start, mut seen, mut loss_sum, mut loss_n) = (Instant::now(), 0usize, 0f64, 0usize);
        for batch in &batches {
            let frac = step as f64 / total_steps.max(1) as f64;
            opt.set_learning_rate(cfg.lr * (1.0 - 0.9 * frac));
            let loss = batch_loss(batch)?;
            let grads = loss.backward()?;
            if step == 0 {
                // LoRA B starts at zero, so A's gradient is zero by
                // construction at the first step; B and the head must move.
                assert_grads(
                    &grads,
                    &named,
                    |n| n.starts_with("head.") || n.ends_with("lora_b"),
                    1,
                )?;
            } else if step == 1 {
                assert_grads(&grads, &named, |n| n.contains("lora_"), 2)?;
            }
            opt.step(&grads)?;
            step += 1;
            seen += batch.len();
            let l = loss.to_scalar::<f32>()? as f64;
            if !l.is_finite() {
                bail!("loss is {l} at step {step}");
            }
            loss_sum += l;
            loss_n += 1;
            if step.is_multiple_of(50) {
                eprintln!(
                    "  epoch {epoch} step {step}/{total_steps} loss {:.4} {:.0} rows/s",
                    loss_sum / loss_n as f64,
                    seen as f64 / start.elapsed().as_secs_f64()
                );
            }
        }
        let (score, second, text) = validate()?;
        let train_loss = loss_sum / loss_n.max(1) as f64;
        eprintln!(
            "epoch {epoch}: train loss {train_loss:.4}, {text} ({:.0} s)",
            start.elapsed().as_secs_f64()
        );
        history.push((epoch, train_loss, score, second));
        if score > best.0 {
            best = (score, epoch, snapshot(&named)?);
            stale = 0;
        } else {
            stale += 1;
            if stale >= cfg.patience {
                eprintln!("early stop: no validation improvement for {stale} epochs");
                break;
            }
        }
    }
    Ok(Fitted {
        tensors: best.2,
        best_epoch: best.1,
        epochs_run,
        history,
    })
}

/// Writes the task directory; the format has one writer, in `sidecar::tasks`.
pub use crate::sidecar::tasks::write_task;

/// Hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(format!("{:x}", Sha256::digest(&bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropout_is_seeded_and_keeps_the_mean() {
        let x = Tensor::ones((64, 100), DType::F32, &Device::Cpu).unwrap();
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        let da = drop_features(&x, 0.25, &mut a).unwrap();
        let db = drop_features(&x, 0.25, &mut b).unwrap();
        let va: Vec<f32> = da.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = db.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb, "same seed, same mask");
        let zeros = va.iter().filter(|v| **v == 0.0).count() as f64 / va.len() as f64;
        assert!((zeros - 0.25).abs() < 0.03, "dropped fraction {zeros}");
        let mean = va.iter().sum::<f32>() / va.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        assert!(va
            .iter()
            .all(|v| *v == 0.0 || (*v - 4.0 / 3.0).abs() < 1e-6));
    }
}
