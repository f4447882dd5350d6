//! The engine's front: validation, tokenization, admission (semaphore),
//! queueing, and decoding of backend outputs into task results. Protocol
//! agnostic: `grpc.rs` and `http.rs` both call [`Infer`].

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};

use crate::sidecar::backend::{BackendInfo, HeadOutput, SequenceOutput, TaskId, Wants};
use crate::sidecar::candidates::{CandidateScore, CandidateSetData, CandidateStore};
use crate::sidecar::error::InferError;
use crate::sidecar::metrics::{Metrics, STATUS_OK};
use crate::sidecar::queue::{Entry, EntryResult, Queue, Row};
use crate::sidecar::tasks::decode::{self, Entity, SequenceResult, TokenLabel};
use crate::sidecar::tasks::{pii, TaskKind, TaskSpec, CATALOGUE, EMBEDDING, TASK_FILE};
use crate::sidecar::tokenize::{Encoded, Tokenization, TokenizeError};

/// Bounds on what one call may ask for.
#[derive(Debug, Clone)]
pub struct EngineLimits {
    /// Longest accepted text, in bytes (longer is INVALID_ARGUMENT).
    pub max_text_bytes: usize,
    /// Most texts (or pairs) in one Embed/Nli/ClassifyTokens call.
    pub max_batch_texts: usize,
    /// Most candidate sets held, and candidates per set.
    pub max_candidate_sets: usize,
    pub max_candidates_per_set: usize,
}

/// Where the time of one call went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub queue: Duration,
    pub tokenize: Duration,
    pub inference: Duration,
    pub total: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputInfo {
    pub tokens: usize,
    pub truncated: bool,
}

