//! A small BERT encoder written for layer-by-layer control.
//!
//! Unlike a monolithic `forward`, [`BertModel`] exposes its pieces
//! (embeddings, single layers, pooling) so the engine can run the frozen lower
//! layers once per batch, branch at any layer into task-specific copies of the
//! top layers (same base weights plus per-task LoRA adapters, see
//! [`LayerAdapter`]) and pool wherever it likes.
//!
//! [`Mode`] selects the kernels: `Inference` uses candle's fused layer norm and
//! `softmax_last_dim` (fast, but they have no backward pass), `Train` uses
//! compositions of differentiable primitives so candle autograd reaches LoRA
//! and head parameters.

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

/// `config.json` of a Hugging Face BERT checkpoint (fields we use).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

/// Which kernels to use (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused kernels, no autograd through layer norm and softmax.
    Inference,
    /// Differentiable compositions; slower.
    Train,
}

/// Additive attention bias for masked (padding) keys: exp(-1e4) is 0 in f32
/// and f16, and -1e4 is representable in f16.
const MASKED_BIAS: f64 = -10_000.0;

// === impl LayerNorm ===

#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn load(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            weight: vb.get(size, "weight")?,
            bias: vb.get(size, "bias")?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Inference if x.is_contiguous() => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
            }
            _ => layer_norm_differentiable(x, &self.weight, &self.bias, self.eps),
        }
    }
}

/// Layer norm from primitives that all have a backward pass.
pub fn layer_norm_differentiable(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let mean = x.mean_keepdim(D::Minus1)?;
    let centered = x.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .broadcast_mul(w)?
        .broadcast_add(b)
}

/// Softmax over the last dimension.
pub fn softmax(x: &Tensor, mode: Mode) -> Result<Tensor> {
    match mode {
        Mode::Inference => candle_nn::ops::softmax_last_dim(x),
        Mode::Train => {
            let max = x.max_keepdim(D::Minus1)?.detach();
            let e = x.broadcast_sub(&max)?.exp()?;
            e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
        }
    }
}

// === impl Lora ===

/// Low-rank update `scale * B(A x)` added to a frozen linear layer.
#[derive(Debug, Clone)]
pub struct Lora {
    /// `[rank, in]`, or `[members, rank, in]` when stacked for an ensemble
    /// ([`LayerAdapter::stack`]).
    pub a: Tensor,
    /// `[out, rank]`, or `[members, out, rank]` when stacked.
    pub b: Tensor,
    /// `alpha / rank`
    pub scale: f64,
}

impl Lora {
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        rank: usize,
        alpha: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            a: vb.get((rank, in_dim), "lora_a")?,
            b: vb.get((out_dim, rank), "lora_b")?,
            scale: alpha / rank as f64,
        })
    }

    /// How many members are stacked in it (1 unless [`LayerAdapter::stack`]ed).
    pub fn members(&self) -> usize {
        if self.a.rank() == 3 {
            self.a.dims()[0]
        } else {
            1
        }
    }

    /// `a` and `b` with the member axis (`[m, rank, in]`, `[m, out, rank]`),
    /// one-member adapters included.
    pub fn with_member_axis(&self) -> Result<(Tensor, Tensor)> {
        if self.a.rank() == 2 {
            Ok((self.a.unsqueeze(0)?, self.b.unsqueeze(0)?))
        } else {
            Ok((self.a.clone(), self.b.clone()))
        }
    }

    /// The delta for `x` of shape `[batch, seq, in]`. Stacked: the batch is
    /// `members` equal groups of rows, group k for member k.
    pub fn delta(&self, x: &Tensor) -> Result<Tensor> {
        let (bsz, seq, inn) = x.dims3()?;
        let x = if self.a.rank() == 3 {
            let groups = self.a.dim(0)?;
            x.reshape((groups, bsz / groups * seq, inn))?
        } else {
            x.reshape((bsz * seq, inn))?
        };
        let d = x.matmul(&self.a.t()?)?.matmul(&self.b.t()?)?;
        (d * self.scale)?.reshape((bsz, seq, ()))
    }
}

