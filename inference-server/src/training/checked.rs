//! Hand-checked evaluation samples: proxy-labelled validation examples whose
//! labels a person has read and confirmed, corrected or set aside.
//!
//! Some tasks are trained on proxy labels (`feedback`: GoEmotions emotions
//! standing in for reactions to an assistant). Scoring against the proxy
//! measures agreement with a noisy mapping; the checked sample measures the
//! head against what each text actually says. The sample file holds no
//! dataset text (those files are never committed): each row names its
//! example by a hash of the text, so the checked labels are joined back onto
//! the dataset at evaluation time, and a changed dataset is an error rather
//! than a silently different sample.
//!
//! File format (TSV, `#` comments): `key  proxy  checked`, where `checked`
//! is one of the task's labels or `none` (fits no label; left out of the
//! metrics and counted).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::data::Dataset;
use super::Rng;

/// The label a checker gives a text that fits none of the task's labels.
pub const NONE: &str = "none";

/// Names an example without its text: the first 12 hex digits of the
/// SHA-256 of the exact text.
pub fn key(text: &str) -> String {
    let d = Sha256::digest(text.as_bytes());
    d.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// One row of a checked sample.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: String,
    /// The label the dataset gives (checked against it on load).
    pub proxy: String,
    /// The checker's label, or [`NONE`].
    pub checked: String,
}

/// Reads a checked sample; every label must be one of `labels` (or
/// [`NONE`] for `checked`).
pub fn read(path: &Path, labels: &[String]) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading checked sample {}", path.display()))?;
    let known = |l: &str| labels.iter().any(|x| x == l);
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() || line.starts_with('#') || line.starts_with("key\t") {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let f: Vec<&str> = line.split('\t').collect();
        anyhow::ensure!(
            f.len() >= 3,
            "{}: expected `key<TAB>proxy<TAB>checked`",
            at()
        );
        anyhow::ensure!(known(f[1]), "{}: unknown proxy label `{}`", at(), f[1]);
        anyhow::ensure!(
            known(f[2]) || f[2] == NONE,
            "{}: unknown checked label `{}` (a task label or `{NONE}`)",
            at(),
            f[2]
        );
        rows.push(Row {
            key: f[0].to_string(),
            proxy: f[1].to_string(),
            checked: f[2].to_string(),
        });
    }
    anyhow::ensure!(!rows.is_empty(), "{}: no rows", path.display());
    Ok(rows)
}

/// The checked sample as a dataset of its own: the matching examples of
/// `data` relabelled with the checked labels (rows checked [`NONE`] left
/// out). Returns it with the number of `none` rows. A key missing from
/// `data`, or whose proxy label differs, is an error: the sample was made
/// from other data.
pub fn relabel(data: &Dataset, rows: &[Row]) -> anyhow::Result<(Dataset, usize)> {
    let by_key: HashMap<String, usize> = data
        .examples
        .iter()
        .enumerate()
        .map(|(i, e)| (key(&e.text), i))
        .collect();
    let mut out = data.clone();
    out.examples.clear();
    out.probes.clear();
    let mut none = 0;
    for r in rows {
        let i = *by_key.get(&r.key).with_context(|| {
            format!(
                "checked sample row `{}` matches no example of {}",
                r.key,
                data.source.display()
            )
        })?;
        let e = &data.examples[i];
        let proxy = &data.labels[e.label];
        anyhow::ensure!(
            *proxy == r.proxy,
            "checked sample row `{}`: the data labels it `{proxy}`, the sample `{}`",
            r.key,
            r.proxy
        );
        if r.checked == NONE {
            none += 1;
            continue;
        }
        let mut e = e.clone();
        e.label = data
            .labels
            .iter()
            .position(|l| *l == r.checked)
            .context("checked label not among the data's labels")?;
        out.examples.push(e);
    }
    out.validated = out.examples.len();
    Ok((out, none))
}

/// A seeded sheet for checking by hand: up to `per_label` examples of each
/// proxy label among `indices`, from the origins named in `origins` (all
/// when empty), as `key<TAB>proxy<TAB>text` lines in a shuffled order so
/// the checker does not read them grouped by proxy label.
pub fn sheet(
    data: &Dataset,
    indices: &[usize],
    origins: &[&str],
    per_label: usize,
    seed: u64,
) -> Vec<String> {
    let mut rng = Rng::new(seed);
    let mut picked = Vec::new();
    for l in 0..data.labels.len() {
        let mut of_label: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| {
                let e = &data.examples[i];
                e.label == l
                    && (origins.is_empty()
                        || origins
                            .iter()
                            .any(|o| data.origins[e.origin].starts_with(o)))
            })
            .collect();
        rng.shuffle(&mut of_label);
        of_label.truncate(per_label);
        picked.extend(of_label);
    }
    rng.shuffle(&mut picked);
    picked
        .into_iter()
        .map(|i| {
            let e = &data.examples[i];
            let text = e.text.replace(['\t', '\n'], " ");
            format!("{}\t{}\t{}", key(&e.text), data.labels[e.label], text)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::data::Example;

    fn dataset() -> Dataset {
        let ex = |text: &str, label| Example {
            text: text.into(),
            second: None,
            label,
            origin: 0,
        };
        Dataset {
            labels: vec!["a".into(), "b".into()],
            examples: vec![ex("one", 0), ex("two", 1), ex("three", 1)],
            source: "mem".into(),
            sources: vec![],
            label_note: String::new(),
            origins: vec!["GoEmotions test".into()],
            probes: vec![],
            validated: 3,
        }
    }

    fn write(rows: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), rows).unwrap();
        f
    }

    #[test]
    fn relabels_and_sets_none_aside() {
        let d = dataset();
        let f = write(&format!(
            "# comment\nkey\tproxy\tchecked\n{}\ta\tb\n{}\tb\tnone\n",
            key("one"),
            key("two")
        ));
        let rows = read(f.path(), &d.labels).unwrap();
        let (s, none) = relabel(&d, &rows).unwrap();
        assert_eq!(none, 1);
        assert_eq!(s.examples.len(), 1);
        assert_eq!(s.examples[0].text, "one");
        assert_eq!(s.examples[0].label, 1);
        assert_eq!(s.validated, 1);
    }

    #[test]
    fn rejects_unknown_labels_missing_keys_and_changed_proxies() {
        let d = dataset();
        let bad = write(&format!("{}\ta\tc\n", key("one")));
        let e = read(bad.path(), &d.labels).unwrap_err().to_string();
        assert!(e.contains("unknown checked label `c`"), "{e}");

        let missing = write("000000000000\ta\tb\n");
        let rows = read(missing.path(), &d.labels).unwrap();
        let e = relabel(&d, &rows).unwrap_err().to_string();
        assert!(e.contains("matches no example"), "{e}");

        let changed = write(&format!("{}\tb\tb\n", key("one")));
        let rows = read(changed.path(), &d.labels).unwrap();
        let e = relabel(&d, &rows).unwrap_err().to_string();
        assert!(e.contains("the data labels it `a`"), "{e}");
    }

    #[test]
    fn sheet_is_seeded_and_capped_per_label() {
        let d = dataset();
        let all = [0, 1, 2];
        let a = sheet(&d, &all, &["GoEmotions"], 1, 7);
        assert_eq!(a, sheet(&d, &all, &["GoEmotions"], 1, 7));
        assert_eq!(a.len(), 2);
        assert!(sheet(&d, &all, &["templates"], 5, 7).is_empty());
        assert!(a.iter().all(|l| l.split('\t').count() == 3));
    }
}
