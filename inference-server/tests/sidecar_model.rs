//! Model-level checks of our BERT: the CLS-only top layer equals the full
//! layer's first row, the differentiable (training) kernels agree with the
//! fused ones, and gradients reach LoRA parameters only through the
//! differentiable path.

#![allow(clippy::unwrap_used)]

mod sidecar_common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use inference_server::sidecar::model::bert::{BertConfig, BertModel, LayerAdapter, Lora, Mode};
use sidecar_common::*;

fn load() -> (BertModel, Tensor, Tensor, Tensor) {
    let dir = base_model();
    let cfg: BertConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    let model = BertModel::load(cfg, vb).unwrap();
    // Two rows, the second padded: [CLS] hello world [SEP] / [CLS] hi [SEP] [PAD]
    let ids = Tensor::new(
        &[[101u32, 7592, 2088, 102], [101, 7632, 102, 0]],
        &Device::Cpu,
    )
    .unwrap();
    let types = ids.zeros_like().unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &Device::Cpu).unwrap();
    (model, ids, types, mask)
}

fn adapter(seed: f64) -> LayerAdapter {
    let dev = Device::Cpu;
    let lora = |inn: usize, out: usize| Lora {
        a: (Tensor::randn(0f32, 0.05, (4, inn), &dev).unwrap() * seed).unwrap(),
        b: Tensor::randn(0f32, 0.05, (out, 4), &dev).unwrap(),
        scale: 2.0,
    };
    LayerAdapter {
        query: Some(lora(384, 384)),
        value: Some(lora(384, 384)),
        intermediate: Some(lora(384, 1536)),
        ..Default::default()
    }
}

/// Largest absolute difference of two tensors.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn cls_only_layer_equals_first_row_of_full_layer() {
    let (m, ids, types, mask) = load();
    let bias = BertModel::mask_bias(&mask).unwrap();
    let mut x = m.embed(&ids, &types, Mode::Inference).unwrap();
    for i in 0..5 {
        x = m.layer(i, &x, &bias, None, Mode::Inference).unwrap();
    }
    let a = adapter(1.0);
    let full = m
        .layer(5, &x, &bias, Some(&a), Mode::Inference)
        .unwrap()
        .narrow(1, 0, 1)
        .unwrap();
    let cls = m
        .layer_cls(5, &x, &bias, Some(&a), Mode::Inference)
        .unwrap();
    let d = max_diff(&full, &cls);
    assert!(d < 1e-5, "max |diff| {d}");
    // The adapter does change the output (the test would be vacuous otherwise).
    let plain = m.layer_cls(5, &x, &bias, None, Mode::Inference).unwrap();
    let a2 = m
        .layer_cls(5, &x, &bias, Some(&a), Mode::Inference)
        .unwrap();
    assert!(max_diff(&plain, &a2) > 1e-4);
}

#[test]
fn folded_layer_equals_layer_with_adapter_deltas() {
    let (m, ids, types, mask) = load();
    let bias = BertModel::mask_bias(&mask).unwrap();
    let x = m.embed(&ids, &types, Mode::Inference).unwrap();
    let layer = m.layer_at(4).unwrap();
    // Every target, the key and both attention-side ones included.
    let mut a = adapter(1.0);
    let lora = |inn: usize, out: usize, seed: f64| Lora {
        a: (Tensor::randn(0f32, 0.05, (4, inn), &Device::Cpu).unwrap() * seed).unwrap(),
        b: Tensor::randn(0f32, 0.05, (out, 4), &Device::Cpu).unwrap(),
        scale: 2.0,
    };
    a.key = Some(lora(384, 384, 1.0));
    a.attention_output = Some(lora(384, 384, 1.0));
    a.output = Some(lora(1536, 384, 1.0));
    let with_deltas = layer.forward(&x, &bias, Some(&a), Mode::Inference).unwrap();
    assert!(
        max_diff(
            &with_deltas,
            &layer.forward(&x, &bias, None, Mode::Inference).unwrap()
        ) > 1e-3
    );
    for keep_projections in [false, true] {
        let (folded, rest) = layer.folded(&a, keep_projections).unwrap();
        assert_eq!(rest.query.is_some(), keep_projections);
        assert!(rest.attention_output.is_none() && rest.intermediate.is_none());
        let out = folded
            .forward(&x, &bias, Some(&rest), Mode::Inference)
            .unwrap();
        let d = max_diff(&with_deltas, &out);
        assert!(
            d < 1e-4,
            "keep_projections {keep_projections}: max |diff| {d}"
        );
        // With the projections kept, the shared (base) ones still fit it.
        if keep_projections {
            let p = layer.project(&x).unwrap();
            let shared = folded
                .forward_projected(&x, &p, 1, false, &bias, Some(&rest), Mode::Inference)
                .unwrap();
            assert!(max_diff(&with_deltas, &shared) < 1e-4);
        }
    }
}

#[test]
fn train_mode_matches_inference_mode() {
    let (m, ids, types, mask) = load();
    let a = m.forward(&ids, &types, &mask, Mode::Inference).unwrap();
    let b = m.forward(&ids, &types, &mask, Mode::Train).unwrap();
    let d = max_diff(&a, &b);
    assert!(d < 1e-4, "max |diff| {d}");
}

/// Gradient of a scalar loss w.r.t. a LoRA `B` matrix in the top layer.
fn lora_grad_norm(mode: Mode) -> f32 {
    let (m, ids, types, mask) = load();
    let bias = BertModel::mask_bias(&mask).unwrap();
    let mut x = m.embed(&ids, &types, mode).unwrap();
    for i in 0..5 {
        x = m.layer(i, &x, &bias, None, mode).unwrap();
    }
    // LoRA on the query only: its gradient must pass through the attention
    // softmax and both layer norms of the layer.
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.05, (384, 4), &Device::Cpu).unwrap()).unwrap();
    let a = Tensor::randn(0f32, 0.05, (4, 384), &Device::Cpu).unwrap();
    let adapter = LayerAdapter {
        query: Some(Lora {
            a,
            b: b.as_tensor().clone(),
            scale: 2.0,
        }),
        ..Default::default()
    };
    let out = m.layer(5, &x, &bias, Some(&adapter), mode).unwrap();
    let loss = out.sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    grads
        .get(b.as_tensor())
        .map(|g| {
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .sqrt()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .unwrap_or(0.0)
}

#[test]
fn gradients_reach_lora_only_in_train_mode() {
    let train = lora_grad_norm(Mode::Train);
    assert!(train > 1e-6, "train-mode LoRA gradient norm {train}");
    // candle's fused layer norm / softmax have no backward pass: the
    // inference kernels silently cut the gradient, which is why Mode exists.
    let fused = lora_grad_norm(Mode::Inference);
    assert!(
        fused < train * 1e-3,
        "fused kernels unexpectedly carried a gradient: {fused} vs {train}"
    );
}