/// `t` with its rows (first axis) repeated `k` times, copy after copy: the
/// input of a branch stacking `k` members. `k` = 1 returns `t`.
pub fn repeat_rows(t: &Tensor, k: usize) -> Result<Tensor> {
    if k == 1 {
        return Ok(t.clone());
    }
    let mut times = vec![1; t.rank()];
    times[0] = k;
    t.repeat(times)
}

/// `tensors` stacked on a new first axis (one entry per ensemble member).
fn stack_members(tensors: Vec<&Tensor>) -> Result<Tensor> {
    Tensor::stack(&tensors, 0)
}

/// Names of the linear modules of a layer that can carry a LoRA adapter
/// (the Hugging Face parameter names).
pub const LORA_TARGETS: [&str; 6] = [
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// Per-task LoRA adapters of one encoder layer (any subset of targets).
#[derive(Debug, Clone, Default)]
pub struct LayerAdapter {
    pub query: Option<Lora>,
    pub key: Option<Lora>,
    pub value: Option<Lora>,
    pub attention_output: Option<Lora>,
    pub intermediate: Option<Lora>,
    pub output: Option<Lora>,
}

impl LayerAdapter {
    /// Loads the adapters named in `targets` (entries of [`LORA_TARGETS`])
    /// from `vb` (already prefixed with `encoder.layer.<i>`).
    pub fn load(
        cfg: &BertConfig,
        targets: &[String],
        rank: usize,
        alpha: f64,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut a = Self::default();
        for t in targets {
            let (slot, inn, out) = match t.as_str() {
                "attention.self.query" => (&mut a.query, h, h),
                "attention.self.key" => (&mut a.key, h, h),
                "attention.self.value" => (&mut a.value, h, h),
                "attention.output.dense" => (&mut a.attention_output, h, h),
                "intermediate.dense" => (&mut a.intermediate, h, i),
                "output.dense" => (&mut a.output, i, h),
                other => candle_core::bail!(
                    "unknown LoRA target `{other}` (expected one of {LORA_TARGETS:?})"
                ),
            };
            *slot = Some(Lora::load(inn, out, rank, alpha, vb.pp(t))?);
        }
        Ok(a)
    }

    /// Its adapters, whichever targets carry one.
    pub fn loras(&self) -> impl Iterator<Item = &Lora> {
        [
            &self.query,
            &self.key,
            &self.value,
            &self.attention_output,
            &self.intermediate,
            &self.output,
        ]
        .into_iter()
        .flatten()
    }

    /// How many members are stacked in it (1 for a plain or empty adapter).
    pub fn members(&self) -> usize {
        self.loras().next().map_or(1, Lora::members)
    }

    /// One adapter whose LoRA matrices stack those of `members` (same
    /// targets, rank and scale), for running an ensemble's members as one
    /// batch: fewer, larger operations than one pass per member.
    pub fn stack(members: &[LayerAdapter]) -> Result<Self> {
        let slot = |get: fn(&LayerAdapter) -> Option<&Lora>| -> Result<Option<Lora>> {
            let loras: Vec<&Lora> = members.iter().filter_map(get).collect();
            match loras.first() {
                None => Ok(None),
                Some(_) if loras.len() != members.len() => {
                    candle_core::bail!("ensemble members carry LoRA on different targets")
                }
                Some(first) => Ok(Some(Lora {
                    a: stack_members(loras.iter().map(|l| &l.a).collect())?,
                    b: stack_members(loras.iter().map(|l| &l.b).collect())?,
                    scale: first.scale,
                })),
            }
        };
        Ok(Self {
            query: slot(|a| a.query.as_ref())?,
            key: slot(|a| a.key.as_ref())?,
            value: slot(|a| a.value.as_ref())?,
            attention_output: slot(|a| a.attention_output.as_ref())?,
            intermediate: slot(|a| a.intermediate.as_ref())?,
            output: slot(|a| a.output.as_ref())?,
        })
    }
}

fn linear(x: &Tensor, l: &Linear, lora: Option<&Lora>) -> Result<Tensor> {
    let y = l.forward(x)?;
    match lora {
        Some(lora) => y + lora.delta(x)?,
        None => Ok(y),
    }
}

// === impl BertLayer ===

#[derive(Debug, Clone)]
pub struct BertLayer {
    /// Query, key and value fused into one `[3h, h]` projection.
    qkv: Linear,
    /// The query part alone and the key+value part alone (for
    /// [`BertLayer::forward_copies`] with `cls_only`, which needs queries
    /// for one position).
    q: Linear,
    kv: Linear,
    attention_output: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
    heads: usize,
    head_dim: usize,
}

impl BertLayer {
    fn load(cfg: &BertConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let sa = vb.pp("attention.self");
        let w = Tensor::cat(
            &[
                sa.get((h, h), "query.weight")?,
                sa.get((h, h), "key.weight")?,
                sa.get((h, h), "value.weight")?,
            ],
            0,
        )?;
        let b = Tensor::cat(
            &[
                sa.get(h, "query.bias")?,
                sa.get(h, "key.bias")?,
                sa.get(h, "value.bias")?,
            ],
            0,
        )?;
        let lin = |vb: VarBuilder, inn: usize, out: usize| candle_nn::linear(inn, out, vb);
        let q = Linear::new(
            w.narrow(0, 0, h)?.contiguous()?,
            Some(b.narrow(0, 0, h)?.contiguous()?),
        );
        let kv = Linear::new(
            w.narrow(0, h, 2 * h)?.contiguous()?,
            Some(b.narrow(0, h, 2 * h)?.contiguous()?),
        );
        Ok(Self {
            q,
            kv,
            qkv: Linear::new(w, Some(b)),
            attention_output: lin(vb.pp("attention.output.dense"), h, h)?,
            attention_norm: LayerNorm::load(
                h,
                cfg.layer_norm_eps,
                vb.pp("attention.output.LayerNorm"),
            )?,
            intermediate: lin(vb.pp("intermediate.dense"), h, cfg.intermediate_size)?,
            output: lin(vb.pp("output.dense"), cfg.intermediate_size, h)?,
            output_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("output.LayerNorm"))?,
            heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// One transformer layer. `x`: `[b, s, h]`; `mask_bias`: `[b, 1, 1, s]`
    /// (0 for real tokens, a large negative number for padding).
    pub fn forward(
        &self,
        x: &Tensor,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.forward_copies(x, 1, false, mask_bias, adapter, mode)
    }

    /// The layer over `copies` copies of `x`'s rows, copy after copy (copy j
    /// for member j of a stacked adapter, [`LayerAdapter::stack`]):
    /// `[b, s, h]` → `[copies·b, s or 1, h]`. The frozen query, key and
    /// value projections are the same for every copy, so they run once and
    /// are repeated; only the adapters' deltas and what follows attention
    /// differ per copy. `mask_bias` covers the copies (`[copies·b, 1, 1, s]`).
    ///
    /// `cls_only`: the output for the first (`[CLS]`) position only. Keys
    /// and values still cover every token, so the `[CLS]` row equals the
    /// full layer's; queries, attention output and the feed-forward block
    /// run for one row, which makes a CLS-pooled top layer about six times
    /// cheaper.
    pub fn forward_copies(
        &self,
        x: &Tensor,
        copies: usize,
        cls_only: bool,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = x.dim(2)?;
        let (q, kv) = if cls_only {
            let q = self.q.forward(&x.narrow(1, 0, 1)?.contiguous()?)?;
            (q, self.kv.forward(x)?)
        } else {
            let qkv = self.qkv.forward(x)?;
            (
                qkv.narrow(D::Minus1, 0, h)?,
                qkv.narrow(D::Minus1, h, 2 * h)?,
            )
        };
        self.attend_copies(x, q, kv, copies, cls_only, mask_bias, adapter, mode)
    }

    /// The frozen query, key and value projections of `x`: `[b, s, h]` →
    /// `[b, s, 3h]`. The trunk and every branch entering this layer share
    /// them ([`BertLayer::forward_projected`]), so they run once a batch.
    pub fn project(&self, x: &Tensor) -> Result<Tensor> {
        self.qkv.forward(x)
    }

    /// This layer with `adapter`'s LoRA folded into its weights
    /// (`W + scale·B·A`), and what is left of the adapter to run as deltas.
    /// Serving only: a folded layer costs exactly a base layer, where the
    /// deltas add two small matmuls, a scale and an add per target over
    /// every token. `keep_projections` leaves query, key and value unfolded
    /// (and their deltas in the returned adapter), so the layer can still
    /// take the frozen projections the trunk shares. Stacked (ensemble)
    /// adapters cannot be folded into one weight.
    pub fn folded(
        &self,
        adapter: &LayerAdapter,
        keep_projections: bool,
    ) -> Result<(BertLayer, LayerAdapter)> {
        let fold = |l: &Linear, lora: Option<&Lora>| -> Result<Linear> {
            match lora {
                None => Ok(l.clone()),
                Some(lora) if lora.a.rank() != 2 => {
                    candle_core::bail!("a stacked (ensemble) adapter cannot be folded")
                }
                Some(lora) => {
                    let w = (l.weight() + (lora.b.matmul(&lora.a)? * lora.scale)?)?;
                    Ok(Linear::new(w, l.bias().cloned()))
                }
            }
        };
        let mut layer = self.clone();
        let mut rest = LayerAdapter::default();
        if keep_projections {
            rest.query = adapter.query.clone();
            rest.key = adapter.key.clone();
            rest.value = adapter.value.clone();
        } else if adapter.query.is_some() || adapter.key.is_some() || adapter.value.is_some() {
            let h = self.q.weight().dim(0)?;
            let q = fold(&self.q, adapter.query.as_ref())?;
            let k = fold(
                &Linear::new(
                    self.kv.weight().narrow(0, 0, h)?,
                    self.kv.bias().map(|b| b.narrow(0, 0, h)).transpose()?,
                ),
                adapter.key.as_ref(),
            )?;
            let v = fold(
                &Linear::new(
                    self.kv.weight().narrow(0, h, h)?,
                    self.kv.bias().map(|b| b.narrow(0, h, h)).transpose()?,
                ),
                adapter.value.as_ref(),
            )?;
            let cat = |parts: &[&Linear]| -> Result<Linear> {
                let w: Vec<&Tensor> = parts.iter().map(|l| l.weight()).collect();
                let b = parts
                    .iter()
                    .map(|l| l.bias().cloned())
                    .collect::<Option<Vec<_>>>()
                    .map(|b| Tensor::cat(&b, 0))
                    .transpose()?;
                Ok(Linear::new(Tensor::cat(&w, 0)?.contiguous()?, b))
            };
            layer.qkv = cat(&[&q, &k, &v])?;
            layer.kv = cat(&[&k, &v])?;
            layer.q = q;
        }
        layer.attention_output = fold(&self.attention_output, adapter.attention_output.as_ref())?;
        layer.intermediate = fold(&self.intermediate, adapter.intermediate.as_ref())?;
        layer.output = fold(&self.output, adapter.output.as_ref())?;
        Ok((layer, rest))
    }

    /// `v · Wᵀ` for the fused projection without its bias: `[h]` → `[3h]`.
    /// The projections of `x + v` are `project(x)` plus this, which lets a
    /// branch that adds a vector to its input (line breaks) still share them.
    pub fn project_offset(&self, v: &Tensor) -> Result<Tensor> {
        v.unsqueeze(0)?.matmul(&self.qkv.weight().t()?)?.squeeze(0)
    }

    /// [`BertLayer::forward_copies`] with `x`'s projections given
    /// (`qkv` from [`BertLayer::project`], rows matching `x`'s).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_projected(
        &self,
        x: &Tensor,
        qkv: &Tensor,
        copies: usize,
        cls_only: bool,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = x.dim(2)?;
        let q = qkv.narrow(D::Minus1, 0, h)?;
        let q = if cls_only { q.narrow(1, 0, 1)? } else { q };
        let kv = qkv.narrow(D::Minus1, h, 2 * h)?;
        self.attend_copies(x, q, kv, copies, cls_only, mask_bias, adapter, mode)
    }

    /// The rest of the layer once the frozen projections are known (`q` for
    /// position 0 only when `cls_only`), over `copies` copies of the rows.
    #[allow(clippy::too_many_arguments)]
    fn attend_copies(
        &self,
        x: &Tensor,
        q: Tensor,
        kv: Tensor,
        copies: usize,
        cls_only: bool,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let h = x.dim(2)?;
        // The shared-key path needs every copy to read the same rows: true
        // when the copies are the members of the adapter (a later layer of
        // a stacked branch already holds one set of rows per member).
        if cls_only
            && mode == Mode::Inference
            && adapter.is_none_or(|a| a.key.is_none() && a.members() == copies)
        {
            return self.attend_cls(x, q, kv, copies, mask_bias, adapter);
        }
        let xq = if cls_only {
            x.narrow(1, 0, 1)?.contiguous()?
        } else {
            x.clone()
        };
        let kv = repeat_rows(&kv, copies)?;
        let k = kv.narrow(D::Minus1, 0, h)?;
        let v = kv.narrow(D::Minus1, h, h)?;
        self.finish(
            &repeat_rows(&xq, copies)?,
            &repeat_rows(x, copies)?,
            repeat_rows(&q, copies)?,
            k,
            v,
            mask_bias,
            adapter,
            mode,
        )
    }

    /// Attention and feed-forward given projections. `xq`: the rows queries
    /// come from `[b, sq, h]`; `x`: every row `[b, s, h]`.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        xq: &Tensor,
        x: &Tensor,
        mut q: Tensor,
        mut k: Tensor,
        mut v: Tensor,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let sq = xq.dim(1)?;
        if let Some(a) = adapter {
            if let Some(l) = &a.query {
                q = (q + l.delta(xq)?)?;
            }
            if let Some(l) = &a.key {
                k = (k + l.delta(x)?)?;
            }
            if let Some(l) = &a.value {
                v = (v + l.delta(x)?)?;
            }
        }
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            t.reshape((b, len, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(q, sq)?, split(k, s)?, split(v, s)?);
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask_bias)?;
        let probs = softmax(&scores, mode)?;
        let ctx = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, sq, h))?;
        self.after_attention(xq, &ctx, adapter, mode)
    }

    /// The `[CLS]`-only layer for `copies` stacked members (or one) without
    /// copying the keys and values per member: the frozen keys are the same
    /// for all, so the members' queries attend as `copies` query positions of
    /// each row, and a value adapter adds `((P·X·Aᵀ)·Bᵀ)·scale` through its
    /// rank-r factors instead of a `[b, s, h]` delta per member. Same result
    /// as the general path; `mask_bias` covers the copies, `q` is `[b, 1, h]`.
    fn attend_cls(
        &self,
        x: &Tensor,
        q: Tensor,
        kv: Tensor,
        copies: usize,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
    ) -> Result<Tensor> {
        let (b, s, h) = x.dims3()?;
        let (nh, d, c) = (self.heads, self.head_dim, copies);
        let xq = repeat_rows(&x.narrow(1, 0, 1)?.contiguous()?, c)?;
        let mut q = repeat_rows(&q.contiguous()?, c)?;
        if let Some(l) = adapter.and_then(|a| a.query.as_ref()) {
            q = (q + l.delta(&xq)?)?;
        }
        // [c·b, 1, h] → [b, heads, c, d]: member j is query position j.
        let q = q
            .reshape((c, b, nh, d))?
            .permute((1, 2, 0, 3))?
            .contiguous()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            t.reshape((b, s, nh, d))?.transpose(1, 2)?.contiguous()
        };
        let k = heads(kv.narrow(D::Minus1, 0, h)?)?;
        let v = heads(kv.narrow(D::Minus1, h, h)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&mask_bias.narrow(0, 0, b)?)?;
        let probs = softmax(&scores, Mode::Inference)?; // [b, heads, c, s]
        let mut ctx = probs.matmul(&v)?; // [b, heads, c, d]
        if let Some(l) = adapter.and_then(|a| a.value.as_ref()) {
            ctx = (ctx + value_delta_attended(x, &probs, l, nh)?)?;
        }
        let ctx = ctx.permute((2, 0, 1, 3))?.reshape((c * b, 1, h))?;
        self.after_attention(&xq, &ctx, adapter, Mode::Inference)
    }

    /// Attention output, residual and norm, then the feed-forward block:
    /// `ctx` (attention context) and `xq` (the rows it belongs to) `[b, sq, h]`.
    fn after_attention(
        &self,
        xq: &Tensor,
        ctx: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        let attn = linear(
            ctx,
            &self.attention_output,
            adapter.and_then(|a| a.attention_output.as_ref()),
        )?;
        let x = self.attention_norm.forward(&(attn + xq)?, mode)?;
        let inter = linear(
            &x,
            &self.intermediate,
            adapter.and_then(|a| a.intermediate.as_ref()),
        )?
        .gelu_erf()?;
        let out = linear(
            &inter,
            &self.output,
            adapter.and_then(|a| a.output.as_ref()),
        )?;
        self.output_norm.forward(&(out + x)?, mode)
    }
}

