//! Task heads: their on-disk format, discovery under `--models`, and the
//! decoding of raw logits into labels and spans ([`decode`]).
//!
//! A task lives in `models/<name>/`:
//! * `task.json`: a [`TaskSpec`];
//! * `adapter.safetensors`: the head (`head.*`) and, when `top_layers > 0`
//!   and `lora` is set, LoRA matrices `encoder.layer.<i>.<target>.lora_{a,b}`
//!   for the top `top_layers` layers. Full reference: docs/SIDECAR.md.

pub mod decode;
pub mod pii;
pub mod random;
pub mod recognizers;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::sidecar::backend::TaskFiles;

/// Tasks the router knows by name, with the kind each must have. A request
/// for one of these whose head is not installed fails naming the task
/// (except `pii`, which then answers from its recognizers alone, see
/// [`pii`]); any other name must be an installed task.
pub const CATALOGUE: [(&str, TaskKind); 7] = [
    ("domain", TaskKind::Sequence),
    ("jailbreak", TaskKind::Sequence),
    ("fact_check", TaskKind::Sequence),
    ("feedback", TaskKind::Sequence),
    ("pii", TaskKind::Token),
    ("nli", TaskKind::Pair),
    ("hallucination", TaskKind::PairToken),
];

/// Writes `out/{task.json, adapter.safetensors}`: the one writer of the task format
/// (used by `vsr train` and by the random-weight tasks of benches and tests).
pub fn write_task(
    out: &Path,
    spec: &TaskSpec,
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> anyhow::Result<PathBuf> {
    use anyhow::Context;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let adapter = out.join(ADAPTER_FILE);
    candle_core::safetensors::save(tensors, &adapter)?;
    // safetensors writes through a 0600 temp file; a task directory is shipped
    // and read by a sidecar that may run as another user.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&adapter, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("making {} readable", adapter.display()))?;
    }
    std::fs::write(
        out.join(TASK_FILE),
        serde_json::to_string_pretty(spec)? + "\n",
    )?;
    Ok(out.to_path_buf())
}

/// The pseudo-task that asks for the sentence embedding.
pub const EMBEDDING: &str = "embedding";

/// Name of the task file inside a task directory.
pub const TASK_FILE: &str = "task.json";
/// Name of the weights file inside a task directory.
pub const ADAPTER_FILE: &str = "adapter.safetensors";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// One text → one label (pooled head).
    Sequence,
    /// One text → a label per token (BIO tags → entity spans).
    Token,
    /// A text pair → one label (e.g. NLI).
    Pair,
    /// A text pair → a label per token of the second text.
    PairToken,
}

impl TaskKind {
    pub fn is_pair(self) -> bool {
        matches!(self, TaskKind::Pair | TaskKind::PairToken)
    }
    pub fn per_token(self) -> bool {
        matches!(self, TaskKind::Token | TaskKind::PairToken)
    }
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Sequence => "sequence",
            TaskKind::Token => "token",
            TaskKind::Pair => "pair",
            TaskKind::PairToken => "pair_token",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    #[default]
    Mean,
    Cls,
}

/// Parses the names `task.json` uses (serde's), so `vsr train --pooling`
/// and the file cannot spell them differently.
impl std::str::FromStr for Pooling {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_string()))
            .map_err(|_| format!("expected `cls` or `mean`, got `{s}`"))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Linear modules per layer carrying an adapter (Hugging Face names, see
    /// `model::bert::LORA_TARGETS`).
    #[serde(default = "default_targets")]
    pub targets: Vec<String>,
}

