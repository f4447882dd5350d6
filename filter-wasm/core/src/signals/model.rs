//! Model-backed signals: which sidecar tasks and candidate sets the config's decisions
//! need, and how one `Classify` answer turns into signal scores.
//!
//! Matching rules (documented in docs/CONFIG.md):
//! * `domains`: the `domain` task's label, when its probability reaches
//!   `classifier.domain_threshold`, fires every domain whose `mmlu_categories` (default: its
//!   own name) contain it.
//! * `embeddings`: cosine similarity of the prompt to each candidate, aggregated per signal
//!   (`max`, `mean`, or `any` = max), fires at or above the signal's threshold.
//! * `fact_check` / `user_feedbacks`: the task's label fires the signal of the same name.
//! * `preferences`: the preference whose description is most similar to the prompt fires,
//!   if the similarity reaches `classifier.preference_threshold`.

use std::collections::HashSet;

use sha2::{Digest, Sha256};
use vsr_proto::v1 as pb;

use crate::config::{
    normalize_category, Aggregation, ClassifierThresholds, Condition, RuleGroup, SignalKind,
    UserConfig,
};
use crate::signals::SignalSet;

/// Sidecar task names.
pub mod task {
    pub const DOMAIN: &str = "domain";
    pub const FACT_CHECK: &str = "fact_check";
    pub const FEEDBACK: &str = "feedback";
    pub const JAILBREAK: &str = "jailbreak";
    pub const PII: &str = "pii";
    pub const EMBEDDING: &str = "embedding";
}

#[derive(Debug)]
struct EmbeddingRule {
    threshold: f32,
    aggregation: Aggregation,
}

/// The compiled model-signal part of a config.
#[derive(Debug)]
pub struct ModelSignals {
    used: HashSet<SignalKind>,
    /// Normalised categories per domain signal.
    domains: Vec<Vec<String>>,
    embeddings: Vec<EmbeddingRule>,
    fact_check: Vec<String>,
    user_feedbacks: Vec<String>,
    preferences: usize,
    thresholds: ClassifierThresholds,
    /// Candidate set names; they carry a hash of their texts so a changed config never
    /// scores against a stale set.
    pub embedding_set: Option<String>,
    pub preference_set: Option<String>,
    register: Option<pb::RegisterCandidatesRequest>,
}

/// What one `Classify` answer told, besides signal scores.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFacts {
    /// The domain label, when it reached the threshold.
    pub category: Option<String>,
}