/// What a value adapter adds to attention contexts: `probs` `[b, heads, c,
/// s]` (c query positions, one per stacked member) times that member's
/// value delta `X·Aᵀ·Bᵀ·scale`, computed as `((P·(X·Aᵀ))·Bᵀ)·scale` so no
/// `[b, s, h]` delta is made: `[b, heads, c, d]`.
fn value_delta_attended(x: &Tensor, probs: &Tensor, l: &Lora, heads: usize) -> Result<Tensor> {
    let (b, s, h) = x.dims3()?;
    let c = probs.dim(2)?;
    let (a, bm) = l.with_member_axis()?;
    let r = a.dim(1)?;
    // Each member's X·Aᵀ in one matmul: [b·s, c·r] → [b, c, s, r].
    let u = x
        .reshape((b * s, h))?
        .matmul(&a.reshape((c * r, h))?.t()?)?
        .reshape((b, s, c, r))?
        .permute((0, 2, 1, 3))?
        .contiguous()?;
    let y = probs.permute((0, 2, 1, 3))?.contiguous()?.matmul(&u)?; // [b, c, heads, r]
    let y = y.permute((1, 2, 0, 3))?.contiguous()?; // [c, heads, b, r]
    let bt = bm
        .reshape((c, heads, h / heads, r))?
        .transpose(2, 3)?
        .contiguous()?; // [c, heads, r, d]
    (y.matmul(&bt)? * l.scale)?.permute((2, 1, 0, 3)) // [b, heads, c, d]
}

