//! Training data: where a task's data lives under `--data`, how raw records
//! become labels, and the seeded split.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::Rng;

/// The 14 MMLU-Pro categories, as labels (spaces → `_`), sorted: the same list the
/// config's `domains[].mmlu_categories` are checked against.
pub use router_core::config::MMLU_PRO_CATEGORIES as DOMAIN_LABELS;

/// File of the `domain` task inside its data folder.
pub const DOMAIN_FILE: &str = "mmlu_pro.jsonl";

/// Maps an MMLU-Pro `category` to its label: lower-cased, trimmed, spaces
/// to `_` ("computer science" → `computer_science`); `None` if it is not
/// one of [`DOMAIN_LABELS`].
pub fn domain_label(category: &str) -> Option<&'static str> {
    let norm = router_core::config::normalize_category(category);
    DOMAIN_LABELS.iter().copied().find(|l| *l == norm)
}

/// One labelled text.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text: String,
    /// Index into [`Dataset::labels`].
    pub label: usize,
}

#[derive(Debug, Clone)]
pub struct Dataset {
    pub labels: Vec<String>,
    pub examples: Vec<Example>,
    /// The file read.
    pub source: PathBuf,
    /// How labels were derived (for the model card).
    pub label_note: String,
}

/// Tasks `vsr train` / `vsr eval` can read data for so far.
pub const SUPPORTED_TASKS: [&str; 1] = ["domain"];

/// Finds the data file of `task` given `--data`: the datasets root (with a
/// `<task>/` folder), the task folder itself, or the file.
pub fn resolve(task: &str, data: &Path) -> anyhow::Result<PathBuf> {
    let file = match task {
        "domain" => DOMAIN_FILE,
        other => bail!(
            "no data loader for task `{other}` yet (supported: {})",
            SUPPORTED_TASKS.join(", ")
        ),
    };
    let candidates = [
        data.join(task).join(file),
        data.join(file),
        data.to_path_buf(),
    ];
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no {file} for task `{task}` under {} (pass the datasets root or the `{task}` folder)",
                data.display()
            )
        })
}

/// Loads the labelled examples of `task` from `--data`.
pub fn load(task: &str, data: &Path) -> anyhow::Result<Dataset> {
    let source = resolve(task, data)?;
    let text = std::fs::read_to_string(&source)
        .with_context(|| format!("reading {}", source.display()))?;
    let labels: Vec<String> = DOMAIN_LABELS.iter().map(|s| s.to_string()).collect();
    let mut examples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: bad JSON", source.display(), n + 1))?;
        let q = v["question"].as_str().unwrap_or_default().trim();
        let c = v["category"].as_str().unwrap_or_default();
        let Some(label) = domain_label(c) else {
            bail!("{}:{}: unknown category {c:?}", source.display(), n + 1);
        };
        if q.is_empty() {
            continue;
        }
        let label = DOMAIN_LABELS
            .iter()
            .position(|l| *l == label)
            .unwrap_or_default();
        examples.push(Example {
            text: q.to_string(),
            label,
        });
    }
    if examples.is_empty() {
        bail!("{}: no examples", source.display());
    }
    Ok(Dataset {
        labels,
        examples,
        source,
        label_note: "label = MMLU-Pro `category` lower-cased with spaces replaced by `_` \
                     (\"computer science\" → `computer_science`); text = `question` only \
                     (options not included)"
            .into(),
    })
}

/// A seeded subsample of at most `max` example indices (all when `None`),
/// in ascending order.
pub fn subsample(n: usize, max: Option<usize>, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    if let Some(m) = max.filter(|&m| m < n) {
        let mut rng = Rng::new(seed ^ 0x5AB5);
        rng.shuffle(&mut idx);
        idx.truncate(m);
        idx.sort_unstable();
    }
    idx
}

/// Stratified seeded split of `indices` (with labels `label_of(i)`) into
/// (train, validation), each in ascending order. Each class with at least
/// two examples gives `round(n * val_fraction)` (at least 1) to validation.
pub fn split(
    indices: &[usize],
    label_of: impl Fn(usize) -> usize,
    val_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut by_class: std::collections::BTreeMap<usize, Vec<usize>> = Default::default();
    for &i in indices {
        by_class.entry(label_of(i)).or_default().push(i);
    }
    let mut rng = Rng::new(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (_, mut members) in by_class {
        rng.shuffle(&mut members);
        let n = members.len();
        let k = if n < 2 {
            0
        } else {
            ((n as f64 * val_fraction).round() as usize).clamp(1, n - 1)
        };
        val.extend_from_slice(&members[..k]);
        train.extend_from_slice(&members[k..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_map_to_labels() {
        assert_eq!(domain_label("computer science"), Some("computer_science"));
        assert_eq!(domain_label(" Biology "), Some("biology"));
        assert_eq!(domain_label("law"), Some("law"));
        assert_eq!(domain_label("astrology"), None);
        let mut sorted = DOMAIN_LABELS;
        sorted.sort_unstable();
        assert_eq!(sorted, DOMAIN_LABELS);
    }

    #[test]
    fn split_is_deterministic_disjoint_and_stratified() {
        let labels: Vec<usize> = (0..1000).map(|i| i % 7).collect();
        let idx: Vec<usize> = (0..1000).collect();
        let (t1, v1) = split(&idx, |i| labels[i], 0.1, 7);
        let (t2, v2) = split(&idx, |i| labels[i], 0.1, 7);
        assert_eq!((&t1, &v1), (&t2, &v2));
        let (_, v3) = split(&idx, |i| labels[i], 0.1, 8);
        assert_ne!(v1, v3, "another seed, another split");
        assert_eq!(t1.len() + v1.len(), 1000);
        assert!(v1.iter().all(|i| t1.binary_search(i).is_err()));
        for c in 0..7 {
            let n = v1.iter().filter(|&&i| labels[i] == c).count();
            assert!((13..=15).contains(&n), "class {c}: {n} in validation");
        }
    }

    #[test]
    fn subsample_is_seeded_and_bounded() {
        assert_eq!(subsample(5, None, 1), vec![0, 1, 2, 3, 4]);
        let a = subsample(100, Some(10), 3);
        assert_eq!(a.len(), 10);
        assert_eq!(a, subsample(100, Some(10), 3));
        assert!(a.windows(2).all(|w| w[0] < w[1]));
    }
}
