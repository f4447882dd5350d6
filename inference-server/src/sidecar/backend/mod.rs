//! The inference backend boundary (as in TEI's `backends/core`).
//!
//! A backend gets already-tokenized, padded batches (token ids, type ids,
//! attention mask) and says per sequence which outputs it wants: the pooled
//! sentence embedding and/or the logits of some task heads (pooled or per
//! token). It knows nothing of queues, protocols or labels. The candle
//! backend runs our own BERT layer by layer (shared lower layers, per-task
//! LoRA branches); an ONNX Runtime backend (later) can implement the same
//! trait with exported graphs (base encoder + one graph per task, or one
//! multi-output graph), because nothing here exposes candle types.

pub mod candle;

use std::path::PathBuf;

/// Index of a task in the list the backend was built with.
pub type TaskId = usize;

/// What one sequence of a batch asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// Mean-pooled, L2-normalised sentence embedding of the base encoder.
    pub embedding: bool,
    /// Task heads to evaluate (no duplicates).
    pub tasks: Vec<TaskId>,
}

/// A padded batch: `size` rows of `max_len` tokens, row-major.
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// 1 for a token that starts a new line of its text (see
    /// `tokenize::line_starts`); read by token heads trained with
    /// `line_breaks`.
    pub line_starts: Vec<u32>,
    /// Real (unpadded) length of each row.
    pub lengths: Vec<usize>,
    pub max_len: usize,
    pub wants: Vec<Wants>,
}

impl Batch {
    pub fn size(&self) -> usize {
        self.lengths.len()
    }

    /// Pads `rows` (ids, type ids, line starts, wants) to the longest row;
    /// an empty line-starts slice means none.
    pub fn from_rows<'a>(
        rows: impl IntoIterator<Item = (&'a [u32], &'a [u32], &'a [u32], Wants)>,
    ) -> Self {
        let rows: Vec<_> = rows.into_iter().collect();
        let max_len = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let n = rows.len();
        let mut b = Batch {
            input_ids: vec![0; n * max_len],
            type_ids: vec![0; n * max_len],
            attention_mask: vec![0; n * max_len],
            line_starts: vec![0; n * max_len],
            lengths: Vec::with_capacity(n),
            max_len,
            wants: Vec::with_capacity(n),
        };
        for (i, (ids, types, lines, wants)) in rows.into_iter().enumerate() {
            let row = i * max_len;
            b.input_ids[row..row + ids.len()].copy_from_slice(ids);
            b.type_ids[row..row + types.len()].copy_from_slice(types);
            b.line_starts[row..row + lines.len()].copy_from_slice(lines);
            b.attention_mask[row..row + ids.len()].fill(1);
            b.lengths.push(ids.len());
            b.wants.push(wants);
        }
        b
    }
}

/// Raw output of one task head for one sequence.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadOutput {
    /// Logits over the task's labels.
    Sequence(Vec<f32>),
    /// Row-major `[length, num_labels]` logits, one row per real token
    /// (special tokens included).
    Tokens { logits: Vec<f32>, num_labels: usize },
}

/// Everything computed for one sequence, in the order asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceOutput {
    pub embedding: Option<Vec<f32>>,
    pub heads: Vec<(TaskId, HeadOutput)>,
}

/// Where the files of one task live (its format: docs/SIDECAR.md).
#[derive(Debug, Clone)]
pub struct TaskFiles {
    pub spec: crate::sidecar::tasks::TaskSpec,
    pub dir: PathBuf,
}

/// Static facts about a loaded backend.
#[derive(Debug, Clone)]
pub struct BackendInfo {
    pub hidden_size: usize,
    pub num_layers: usize,
    pub max_positions: usize,
    pub device: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("could not load the model: {0}")]
    Load(String),
    #[error("inference failed: {0}")]
    Inference(String),
}

/// A model executor. Called from one dedicated thread; `Send` so it can be
/// moved there.
pub trait Backend: Send {
    fn info(&self) -> BackendInfo;
    /// A tiny forward pass proving the device works.
    fn health(&self) -> Result<(), BackendError>;
    /// One padded batch; returns one [`SequenceOutput`] per row, in order.
    fn forward(&self, batch: &Batch) -> Result<Vec<SequenceOutput>, BackendError>;
}
