//! The candle backend: our BERT ([`crate::sidecar::model::bert`]) on CPU, or
//! on CUDA with the `cuda` cargo feature.
//!
//! One forward pass serves a whole batch with mixed requests: the lower
//! layers run once for every row; each requested task branches off at layer
//! `L - top_layers` with its own LoRA adapters, over only the rows that asked
//! for it; the base top layers run only if some row needs the embedding or a
//! task without adapters.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use super::{
    Backend, BackendError, BackendInfo, Batch, HeadOutput, SequenceOutput, TaskFiles, TaskId,
};
use crate::sidecar::model::bert::{
    cls_pool, l2_normalize, mean_pool, repeat_rows, BertConfig, BertLayer, BertModel, LayerAdapter,
    Lora, Mode,
};
use crate::sidecar::tasks::{member_prefix, Activation, Pooling, TaskKind, TaskSpec, ADAPTER_FILE};

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device, BackendError> {
    match s {
        "cpu" => Ok(Device::Cpu),
        #[cfg(feature = "cuda")]
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal = s
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse::<usize>)
                .map_err(|e| BackendError::Load(format!("bad device `{s}`: {e}")))?;
            Device::new_cuda(ordinal)
                .map_err(|e| BackendError::Load(format!("CUDA device {ordinal}: {e}")))
        }
        #[cfg(not(feature = "cuda"))]
        s if s == "cuda" || s.starts_with("cuda:") => Err(BackendError::Load(format!(
            "device `{s}` needs a build with `--features cuda`"
        ))),
        s => Err(BackendError::Load(format!(
            "unknown device `{s}` (expected cpu, cuda or cuda:N)"
        ))),
    }
}

fn load_err(what: &str) -> impl Fn(candle_core::Error) -> BackendError + '_ {
    move |e| BackendError::Load(format!("{what}: {e}"))
}

fn infer_err(e: candle_core::Error) -> BackendError {
    BackendError::Inference(e.to_string())
}

// === impl Head ===

/// Dense layers (with activation) then the output projection.
#[derive(Debug, Clone)]
pub struct Head {
    hidden: Vec<Linear>,
    activation: Activation,
    out: Linear,
    /// Ensemble members stacked in the weights (`[members, out, in]`); the
    /// input rows are that many equal groups, group k for member k.
    members: usize,
}

impl Head {
    /// Loads `head.dense.<j>.{weight,bias}` and `head.out.{weight,bias}`.
    pub fn load(spec: &TaskSpec, input: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let mut hidden = Vec::new();
        let mut width = input;
        for (j, &w) in spec.head.hidden.iter().enumerate() {
            hidden.push(candle_nn::linear(
                width,
                w,
                vb.pp(format!("head.dense.{j}")),
            )?);
            width = w;
        }
        let out = candle_nn::linear(width, spec.labels.len(), vb.pp("head.out"))?;
        Ok(Self {
            hidden,
            activation: spec.head.activation,
            out,
            members: 1,
        })
    }

    /// One head holding the weights of `heads` (same shapes) stacked.
    fn stack(heads: &[Head]) -> candle_core::Result<Self> {
        let stack = |get: &dyn Fn(&Head) -> &Linear| -> candle_core::Result<Linear> {
            let weights: Vec<&Tensor> = heads.iter().map(|h| get(h).weight()).collect();
            let biases = heads
                .iter()
                .map(|h| get(h).bias().cloned())
                .collect::<Option<Vec<_>>>()
                .map(|b| Tensor::stack(&b, 0))
                .transpose()?;
            Ok(Linear::new(Tensor::stack(&weights, 0)?, biases))
        };
        let first = heads
            .first()
            .ok_or_else(|| candle_core::Error::Msg("no heads to stack".into()))?;
        Ok(Self {
            hidden: (0..first.hidden.len())
                .map(|j| stack(&|h: &Head| &h.hidden[j]))
                .collect::<candle_core::Result<_>>()?,
            activation: first.activation,
            out: stack(&|h: &Head| &h.out)?,
            members: heads.len(),
        })
    }