// === impl BertModel ===

#[derive(Debug, Clone)]
pub struct BertModel {
    word_embeddings: Tensor,
    position_embeddings: Tensor,
    token_type_embeddings: Tensor,
    embeddings_norm: LayerNorm,
    layers: Vec<BertLayer>,
    pub config: BertConfig,
    device: Device,
}

impl BertModel {
    /// Loads the weights (Hugging Face names, with or without a `bert.` prefix).
    pub fn load(config: BertConfig, vb: VarBuilder) -> Result<Self> {
        if config.hidden_act != "gelu" {
            candle_core::bail!(
                "unsupported hidden_act `{}` (only `gelu`)",
                config.hidden_act
            );
        }
        if !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
        {
            candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
        }
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = config.hidden_size;
        let e = vb.pp("embeddings");
        let layers = (0..config.num_hidden_layers)
            .map(|i| BertLayer::load(&config, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word_embeddings: e.get((config.vocab_size, h), "word_embeddings.weight")?,
            position_embeddings: e.get(
                (config.max_position_embeddings, h),
                "position_embeddings.weight",
            )?,
            token_type_embeddings: e
                .get((config.type_vocab_size, h), "token_type_embeddings.weight")?,
            embeddings_norm: LayerNorm::load(h, config.layer_norm_eps, e.pp("LayerNorm"))?,
            layers,
            device: vb.device().clone(),
            config,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token + position + type embeddings, normalised: `[b, s, h]`.
    /// `input_ids`, `type_ids`: `[b, s]` u32.
    pub fn embed(&self, input_ids: &Tensor, type_ids: &Tensor, mode: Mode) -> Result<Tensor> {
        let (b, s) = input_ids.dims2()?;
        let h = self.config.hidden_size;
        let words = self
            .word_embeddings
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, s, h))?;
        let types = self
            .token_type_embeddings
            .index_select(&type_ids.flatten_all()?, 0)?
            .reshape((b, s, h))?;
        let pos = self.position_embeddings.narrow(0, 0, s)?.unsqueeze(0)?;
        let x = (words + types)?.broadcast_add(&pos)?;
        self.embeddings_norm.forward(&x, mode)
    }

    /// `[b, 1, 1, s]` additive bias from a `[b, s]` 0/1 mask.
    pub fn mask_bias(mask: &Tensor) -> Result<Tensor> {
        let (b, s) = mask.dims2()?;
        ((mask.to_dtype(DType::F32)? - 1.0)? * -MASKED_BIAS)?.reshape((b, 1, 1, s))
    }

    /// Runs layer `index` (0-based).
    pub fn layer(
        &self,
        index: usize,
        x: &Tensor,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.layer_copies(index, x, 1, false, mask_bias, adapter, mode)
    }

    /// Runs layer `index` for the `[CLS]` position only (see
    /// [`BertLayer::forward_copies`]): `[b, s, h]` → `[b, 1, h]`.
    pub fn layer_cls(
        &self,
        index: usize,
        x: &Tensor,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.layer_copies(index, x, 1, true, mask_bias, adapter, mode)
    }

    /// Runs layer `index` over `copies` copies of `x`'s rows, the frozen
    /// projections once (see [`BertLayer::forward_copies`]).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_copies(
        &self,
        index: usize,
        x: &Tensor,
        copies: usize,
        cls_only: bool,
        mask_bias: &Tensor,
        adapter: Option<&LayerAdapter>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.layer_at(index)?
            .forward_copies(x, copies, cls_only, mask_bias, adapter, mode)
    }