fn default_targets() -> Vec<String> {
    vec!["attention.self.query".into(), "attention.self.value".into()]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[default]
    Tanh,
    Gelu,
    Relu,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HeadSpec {
    /// Widths of hidden dense layers before the output layer (empty: a
    /// single linear classifier).
    #[serde(default)]
    pub hidden: Vec<usize>,
    #[serde(default)]
    pub activation: Activation,
    /// Sequence tasks: the head also reads the shared sentence embedding
    /// (the base encoder's L2-normalised mean pool, scaled by √hidden to the
    /// size of a layer-normed state), concatenated after the branch's pooled
    /// output. The router computes that embedding for most requests anyway,
    /// so the head gets a general-purpose summary of the text at no layer cost.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_embedding: bool,
}

impl HeadSpec {
    /// Width of the head's input for an encoder of `hidden` units.
    pub fn input_width(&self, hidden: usize) -> usize {
        if self.with_embedding {
            2 * hidden
        } else {
            hidden
        }
    }
}

/// `task.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    pub name: String,
    pub kind: TaskKind,
    /// Output labels, in logit order. Token tasks use `O` plus `B-X`/`I-X`
    /// (or plain `X`) tags.
    pub labels: Vec<String>,
    /// Pooling for sequence and pair tasks (ignored for token tasks).
    #[serde(default)]
    pub pooling: Pooling,
    /// How many of the encoder's top layers this task re-runs with its own
    /// LoRA adapters (0 = the head reads the shared base output).
    #[serde(default)]
    pub top_layers: usize,
    #[serde(default)]
    pub lora: Option<LoraSpec>,
    #[serde(default)]
    pub head: HeadSpec,
    /// Token tasks: a learned vector (`line_break` in the adapter file) is
    /// added to the branch's input at every token that starts a new line of
    /// its text. The tokenizer drops whitespace, so without it the head
    /// cannot see where a name on one line ends and a company or address on
    /// the next begins. The shared trunk is unchanged.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub line_breaks: bool,
    /// Ensemble size: this many branches of this one layout, trained apart
    /// (other seeds), whose softmax outputs are averaged. Averaging cuts the
    /// run-to-run noise of one training run; a CLS-pooled member costs one
    /// layer's work for `[CLS]` plus its key/value projections, not a layer.
    /// Member k ≥ 1 keeps its tensors under `member.<k>.`; member 0 under
    /// the plain names, so a one-member file is an ordinary task.
    #[serde(default = "one_member", skip_serializing_if = "is_one_member")]
    pub members: usize,
    /// Free-form provenance (trainer, data, date); not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
}

fn one_member() -> usize {
    1
}

fn is_one_member(n: &usize) -> bool {
    *n == 1
}

/// Prefix of ensemble member `k`'s tensors in `adapter.safetensors`.
pub fn member_prefix(k: usize) -> Option<String> {
    (k > 0).then(|| format!("member.{k}"))
}

#[derive(Debug, thiserror::Error)]
pub enum TaskLoadError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl TaskSpec {
    /// Checks the spec against itself and the base encoder.
    pub fn validate(&self, num_layers: usize) -> Result<(), String> {
        if self.name.is_empty() || self.name == EMBEDDING {
            return Err(format!("invalid task name `{}`", self.name));
        }
        if self.labels.len() < 2 {
            return Err("a task needs at least two labels".into());
        }
        if self.top_layers > num_layers {
            return Err(format!(
                "top_layers {} exceeds the encoder's {num_layers} layers",
                self.top_layers
            ));
        }
        if let Some(l) = &self.lora {
            if l.rank == 0 {
                return Err("lora.rank must be positive".into());
            }
            if self.top_layers == 0 {
                return Err("lora is set but top_layers is 0".into());
            }
        }
        if self.members == 0 {
            return Err("members must be at least 1".into());
        }
        if self.members > 1 && self.kind.per_token() {
            return Err(format!(
                "members > 1 (an ensemble) is for sequence and pair tasks, not `{}`",
                self.kind.as_str()
            ));
        }
        if self.line_breaks && (!self.kind.per_token() || self.top_layers == 0) {
            return Err(format!(
                "line_breaks is for token tasks with top_layers ≥ 1, not `{}` with top_layers {}",
                self.kind.as_str(),
                self.top_layers
            ));
        }
        if self.head.with_embedding && self.kind != TaskKind::Sequence {
            return Err(format!(
                "head.with_embedding is only for sequence tasks, not `{}`",
                self.kind.as_str()
            ));
        }
        if let Some((_, kind)) = CATALOGUE.iter().find(|(n, _)| *n == self.name) {
            if *kind != self.kind {
                return Err(format!(
                    "task `{}` must be of kind `{}`, not `{}`",
                    self.name,
                    kind.as_str(),
                    self.kind.as_str()
                ));
            }
        }
        Ok(())
    }
}