    /// `l` over `x` `[rows, in]`; stacked: row group k through member k.
    fn dense(&self, l: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        if self.members == 1 {
            return l.forward(x);
        }
        let (rows, inn) = x.dims2()?;
        let x = x.reshape((self.members, rows / self.members, inn))?;
        let mut y = x.matmul(&l.weight().t()?)?;
        if let Some(b) = l.bias() {
            y = y.broadcast_add(&b.unsqueeze(1)?)?;
        }
        y.reshape((rows, ()))
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        for l in &self.hidden {
            x = self.dense(l, &x)?;
            x = match self.activation {
                Activation::Tanh => x.tanh()?,
                Activation::Gelu => x.gelu_erf()?,
                Activation::Relu => x.relu()?,
            };
        }
        self.dense(&self.out, &x)
    }
}

// === impl TaskBranch ===

/// A task's top layers (base weights + its adapters) and head.
#[derive(Debug, Clone)]
pub struct TaskBranch {
    pub kind: TaskKind,
    pub pooling: Pooling,
    /// First layer this task re-runs (`L - top_layers`); `L` = none.
    pub first_layer: usize,
    /// One adapter per re-run layer (empty adapters when there is no LoRA).
    pub adapters: Vec<LayerAdapter>,
    pub head: Head,
    /// The head also reads the shared embedding (`HeadSpec::with_embedding`).
    pub with_embedding: bool,
    /// Ensemble members stacked in the adapters and head ([`TaskBranch::stack`]).
    pub members: usize,
    /// `[h]`, added to the branch input at line-start tokens
    /// (`TaskSpec::line_breaks`).
    pub line_break: Option<Tensor>,
    /// Per re-run layer: a copy of the base layer with the adapter folded
    /// into its weights ([`TaskBranch::fold`]; `adapters` then holds what
    /// is left), or `None` to run the base layer with the whole adapter.
    pub folded: Vec<Option<BertLayer>>,
}