impl From<&Encoded> for InputInfo {
    fn from(e: &Encoded) -> Self {
        Self {
            tokens: e.ids.len(),
            truncated: e.truncated,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ClassifyRequest {
    pub text: String,
    pub tasks: Vec<String>,
    pub candidate_sets: Vec<String>,
    pub top_k: usize,
    /// More texts (earlier turns, the system prompt) with their own head
    /// tasks; each becomes another row of the same batch.
    pub extra_texts: Vec<ExtraText>,
}

/// A further text of a Classify call and the head tasks it wants.
#[derive(Debug, Clone, Default)]
pub struct ExtraText {
    pub text: String,
    pub tasks: Vec<String>,
}

/// The head results of one [`ExtraText`], in its task order.
#[derive(Debug, Clone)]
pub struct ExtraResult {
    pub results: Vec<(String, TaskOutput)>,
    pub input: InputInfo,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    Sequence(SequenceResult),
    Entities(Vec<Entity>),
}

#[derive(Debug, Clone)]
pub struct ClassifyResponse {
    /// Per head task, in request order.
    pub results: Vec<(String, TaskOutput)>,
    pub embedding: Option<Vec<f32>>,
    pub similarities: Vec<(String, Vec<CandidateScore>)>,
    pub input: InputInfo,
    pub timing: Timing,
    /// One per extra text, in request order.
    pub extra_results: Vec<ExtraResult>,
}

#[derive(Debug, Clone)]
pub struct EmbedResponse {
    pub embeddings: Vec<(Vec<f32>, InputInfo)>,
    pub timing: Timing,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RegisteredSet {
    pub name: String,
    pub count: usize,
    pub dimension: usize,
}

#[derive(Debug, Clone)]
pub struct NliResponse {
    pub results: Vec<SequenceResult>,
    pub timing: Timing,
}

#[derive(Debug, Clone)]
pub struct TokenLabelsResponse {
    /// Per pair: the answer's labelled tokens and the number of windows.
    pub results: Vec<(Vec<TokenLabel>, usize)>,
    pub timing: Timing,
}

/// A head task of a Classify row: the installed task, or `None` for `pii`
/// without a trained head (its recognizers alone).
type HeadRef = (String, Option<TaskId>);

/// Byte range of a token in its text (`None`: not part of it).
type ByteSpan = Option<(usize, usize)>;

/// A named set of `(id, text)` candidates.
pub type CandidateInput = (String, Vec<(String, String)>);

/// Inputs up to this many bytes are tokenized on the calling task.
const INLINE_TOKENIZE_BYTES: usize = 16 * 1024;

pub const DEFAULT_NLI_TASK: &str = "nli";
pub const DEFAULT_TOKEN_TASK: &str = "hallucination";

struct Inner {
    tokenization: Tokenization,
    tasks: Vec<TaskSpec>,
    by_name: HashMap<String, TaskId>,
    models_dir: PathBuf,
    queue: Arc<Queue>,
    permits: Arc<Semaphore>,
    candidates: CandidateStore,
    metrics: Arc<Metrics>,
    limits: EngineLimits,
    info: BackendInfo,
    model_id: String,
}

/// Cheap to clone; shared by the gRPC and HTTP servers.
#[derive(Clone)]
pub struct Infer {
    inner: Arc<Inner>,
}

impl Infer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tokenization: Tokenization,
        tasks: Vec<TaskSpec>,
        models_dir: PathBuf,
        queue: Arc<Queue>,
        max_concurrent_requests: usize,
        metrics: Arc<Metrics>,
        limits: EngineLimits,
        info: BackendInfo,
        model_id: String,
    ) -> Self {
        let by_name = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Self {
            inner: Arc::new(Inner {
                tokenization,
                tasks,
                by_name,
                models_dir,
                queue,
                permits: Arc::new(Semaphore::new(max_concurrent_requests)),
                candidates: CandidateStore::default(),
                metrics,
                limits,
                info,
                model_id,
            }),
        }
    }

    pub fn info(&self) -> &BackendInfo {
        &self.inner.info
    }

    /// Name of the base model (directory name or hub id).
    pub fn model_id(&self) -> &str {
        &self.inner.model_id
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Installed tasks.
    pub fn tasks(&self) -> &[TaskSpec] {
        &self.inner.tasks
    }

    /// Stops admitting work; queued work still completes.
    pub fn close(&self) {
        self.inner.queue.close();
    }

    // --- public calls -----------------------------------------------------

    /// Every signal for one text in one pass.
    pub async fn classify(&self, req: ClassifyRequest) -> Result<ClassifyResponse, InferError> {
        let mut labels: Vec<String> = req
            .tasks
            .iter()
            .map(|t| self.task_label(t))
            .chain((!req.candidate_sets.is_empty()).then(|| "similarity".to_string()))
            .collect();
        for t in req.extra_texts.iter().flat_map(|x| &x.tasks) {
            let l = self.task_label(t);
            if !labels.contains(&l) {
                labels.push(l);
            }
        }
        let started = Instant::now();
        let result = self.classify_inner(req, started).await;
        self.observe("classify", &labels, &result, started);
        result
    }

    pub async fn embed(&self, texts: Vec<String>) -> Result<EmbedResponse, InferError> {
        let started = Instant::now();
        let result = self.embed_inner(texts, started).await;
        self.observe("embed", &[EMBEDDING.to_string()], &result, started);
        result
    }

    /// Embeds and stores candidate sets (all or nothing).
    pub async fn register_candidates(
        &self,
        sets: Vec<CandidateInput>,
    ) -> Result<(Vec<RegisteredSet>, Timing), InferError> {
        let started = Instant::now();
        let result = self.register_inner(sets, started).await;
        self.observe(
            "register_candidates",
            &[EMBEDDING.to_string()],
            &result,
            started,
        );
        result
    }

    pub async fn nli(
        &self,
        task: Option<String>,
        pairs: Vec<(String, String)>,
    ) -> Result<NliResponse, InferError> {
        let task = task
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_NLI_TASK.into());
        let started = Instant::now();
        let labels = [self.task_label(&task)];
        let result = self.nli_inner(&task, pairs, started).await;
        self.observe("nli", &labels, &result, started);
        result
    }

    pub async fn classify_tokens(
        &self,
        task: Option<String>,
        pairs: Vec<(String, String)>,
    ) -> Result<TokenLabelsResponse, InferError> {
        let task = task
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_TOKEN_TASK.into());
        let started = Instant::now();
        let labels = [self.task_label(&task)];
        let result = self.tokens_inner(&task, pairs, started).await;
        self.observe("classify_tokens", &labels, &result, started);
        result
    }

    // --- implementation ---------------------------------------------------

    async fn classify_inner(
        &self,
        req: ClassifyRequest,
        started: Instant,
    ) -> Result<ClassifyResponse, InferError> {
        self.check_text(&req.text, "text")?;
        if req.tasks.is_empty() && req.candidate_sets.is_empty() {
            return Err(InferError::InvalidArgument {
                param: "tasks",
                message: "ask for at least one task or candidate set".into(),
            });
        }
        let mut wants = Wants::default();
        let mut heads: Vec<HeadRef> = Vec::new();
        for name in &req.tasks {
            if name == EMBEDDING {
                wants.embedding = true;
                continue;
            }
            let id = self.resolve_head(name)?;
            if !heads.iter().any(|(_, h)| *h == id) {
                wants.tasks.extend(id);
                heads.push((name.clone(), id));
            }
        }
        let extra_heads = self.check_extra_texts(&req.extra_texts)?;
        let mut sets = Vec::with_capacity(req.candidate_sets.len());
        for name in &req.candidate_sets {
            let set = self
                .inner
                .candidates
                .get(name)
                .ok_or_else(|| InferError::UnknownCandidateSet(name.clone()))?;
            sets.push((name.clone(), set));
        }
        let return_embedding = wants.embedding;
        wants.embedding |= !sets.is_empty();

        let t0 = Instant::now();
        // Row 0 is `text`, then one row per extra text.
        let texts: Vec<String> = std::iter::once(req.text.clone())
            .chain(req.extra_texts.iter().map(|x| x.text.clone()))
            .collect();
        let bytes = texts.iter().map(String::len).sum();
        let encs = self
            .tokenize(bytes, move |tok| {
                texts
                    .iter()
                    .map(|t| tok.encode(t))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let tokenize = t0.elapsed();
        self.inner
            .metrics
            .tokenize_duration
            .observe(tokenize.as_secs_f64());

        let row_wants = std::iter::once(wants).chain(extra_heads.iter().map(|hs| Wants {
            embedding: false,
            tasks: hs.iter().filter_map(|(_, id)| *id).collect(),
        }));
        // Rows that want nothing of the model (only recognizers) are not queued.
        let (mut rows, mut queued) = (Vec::new(), Vec::with_capacity(encs.len()));
        for (e, wants) in encs.iter().zip(row_wants) {
            let needed = wants.embedding || !wants.tasks.is_empty();
            queued.push(needed);
            if needed {
                rows.push(Row {
                    ids: e.ids.clone(),
                    type_ids: e.type_ids.clone(),
                    line_starts: e.line_starts.clone(),
                    wants,
                });
            }
        }
        let mut res = if rows.is_empty() {
            EntryResult {
                outputs: Vec::new(),
                queue: Duration::ZERO,
                inference: Duration::ZERO,
            }
        } else {
            self.submit(rows).await?
        };
        let mut model_outs = std::mem::take(&mut res.outputs).into_iter();
        let mut outs = queued.into_iter().map(|q| {
            if q {
                model_outs
                    .next()
                    .ok_or_else(|| missing_output("classify row"))
            } else {
                Ok(SequenceOutput::default())
            }
        });
        let out = outs
            .next()
            .unwrap_or_else(|| Ok(SequenceOutput::default()))?;
        let enc = &encs[0];
        let results = self.decode_heads(&out, heads, enc, &req.text)?;
        let mut extra_results = Vec::with_capacity(extra_heads.len());
        for ((x, hs), e) in req.extra_texts.iter().zip(extra_heads).zip(&encs[1..]) {
            let o = outs.next().ok_or_else(|| missing_output("extra text"))??;
            extra_results.push(ExtraResult {
                results: self.decode_heads(&o, hs, e, &x.text)?,
                input: InputInfo::from(e),
            });
        }
        let embedding = out.embedding;
        let similarities = match &embedding {
            Some(e) => sets
                .into_iter()
                .map(|(name, set)| (name, set.score(e, req.top_k)))
                .collect(),
            None => Vec::new(),
        };
        Ok(ClassifyResponse {
            results,
            embedding: if return_embedding { embedding } else { None },
            similarities,
            input: InputInfo::from(enc),
            timing: timing(&res, tokenize, started),
            extra_results,
        })
    }

    /// Validates the extra texts of a Classify call; returns each one's
    /// (task name, id) list, duplicates removed.
    fn check_extra_texts(&self, extras: &[ExtraText]) -> Result<Vec<Vec<HeadRef>>, InferError> {
        let max = self.inner.limits.max_batch_texts;
        if extras.len() > max {
            return Err(InferError::InvalidArgument {
                param: "extra_texts",
                message: format!("{} extra texts exceed the limit of {max}", extras.len()),
            });
        }
        let max_bytes = self.inner.limits.max_text_bytes;
        let mut all = Vec::with_capacity(extras.len());
        for (i, x) in extras.iter().enumerate() {
            let invalid = |param, message| InferError::InvalidArgument { param, message };
            if x.text.trim().is_empty() {
                return Err(invalid(
                    "extra_texts.text",
                    format!("extra_texts[{i}].text must not be empty"),
                ));
            }
            if x.text.len() > max_bytes {
                return Err(invalid(
                    "extra_texts.text",
                    format!(
                        "extra_texts[{i}].text: {} bytes exceed the limit of {max_bytes}",
                        x.text.len()
                    ),
                ));
            }
            if x.tasks.is_empty() {
                return Err(invalid(
                    "extra_texts.tasks",
                    format!("extra_texts[{i}] asks for no task"),
                ));
            }
            let mut heads: Vec<HeadRef> = Vec::with_capacity(x.tasks.len());
            for name in &x.tasks {
                if name == EMBEDDING {
                    return Err(invalid(
                        "extra_texts.tasks",
                        format!("extra_texts[{i}]: only head tasks, not `{EMBEDDING}`"),
                    ));
                }
                let id = self.resolve_head(name)?;
                if !heads.iter().any(|(_, h)| *h == id) {
                    heads.push((name.clone(), id));
                }
            }
            all.push(heads);
        }
        Ok(all)
    }

    /// A head task Classify can serve (sequence or token kind); `None` for
    /// `pii` without a trained head, served by its recognizers alone.
    fn resolve_head(&self, name: &str) -> Result<Option<TaskId>, InferError> {
        if name == pii::PII_TASK && !self.inner.by_name.contains_key(name) {
            return Ok(None);
        }
        self.resolve(
            name,
            "Classify",
            &[TaskKind::Sequence, TaskKind::Token],
            false,
        )
        .map(Some)
    }

    /// Turns one row's raw head outputs into task results.
    fn decode_heads(
        &self,
        out: &SequenceOutput,
        heads: Vec<HeadRef>,
        enc: &Encoded,
        text: &str,
    ) -> Result<Vec<(String, TaskOutput)>, InferError> {
        let mut results = Vec::with_capacity(heads.len());
        for (name, id) in heads {
            let Some(id) = id else {
                // `pii` without a head: the recognizers alone.
                results.push((name, TaskOutput::Entities(pii::union(text, Vec::new()))));
                continue;
            };
            let spec = &self.inner.tasks[id];
            let output = match head(out, id)? {
                HeadOutput::Sequence(logits) => {
                    TaskOutput::Sequence(decode::sequence(&spec.labels, &decode::softmax(logits)))
                }
                HeadOutput::Tokens { logits, num_labels } => {
                    let model = decode::token_entities(
                        &spec.labels,
                        logits,
                        *num_labels,
                        &enc.offsets,
                        text,
                    );
                    TaskOutput::Entities(if spec.name == pii::PII_TASK {
                        pii::union(text, model)
                    } else {
                        model
                    })
                }
            };
            results.push((name, output));
        }
        Ok(results)
    }

    async fn embed_inner(
        &self,
        texts: Vec<String>,
        started: Instant,
    ) -> Result<EmbedResponse, InferError> {
        self.check_count(texts.len(), "input")?;
        for t in &texts {
            self.check_text(t, "input")?;
        }
        let t0 = Instant::now();
        let bytes = texts.iter().map(String::len).sum();
        let owned = texts.clone();
        let encs = self
            .tokenize(bytes, move |tok| {
                owned
                    .iter()
                    .map(|t| tok.encode(t))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let tokenize = t0.elapsed();
        self.inner
            .metrics
            .tokenize_duration
            .observe(tokenize.as_secs_f64());
        let rows = encs
            .iter()
            .map(|e| Row {
                ids: e.ids.clone(),
                type_ids: e.type_ids.clone(),
                line_starts: e.line_starts.clone(),
                wants: Wants {
                    embedding: true,
                    tasks: vec![],
                },
            })
            .collect();
        let res = self.submit(rows).await?;
        let embeddings = res
            .outputs
            .iter()
            .zip(&encs)
            .map(|(o, e)| {
                o.embedding
                    .clone()
                    .map(|v| (v, InputInfo::from(e)))
                    .ok_or_else(|| missing_output("embedding"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EmbedResponse {
            embeddings,
            timing: timing(&res, tokenize, started),
        })
    }

    async fn register_inner(
        &self,
        sets: Vec<CandidateInput>,
        started: Instant,
    ) -> Result<(Vec<RegisteredSet>, Timing), InferError> {
        let limits = &self.inner.limits;
        if sets.is_empty() {
            return Err(InferError::EmptyInput { param: "sets" });
        }
        if sets.len() > limits.max_candidate_sets {
            return Err(InferError::InvalidArgument {
                param: "sets",
                message: format!(
                    "{} sets exceed the limit of {}",
                    sets.len(),
                    limits.max_candidate_sets
                ),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (name, cands) in &sets {
            if name.is_empty() {
                return Err(InferError::EmptyInput { param: "sets.name" });
            }
            if !names.insert(name) {
                return Err(InferError::InvalidArgument {
                    param: "sets.name",
                    message: format!("set `{name}` appears twice"),
                });
            }
            if cands.is_empty() || cands.len() > limits.max_candidates_per_set {
                return Err(InferError::InvalidArgument {
                    param: "sets.candidates",
                    message: format!(
                        "set `{name}` has {} candidates; allowed 1..={}",
                        cands.len(),
                        limits.max_candidates_per_set
                    ),
                });
            }
            let mut ids = std::collections::HashSet::new();
            for (id, text) in cands {
                if id.is_empty() {
                    return Err(InferError::EmptyInput {
                        param: "sets.candidates.id",
                    });
                }
                if !ids.insert(id) {
                    return Err(InferError::InvalidArgument {
                        param: "sets.candidates.id",
                        message: format!("id `{id}` appears twice in set `{name}`"),
                    });
                }
                self.check_text(text, "sets.candidates.text")?;
            }
        }
        let mut total = Timing::default();
        let mut embedded = Vec::with_capacity(sets.len());
        let mut registered = Vec::with_capacity(sets.len());
        for (name, cands) in sets {
            let dim = self.inner.info.hidden_size;
            let mut vectors = Vec::with_capacity(cands.len() * dim);
            let (ids, texts): (Vec<String>, Vec<String>) = cands.into_iter().unzip();
            for chunk in texts.chunks(limits.max_batch_texts) {
                let r = self.embed_inner(chunk.to_vec(), Instant::now()).await?;
                total.queue += r.timing.queue;
                total.tokenize += r.timing.tokenize;
                total.inference += r.timing.inference;
                r.embeddings
                    .into_iter()
                    .for_each(|(v, _)| vectors.extend(v));
            }
            registered.push(RegisteredSet {
                name: name.clone(),
                count: ids.len(),
                dimension: dim,
            });
            embedded.push((name, CandidateSetData { ids, dim, vectors }));
        }
        self.inner
            .candidates
            .insert_all(embedded, limits.max_candidate_sets)
            .map_err(|held| InferError::InvalidArgument {
                param: "sets",
                message: format!(
                    "the server already holds {held} sets; at most {} allowed",
                    limits.max_candidate_sets
                ),
            })?;
        total.total = started.elapsed();
        Ok((registered, total))
    }

    /// Tokenizes pairs into windows and runs them; returns, per pair, the
    /// window encodings and their outputs for `task`.
    async fn run_pairs(
        &self,
        task: TaskId,
        pairs: &[(String, String)],
    ) -> Result<(Vec<Vec<(Encoded, HeadOutput)>>, EntryResult, Duration), InferError> {
        self.check_count(pairs.len(), "pairs")?;
        for (a, b) in pairs {
            self.check_text(a, "pairs.first")?;
            self.check_text(b, "pairs.second")?;
        }
        let t0 = Instant::now();
        let bytes = pairs.iter().map(|(a, b)| a.len() + b.len()).sum();
        let owned = pairs.to_vec();
        let windows = self
            .tokenize(bytes, move |tok| {
                owned
                    .iter()
                    .map(|(a, b)| tok.encode_pair(a, b))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        let tokenize = t0.elapsed();
        self.inner
            .metrics
            .tokenize_duration
            .observe(tokenize.as_secs_f64());
        let rows = windows
            .iter()
            .flatten()
            .map(|e| Row {
                ids: e.ids.clone(),
                type_ids: e.type_ids.clone(),
                line_starts: e.line_starts.clone(),
                wants: Wants {
                    embedding: false,
                    tasks: vec![task],
                },
            })
            .collect();
        let mut res = self.submit(rows).await?;
        let mut outs = std::mem::take(&mut res.outputs).into_iter();
        let mut per_pair = Vec::with_capacity(windows.len());
        for ws in windows {
            let mut v = Vec::with_capacity(ws.len());
            for e in ws {
                let o = outs.next().ok_or_else(|| missing_output("pair window"))?;
                let h = head(&o, task)?.clone();
                v.push((e, h));
            }
            per_pair.push(v);
        }
        Ok((per_pair, res, tokenize))
    }

    async fn nli_inner(
        &self,
        task: &str,
        pairs: Vec<(String, String)>,
        started: Instant,
    ) -> Result<NliResponse, InferError> {
        let id = self.resolve(task, "Nli", &[TaskKind::Pair], true)?;
        let labels = &self.inner.tasks[id].labels;
        let (per_pair, res, tokenize) = self.run_pairs(id, &pairs).await?;
        let results = per_pair
            .into_iter()
            .map(|windows| {
                let mut mean = vec![0.0f32; labels.len()];
                for (_, h) in &windows {
                    if let HeadOutput::Sequence(l) = h {
                        decode::softmax(l)
                            .iter()
                            .zip(mean.iter_mut())
                            .for_each(|(p, m)| *m += p / windows.len() as f32);
                    }
                }
                decode::sequence(labels, &mean)
            })
            .collect();
        Ok(NliResponse {
            results,
            timing: timing(&res, tokenize, started),
        })
    }

    async fn tokens_inner(
        &self,
        task: &str,
        pairs: Vec<(String, String)>,
        started: Instant,
    ) -> Result<TokenLabelsResponse, InferError> {
        let id = self.resolve(task, "ClassifyTokens", &[TaskKind::PairToken], true)?;
        let labels = &self.inner.tasks[id].labels;
        let (per_pair, res, tokenize) = self.run_pairs(id, &pairs).await?;
        let mut results = Vec::with_capacity(per_pair.len());
        for ((_, answer), windows) in pairs.iter().zip(per_pair) {
            // Every window holds the same answer tokens; average their rows.
            let mut offsets: Vec<Option<(usize, usize)>> = Vec::new();
            let mut mean: Vec<Vec<f32>> = Vec::new();
            for (enc, h) in &windows {
                let HeadOutput::Tokens { logits, num_labels } = h else {
                    return Err(missing_output("token logits"));
                };
                let rows: Vec<(ByteSpan, Vec<f32>)> = enc
                    .offsets
                    .iter()
                    .zip(logits.chunks_exact(*num_labels))
                    .filter(|(o, _)| o.is_some())
                    .map(|(o, l)| (*o, decode::softmax(l)))
                    .collect();
                if mean.is_empty() {
                    offsets = rows.iter().map(|r| r.0).collect();
                    mean = vec![vec![0.0; *num_labels]; rows.len()];
                }
                for (m, (_, p)) in mean.iter_mut().zip(rows) {
                    m.iter_mut()
                        .zip(p)
                        .for_each(|(m, p)| *m += p / windows.len() as f32);
                }
            }
            results.push((
                decode::token_labels(labels, &mean, &offsets, answer),
                windows.len(),
            ));
        }
        Ok(TokenLabelsResponse {
            results,
            timing: timing(&res, tokenize, started),
        })
    }

    // --- helpers ------------------------------------------------------------

    /// Runs `f` on the tokenizer: inline for small inputs, on the blocking
    /// pool above [`INLINE_TOKENIZE_BYTES`] so long texts do not stall the
    /// async workers serving other calls.
    async fn tokenize<T: Send + 'static>(
        &self,
        bytes: usize,
        f: impl FnOnce(&Tokenization) -> Result<T, TokenizeError> + Send + 'static,
    ) -> Result<T, InferError> {
        if bytes <= INLINE_TOKENIZE_BYTES {
            return Ok(f(&self.inner.tokenization)?);
        }
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner.tokenization))
            .await
            .map_err(|e| TokenizeError(format!("tokenizer task failed: {e}")))?
            .map_err(InferError::from)
    }

    /// Admission + queueing: refuses at once when `max_concurrent_requests`
    /// calls are in flight.
    async fn submit(&self, rows: Vec<Row>) -> Result<EntryResult, InferError> {
        let permit = self
            .inner
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| InferError::Overloaded)?;
        let (reply, rx) = oneshot::channel();
        let entry = Entry {
            rows,
            enqueued: Instant::now(),
            span: tracing::Span::current(),
            reply,
            permit,
        };
        self.inner
            .queue
            .push(entry)
            .map_err(|_| InferError::ShuttingDown)?;
        rx.await.map_err(|_| InferError::ShuttingDown)?
    }

    fn resolve(
        &self,
        name: &str,
        rpc: &'static str,
        kinds: &[TaskKind],
        unimplemented_if_missing: bool,
    ) -> Result<TaskId, InferError> {
        if let Some(&id) = self.inner.by_name.get(name) {
            let kind = self.inner.tasks[id].kind;
            return if kinds.contains(&kind) {
                Ok(id)
            } else {
                Err(InferError::WrongKind {
                    task: name.into(),
                    kind: kind.as_str(),
                    rpc,
                })
            };
        }
        if CATALOGUE.iter().any(|(n, _)| *n == name) {
            let expected = self
                .inner
                .models_dir
                .join(name)
                .join(TASK_FILE)
                .display()
                .to_string();
            return Err(if unimplemented_if_missing {
                InferError::Unimplemented {
                    rpc,
                    task: name.into(),
                    expected,
                }
            } else {
                InferError::MissingHead {
                    task: name.into(),
                    expected,
                }
            });
        }
        Err(InferError::UnknownTask(name.into()))
    }

    fn check_text(&self, text: &str, param: &'static str) -> Result<(), InferError> {
        if text.trim().is_empty() {
            return Err(InferError::EmptyInput { param });
        }
        let max = self.inner.limits.max_text_bytes;
        if text.len() > max {
            return Err(InferError::InvalidArgument {
                param,
                message: format!("{} bytes exceed the limit of {max}", text.len()),
            });
        }
        Ok(())
    }

    fn check_count(&self, n: usize, param: &'static str) -> Result<(), InferError> {
        let max = self.inner.limits.max_batch_texts;
        if n == 0 {
            return Err(InferError::EmptyInput { param });
        }
        if n > max {
            return Err(InferError::InvalidArgument {
                param,
                message: format!("{n} inputs exceed the limit of {max} per call"),
            });
        }
        Ok(())
    }

    /// Metric label for a task name (bounded cardinality).
    fn task_label(&self, name: &str) -> String {
        if name == EMBEDDING
            || self.inner.by_name.contains_key(name)
            || CATALOGUE.iter().any(|(n, _)| *n == name)
        {
            name.to_string()
        } else {
            "other".to_string()
        }
    }

    fn observe<T>(
        &self,
        method: &str,
        tasks: &[String],
        result: &Result<T, InferError>,
        started: Instant,
    ) {
        let status = match result {
            Ok(_) => STATUS_OK,
            Err(e) => e.code(),
        };
        let m = &self.inner.metrics;
        m.requests.with_label_values(&[method, status]).inc();
        for t in tasks {
            m.task_requests
                .with_label_values(&[t.as_str(), status])
                .inc();
        }
        m.request_duration.observe(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            tracing::debug!(method, error = %e, "call failed");
        }
    }
}

fn head(out: &SequenceOutput, id: TaskId) -> Result<&HeadOutput, InferError> {
    out.heads
        .iter()
        .find(|(t, _)| *t == id)
        .map(|(_, h)| h)
        .ok_or_else(|| missing_output("task head"))
}

fn missing_output(what: &str) -> InferError {
    InferError::Backend(crate::sidecar::backend::BackendError::Inference(format!(
        "backend returned no {what} output (this is a bug)"
    )))
}

fn timing(res: &EntryResult, tokenize: Duration, started: Instant) -> Timing {
    Timing {
        queue: res.queue,
        tokenize,
        inference: res.inference,
        total: started.elapsed(),
    }
}