fn collect_kinds(g: &RuleGroup, out: &mut HashSet<SignalKind>) {
    for c in &g.conditions {
        match c {
            Condition::Signal { kind, .. } => {
                out.insert(*kind);
            }
            Condition::Group(inner) => collect_kinds(inner, out),
        }
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl ModelSignals {
    pub fn compile(cfg: &UserConfig) -> ModelSignals {
        let mut used = HashSet::new();
        for d in &cfg.decisions {
            collect_kinds(&d.rules, &mut used);
        }
        let s = &cfg.signals;
        let domains = s
            .domains
            .iter()
            .map(|d| match &d.mmlu_categories {
                Some(c) => c.iter().map(|c| normalize_category(c)).collect(),
                None => vec![normalize_category(&d.name)],
            })
            .collect();

        let mut sets = Vec::new();
        let embedding_set = (used.contains(&SignalKind::Embedding) && !s.embeddings.is_empty())
            .then(|| {
                let candidates: Vec<pb::Candidate> = s
                    .embeddings
                    .iter()
                    .enumerate()
                    .flat_map(|(i, e)| {
                        e.candidates
                            .iter()
                            .enumerate()
                            .map(move |(j, text)| pb::Candidate {
                                id: format!("{i}:{j}"),
                                text: text.clone(),
                            })
                    })
                    .collect();
                let texts: Vec<&str> = candidates
                    .iter()
                    .flat_map(|c| [c.id.as_str(), c.text.as_str()])
                    .collect();
                let name = format!("vsr-embeddings-{}", short_hash(&texts));
                sets.push(pb::CandidateSet {
                    name: name.clone(),
                    candidates,
                });
                name
            });
        let preference_set = (used.contains(&SignalKind::Preference) && !s.preferences.is_empty())
            .then(|| {
                let candidates: Vec<pb::Candidate> = s
                    .preferences
                    .iter()
                    .enumerate()
                    .map(|(i, p)| pb::Candidate {
                        id: i.to_string(),
                        text: p.description.clone().unwrap_or_else(|| p.name.clone()),
                    })
                    .collect();
                let texts: Vec<&str> = candidates.iter().map(|c| c.text.as_str()).collect();
                let name = format!("vsr-preferences-{}", short_hash(&texts));
                sets.push(pb::CandidateSet {
                    name: name.clone(),
                    candidates,
                });
                name
            });

        ModelSignals {
            used,
            domains,
            embeddings: s
                .embeddings
                .iter()
                .map(|e| EmbeddingRule {
                    threshold: e.threshold,
                    aggregation: e.aggregation_method,
                })
                .collect(),
            fact_check: s.fact_check.iter().map(|f| f.name.clone()).collect(),
            user_feedbacks: s.user_feedbacks.iter().map(|f| f.name.clone()).collect(),
            preferences: s.preferences.len(),
            thresholds: cfg.classifier.clone(),
            embedding_set,
            preference_set,
            register: (!sets.is_empty()).then_some(pb::RegisterCandidatesRequest { sets }),
        }
    }

    /// Head tasks the decisions need on the prompt (no guards, no embedding).
    pub fn tasks(&self) -> Vec<&'static str> {
        let mut t = Vec::new();
        if self.used.contains(&SignalKind::Domain) {
            t.push(task::DOMAIN);
        }
        if self.used.contains(&SignalKind::FactCheck) {
            t.push(task::FACT_CHECK);
        }
        if self.used.contains(&SignalKind::UserFeedback) {
            t.push(task::FEEDBACK);
        }
        t
    }

    /// Candidate sets to score the prompt against.
    pub fn candidate_sets(&self) -> Vec<String> {
        self.embedding_set
            .iter()
            .chain(self.preference_set.iter())
            .cloned()
            .collect()
    }

    /// The `RegisterCandidates` call this config needs, if any.
    pub fn register_request(&self) -> Option<&pb::RegisterCandidatesRequest> {
        self.register.as_ref()
    }

    /// Fills the model-backed lists of `set` from a `Classify` answer.
    pub fn evaluate(&self, resp: &pb::ClassifyResponse, set: &mut SignalSet) -> ModelFacts {
        let mut facts = ModelFacts::default();
        set.domains = vec![0.0; self.domains.len()];
        set.embeddings = vec![0.0; self.embeddings.len()];
        set.fact_check = vec![0.0; self.fact_check.len()];
        set.user_feedbacks = vec![0.0; self.user_feedbacks.len()];
        set.preferences = vec![0.0; self.preferences];
        let t = &self.thresholds;

        for r in &resp.results {
            let Some(pb::task_result::Output::Sequence(seq)) = &r.output else {
                continue;
            };
            match r.task.as_str() {
                task::DOMAIN if seq.confidence >= t.domain_threshold => {
                    let label = normalize_category(&seq.label);
                    for (i, cats) in self.domains.iter().enumerate() {
                        if cats.contains(&label) {
                            set.domains[i] = seq.confidence;
                        }
                    }
                    facts.category = Some(label);
                }
                task::FACT_CHECK if seq.confidence >= t.fact_check_threshold => fire_by_label(
                    &self.fact_check,
                    &seq.label,
                    seq.confidence,
                    &mut set.fact_check,
                ),
                task::FEEDBACK if seq.confidence >= t.user_feedback_threshold => fire_by_label(
                    &self.user_feedbacks,
                    &seq.label,
                    seq.confidence,
                    &mut set.user_feedbacks,
                ),
                _ => {}
            }
        }

        for sim in &resp.similarities {
            if Some(&sim.set) == self.embedding_set.as_ref() {
                let mut per_signal: Vec<Vec<f32>> = vec![Vec::new(); self.embeddings.len()];
                for c in &sim.scores {
                    let signal =
                        c.id.split_once(':')
                            .and_then(|(i, _)| i.parse::<usize>().ok());
                    if let Some(v) = signal.and_then(|i| per_signal.get_mut(i)) {
                        v.push(c.score);
                    }
                }
                for (i, (rule, scores)) in self.embeddings.iter().zip(&per_signal).enumerate() {
                    if scores.is_empty() {
                        continue;
                    }
                    let score = match rule.aggregation {
                        Aggregation::Max | Aggregation::Any => {
                            scores.iter().copied().fold(f32::MIN, f32::max)
                        }
                        Aggregation::Mean => scores.iter().sum::<f32>() / scores.len() as f32,
                    };
                    if score >= rule.threshold {
                        set.embeddings[i] = score.clamp(f32::MIN_POSITIVE, 1.0);
                    }
                }
            } else if Some(&sim.set) == self.preference_set.as_ref() {
                // Scores come best first: only the best preference can fire.
                if let Some(best) = sim.scores.first() {
                    if best.score >= t.preference_threshold {
                        if let Some(slot) = best
                            .id
                            .parse::<usize>()
                            .ok()
                            .and_then(|i| set.preferences.get_mut(i))
                        {
                            *slot = best.score.clamp(f32::MIN_POSITIVE, 1.0);
                        }
                    }
                }
            }
        }
        facts
    }
}

fn fire_by_label(names: &[String], label: &str, confidence: f32, out: &mut [f32]) {
    for (i, n) in names.iter().enumerate() {
        if n.eq_ignore_ascii_case(label) {
            out[i] = confidence;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
signals:
  domains:
    - {name: science, mmlu_categories: [physics, biology]}
    - {name: law}
  embeddings:
    - {name: billing, threshold: 0.6, candidates: ["refund my order", "invoice question"]}
    - {name: avg, threshold: 0.5, aggregation_method: mean, candidates: ["a", "b"]}
  fact_check: [{name: needs_fact_check}]
  preferences:
    - {name: terse, description: "short answers"}
    - {name: verbose, description: "long detailed answers"}
decisions:
  - name: d
    rules:
      operator: OR
      conditions:
        - {type: domain, name: science}
        - {type: domain, name: law}
        - {type: embedding, name: billing}
        - {type: embedding, name: avg}
        - {type: fact_check, name: needs_fact_check}
        - {type: preference, name: terse}
    modelRefs: [{model: m}]
providers:
  models: [{name: m, endpoints: [{endpoint: "127.0.0.1:1"}]}]
"#;

    fn seq(task: &str, label: &str, confidence: f32) -> pb::TaskResult {
        pb::TaskResult {
            task: task.into(),
            output: Some(pb::task_result::Output::Sequence(
                pb::SequenceClassification {
                    label: label.into(),
                    confidence,
                    scores: vec![],
                },
            )),
        }
    }

    fn score(id: &str, score: f32) -> pb::CandidateScore {
        pb::CandidateScore {
            id: id.into(),
            index: 0,
            score,
        }
    }

    #[test]
    fn tasks_and_sets_follow_the_decisions() {
        let cfg = UserConfig::from_yaml("t", CFG).unwrap();
        let m = ModelSignals::compile(&cfg);
        assert_eq!(m.tasks(), vec!["domain", "fact_check"]);
        let sets = m.candidate_sets();
        assert_eq!(sets.len(), 2);
        assert!(sets[0].starts_with("vsr-embeddings-"));
        let reg = m.register_request().unwrap();
        assert_eq!(reg.sets[0].candidates.len(), 4);
        assert_eq!(reg.sets[0].candidates[2].id, "1:0");
        assert_eq!(reg.sets[1].candidates[1].text, "long detailed answers");

        // A config whose decisions use only keywords needs nothing.
        let only_kw = format!(
            "signals:\n  keywords: [{{name: k, operator: OR, keywords: [x]}}]\n  domains: [{{name: law}}]\n{}",
            &CFG[CFG.find("decisions:").unwrap()..]
                .replace(
                    "        - {type: domain, name: science}\n        - {type: domain, name: law}\n        - {type: embedding, name: billing}\n        - {type: embedding, name: avg}\n        - {type: fact_check, name: needs_fact_check}\n        - {type: preference, name: terse}\n",
                    "        - {type: keyword, name: k}\n",
                )
        );
        let m = ModelSignals::compile(&UserConfig::from_yaml("t", &only_kw).unwrap());
        assert!(m.tasks().is_empty());
        assert!(m.candidate_sets().is_empty());
        assert!(m.register_request().is_none());
    }

    #[test]
    fn answers_become_scores() {
        let cfg = UserConfig::from_yaml("t", CFG).unwrap();
        let m = ModelSignals::compile(&cfg);
        let resp = pb::ClassifyResponse {
            results: vec![
                seq("domain", "Physics", 0.8),
                seq("fact_check", "needs_fact_check", 0.9),
            ],
            similarities: vec![
                pb::SimilarityResult {
                    set: m.embedding_set.clone().unwrap(),
                    scores: vec![
                        score("0:1", 0.7),
                        score("0:0", 0.2),
                        score("1:0", 0.6),
                        score("1:1", 0.3),
                    ],
                },
                pb::SimilarityResult {
                    set: m.preference_set.clone().unwrap(),
                    scores: vec![score("1", 0.5), score("0", 0.45)],
                },
            ],
            ..Default::default()
        };
        let mut set = SignalSet::default();
        let facts = m.evaluate(&resp, &mut set);
        assert_eq!(facts.category.as_deref(), Some("physics"));
        assert_eq!(set.domains, vec![0.8, 0.0]);
        // billing: max 0.7 ≥ 0.6 fires; avg: mean 0.45 < 0.5 does not.
        assert_eq!(set.embeddings, vec![0.7, 0.0]);
        assert_eq!(set.fact_check, vec![0.9]);
        // Only the best preference can fire.
        assert_eq!(set.preferences, vec![0.0, 0.5]);

        // Below the domain threshold the label neither fires nor is reported.
        let low = pb::ClassifyResponse {
            results: vec![seq("domain", "law", 0.1)],
            ..Default::default()
        };
        let facts = m.evaluate(&low, &mut set);
        assert_eq!(facts.category, None);
        assert_eq!(set.domains, vec![0.0, 0.0]);
    }
}