impl TaskBranch {
    /// Builds a branch from a task's spec and a `VarBuilder` over its
    /// `adapter.safetensors` (or a `VarMap`, for training).
    pub fn load(spec: &TaskSpec, cfg: &BertConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let layers = cfg.num_hidden_layers;
        let first_layer = layers - spec.top_layers;
        let adapters = (first_layer..layers)
            .map(|i| match &spec.lora {
                Some(l) => LayerAdapter::load(
                    cfg,
                    &l.targets,
                    l.rank,
                    l.alpha,
                    vb.pp(format!("encoder.layer.{i}")),
                ),
                None => Ok(LayerAdapter::default()),
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let line_break = if spec.line_breaks {
            Some(vb.get(cfg.hidden_size, "line_break")?)
        } else {
            None
        };
        Ok(Self {
            kind: spec.kind,
            pooling: spec.pooling,
            first_layer,
            head: Head::load(spec, spec.head.input_width(cfg.hidden_size), vb)?,
            with_embedding: spec.head.with_embedding,
            members: 1,
            folded: vec![None; adapters.len()],
            adapters,
            line_break,
        })
    }

    /// A CLS-pooled sequence head: it reads position 0 of its last layer
    /// only, so that layer runs queries and what follows for `[CLS]` alone.
    pub fn cls_only(&self) -> bool {
        !self.kind.per_token() && self.pooling == Pooling::Cls
    }

    /// For serving: folds the adapters of every re-run layer that runs
    /// over all tokens into a copy of that layer's weights, so it costs what
    /// a base layer costs (a token head's layers, say) instead of adding
    /// per-token LoRA deltas. The first layer keeps query, key and value
    /// unfolded, to take the projections the trunk shares. A CLS-pooled top
    /// layer runs one row and an ensemble's adapters are stacked: both are
    /// left as they are (folding would only add weights).
    pub fn fold(mut self, model: &BertModel) -> candle_core::Result<Self> {
        if self.members != 1 {
            return Ok(self);
        }
        let last = self.adapters.len().saturating_sub(1);
        for k in 0..self.adapters.len() {
            if self.cls_only() && k == last {
                continue;
            }
            let base = model.layer_at(self.first_layer + k)?;
            let (layer, rest) = base.folded(&self.adapters[k], k == 0)?;
            self.folded[k] = Some(layer);
            self.adapters[k] = rest;
        }
        Ok(self)
    }

    /// One branch running `members` (branches of one spec) as one batch:
    /// their adapters and heads stacked, so each operation runs once for
    /// all of them. Rows go in repeated once per member ([`repeat_rows`]).
    pub fn stack(members: &[TaskBranch]) -> candle_core::Result<Self> {
        let first = members
            .first()
            .ok_or_else(|| candle_core::Error::Msg("no members to stack".into()))?;
        if members.len() == 1 {
            return Ok(first.clone());
        }
        let adapters = (0..first.adapters.len())
            .map(|k| {
                let layer: Vec<LayerAdapter> =
                    members.iter().map(|m| m.adapters[k].clone()).collect();
                LayerAdapter::stack(&layer)
            })
            .collect::<candle_core::Result<_>>()?;
        let heads: Vec<Head> = members.iter().map(|m| m.head.clone()).collect();
        Ok(Self {
            adapters,
            head: Head::stack(&heads)?,
            members: members.len(),
            ..first.clone()
        })
    }

    /// The branch input `x` `[b, s, h]` with the line-break vector added
    /// where `line_starts` `[b, s]` (0/1) is 1; `x` itself without one.
    pub fn with_line_breaks(&self, x: Tensor, line_starts: &Tensor) -> candle_core::Result<Tensor> {
        match &self.line_break {
            Some(v) => {
                let flags = line_starts.to_dtype(x.dtype())?.unsqueeze(2)?;
                x.broadcast_add(&flags.broadcast_mul(v)?)
            }
            None => Ok(x),
        }
    }

    /// Head logits of a pooled branch output `[b, h]`; `embedding` is the
    /// rows' [`shared_embedding`], required when the head reads it.
    pub fn classify(
        &self,
        pooled: &Tensor,
        embedding: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        match (self.with_embedding, embedding) {
            (false, _) => self.head.forward(pooled),
            (true, Some(e)) => self.head.forward(&Tensor::cat(&[pooled, e], 1)?),
            (true, None) => candle_core::bail!("the head reads the shared embedding; none given"),
        }
    }
}

/// The sentence embedding the router gets (`Embed`, `Classify` with
/// `embedding`): the L2-normalised mean pool of the base encoder's output.
pub fn sentence_embedding(final_hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    l2_normalize(&mean_pool(final_hidden, mask)?)
}

/// What a `with_embedding` head reads: the [`sentence_embedding`] `[b, h]`
/// × √h, so its components are on the scale of a layer-normed hidden state,
/// like the pooled branch output beside it.
pub fn shared_embedding(sentence: &Tensor) -> candle_core::Result<Tensor> {
    sentence * (sentence.dim(1)? as f64).sqrt()
}

// === impl CandleBackend ===

pub struct CandleBackend {
    model: BertModel,
    tasks: Vec<TaskBranch>,
    /// The `[CLS]`-pooled last-layer branches run as one, when a batch asks
    /// two or more of them, all for the same rows ([`ClsGroup`]).
    cls_group: Option<ClsGroup>,
    device: Device,
    mode: Mode,
}

impl CandleBackend {
    /// Loads the base encoder from `base_dir` (`config.json`,
    /// `model.safetensors`) and every task of `tasks`, in order (their
    /// [`TaskId`]s are their indices).
    pub fn load(
        base_dir: &Path,
        tasks: &[TaskFiles],
        device: Device,
    ) -> Result<Self, BackendError> {
        let cfg_path = base_dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| BackendError::Load(format!("{}: {e}", cfg_path.display())))?;
        let config: BertConfig = serde_json::from_str(&text)
            .map_err(|e| BackendError::Load(format!("{}: {e}", cfg_path.display())))?;
        if config.model_type.as_deref().is_some_and(|t| t != "bert") {
            return Err(BackendError::Load(format!(
                "{}: model_type {:?} is not bert",
                cfg_path.display(),
                config.model_type
            )));
        }
        let weights = base_dir.join("model.safetensors");
        let bytes = std::fs::read(&weights)
            .map_err(|e| BackendError::Load(format!("{}: {e}", weights.display())))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
            .map_err(load_err("base weights"))?;
        let model = BertModel::load(config, vb).map_err(load_err("base encoder"))?;
        let mut branches = Vec::with_capacity(tasks.len());
        for t in tasks {
            let path = t.dir.join(ADAPTER_FILE);
            let bytes = std::fs::read(&path)
                .map_err(|e| BackendError::Load(format!("{}: {e}", path.display())))?;
            let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)
                .map_err(load_err("task weights"))?;
            let what = format!("task `{}` ({})", t.spec.name, path.display());
            let members = (0..t.spec.members)
                .map(|k| {
                    let vb = match member_prefix(k) {
                        Some(p) => vb.pp(p),
                        None => vb.clone(),
                    };
                    TaskBranch::load(&t.spec, &model.config, vb)
                        .map_err(|e| BackendError::Load(format!("{what}, member {k}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            branches.push(
                TaskBranch::stack(&members)
                    .and_then(|b| b.fold(&model))
                    .map_err(|e| BackendError::Load(format!("{what}: {e}")))?,
            );
        }
        let cls_group = ClsGroup::build(&branches, &model)
            .map_err(load_err("stacking the CLS-pooled tasks"))?;
        Ok(Self {
            model,
            tasks: branches,
            cls_group,
            device,
            mode: Mode::Inference,
        })
    }

    pub fn model(&self) -> &BertModel {
        &self.model
    }

    fn run(&self, batch: &Batch) -> candle_core::Result<Vec<SequenceOutput>> {
        let n = batch.size();
        let s = batch.max_len;
        let layers = self.model.num_layers();
        let dev = &self.device;
        let ids = Tensor::from_slice(&batch.input_ids, (n, s), dev)?;
        let types = Tensor::from_slice(&batch.type_ids, (n, s), dev)?;
        let mask = Tensor::from_slice(&batch.attention_mask, (n, s), dev)?;
        let bias = BertModel::mask_bias(&mask)?;

        let requested: BTreeSet<TaskId> = batch
            .wants
            .iter()
            .flat_map(|w| w.tasks.iter().copied())
            .collect();
        for &t in &requested {
            if t >= self.tasks.len() {
                candle_core::bail!("task id {t} out of range");
            }
        }
        let any_embedding = batch.wants.iter().any(|w| w.embedding);
        let heads_read_embedding = requested.iter().any(|&t| self.tasks[t].with_embedding);
        let need_final = any_embedding
            || heads_read_embedding
            || requested
                .iter()
                .any(|&t| self.tasks[t].first_layer == layers);
        // Branch point → how many requested tasks enter there.
        let mut entering: BTreeMap<usize, usize> = BTreeMap::new();
        for &t in &requested {
            let l = self.tasks[t].first_layer;
            if l < layers {
                *entering.entry(l).or_default() += 1;
            }
        }
        let stop = if need_final {
            layers
        } else {
            entering.keys().next_back().copied().unwrap_or(0)
        };

        // The hidden state entering each branch point, with that layer's
        // frozen projections when they are shared: by the trunk, if it runs
        // the layer, and by every branch entering there. A lone branch at the
        // trunk's stop projects only what it needs itself.
        let mut saved: BTreeMap<usize, (Tensor, Option<Tensor>)> = BTreeMap::new();
        let mut x = self.model.embed(&ids, &types, self.mode)?;
        for i in 0..layers {
            let layer = self.model.layer_at(i)?;
            let here = entering.get(&i).copied().unwrap_or(0);
            let qkv = if here > 0 && (i < stop || here > 1) {
                Some(layer.project(&x)?)
            } else {
                None
            };
            if here > 0 {
                saved.insert(i, (x.clone(), qkv.clone()));
            }
            if i >= stop {
                break;
            }
            x = match &qkv {
                Some(p) => layer.forward_projected(&x, p, 1, false, &bias, None, self.mode)?,
                None => layer.forward(&x, &bias, None, self.mode)?,
            };
        }

        let mut out = vec![SequenceOutput::default(); n];
        let sentence = if any_embedding || heads_read_embedding {
            Some(sentence_embedding(&x, &mask)?)
        } else {
            None
        };
        let shared = match &sentence {
            Some(e) if heads_read_embedding => Some(shared_embedding(e)?),
            _ => None,
        };
        if let (true, Some(sentence)) = (any_embedding, &sentence) {
            let emb = sentence.to_vec2::<f32>()?;
            for ((o, w), e) in out.iter_mut().zip(&batch.wants).zip(emb) {
                if w.embedding {
                    o.embedding = Some(e);
                }
            }
        }

        let rows_of = |t: TaskId| -> Vec<u32> {
            (0..n as u32)
                .filter(|&r| batch.wants[r as usize].tasks.contains(&t))
                .collect()
        };
        // The CLS group, when two or more of its tasks are asked, all for the
        // same rows. Members of its tasks not asked run too (a `[CLS]` row
        // each: cheaper than a second branch pass) and are not read.
        let mut done: BTreeSet<TaskId> = BTreeSet::new();
        if let Some(g) = &self.cls_group {
            let asked: Vec<(TaskId, usize, usize)> = g
                .tasks
                .iter()
                .filter(|(t, ..)| requested.contains(t))
                .copied()
                .collect();
            let rows = asked.first().map(|&(t, ..)| rows_of(t)).unwrap_or_default();
            if asked.len() >= 2 && asked.iter().all(|&(t, ..)| rows_of(t) == rows) {
                let (start, qkv) = match saved.get(&(layers - 1)) {
                    Some((h, qkv)) => (h, qkv.as_ref()),
                    None => (&x, None),
                };
                let pick = RowPick::new(&rows, n, dev)?;
                let (h, b) = (pick.of(start)?, repeat_rows(&pick.of(&bias)?, g.members)?);
                let layer = self.model.layer_at(layers - 1)?;
                let a = Some(&g.adapter);
                let cls = match qkv {
                    Some(p) => layer.forward_projected(
                        &h,
                        &pick.of(p)?,
                        g.members,
                        true,
                        &b,
                        a,
                        self.mode,
                    )?,
                    None => layer.forward_copies(&h, g.members, true, &b, a, self.mode)?,
                };
                let e = shared.as_ref().map(|e| pick.of(e)).transpose()?;
                let r = rows.len();
                for &(t, first, k) in &asked {
                    let part = cls.narrow(0, first * r, k * r)?;
                    self.sequence_outputs(t, &cls_pool(&part)?, e.as_ref(), &rows, &mut out)?;
                    done.insert(t);
                }
            }
        }

        for &t in requested.difference(&done) {
            let branch = &self.tasks[t];
            let rows = rows_of(t);
            let (start, qkv) = match saved.get(&branch.first_layer) {
                Some((h, qkv)) => (h, qkv.as_ref()),
                None => (&x, None),
            };
            let shared = shared.as_ref().filter(|_| branch.with_embedding);
            // No line starts in the batch (one-line prompts): nothing to add.
            let lines = branch
                .line_break
                .as_ref()
                .filter(|_| batch.line_starts.iter().any(|&f| f != 0))
                .map(|_| Tensor::from_slice(&batch.line_starts, (n, s), dev))
                .transpose()?;
            let pick = RowPick::new(&rows, n, dev)?;
            let (h, qkv, m, b) = (
                pick.of(start)?,
                qkv.map(|p| pick.of(p)).transpose()?,
                pick.of(&mask)?,
                pick.of(&bias)?,
            );
            let e = shared.map(|e| pick.of(e)).transpose()?;
            let lines = lines.map(|l| pick.of(&l)).transpose()?;
            if branch.kind.per_token() {
                let (h, qkv) = match &lines {
                    Some(lines) => (
                        branch.with_line_breaks(h, lines)?,
                        qkv.map(|p| self.line_break_projections(branch, p, lines))
                            .transpose()?,
                    ),
                    None => (h, qkv),
                };
                let h = self.branch_layers(branch, h, qkv.as_ref(), &b)?;
                let logits = branch.head.forward(&h)?; // [r, s, labels]
                let labels = logits.dim(2)?;
                let all = logits.flatten_all()?.to_vec1::<f32>()?;
                for (j, &r) in rows.iter().enumerate() {
                    let len = batch.lengths[r as usize];
                    let row = &all[j * s * labels..(j * s + len) * labels];
                    out[r as usize].heads.push((
                        t,
                        HeadOutput::Tokens {
                            logits: row.to_vec(),
                            num_labels: labels,
                        },
                    ));
                }
            } else {
                // An ensemble runs its members as one batch of repeated rows.
                let k = branch.members;
                let h = self.branch_layers(branch, h, qkv.as_ref(), &repeat_rows(&b, k)?)?;
                let pooled = match branch.pooling {
                    Pooling::Mean => mean_pool(&h, &repeat_rows(&m, k)?)?,
                    Pooling::Cls => cls_pool(&h)?,
                };
                self.sequence_outputs(t, &pooled, e.as_ref(), &rows, &mut out)?;
            }
        }
        Ok(out)
    }

    /// Task `t`'s head over its pooled branch output `[members·r, h]` (row
    /// group j from member j) for `rows`, whose shared embedding is `e`
    /// `[r, h]`: one answer per row into `out`, members averaged.
    fn sequence_outputs(
        &self,
        t: TaskId,
        pooled: &Tensor,
        e: Option<&Tensor>,
        rows: &[u32],
        out: &mut [SequenceOutput],
    ) -> candle_core::Result<()> {
        let branch = &self.tasks[t];
        let k = branch.members;
        let e = e.map(|e| repeat_rows(e, k)).transpose()?;
        let mut logits = branch.classify(pooled, e.as_ref())?;
        if k > 1 {
            logits = ensemble_logits(&logits, k)?;
        }
        for (&r, l) in rows.iter().zip(logits.to_vec2::<f32>()?) {
            out[r as usize].heads.push((t, HeadOutput::Sequence(l)));
        }
        Ok(())
    }

    /// Runs `branch`'s re-run layers (with its adapters) over `h`, the
    /// hidden state entering its first layer, once per stacked member:
    /// `bias` covers `branch.members` copies of `h`'s rows, and the first
    /// layer's frozen projections (`qkv`, when shared, else computed here)
    /// run once for all copies.
    fn branch_layers(
        &self,
        branch: &TaskBranch,
        mut h: Tensor,
        qkv: Option<&Tensor>,
        bias: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let cls_only = branch.cls_only();
        let last = branch.adapters.len().saturating_sub(1);
        for (k, adapter) in branch.adapters.iter().enumerate() {
            let layer = match &branch.folded[k] {
                Some(l) => l,
                None => self.model.layer_at(branch.first_layer + k)?,
            };
            let cls = cls_only && k == last;
            let a = Some(adapter);
            h = match (k, qkv) {
                (0, Some(p)) => {
                    layer.forward_projected(&h, p, branch.members, cls, bias, a, self.mode)?
                }
                (0, None) => layer.forward_copies(&h, branch.members, cls, bias, a, self.mode)?,
                _ => layer.forward_copies(&h, 1, cls, bias, a, self.mode)?,
            };
        }
        Ok(h)
    }

    /// Shared projections `qkv` `[b, s, 3h]` of a branch's first layer input,
    /// moved to what they are for that input plus the branch's line-break
    /// vector at `line_starts` `[b, s]` (projection is linear).
    fn line_break_projections(
        &self,
        branch: &TaskBranch,
        qkv: Tensor,
        line_starts: &Tensor,
    ) -> candle_core::Result<Tensor> {
        match &branch.line_break {
            Some(v) => {
                let offset = self.model.layer_at(branch.first_layer)?.project_offset(v)?;
                let flags = line_starts.to_dtype(qkv.dtype())?.unsqueeze(2)?;
                qkv.broadcast_add(&flags.broadcast_mul(&offset)?)
            }
            None => Ok(qkv),
        }
    }
}

/// The rows of a batch a task runs on: `of` selects them from a tensor
/// whose first axis is the batch (no copy when they are all of them).
struct RowPick {
    idx: Option<Tensor>,
}

impl RowPick {
    fn new(rows: &[u32], n: usize, dev: &Device) -> candle_core::Result<Self> {
        Ok(Self {
            idx: (rows.len() != n)
                .then(|| Tensor::from_slice(rows, rows.len(), dev))
                .transpose()?,
        })
    }

    fn of(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        match &self.idx {
            None => Ok(t.clone()),
            Some(idx) => t.index_select(idx, 0),
        }
    }
}

// === impl ClsGroup ===

/// The tasks whose branch is the last layer for `[CLS]` only (the shipped
/// prompt tasks), stacked into one branch: all their members attend as
/// query positions of one [`BertLayer`] pass. At batch 1 a branch costs
/// mostly the fixed cost of its ~40 small operations, which the group pays
/// once instead of once per task.
struct ClsGroup {
    /// (task, its first member in the stack, its members), in stack order.
    tasks: Vec<(TaskId, usize, usize)>,
    /// Every member's adapter stacked: targets united (zeros where a member
    /// has none), ranks padded with zeros to the largest, scale folded in.
    adapter: LayerAdapter,
    members: usize,
}

impl ClsGroup {
    /// The group of `branches` that re-run only the last of `layers` for
    /// `[CLS]`, without a key adapter (keys are shared) or line-break vector;
    /// `None` for fewer than two (or no adapters at all).
    fn build(branches: &[TaskBranch], model: &BertModel) -> candle_core::Result<Option<Self>> {
        let cfg = &model.config;
        let layers = cfg.num_hidden_layers;
        let eligible: Vec<TaskId> = (0..branches.len())
            .filter(|&t| {
                let b = &branches[t];
                b.cls_only()
                    && b.first_layer + 1 == layers
                    && b.adapters.len() == 1
                    && b.adapters[0].key.is_none()
                    && b.line_break.is_none()
            })
            .collect();
        if eligible.len() < 2 {
            return Ok(None);
        }
        let adapters: Vec<&LayerAdapter> =
            eligible.iter().map(|&t| &branches[t].adapters[0]).collect();
        let mut tasks = Vec::new();
        let mut members = 0;
        for &t in &eligible {
            tasks.push((t, members, branches[t].members));
            members += branches[t].members;
        }
        let rank = adapters
            .iter()
            .flat_map(|a| a.loras())
            .map(|l| l.a.dim(l.a.rank() - 2))
            .collect::<candle_core::Result<Vec<_>>>()?
            .into_iter()
            .max()
            .unwrap_or(0);
        if rank == 0 {
            return Ok(None);
        }
        let counts: Vec<usize> = eligible.iter().map(|&t| branches[t].members).collect();
        let dev = model.device();
        let slot = |get: fn(&LayerAdapter) -> Option<&Lora>,
                    inn: usize,
                    out: usize|
         -> candle_core::Result<Option<Lora>> {
            if adapters.iter().all(|a| get(a).is_none()) {
                return Ok(None);
            }
            let (mut a_all, mut b_all) = (Vec::new(), Vec::new());
            for (a, &m) in adapters.iter().zip(&counts) {
                let (la, lb) = match get(a) {
                    Some(l) => stacked_padded(l, m, rank)?,
                    None => (
                        Tensor::zeros((m, rank, inn), DType::F32, dev)?,
                        Tensor::zeros((m, out, rank), DType::F32, dev)?,
                    ),
                };
                a_all.push(la);
                b_all.push(lb);
            }
            Ok(Some(Lora {
                a: Tensor::cat(&a_all, 0)?,
                b: Tensor::cat(&b_all, 0)?,
                scale: 1.0,
            }))
        };
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let adapter = LayerAdapter {
            query: slot(|a| a.query.as_ref(), h, h)?,
            key: None,
            value: slot(|a| a.value.as_ref(), h, h)?,
            attention_output: slot(|a| a.attention_output.as_ref(), h, h)?,
            intermediate: slot(|a| a.intermediate.as_ref(), h, i)?,
            output: slot(|a| a.output.as_ref(), i, h)?,
        };
        Ok(Some(Self {
            tasks,
            adapter,
            members,
        }))
    }
}

/// `l` as `[m, rank, in]` and `[m, out, rank]` (a one-member adapter gets
/// the member axis), its rank padded with zeros and its scale folded into B.
fn stacked_padded(l: &Lora, m: usize, rank: usize) -> candle_core::Result<(Tensor, Tensor)> {
    let (a, b) = l.with_member_axis()?;
    let (_, r, inn) = a.dims3()?;
    let out = b.dim(1)?;
    let b = (b.to_dtype(DType::F32)? * l.scale)?;
    let a = a.to_dtype(DType::F32)?;
    if r == rank {
        return Ok((a, b));
    }
    let dev = a.device().clone();
    Ok((
        Tensor::cat(
            &[a, Tensor::zeros((m, rank - r, inn), DType::F32, &dev)?],
            1,
        )?,
        Tensor::cat(
            &[b, Tensor::zeros((m, out, rank - r), DType::F32, &dev)?],
            2,
        )?,
    ))
}

/// An ensemble's logits `[b, labels]` from its `k` members' `[k·b, labels]`
/// (row group j from member j): the log of their mean softmax, so the
/// softmax every caller applies gives the averaged probabilities exactly.
fn ensemble_logits(members: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (rows, labels) = members.dims2()?;
    let probs = candle_nn::ops::softmax(&members.reshape((k, rows / k, labels))?, 2)?;
    probs.mean(0)?.log()
}

impl Backend for CandleBackend {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            hidden_size: self.model.config.hidden_size,
            num_layers: self.model.num_layers(),
            max_positions: self.model.config.max_position_embeddings,
            device: format!("{:?}", self.device),
        }
    }

    fn health(&self) -> Result<(), BackendError> {
        let ids = [101u32, 102];
        let batch = Batch::from_rows([(
            &ids[..],
            &[0u32, 0][..],
            &[][..],
            super::Wants {
                embedding: true,
                tasks: vec![],
            },
        )]);
        self.forward(&batch).map(|_| ())
    }

    fn forward(&self, batch: &Batch) -> Result<Vec<SequenceOutput>, BackendError> {
        if batch.size() == 0 {
            return Ok(Vec::new());
        }
        if batch.max_len > self.model.config.max_position_embeddings {
            return Err(BackendError::Inference(format!(
                "sequence of {} tokens exceeds the model's {}",
                batch.max_len, self.model.config.max_position_embeddings
            )));
        }
        self.run(batch).map_err(infer_err)
    }
}
