//! Classification metrics from a confusion matrix.

use serde::Serialize;

/// `counts[true][predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    pub labels: Vec<String>,
    pub counts: Vec<Vec<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClassStats {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub examples: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassStats>,
    pub labels: Vec<String>,
    /// `confusion[true][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl Confusion {
    pub fn new(labels: Vec<String>) -> Self {
        let n = labels.len();
        Self {
            labels,
            counts: vec![vec![0; n]; n],
        }
    }

    pub fn add(&mut self, truth: usize, predicted: usize) {
        self.counts[truth][predicted] += 1;
    }

    pub fn total(&self) -> usize {
        self.counts.iter().flatten().sum()
    }

    pub fn accuracy(&self) -> f64 {
        let correct: usize = (0..self.labels.len()).map(|i| self.counts[i][i]).sum();
        ratio(correct, self.total())
    }

    /// Precision, recall, F1 per class (0 where undefined).
    pub fn per_class(&self) -> Vec<ClassStats> {
        let n = self.labels.len();
        (0..n)
            .map(|c| {
                let tp = self.counts[c][c];
                let predicted: usize = (0..n).map(|t| self.counts[t][c]).sum();
                let support: usize = self.counts[c].iter().sum();
                let (p, r) = (ratio(tp, predicted), ratio(tp, support));
                let f1 = if p + r > 0.0 {
                    2.0 * p * r / (p + r)
                } else {
                    0.0
                };
                ClassStats {
                    label: self.labels[c].clone(),
                    precision: p,
                    recall: r,
                    f1,
                    support,
                }
            })
            .collect()
    }

    /// Unweighted mean of the per-class F1 over classes with support.
    pub fn macro_f1(&self) -> f64 {
        let s: Vec<f64> = self
            .per_class()
            .into_iter()
            .filter(|c| c.support > 0)
            .map(|c| c.f1)
            .collect();
        if s.is_empty() {
            0.0
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        }
    }

    pub fn report(&self) -> Report {
        Report {
            examples: self.total(),
            accuracy: self.accuracy(),
            macro_f1: self.macro_f1(),
            per_class: self.per_class(),
            labels: self.labels.clone(),
            confusion: self.counts.clone(),
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl Report {
    /// Markdown tables: summary, per-class P/R/F1, confusion matrix.
    pub fn to_markdown(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "examples: {}, accuracy: {:.4}, macro-F1: {:.4}\n",
            self.examples, self.accuracy, self.macro_f1
        );
        let _ = writeln!(s, "| label | precision | recall | F1 | support |");
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for c in &self.per_class {
            let _ = writeln!(
                s,
                "| {} | {:.3} | {:.3} | {:.3} | {} |",
                c.label, c.precision, c.recall, c.f1, c.support
            );
        }
        let _ = writeln!(s, "\nconfusion matrix (rows: true, columns: predicted)\n");
        let short: Vec<String> = self.labels.iter().map(|l| abbrev(l)).collect();
        let _ = writeln!(s, "| true \\ pred | {} |", short.join(" | "));
        let _ = writeln!(s, "|---|{}", "---:|".repeat(short.len()));
        for (l, row) in self.labels.iter().zip(&self.confusion) {
            let cells: Vec<String> = row.iter().map(usize::to_string).collect();
            let _ = writeln!(s, "| {l} | {} |", cells.join(" | "));
        }
        s
    }
}

/// First four characters (column headers of the confusion table).
fn abbrev(l: &str) -> String {
    l.chars().take(4).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_made_confusion() {
        // true a: 3 right, 1 as b; true b: 2 right; true c: 1 as b, 0 right.
        let mut c = Confusion::new(vec!["a".into(), "b".into(), "c".into()]);
        for (t, p) in [(0, 0), (0, 0), (0, 0), (0, 1), (1, 1), (1, 1), (2, 1)] {
            c.add(t, p);
        }
        assert_eq!(c.total(), 7);
        assert!((c.accuracy() - 5.0 / 7.0).abs() < 1e-12);
        let pc = c.per_class();
        // a: P 3/3, R 3/4, F1 6/7; b: P 2/4, R 1, F1 2/3; c: 0.
        assert!((pc[0].precision - 1.0).abs() < 1e-12);
        assert!((pc[0].recall - 0.75).abs() < 1e-12);
        assert!((pc[1].precision - 0.5).abs() < 1e-12);
        assert!((pc[1].recall - 1.0).abs() < 1e-12);
        assert_eq!(pc[2].f1, 0.0);
        let expect = (6.0 / 7.0 + 2.0 / 3.0 + 0.0) / 3.0;
        assert!((c.macro_f1() - expect).abs() < 1e-12);
        let md = c.report().to_markdown();
        assert!(md.contains("| a | 3 | 1 | 0 |"), "{md}");
    }

    #[test]
    fn empty_is_zero_not_nan() {
        let c = Confusion::new(vec!["a".into(), "b".into()]);
        assert_eq!(c.accuracy(), 0.0);
        assert_eq!(c.macro_f1(), 0.0);
    }
}