/// Every task directory directly under `models_dir` (a directory with a
/// `task.json`), sorted by name. Directories without `task.json` (like
/// `base/`) are skipped; a malformed task is an error, not a skip.
pub fn discover(models_dir: &Path, num_layers: usize) -> Result<Vec<TaskFiles>, TaskLoadError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TaskLoadError::Io { path, source }
    };
    let mut out = Vec::new();
    if !models_dir.exists() {
        return Ok(out);
    }
    for entry in std::fs::read_dir(models_dir).map_err(io(models_dir))? {
        let dir = entry.map_err(io(models_dir))?.path();
        let file = dir.join(TASK_FILE);
        if !file.is_file() {
            continue;
        }
        let text = std::fs::read_to_string(&file).map_err(io(&file))?;
        let spec: TaskSpec = serde_json::from_str(&text).map_err(|e| TaskLoadError::Invalid {
            path: file.clone(),
            message: e.to_string(),
        })?;
        spec.validate(num_layers)
            .map_err(|message| TaskLoadError::Invalid {
                path: file.clone(),
                message,
            })?;
        if !dir.join(ADAPTER_FILE).is_file() {
            return Err(TaskLoadError::Invalid {
                path: dir.join(ADAPTER_FILE),
                message: "missing (every task needs its head weights)".into(),
            });
        }
        out.push(TaskFiles { spec, dir });
    }
    out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    if let Some(w) = out.windows(2).find(|w| w[0].spec.name == w[1].spec.name) {
        return Err(TaskLoadError::Invalid {
            path: w[1].dir.clone(),
            message: format!("duplicate task name `{}`", w[1].spec.name),
        });
    }
    Ok(out)
}

/// A small valid spec (`custom`, two labels, CLS, top layer without LoRA)
/// for unit tests to vary.
#[cfg(test)]
pub(crate) fn test_spec(kind: TaskKind) -> TaskSpec {
    TaskSpec {
        line_breaks: false,
        name: "custom".into(),
        kind,
        labels: vec!["a".into(), "b".into()],
        pooling: Pooling::Cls,
        top_layers: 1,
        lora: None,
        head: HeadSpec::default(),
        members: 1,
        metadata: None,
    }
}

#[cfg(test)]
mod tests {
    use super::test_spec as spec;
    use super::*;

    #[cfg(unix)]
    #[test]
    fn written_weights_are_readable_by_other_users() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = candle_core::Tensor::zeros(2, candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap();
        let out = write_task(
            &dir.path().join("t"),
            &spec(TaskKind::Sequence),
            &[("head.bias".to_string(), t)].into(),
        )
        .unwrap();
        let mode = std::fs::metadata(out.join(ADAPTER_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "adapter mode {mode:o}");
    }

    #[test]
    fn validate_names_what_is_wrong() {
        assert_eq!(spec(TaskKind::Sequence).validate(6), Ok(()));
        let mut s = spec(TaskKind::Sequence);
        s.top_layers = 7;
        assert!(s.validate(6).unwrap_err().contains("top_layers 7"));
        let mut s = spec(TaskKind::Sequence);
        s.labels.truncate(1);
        assert!(s.validate(6).unwrap_err().contains("two labels"));
        let mut s = spec(TaskKind::Token);
        s.head.with_embedding = true;
        let e = s.validate(6).unwrap_err();
        assert!(e.contains("with_embedding") && e.contains("token"), "{e}");
        let mut s = spec(TaskKind::Sequence);
        s.head.with_embedding = true;
        assert_eq!(s.validate(6), Ok(()));
        assert_eq!(s.head.input_width(384), 768);
        s.members = 0;
        assert!(s.validate(6).unwrap_err().contains("members"));
        s.members = 3;
        assert_eq!(s.validate(6), Ok(()));
        let mut s = spec(TaskKind::Token);
        s.members = 2;
        let e = s.validate(6).unwrap_err();
        assert!(e.contains("ensemble") && e.contains("token"), "{e}");
    }

    #[test]
    fn line_breaks_only_for_token_tasks_with_a_branch() {
        let mut s = spec(TaskKind::Token);
        s.line_breaks = true;
        assert!(s.validate(6).is_ok());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["line_breaks"], true);
        assert!(serde_json::to_value(spec(TaskKind::Token))
            .unwrap()
            .get("line_breaks")
            .is_none());
        s.top_layers = 0;
        let e = s.validate(6).unwrap_err();
        assert!(
            e.contains("line_breaks") && e.contains("top_layers 0"),
            "{e}"
        );
        let mut q = spec(TaskKind::Sequence);
        q.line_breaks = true;
        let e = q.validate(6).unwrap_err();
        assert!(e.contains("line_breaks") && e.contains("sequence"), "{e}");
    }

    #[test]
    fn with_embedding_is_written_only_when_set() {
        let plain = serde_json::to_value(spec(TaskKind::Sequence)).unwrap();
        assert!(plain["head"].get("with_embedding").is_none(), "{plain}");
        // One member is the plain layout: not written, read back as 1.
        assert!(plain.get("members").is_none(), "{plain}");
        let back: TaskSpec = serde_json::from_value(plain).unwrap();
        assert_eq!(back.members, 1);
        let mut s = spec(TaskKind::Sequence);
        s.head.with_embedding = true;
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["head"]["with_embedding"], true);
        let back: TaskSpec = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
    }
}
