//! The request queue and the backend thread.
//!
//! Requests wait in a FIFO. The single backend thread takes, each time it is
//! free, whatever waits (up to a token budget): batches form from the
//! requests that arrived while the previous batch ran, with no linger timer.
//! Inside a batch, rows are sorted by length and cut into forward passes
//! padded to their own longest row, each within `max_forward_tokens`.
//! Entries whose caller went away are dropped before any compute.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, OwnedSemaphorePermit};

use crate::sidecar::backend::{Backend, Batch, SequenceOutput, Wants};
use crate::sidecar::error::InferError;
use crate::sidecar::metrics::Metrics;

/// One model input row of a request.
#[derive(Debug, Clone)]
pub struct Row {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// [`crate::sidecar::tokenize::Encoded::line_starts`].
    pub line_starts: Vec<u32>,
    pub wants: Wants,
}

/// What the backend thread sends back for one entry.
#[derive(Debug)]
pub struct EntryResult {
    /// One per row, in order.
    pub outputs: Vec<SequenceOutput>,
    pub queue: Duration,
    pub inference: Duration,
}

pub type Reply = Result<EntryResult, InferError>;

/// A queued request: its rows and where to send the answer.
pub struct Entry {
    pub rows: Vec<Row>,
    pub enqueued: Instant,
    pub span: tracing::Span,
    pub reply: oneshot::Sender<Reply>,
    /// Held until the entry is answered or dropped (backpressure).
    pub permit: OwnedSemaphorePermit,
}

impl Entry {
    fn tokens(&self) -> usize {
        self.rows.iter().map(|r| r.ids.len()).sum()
    }
}

/// Batch sizes, all in tokens or rows.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most (unpadded) tokens taken from the queue for one batch.
    pub max_batch_tokens: usize,
    /// Most padded tokens (rows × longest row) in one forward pass.
    pub max_forward_tokens: usize,
    /// Most rows in one forward pass.
    pub max_forward_rows: usize,
}

struct State {
    entries: VecDeque<Entry>,
    closed: bool,
}

pub struct Queue {
    state: Mutex<State>,
    ready: Condvar,
    limits: BatchLimits,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(limits: BatchLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            state: Mutex::new(State {
                entries: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            limits,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent
        // (push/pop are single operations), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enqueues; gives the entry back when the queue is closed.
    pub fn push(&self, entry: Entry) -> Result<(), Box<Entry>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Box::new(entry));
        }
        s.entries.push_back(entry);
        self.metrics.queue_depth.set(s.entries.len() as i64);
        drop(s);
        self.ready.notify_one();
        Ok(())
    }

    /// Stops accepting entries; the backend thread drains what is queued.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Blocks until something waits; takes entries up to the token budget
    /// (always at least one). `None` once closed and drained.
    fn next_batch(&self) -> Option<Vec<Entry>> {
        let mut s = self.lock();
        while s.entries.is_empty() {
            if s.closed {
                return None;
            }
            s = self.ready.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        let mut batch = Vec::new();
        let mut tokens = 0;
        while let Some(e) = s.entries.front() {
            if e.reply.is_closed() {
                // The caller went away: never compute for it.
                s.entries.pop_front();
                self.metrics.cancelled.inc();
                continue;
            }
            let t = e.tokens();
            if !batch.is_empty() && tokens + t > self.limits.max_batch_tokens {
                break;
            }
            tokens += t;
            batch.extend(s.entries.pop_front());
        }
        self.metrics.queue_depth.set(s.entries.len() as i64);
        Some(batch)
    }
}

/// The backend thread's loop: runs until the queue is closed and drained.
pub fn backend_loop(backend: Box<dyn Backend>, queue: Arc<Queue>) {
    let limits = queue.limits;
    let metrics = queue.metrics.clone();
    while let Some(entries) = queue.next_batch() {
        if entries.is_empty() {
            continue;
        }
        let started = Instant::now();
        // (entry, row) of every row, sorted by length for tight padding.
        let mut order: Vec<(usize, usize)> = entries
            .iter()
            .enumerate()
            .flat_map(|(e, en)| (0..en.rows.len()).map(move |r| (e, r)))
            .collect();
        order.sort_by_key(|&(e, r)| entries[e].rows[r].ids.len());
        let mut outputs: Vec<Vec<Option<SequenceOutput>>> =
            entries.iter().map(|e| vec![None; e.rows.len()]).collect();
        let mut failed: Vec<Option<String>> = vec![None; entries.len()];

        let mut i = 0;
        while i < order.len() {
            let mut j = i + 1;
            while j < order.len() {
                let (e, r) = order[j];
                let len = entries[e].rows[r].ids.len();
                if j + 1 - i > limits.max_forward_rows
                    || (j + 1 - i) * len > limits.max_forward_tokens
                {
                    break;
                }
                j += 1;
            }
            let chunk = &order[i..j];
            let batch = Batch::from_rows(chunk.iter().map(|&(e, r)| {
                let row = &entries[e].rows[r];
                (
                    &row.ids[..],
                    &row.type_ids[..],
                    &row.line_starts[..],
                    row.wants.clone(),
                )
            }));
            let t0 = Instant::now();
            let result = {
                let _span = entries[chunk[0].0].span.enter();
                backend.forward(&batch)
            };
            metrics
                .inference_duration
                .observe(t0.elapsed().as_secs_f64());
            metrics.batch_size.observe(batch.size() as f64);
            metrics
                .batch_tokens
                .observe((batch.size() * batch.max_len) as f64);
            match result {
                Ok(outs) if outs.len() == chunk.len() => {
                    for (&(e, r), o) in chunk.iter().zip(outs) {
                        outputs[e][r] = Some(o);
                    }
                }
                Ok(outs) => {
                    let msg = format!(
                        "backend returned {} rows for {} (this is a bug)",
                        outs.len(),
                        chunk.len()
                    );
                    chunk
                        .iter()
                        .for_each(|&(e, _)| failed[e] = Some(msg.clone()));
                }
                Err(err) => {
                    tracing::error!(error = %err, "forward pass failed");
                    chunk
                        .iter()
                        .for_each(|&(e, _)| failed[e] = Some(err.to_string()));
                }
            }
            i = j;
        }
        let inference = started.elapsed();
        for ((entry, outs), fail) in entries.into_iter().zip(outputs).zip(failed) {
            let queue_time = started.saturating_duration_since(entry.enqueued);
            metrics.queue_duration.observe(queue_time.as_secs_f64());
            let reply = match fail {
                Some(msg) => Err(InferError::Backend(
                    crate::sidecar::backend::BackendError::Inference(msg),
                )),
                None => Ok(EntryResult {
                    outputs: outs.into_iter().flatten().collect(),
                    queue: queue_time,
                    inference,
                }),
            };
            // The caller may have gone away meanwhile; nothing to do then.
            let _ = entry.reply.send(reply);
            drop(entry.permit);
        }
    }
    tracing::info!("backend thread stopped: queue closed and drained");
}
