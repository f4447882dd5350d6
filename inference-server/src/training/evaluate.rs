//! Scores a task directory exactly as the sidecar serves it: `task.json` is
//! found with [`tasks::discover`], weights loaded by `CandleBackend`, text
//! tokenized by the sidecar's [`Tokenization`].

use std::path::Path;

use anyhow::{bail, Context};
use candle_core::Device;

use super::data::Dataset;
use super::metrics::{Confusion, Report};
use crate::sidecar::backend::candle::CandleBackend;
use crate::sidecar::backend::{Backend, Batch, HeadOutput, TaskFiles, Wants};
use crate::sidecar::tasks::{self, TaskKind};
use crate::sidecar::tokenize::Tokenization;

/// A loaded task: the backend with this one task (id 0) and the tokenizer.
pub struct LoadedTask {
    pub files: TaskFiles,
    backend: CandleBackend,
    tokenizer: Tokenization,
}

/// Loads `model_dir` (a `models/<task>` directory) the way `vsr serve`
/// does: `task.json` parsed and validated as by discovery, then the candle
/// backend.
pub fn load_task(
    base_dir: &Path,
    model_dir: &Path,
    max_tokens: usize,
) -> anyhow::Result<LoadedTask> {
    let cfg: crate::sidecar::model::bert::BertConfig = serde_json::from_str(
        &std::fs::read_to_string(base_dir.join("config.json"))
            .with_context(|| format!("{}/config.json", base_dir.display()))?,
    )?;
    // The same parsing and checks as `tasks::discover`, for this one
    // directory (its siblings may hold other versions of the same task).
    let file = model_dir.join(tasks::TASK_FILE);
    let text = std::fs::read_to_string(&file).with_context(|| file.display().to_string())?;
    let spec: tasks::TaskSpec =
        serde_json::from_str(&text).with_context(|| file.display().to_string())?;
    spec.validate(cfg.num_hidden_layers)
        .map_err(|m| anyhow::anyhow!("{}: {m}", file.display()))?;
    anyhow::ensure!(
        model_dir.join(tasks::ADAPTER_FILE).is_file(),
        "{} has no {}",
        model_dir.display(),
        tasks::ADAPTER_FILE
    );
    let files = TaskFiles {
        spec,
        dir: model_dir.to_path_buf(),
    };
    if !matches!(files.spec.kind, TaskKind::Sequence | TaskKind::Pair) {
        bail!(
            "task `{}` is of kind `{}`; this evaluation handles `sequence` and `pair` tasks",
            files.spec.name,
            files.spec.kind.as_str()
        );
    }
    let backend = CandleBackend::load(base_dir, std::slice::from_ref(&files), Device::Cpu)?;
    let tokenizer = Tokenization::load(&base_dir.join("tokenizer.json"), max_tokens)?;
    Ok(LoadedTask {
        files,
        backend,
        tokenizer,
    })
}

impl LoadedTask {
    pub fn labels(&self) -> &[String] {
        &self.files.spec.labels
    }

