//! Signals extracted from a request, indexed like the config's signal lists so the
//! decision engine reads them by position, not by name.

pub mod keyword;

use crate::config::SignalKind;

/// Which signals fired for one request, with a confidence per signal in [0, 1].
#[derive(Debug, Clone, Default)]
pub struct SignalSet {
    /// Per keyword rule (config order): matched or not.
    pub keywords: Vec<bool>,
}

impl SignalSet {
    /// Confidence that signal `index` of `kind` holds: 1 or 0 for keyword rules.
    pub fn score(&self, kind: SignalKind, index: usize) -> f32 {
        match kind {
            SignalKind::Keyword if self.keywords.get(index).copied().unwrap_or(false) => 1.0,
            // Model-backed signals are refused by validation until the sidecar is wired in.
            _ => 0.0,
        }
    }
}
