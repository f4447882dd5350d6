//! Signals extracted from a request, indexed like the config's signal lists so the
//! decision engine reads them by position, not by name.

pub mod keyword;
pub mod model;

use crate::config::SignalKind;

/// Which signals fired for one request, with a confidence per signal in [0, 1].
/// Model-backed lists are empty when the sidecar was not asked (or could not answer):
/// their signals then read as not matched.
#[derive(Debug, Clone, Default)]
pub struct SignalSet {
    /// Per keyword rule (config order): matched or not.
    pub keywords: Vec<bool>,
    /// Per `signals.domains` entry: the classifier's confidence when its label maps here.
    pub domains: Vec<f32>,
    /// Per `signals.embeddings` entry: the aggregated similarity when at or above threshold.
    pub embeddings: Vec<f32>,
    pub fact_check: Vec<f32>,
    pub user_feedbacks: Vec<f32>,
    /// Per `signals.preferences` entry: the similarity of the best-matching preference only.
    pub preferences: Vec<f32>,
}

impl SignalSet {
    /// Confidence that signal `index` of `kind` holds (0 = it does not).
    pub fn score(&self, kind: SignalKind, index: usize) -> f32 {
        let list = match kind {
            SignalKind::Keyword => {
                return if self.keywords.get(index).copied().unwrap_or(false) {
                    1.0
                } else {
                    0.0
                }
            }
            SignalKind::Domain => &self.domains,
            SignalKind::Embedding => &self.embeddings,
            SignalKind::FactCheck => &self.fact_check,
            SignalKind::UserFeedback => &self.user_feedbacks,
            SignalKind::Preference => &self.preferences,
        };
        list.get(index).copied().unwrap_or(0.0)
    }

    /// Names of the signals of `kind` that fired, comma-separated (None when none did).
    pub fn matched(&self, kind: SignalKind, names: &[String]) -> Option<String> {
        let hits: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| self.score(kind, *i) > 0.0)
            .map(|(_, n)| n.as_str())
            .collect();
        (!hits.is_empty()).then(|| hits.join(","))
    }
}