    /// Logits per text, batched by length.
    pub fn logits(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let enc = texts
            .iter()
            .map(|t| self.tokenizer.encode(t))
            .collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| enc[i].ids.len());
        let mut out = vec![Vec::new(); texts.len()];
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
            let res = self.backend.forward(&batch)?;
            for (&i, r) in chunk.iter().zip(res) {
                match r.heads.into_iter().next() {
                    Some((_, HeadOutput::Sequence(l))) => out[i] = l,
                    _ => bail!("backend returned no sequence logits"),
                }
            }
        }
        Ok(out)
    }

    /// (label index, softmax confidence) per text.
    pub fn predict(&self, texts: &[&str], batch_size: usize) -> anyhow::Result<Vec<(usize, f32)>> {
        Ok(self
            .logits(texts, batch_size)?
            .into_iter()
            .map(|l| argmax_softmax(&l))
            .collect())
    }

    /// Class probabilities per pair, as the sidecar's `Nli` RPC computes
    /// them: `encode_pair` windows, softmax per window, mean over windows.
    pub fn pair_probs(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let windows = pairs
            .iter()
            .map(|(a, b)| self.tokenizer.encode_pair(a, b))
            .collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<(usize, &crate::sidecar::tokenize::Encoded)> = windows
            .iter()
            .enumerate()
            .flat_map(|(p, ws)| ws.iter().map(move |w| (p, w)))
            .collect();
        let mut order: Vec<usize> = (0..rows.len()).collect();
        order.sort_by_key(|&r| rows[r].1.ids.len());
        let n = self.labels().len();
        let mut out = vec![vec![0f32; n]; pairs.len()];
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
            let res = self.backend.forward(&batch)?;
            for (&r, o) in chunk.iter().zip(res) {
                let p = rows[r].0;
                let Some((_, HeadOutput::Sequence(l))) = o.heads.into_iter().next() else {
                    bail!("backend returned no sequence logits");
                };
                let k = windows[p].len() as f32;
                for (m, q) in out[p].iter_mut().zip(softmax(&l)) {
                    *m += q / k;
                }
            }
        }
        Ok(out)
    }

    /// (label index, probability) per pair, as served.
    pub fn predict_pairs(
        &self,
        pairs: &[(&str, &str)],
        batch_size: usize,
    ) -> anyhow::Result<Vec<(usize, f32)>> {
        Ok(self
            .pair_probs(pairs, batch_size)?
            .into_iter()
            .map(|p| most_probable(&p))
            .collect())
    }

    /// Predictions for examples `indices` of `data`: (label index,
    /// probability) from [`Self::example_probs`].
    fn predict_examples(
        &self,
        data: &Dataset,
        indices: &[usize],
        batch_size: usize,
    ) -> anyhow::Result<Vec<(usize, f32)>> {
        Ok(self
            .example_probs(data, indices, batch_size)?
            .iter()
            .map(|p| most_probable(p))
            .collect())
    }

    /// Class probabilities, as served, for examples `indices` of `data`:
    /// pairs through [`Self::pair_probs`], single texts through the softmax
    /// of [`Self::logits`].
    pub fn example_probs(
        &self,
        data: &Dataset,
        indices: &[usize],
        batch_size: usize,
    ) -> anyhow::Result<Vec<Vec<f32>>> {
        let is_pair = self.files.spec.kind == TaskKind::Pair;
        if let Some(&i) = indices
            .iter()
            .find(|&&i| data.examples[i].second.is_some() != is_pair)
        {
            bail!(
                "task `{}` is a `{}` task but example {i} is {}",
                self.files.spec.name,
                self.files.spec.kind.as_str(),
                if is_pair { "a single text" } else { "a pair" }
            );
        }
        if is_pair {
            let pairs: Vec<(&str, &str)> = indices
                .iter()
                .map(|&i| {
                    let e = &data.examples[i];
                    (e.text.as_str(), e.second.as_deref().unwrap_or_default())
                })
                .collect();
            self.pair_probs(&pairs, batch_size)
        } else {
            let texts: Vec<&str> = indices
                .iter()
                .map(|&i| data.examples[i].text.as_str())
                .collect();
            Ok(self
                .logits(&texts, batch_size)?
                .iter()
                .map(|l| softmax(l))
                .collect())
        }
    }

    /// Confusion over `(text, gold label name)` pairs.
    pub fn confusion(
        &self,
        examples: &[(&str, &str)],
        batch_size: usize,
    ) -> anyhow::Result<Confusion> {
        let labels = self.labels().to_vec();
        let gold = examples
            .iter()
            .map(|(_, g)| {
                labels
                    .iter()
                    .position(|l| l == g)
                    .with_context(|| format!("gold label `{g}` is not among the task's labels"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let texts: Vec<&str> = examples.iter().map(|(t, _)| *t).collect();
        let pred = self.predict(&texts, batch_size)?;
        let mut c = Confusion::new(labels);
        for (g, (p, _)) in gold.into_iter().zip(pred) {
            c.add(g, p);
        }
        Ok(c)
    }
}

/// Validation metrics plus what the model card shows beside them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scored {
    pub report: Report,
    /// Share of `benign` examples predicted as anything else (tasks with a
    /// `benign` label).
    pub benign_false_positive_rate: Option<f64>,
    pub by_origin: Vec<OriginStats>,
    pub probes: Vec<ProbeStats>,
    pub checks: Vec<CheckResult>,
}

/// Accuracy on the examples of one data source.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OriginStats {
    pub origin: String,
    pub examples: usize,
    pub accuracy: f64,
    /// Predictions per label, in label order.
    pub predicted: Vec<usize>,
}

/// Predicted labels of a probe set (texts outside training and validation).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProbeStats {
    pub name: String,
    pub examples: usize,
    pub predicted: Vec<usize>,
}

/// One acceptance example and the head's answer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckResult {
    pub text: String,
    pub expected: String,
    pub label: String,
    /// Softmax probability of the predicted label.
    pub confidence: f32,
    /// Softmax probability of the expected label.
    pub p_expected: f32,
}

