//! Random-weight task heads with the real shapes, for benchmarks and tests
//! of the multi-task machinery ONLY. They produce meaningless labels; they
//! are written to temporary directories and never shipped or served.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::TaskSpec;
use crate::sidecar::model::bert::LORA_TARGETS;

/// Writes `dir/<spec.name>/{task.json, adapter.safetensors}` with random
/// weights (LoRA `B` is random too, so adapters change the output).
pub fn write_random_task(
    dir: &Path,
    spec: &TaskSpec,
    hidden: usize,
    intermediate: usize,
    num_layers: usize,
) -> anyhow::Result<()> {
    let dev = Device::Cpu;
    let rand = |shape: (usize, usize), std: f64| Tensor::randn(0f32, std as f32, shape, &dev);
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut width = spec.head.input_width(hidden);
    for (j, &w) in spec.head.hidden.iter().enumerate() {
        t.insert(format!("head.dense.{j}.weight"), rand((w, width), 0.05)?);
        t.insert(
            format!("head.dense.{j}.bias"),
            Tensor::zeros(w, DType::F32, &dev)?,
        );
        width = w;
    }
    t.insert(
        "head.out.weight".into(),
        rand((spec.labels.len(), width), 0.05)?,
    );
    t.insert(
        "head.out.bias".into(),
        Tensor::zeros(spec.labels.len(), DType::F32, &dev)?,
    );
    if spec.line_breaks {
        t.insert("line_break".into(), Tensor::randn(0f32, 1.0, hidden, &dev)?);
    }
    if let Some(lora) = &spec.lora {
        for i in num_layers - spec.top_layers..num_layers {
            for target in &lora.targets {
                let (inn, o) = match target.as_str() {
                    "intermediate.dense" => (hidden, intermediate),
                    "output.dense" => (intermediate, hidden),
                    s if LORA_TARGETS.contains(&s) => (hidden, hidden),
                    s => anyhow::bail!("unknown LoRA target {s}"),
                };
                t.insert(
                    format!("encoder.layer.{i}.{target}.lora_a"),
                    rand((lora.rank, inn), 0.02)?,
                );
                t.insert(
                    format!("encoder.layer.{i}.{target}.lora_b"),
                    rand((o, lora.rank), 0.02)?,
                );
            }
        }
    }
    super::write_task(&dir.join(&spec.name), spec, &t)?;
    Ok(())
}