    /// Layer `index` (0-based), for callers that drive a layer's pieces
    /// themselves (shared projections, [`BertLayer::forward_projected`]).
    pub fn layer_at(&self, index: usize) -> Result<&BertLayer> {
        match self.layers.get(index) {
            Some(l) => Ok(l),
            None => candle_core::bail!("layer {index} out of range"),
        }
    }

    /// The whole encoder without adapters: last hidden state `[b, s, h]`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        type_ids: &Tensor,
        mask: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let bias = Self::mask_bias(mask)?;
        let mut x = self.embed(input_ids, type_ids, mode)?;
        for l in &self.layers {
            x = l.forward(&x, &bias, None, mode)?;
        }
        Ok(x)
    }
}

/// Mean of the hidden states over real tokens: `[b, s, h]`, `[b, s]` → `[b, h]`.
pub fn mean_pool(hidden: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let m = mask.to_dtype(hidden.dtype())?.unsqueeze(D::Minus1)?;
    let sum = hidden.broadcast_mul(&m)?.sum(1)?;
    let count = m.sum(1)?.clamp(1e-9, f64::MAX)?;
    sum.broadcast_div(&count)
}

/// The first (`[CLS]`) token's hidden state: `[b, s, h]` → `[b, h]`.
pub fn cls_pool(hidden: &Tensor) -> Result<Tensor> {
    hidden.narrow(1, 0, 1)?.squeeze(1)
}

/// Row-wise L2 normalisation (sentence-transformers `Normalize`, eps 1e-12).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    x.broadcast_div(&norm)
}
