//! `vsr train` / `vsr eval`: fine-tuning task heads (LoRA on the top
//! encoder layers + a linear head) and evaluating them through the sidecar's
//! own task loading. First slice: sequence-classification tasks (`domain`).
//!
//! * [`data`] — dataset discovery, label mapping, seeded stratified split
//!   (readers: [`csv`]; templated `feedback` replies: [`feedback_templates`]);
//! * [`metrics`] — confusion matrix, accuracy, macro-F1, per-class P/R;
//! * [`trainer`] — frozen-feature cache, train loop, task writer;
//! * [`evaluate`] — scores a task directory through `CandleBackend`;
//! * [`card`] — `model-card.md`;
//! * [`ensemble`] — joins trained runs into one averaged task;
//! * [`checked`] — hand-checked evaluation samples for proxy-labelled tasks.

pub mod card;
pub mod checked;
pub mod csv;
pub mod data;
pub mod ensemble;
pub mod evaluate;
pub mod feedback_templates;
pub mod hallucination_data;
pub mod metrics;
pub mod pii_synth;
pub mod token;
pub mod token_data;
pub mod trainer;

/// Deterministic SplitMix64 generator: splits, shuffles and weight inits
/// depend only on `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.next_f64().max(1e-12);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Fisher-Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