impl LoadedTask {
    /// Scores `indices` of `data` (its validation split, say), its probes
    /// and the task's acceptance examples.
    pub fn score(
        &self,
        data: &Dataset,
        indices: &[usize],
        batch_size: usize,
    ) -> anyhow::Result<Scored> {
        anyhow::ensure!(
            self.labels() == data.labels.as_slice(),
            "the task's labels {:?} differ from the data's {:?}",
            self.labels(),
            data.labels
        );
        let n = data.labels.len();
        let pred = self.predict_examples(data, indices, batch_size)?;
        let mut c = Confusion::new(data.labels.clone());
        let mut by_origin: Vec<(usize, usize, Vec<usize>)> =
            vec![(0, 0, vec![0; n]); data.origins.len()];
        for (&i, (p, _)) in indices.iter().zip(&pred) {
            let e = &data.examples[i];
            c.add(e.label, *p);
            let o = &mut by_origin[e.origin];
            o.0 += 1;
            o.1 += usize::from(e.label == *p);
            o.2[*p] += 1;
        }
        let benign_false_positive_rate = data.labels.iter().position(|l| l == "benign").map(|b| {
            let support: usize = c.counts[b].iter().sum();
            if support == 0 {
                0.0
            } else {
                1.0 - c.counts[b][b] as f64 / support as f64
            }
        });
        let by_origin = data
            .origins
            .iter()
            .zip(by_origin)
            .filter(|(_, (examples, _, _))| *examples > 0)
            .map(|(origin, (examples, correct, predicted))| OriginStats {
                origin: origin.clone(),
                examples,
                accuracy: correct as f64 / examples as f64,
                predicted,
            })
            .collect();
        let mut probes = Vec::new();
        for p in &data.probes {
            let texts: Vec<&str> = p.texts.iter().map(String::as_str).collect();
            let mut predicted = vec![0; n];
            for (l, _) in self.predict(&texts, batch_size)? {
                predicted[l] += 1;
            }
            probes.push(ProbeStats {
                name: p.name.clone(),
                examples: texts.len(),
                predicted,
            });
        }
        let mut checks = self.check(super::data::acceptance_examples(&self.files.spec.name))?;
        checks.extend(
            self.check_pairs(super::data::pair_acceptance_examples(&self.files.spec.name))?,
        );
        Ok(Scored {
            report: c.report(),
            benign_false_positive_rate,
            by_origin,
            probes,
            checks,
        })
    }

    /// The head's answers to `(text, expected label)` pairs.
    pub fn check(&self, examples: &[(&str, &str)]) -> anyhow::Result<Vec<CheckResult>> {
        let texts: Vec<&str> = examples.iter().map(|(t, _)| *t).collect();
        let logits = self.logits(&texts, 8)?;
        examples
            .iter()
            .zip(logits)
            .map(|((text, expected), l)| {
                let probs = softmax(&l);
                let (best, confidence) = argmax_softmax(&l);
                let e = self
                    .labels()
                    .iter()
                    .position(|x| x == expected)
                    .with_context(|| {
                        format!("expected label `{expected}` is not among the task's labels")
                    })?;
                Ok(CheckResult {
                    text: text.to_string(),
                    expected: expected.to_string(),
                    label: self.labels()[best].clone(),
                    confidence,
                    p_expected: probs[e],
                })
            })
            .collect()
    }
}

impl LoadedTask {
    /// The head's answers to `(premise, hypothesis, expected label)`; the
    /// text shown is `premise ⇒ hypothesis`.
    pub fn check_pairs(&self, examples: &[(&str, &str, &str)]) -> anyhow::Result<Vec<CheckResult>> {
        if examples.is_empty() {
            return Ok(Vec::new());
        }
        let pairs: Vec<(&str, &str)> = examples.iter().map(|(a, b, _)| (*a, *b)).collect();
        let probs = self.pair_probs(&pairs, 8)?;
        examples
            .iter()
            .zip(probs)
            .map(|((a, b, expected), p)| {
                let (best, confidence) = p
                    .iter()
                    .copied()
                    .enumerate()
                    .max_by(|x, y| x.1.total_cmp(&y.1))
                    .unwrap_or((0, 0.0));
                let e = self
                    .labels()
                    .iter()
                    .position(|x| x == expected)
                    .with_context(|| {
                        format!("expected label `{expected}` is not among the task's labels")
                    })?;
                Ok(CheckResult {
                    text: format!("{a} ⇒ {b}"),
                    expected: expected.to_string(),
                    label: self.labels()[best].clone(),
                    confidence,
                    p_expected: p[e],
                })
            })
            .collect()
    }
}

