//! The decision engine: each decision's rule tree evaluated over the signal set, then one
//! decision picked by the configured strategy.
//!
//! Ties: under `priority` the higher priority wins and equal priorities go to the
//! decision written first in the file; under `confidence` the higher fraction of
//! satisfied conditions wins and equal fractions go to the decision written first.

use crate::config::{Condition, RuleGroup, RuleOperator, SignalKind, Strategy};
use crate::signals::SignalSet;

/// A rule tree whose leaves point at signals by index.
#[derive(Debug, Clone)]
pub enum Rule {
    Signal {
        kind: SignalKind,
        index: usize,
    },
    And(Vec<Rule>),
    Or(Vec<Rule>),
    /// None of the children holds.
    Not(Vec<Rule>),
}

impl Rule {
    /// Resolves signal names to indexes; `lookup` returns None for an unknown signal.
    pub fn compile(
        g: &RuleGroup,
        lookup: &dyn Fn(SignalKind, &str) -> Option<usize>,
    ) -> Option<Rule> {
        let children = g
            .conditions
            .iter()
            .map(|c| match c {
                Condition::Signal { kind, name } => {
                    lookup(*kind, name).map(|index| Rule::Signal { kind: *kind, index })
                }
                Condition::Group(inner) => Rule::compile(inner, lookup),
            })
            .collect::<Option<Vec<_>>>()?;
        Some(match g.operator {
            RuleOperator::AND => Rule::And(children),
            RuleOperator::OR => Rule::Or(children),
            RuleOperator::NOT => Rule::Not(children),
        })
    }

    pub fn eval(&self, s: &SignalSet) -> bool {
        match self {
            Rule::Signal { kind, index } => s.score(*kind, *index) > 0.0,
            Rule::And(c) => c.iter().all(|r| r.eval(s)),
            Rule::Or(c) => c.iter().any(|r| r.eval(s)),
            Rule::Not(c) => !c.iter().any(|r| r.eval(s)),
        }
    }

    /// Fraction of leaf conditions satisfied (a leaf under NOT is satisfied when it is false),
    /// each leaf weighted by its signal's confidence.
    pub fn confidence(&self, s: &SignalSet) -> f32 {
        let (satisfied, total) = self.tally(s, false);
        if total == 0 {
            0.0
        } else {
            satisfied / total as f32
        }
    }

    fn tally(&self, s: &SignalSet, negated: bool) -> (f32, usize) {
        match self {
            Rule::Signal { kind, index } => {
                let score = s.score(*kind, *index);
                (if negated { 1.0 - score } else { score }, 1)
            }
            Rule::And(c) | Rule::Or(c) => sum(c.iter().map(|r| r.tally(s, negated))),
            Rule::Not(c) => sum(c.iter().map(|r| r.tally(s, !negated))),
        }
    }
}

fn sum(it: impl Iterator<Item = (f32, usize)>) -> (f32, usize) {
    it.fold((0.0, 0), |(a, n), (b, m)| (a + b, n + m))
}

/// What the engine needs of a decision.
#[derive(Debug, Clone)]
pub struct DecisionRule {
    pub priority: i64,
    pub rule: Rule,
}

/// The winner: its index in the config and its confidence.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Selected {
    pub index: usize,
    pub confidence: f32,
}

/// Picks one matching decision, or None when no rule holds.
pub fn select(
    decisions: &[DecisionRule],
    strategy: Strategy,
    signals: &SignalSet,
) -> Option<Selected> {
    let mut best: Option<(Selected, i64)> = None;
    for (index, d) in decisions.iter().enumerate() {
        if !d.rule.eval(signals) {
            continue;
        }
        let candidate = Selected {
            index,
            confidence: d.rule.confidence(signals),
        };
        // Strictly better only: an equal candidate later in the file never displaces an earlier one.
        let better = match &best {
            None => true,
            Some((b, bp)) => match strategy {
                Strategy::Priority => d.priority > *bp,
                Strategy::Confidence => candidate.confidence > b.confidence,
            },
        };
        if better {
            best = Some((candidate, d.priority));
        }
    }
    best.map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw(i: usize) -> Rule {
        Rule::Signal {
            kind: SignalKind::Keyword,
            index: i,
        }
    }

    fn signals(bits: &[bool]) -> SignalSet {
        SignalSet {
            keywords: bits.to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn and_or_not_and_nesting() {
        let s = signals(&[true, false, true]);
        assert!(Rule::And(vec![kw(0), kw(2)]).eval(&s));
        assert!(!Rule::And(vec![kw(0), kw(1)]).eval(&s));
        assert!(Rule::Or(vec![kw(1), kw(2)]).eval(&s));
        assert!(!Rule::Or(vec![kw(1)]).eval(&s));
        assert!(Rule::Not(vec![kw(1)]).eval(&s));
        assert!(!Rule::Not(vec![kw(1), kw(2)]).eval(&s));
        // 0 AND (1 OR NOT 1)
        assert!(Rule::And(vec![kw(0), Rule::Or(vec![kw(1), Rule::Not(vec![kw(1)])])]).eval(&s));
    }

    #[test]
    fn confidence_is_fraction_of_satisfied_leaves() {
        let s = signals(&[true, false, false]);
        assert_eq!(
            Rule::Or(vec![kw(0), kw(1), kw(2)]).confidence(&s),
            1.0 / 3.0
        );
        assert_eq!(
            Rule::And(vec![kw(0), Rule::Not(vec![kw(1)])]).confidence(&s),
            1.0
        );
    }

    #[test]
    fn priority_picks_highest_then_first_in_file() {
        let s = signals(&[true, true]);
        let d = vec![
            DecisionRule {
                priority: 10,
                rule: kw(0),
            },
            DecisionRule {
                priority: 20,
                rule: kw(1),
            },
            DecisionRule {
                priority: 20,
                rule: kw(0),
            },
        ];
        assert_eq!(select(&d, Strategy::Priority, &s).unwrap().index, 1);
    }

    #[test]
    fn confidence_picks_best_fraction_then_first_in_file() {
        let s = signals(&[true, false, true]);
        let d = vec![
            DecisionRule {
                priority: 100,
                rule: Rule::Or(vec![kw(0), kw(1)]),
            }, // 0.5
            DecisionRule {
                priority: 1,
                rule: Rule::And(vec![kw(0), kw(2)]),
            }, // 1.0
            DecisionRule {
                priority: 1,
                rule: Rule::Or(vec![kw(2)]),
            }, // 1.0, later
        ];
        let got = select(&d, Strategy::Confidence, &s).unwrap();
        assert_eq!((got.index, got.confidence), (1, 1.0));
        assert_eq!(select(&d, Strategy::Priority, &s).unwrap().index, 0);
    }

    #[test]
    fn no_match_selects_nothing() {
        let s = signals(&[false]);
        let d = vec![DecisionRule {
            priority: 1,
            rule: kw(0),
        }];
        assert_eq!(select(&d, Strategy::Priority, &s), None);
    }
}