impl Scored {
    /// The report's tables, then the benign false-positive rate, accuracy
    /// per source, probe sets and acceptance examples where there are any.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = self.report.to_markdown();
        let labels = &self.report.labels;
        if let Some(fpr) = self.benign_false_positive_rate {
            let _ = writeln!(
                s,
                "
false-positive rate on `benign` (benign examples predicted as anything else): {fpr:.4}"
            );
        }
        let dist = |p: &[usize]| -> String {
            labels
                .iter()
                .zip(p)
                .map(|(l, n)| format!("{l} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if self.by_origin.len() > 1 {
            let _ = writeln!(
                s,
                "
per source (validation examples from each input)
"
            );
            let _ = writeln!(s, "| source | examples | accuracy | predicted |");
            let _ = writeln!(s, "|---|---:|---:|---|");
            for o in &self.by_origin {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.3} | {} |",
                    o.origin,
                    o.examples,
                    o.accuracy,
                    dist(&o.predicted)
                );
            }
        }
        if !self.probes.is_empty() {
            let _ = writeln!(
                s,
                "
probe sets (not used for training or validation)
"
            );
            let _ = writeln!(s, "| set | examples | predicted |");
            let _ = writeln!(s, "|---|---:|---|");
            for p in &self.probes {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} |",
                    p.name,
                    p.examples,
                    dist(&p.predicted)
                );
            }
        }
        if !self.checks.is_empty() {
            let _ = writeln!(
                s,
                "
acceptance examples
"
            );
            let _ = writeln!(
                s,
                "| text | expected | predicted | confidence | P(expected) |"
            );
            let _ = writeln!(s, "|---|---|---|---:|---:|");
            for c in &self.checks {
                let mut t: String = c.text.chars().take(80).collect();
                if t.len() < c.text.len() {
                    t.push('…');
                }
                let _ = writeln!(
                    s,
                    "| {} | {} | {}{} | {:.3} | {:.3} |",
                    t.replace('|', "\\|"),
                    c.expected,
                    c.label,
                    if c.label == c.expected { "" } else { " ✗" },
                    c.confidence,
                    c.p_expected
                );
            }
        }
        s
    }
}

/// Softmax of a logit row.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let z: f32 = e.iter().sum();
    e.into_iter().map(|x| x / z).collect()
}

/// Index of the largest probability and that probability.
fn most_probable(p: &[f32]) -> (usize, f32) {
    p.iter()
        .copied()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0))
}

/// Index of the largest logit and its softmax probability.
pub fn argmax_softmax(logits: &[f32]) -> (usize, f32) {
    let (best, &max) = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap_or((0, &0.0));
    let z: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    (best, if z > 0.0 { 1.0 / z } else { 0.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_softmax_picks_the_largest() {
        let (i, p) = argmax_softmax(&[0.0, 2.0, 0.0]);
        assert_eq!(i, 1);
        let expect = 2f32.exp() / (2.0 + 2f32.exp());
        assert!((p - expect).abs() < 1e-6);
    }

    fn committed_domain() -> Option<LoadedTask> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let base = root.join("models/base/all-MiniLM-L6-v2");
        let dir = root.join("models/domain");
        if !base.join("model.safetensors").is_file() || !dir.join("task.json").is_file() {
            eprintln!("skipped: base model (scripts/setup.sh) or models/domain missing");
            return None;
        }
        Some(load_task(&base, &dir, 512).expect("load models/domain"))
    }

    /// The committed `models/domain` loads through the sidecar's task
    /// discovery and backend and labels clear-cut questions.
    #[test]
    fn committed_domain_head_loads_and_classifies() {
        let Some(task) = committed_domain() else {
            return;
        };
        let qs = [
            (
                "Is a verbal contract for the sale of land enforceable?",
                "law",
            ),
            ("What is the derivative of x^2 sin x?", "math"),
        ];
        let texts: Vec<&str> = qs.iter().map(|q| q.0).collect();
        for ((q, want), (l, p)) in qs.iter().zip(task.predict(&texts, 2).expect("predict")) {
            assert_eq!(task.labels()[l], *want, "{q} (confidence {p})");
        }
    }

    /// The acceptance example (the first shipped head, trained on
    /// MMLU-Pro alone, said `physics`).
    #[test]
    fn committed_domain_head_classifies_biology() {
        let Some(task) = committed_domain() else {
            return;
        };
        let q = "How does photosynthesis convert light into chemical energy?";
        let (l, p) = task.predict(&[q], 1).expect("predict")[0];
        assert_eq!(task.labels()[l], "biology", "confidence {p}");
    }
}
