//! Data of token (entity span) tasks: `pii` from `pii/` under `--data`.
//!
//! Sources, each turned into texts with byte-offset spans:
//! * presidio-research synthetic sentences (`full_text` + character-offset
//!   `spans`): `data/synth_dataset_v2.json`, `tests/data/generated_large.json`;
//! * CoNLL-style NER: wikigold (IOB1, `token TAG`; Wikipedia sentences);
//!   the tokens are joined with single spaces. The loader also reads BIO
//!   files (WNUT-17 style, `token\tTAG`).
//!
//! Entity types are mapped to the model's types ([`PII_MODEL_TYPES`]); types
//! the deterministic recognizers own (e-mail, card, IBAN, SSN, phone, IP,
//! URL, domain) and rare ones become `O` for the model, but are kept as gold
//! spans for the evaluation of the served task ([`TokenExample::gold`]).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::data::LoadOptions;
use super::Rng;
use crate::sidecar::tokenize::Tokenization;

/// Types the `pii` head learns (the recognizers cover the structured ones).
pub const PII_MODEL_TYPES: [&str; 9] = [
    "PERSON",
    "GPE",
    "ORGANIZATION",
    "DATE_TIME",
    "STREET_ADDRESS",
    "NRP",
    "AGE",
    "ZIP_CODE",
    "US_DRIVER_LICENSE",
];

/// Sentences generated per presidio template (`pii_synth`), and their seed.
pub const PII_SYNTH_PER_TEMPLATE: usize = 15;
pub const PII_SYNTH_SEED: u64 = 42;

/// Token tasks `vsr train` / `vsr eval` know (`hallucination` is a
/// pair-token task: its data is in [`super::hallucination_data`]).
pub const TOKEN_TASKS: [&str; 2] = ["pii", "hallucination"];

pub fn is_token_task(task: &str) -> bool {
    TOKEN_TASKS.contains(&task)
}

/// [`Span::kind`] of a range whose tokens have no label: the loss and the
/// token metrics skip them (pair tasks' whole-answer labels, see
/// [`super::hallucination_data`]).
pub const IGNORED_KIND: &str = "ignored";

/// A span in a text: byte offsets, end exclusive, and its (mapped) type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: String,
}

#[derive(Debug, Clone)]
pub struct TokenExample {
    /// Pair tasks: the first text (context + question); the labelled text is
    /// [`TokenExample::text`] (the answer). `None` for single-text tasks.
    pub first: Option<String>,
    pub text: String,
    /// Every gold span under the served type names (model types and
    /// recognizer types), without overlaps.
    pub gold: Vec<Span>,
    /// Split group: sentences of one presidio template stay together.
    pub group: String,
    /// Which source file (short name).
    pub source: &'static str,
}

impl TokenExample {
    /// The gold spans the model learns.
    /// (Pair tasks learn every gold span.)
    pub fn model_spans(&self) -> impl Iterator<Item = &Span> {
        let pair = self.first.is_some();
        self.gold.iter().filter(move |s| {
            if pair {
                s.kind != IGNORED_KIND
            } else {
                PII_MODEL_TYPES.contains(&s.kind.as_str())
            }
        })
    }
}

#[derive(Debug, Clone)]
pub struct TokenDataset {
    /// `O`, then `B-X`, `I-X` for each model type.
    pub labels: Vec<String>,
    pub examples: Vec<TokenExample>,
    /// Files read.
    pub sources: Vec<PathBuf>,
    pub note: String,
    /// `examples[..validated]` are split into train and validation; the
    /// rest (extra data, see [`LoadOptions`]) is only trained on, so the
    /// validation split does not depend on it.
    pub validated: usize,
}

/// `O`, `B-T`, `I-T` for each type, in that order.
pub fn bio_labels(types: &[&str]) -> Vec<String> {
    std::iter::once("O".to_string())
        .chain(
            types
                .iter()
                .flat_map(|t| [format!("B-{t}"), format!("I-{t}")]),
        )
        .collect()
}

/// presidio-research type → served type (`None`: not produced by `pii`).
pub fn presidio_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "PERSON" => "PERSON",
        "GPE" | "LOCATION" => "GPE",
        "ORGANIZATION" => "ORGANIZATION",
        "DATE_TIME" => "DATE_TIME",
        "STREET_ADDRESS" | "ADDRESS" => "STREET_ADDRESS",
        "NRP" => "NRP",
        "EMAIL_ADDRESS" => "EMAIL_ADDRESS",
        "PHONE_NUMBER" => "PHONE_NUMBER",
        "CREDIT_CARD" => "CREDIT_CARD",
        "IBAN_CODE" => "IBAN_CODE",
        "US_SSN" => "US_SSN",
        "IP_ADDRESS" => "IP_ADDRESS",
        "DOMAIN_NAME" => "DOMAIN_NAME",
        "URL" => "URL",
        "AGE" => "AGE",
        "ZIP_CODE" => "ZIP_CODE",
        "US_DRIVER_LICENSE" => "US_DRIVER_LICENSE",
        _ => return None, // TITLE, PREFIX
    })
}

/// [`conll_type`] in words, for model cards.
const CONLL_MAPPING: &str = "CoNLL PER/person→PERSON, LOC/location→GPE, \
     ORG/corporation/group→ORGANIZATION, MISC/product/creative-work dropped";

/// CoNLL tag type (wikigold `PER`/`LOC`/`ORG`/`MISC`, WNUT-17 lower-case
/// names) → served type.
pub fn conll_type(t: &str) -> Option<&'static str> {
    Some(match t {
        "PER" | "person" => "PERSON",
        "LOC" | "location" => "GPE",
        "ORG" | "corporation" | "group" => "ORGANIZATION",
        _ => return None, // MISC, product, creative-work
    })
}

/// Byte offset of every char boundary (`v[i]` = byte of char `i`, plus the end).
fn char_to_byte(text: &str) -> Vec<usize> {
    text.char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(text.len()))
        .collect()
}

/// UTF-8 punctuation that some presidio records carry decoded as
/// Windows-1255 ("ג€“" for "–"), and its repair.
const MOJIBAKE: [(&str, char); 1] = [("ג€“", '–')];

/// Repairs [`MOJIBAKE`] in `text`; returns the repaired text and, for
/// every character index of `text` (and its end), the index of the same
/// position in the repaired text, so that span offsets follow.
fn repair_mojibake(text: &str) -> (String, Vec<usize>) {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(chars.len() + 1);
    let mut new_index = 0;
    let mut i = 0;
    'scan: while i < chars.len() {
        for (bad, good) in MOJIBAKE {
            let n = bad.chars().count();
            if chars.len() - i >= n && chars[i..i + n].iter().copied().eq(bad.chars()) {
                // Every old position inside the sequence maps to the repaired character.
                map.extend(std::iter::repeat_n(new_index, n));
                out.push(good);
                new_index += 1;
                i += n;
                continue 'scan;
            }
        }
        map.push(new_index);
        out.push(chars[i]);
        new_index += 1;
        i += 1;
    }
    map.push(new_index);
    (out, map)
}

/// Keeps the longest of overlapping spans (ties: the earlier one).
fn drop_overlaps(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_by(|a, b| {
        (b.end - b.start)
            .cmp(&(a.end - a.start))
            .then(a.start.cmp(&b.start))
    });
    let mut kept: Vec<Span> = Vec::new();
    for s in spans {
        if kept.iter().all(|k| s.end <= k.start || s.start >= k.end) {
            kept.push(s);
        }
    }
    kept.sort_by_key(|s| s.start);
    kept
}

/// One address convention: presidio's `generated_large` marks the parts of
/// an address separately (number, street, city as LOCATION, country,
/// postcode), `synth_dataset_v2` the whole address. Runs of STREET_ADDRESS /
/// GPE / ZIP_CODE spans separated only by whitespace or commas that contain a
/// STREET_ADDRESS become one STREET_ADDRESS span.
pub(crate) fn merge_address_parts(text: &str, spans: Vec<Span>) -> Vec<Span> {
    let part = |s: &Span| matches!(s.kind.as_str(), "STREET_ADDRESS" | "GPE" | "ZIP_CODE");
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    let mut run: Vec<Span> = Vec::new();
    let flush = |run: &mut Vec<Span>, out: &mut Vec<Span>| {
        if run.len() > 1 && run.iter().any(|s| s.kind == "STREET_ADDRESS") {
            out.push(Span {
                start: run[0].start,
                end: run[run.len() - 1].end,
                kind: "STREET_ADDRESS".into(),
            });
            run.clear();
        } else {
            out.append(run);
        }
    };
    for s in spans {
        let joins = part(&s)
            && run.last().is_some_and(|p| {
                text.get(p.end..s.start)
                    .is_some_and(|gap| gap.chars().all(|c| c.is_whitespace() || c == ','))
            });
        if !joins {
            flush(&mut run, &mut out);
        }
        if part(&s) {
            run.push(s);
        } else {
            out.push(s);
        }
    }
    flush(&mut run, &mut out);
    out.sort_by_key(|s| s.start);
    out
}

/// Trims whitespace off both ends of a span (presidio addresses end in
/// newlines sometimes; token offsets never cover whitespace).
pub fn trim(text: &str, mut s: Span) -> Option<Span> {
    let piece = text.get(s.start..s.end)?;
    let lead = piece.len() - piece.trim_start().len();
    let tail = piece.len() - piece.trim_end().len();
    s.start += lead;
    s.end -= tail;
    (s.start < s.end).then_some(s)
}

fn load_presidio(path: &Path, short: &'static str) -> anyhow::Result<Vec<TokenExample>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&text).with_context(|| format!("{}: bad JSON", path.display()))?;
    let mut out = Vec::with_capacity(rows.len());
    for (n, r) in rows.iter().enumerate() {
        let full = r["full_text"].as_str().unwrap_or_default();
        if full.trim().is_empty() {
            continue;
        }
        let (full, old_to_new) = repair_mojibake(full);
        let full = full.as_str();
        let bytes = char_to_byte(full);
        let mut spans = Vec::new();
        for s in r["spans"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
            let Some(kind) = presidio_type(s["entity_type"].as_str().unwrap_or_default()) else {
                continue;
            };
            let (cs, ce) = (
                s["start_position"].as_u64().unwrap_or(0) as usize,
                s["end_position"].as_u64().unwrap_or(0) as usize,
            );
            if cs >= ce || ce >= old_to_new.len() {
                bail!(
                    "{}: record {n}: span {cs}..{ce} outside the text",
                    path.display()
                );
            }
            let (cs, ce) = (old_to_new[cs], old_to_new[ce]);
            if let Some(sp) = trim(
                full,
                Span {
                    start: bytes[cs],
                    end: bytes[ce],
                    kind: kind.to_string(),
                },
            ) {
                spans.push(sp);
            }
        }
        let spans = merge_address_parts(full, drop_overlaps(spans));
        let template = r["template_id"]
            .as_u64()
            .map_or_else(|| format!("row{n}"), |t| t.to_string());
        out.push(TokenExample {
            first: None,
            text: full.to_string(),
            gold: spans,
            group: format!("{short}:{template}"),
            source: short,
        });
    }
    Ok(out)
}

/// CoNLL files: one `token TAG` per line (tab or space), blank lines between
/// sentences. `iob1`: `I-X` after anything but `X` starts an entity, `B-X`
/// only separates two adjacent entities of one type (wikigold).
fn load_conll(path: &Path, short: &'static str, iob1: bool) -> anyhow::Result<Vec<TokenExample>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut out = Vec::new();
    let mut tokens: Vec<(String, String)> = Vec::new();
    let mut flush = |tokens: &mut Vec<(String, String)>| {
        if tokens.is_empty() {
            return;
        }
        let mut sentence = String::new();
        let mut spans: Vec<Span> = Vec::new();
        let mut open: Option<Span> = None;
        let mut prev_type: Option<String> = None;
        for (tok, tag) in tokens.drain(..) {
            if !sentence.is_empty() {
                sentence.push(' ');
            }
            let start = sentence.len();
            sentence.push_str(&tok);
            let end = sentence.len();
            let (prefix, raw) = match tag.split_once('-') {
                Some((p, t)) if p == "B" || p == "I" => (p, Some(t)),
                _ => ("O", None),
            };
            let kind = raw.and_then(conll_type);
            let begins = match (prefix, iob1) {
                ("B", _) => true,
                ("I", true) => prev_type.as_deref() != raw,
                ("I", false) => open.as_ref().is_none_or(|o| Some(o.kind.as_str()) != kind),
                _ => false,
            };
            prev_type = raw.map(str::to_string);
            match kind {
                Some(k) if !begins && open.is_some() => {
                    if let Some(o) = open.as_mut() {
                        if o.kind == k {
                            o.end = end;
                        }
                    }
                }
                Some(k) => {
                    spans.extend(open.take());
                    open = Some(Span {
                        start,
                        end,
                        kind: k.to_string(),
                    });
                }
                None => spans.extend(open.take()),
            }
        }
        spans.extend(open.take());
        if !sentence.starts_with("-DOCSTART-") {
            let n = out.len();
            out.push(TokenExample {
                first: None,
                text: sentence,
                gold: spans,
                group: format!("{short}:{n}"),
                source: short,
            });
        }
    };
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            flush(&mut tokens);
            continue;
        }
        let (tok, tag) = match line.rsplit_once(['\t', ' ']) {
            Some((t, g)) => (t.trim(), g.trim()),
            None => (line.trim(), "O"),
        };
        if !tok.is_empty() {
            tokens.push((tok.to_string(), tag.to_string()));
        }
    }
    flush(&mut tokens);
    Ok(out)
}

/// The files of `pii` under `data` (the datasets root or its `pii/` folder),
/// with their short names.
fn pii_files(data: &Path) -> anyhow::Result<Vec<(PathBuf, &'static str)>> {
    let root = if data.join("pii").is_dir() {
        data.join("pii")
    } else {
        data.to_path_buf()
    };
    let files = vec![
        (
            root.join("presidio_research/data/synth_dataset_v2.json"),
            "presidio_synth_v2",
        ),
        (
            root.join("presidio_research/tests/data/generated_large.json"),
            "presidio_generated_large",
        ),
        (root.join("wikigold/wikigold.conll.txt"), "wikigold"),
    ];
    for (f, _) in &files {
        if !f.is_file() {
            bail!(
                "{} is missing (pass the datasets root or its `pii` folder as --data)",
                f.display()
            );
        }
    }
    Ok(files)
}

/// Loads the `pii` (or `hallucination`) data.
pub fn load(task: &str, data: &Path) -> anyhow::Result<TokenDataset> {
    load_with(task, data, LoadOptions::default())
}

/// WNUT-17's training and dev files (`pii/wnut17/`) with their short
/// names, the `--wnut-extra` data; its test file (`emerging.test.annotated`)
/// is never trained on.
const WNUT_TRAIN_FILES: [(&str, &str); 2] = [
    ("wnut17/wnut17train.conll", "wnut17train"),
    ("wnut17/emerging.dev.conll", "emerging.dev"),
];

/// [`load`] with extra training data. `data` may also be one file, a
/// presidio `.json` set or a CoNLL file (e.g. WNUT-17's test set): its
/// sentences alone, with no generated ones, for `vsr eval --all`.
pub fn load_with(task: &str, data: &Path, opts: LoadOptions) -> anyhow::Result<TokenDataset> {
    opts.check(task)?;
    if task == super::hallucination_data::TASK {
        return super::hallucination_data::load(data);
    }
    if task != "pii" {
        bail!("no token data loader for task `{task}` (supported: pii, hallucination)");
    }
    if data.is_file() {
        if opts.wnut_extra {
            bail!("--wnut-extra needs the datasets root (or its `pii` folder), not one file");
        }
        let (examples, note) = if data.extension().is_some_and(|e| e == "json") {
            (
                load_presidio(data, "presidio")?,
                "one presidio file".to_string(),
            )
        } else {
            (
                load_conll(data, "conll", false)?,
                format!("one CoNLL file; {CONLL_MAPPING}"),
            )
        };
        return Ok(TokenDataset {
            labels: bio_labels(&PII_MODEL_TYPES),
            validated: examples.len(),
            examples,
            sources: vec![data.to_path_buf()],
            note,
        });
    }
    let mut examples = Vec::new();
    let mut sources = Vec::new();
    for (path, short) in pii_files(data)? {
        let ex = if short.starts_with("presidio") {
            load_presidio(&path, short)?
        } else {
            load_conll(&path, short, short == "wikigold")?
        };
        eprintln!("{}: {} sentences", path.display(), ex.len());
        examples.extend(ex);
        sources.push(path);
    }
    let root = if data.join("pii").is_dir() {
        data.join("pii")
    } else {
        data.to_path_buf()
    };
    let mut generated = 0;
    if let Some((ex, dir)) = super::pii_synth::load(&root, PII_SYNTH_PER_TEMPLATE, PII_SYNTH_SEED)?
    {
        eprintln!("{}: {} generated sentences", dir.display(), ex.len());
        generated = ex.len();
        examples.extend(ex);
        sources.push(dir);
    }
    let validated = examples.len();
    let mut wnut = String::new();
    if opts.wnut_extra {
        let mut n = 0;
        for (f, short) in WNUT_TRAIN_FILES {
            let path = root.join(f);
            let ex = load_conll(&path, short, false)?;
            eprintln!("{}: {} tweets (training only)", path.display(), ex.len());
            n += ex.len();
            examples.extend(ex);
            sources.push(path);
        }
        wnut = format!("; {n} WNUT-17 training and dev tweets added as training-only data");
    }
    Ok(TokenDataset {
        labels: bio_labels(&PII_MODEL_TYPES),
        examples,
        sources,
        validated,
        note: format!(
            "presidio types GPE/LOCATION→GPE, ADDRESS→STREET_ADDRESS; TITLE, PREFIX dropped; \
             e-mail, phone, card, IBAN, SSN, IP, domain, URL are left to the recognizers (O \
             for the model, gold for the served evaluation); {CONLL_MAPPING}; overlapping gold \
             spans: the longest kept; presidio records' \
             Windows-1255 mojibake \"ג€“\" repaired to \"–\" (offsets follow); {generated} \
             sentences generated from presidio's templates ({PII_SYNTH_PER_TEMPLATE} per \
             template, seed {PII_SYNTH_SEED}; `training/pii_synth.rs`; the templates' `\\n` \
             escapes read as line breaks): placeholders filled from its fake \
             identities, organisations, nationalities and licences, and with Luhn-valid cards, \
             mod-97 IBANs and SSNs in the issued ranges; the sentences of one template share a \
             split group{wnut}"
        ),
    })
}

/// A seeded split by group: `val_fraction` of the groups (rounded, at
/// least one) go to validation. Both lists ascending.
pub fn group_split(
    examples: &[TokenExample],
    val_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut groups: Vec<&str> = examples.iter().map(|e| e.group.as_str()).collect();
    groups.sort_unstable();
    groups.dedup();
    let mut rng = Rng::new(seed ^ 0x70C3);
    rng.shuffle(&mut groups);
    let k =
        ((groups.len() as f64 * val_fraction).round() as usize).clamp(1, groups.len().max(2) - 1);
    let val: std::collections::HashSet<&str> =
        groups[..k.min(groups.len())].iter().copied().collect();
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    for (i, e) in examples.iter().enumerate() {
        if val.contains(e.group.as_str()) {
            valid.push(i);
        } else {
            train.push(i);
        }
    }
    (train, valid)
}

/// Sentinel label of tokens the loss ignores (special tokens).
pub const IGNORE: u32 = u32::MAX;

/// One tokenized example: ids, per-token BIO label index (or [`IGNORE`]),
/// byte offsets (`None` for special tokens).
#[derive(Debug, Clone)]
pub struct Aligned {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub labels: Vec<u32>,
    pub offsets: Vec<Option<(usize, usize)>>,
    /// [`crate::sidecar::tokenize::Encoded::line_starts`].
    pub line_starts: Vec<u32>,
}

/// Tokenizes `ex` and labels each token: `B-X` for the first token
/// overlapping a span of type X, `I-X` for the following ones, `O` outside.
/// Spans cut off by truncation are lost with their tokens.
pub fn align(tok: &Tokenization, ex: &TokenExample, labels: &[String]) -> anyhow::Result<Aligned> {
    label_encoded(tok.encode(&ex.text)?, ex, labels)
}

/// Pair examples: every window of `[CLS] first [SEP] text [SEP]`
/// ([`Tokenization::encode_pair`], as served), each labelled like
/// [`align`]; the first text's tokens carry [`IGNORE`] (no offsets). A
/// single-text example gives its one row.
pub fn align_windows(
    tok: &Tokenization,
    ex: &TokenExample,
    labels: &[String],
) -> anyhow::Result<Vec<Aligned>> {
    match &ex.first {
        None => Ok(vec![align(tok, ex, labels)?]),
        Some(first) => tok
            .encode_pair(first, &ex.text)?
            .into_iter()
            .map(|enc| label_encoded(enc, ex, labels))
            .collect(),
    }
}

/// Labels the tokens of one encoded row (BIO, or plain labels when the
/// label set has no `O`: the first label outside spans, the span's type
/// inside).
fn label_encoded(
    enc: crate::sidecar::tokenize::Encoded,
    ex: &TokenExample,
    labels: &[String],
) -> anyhow::Result<Aligned> {
    let bio = labels.first().is_some_and(|l| l == "O");
    let index = |l: &str| labels.iter().position(|x| x == l).map(|i| i as u32);
    let spans: Vec<&Span> = ex.model_spans().collect();
    let mut out = Vec::with_capacity(enc.ids.len());
    let mut last_span: Option<usize> = None;
    for off in &enc.offsets {
        let Some((s, e)) = *off else {
            out.push(IGNORE);
            continue;
        };
        if ex
            .gold
            .iter()
            .any(|sp| sp.kind == IGNORED_KIND && s < sp.end && e > sp.start)
        {
            out.push(IGNORE);
            last_span = None;
            continue;
        }
        match spans.iter().position(|sp| s < sp.end && e > sp.start) {
            Some(j) => {
                let prefix = if last_span == Some(j) { "I" } else { "B" };
                let name = if bio {
                    format!("{prefix}-{}", spans[j].kind)
                } else {
                    spans[j].kind.clone()
                };
                out.push(index(&name).with_context(|| format!("label {name} missing"))?);
                last_span = Some(j);
            }
            None => {
                out.push(0);
                last_span = None;
            }
        }
    }
    Ok(Aligned {
        line_starts: enc.line_starts,
        ids: enc.ids,
        type_ids: enc.type_ids,
        labels: out,
        offsets: enc.offsets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn presidio_char_offsets_become_byte_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let body = serde_json::json!([
            {"full_text": "Grüße an Jürgen Müller in Zürich\n", "template_id": 3, "spans": [
                {"entity_type": "PERSON", "start_position": 9, "end_position": 22, "entity_value": "Jürgen Müller"},
                {"entity_type": "PERSON", "start_position": 16, "end_position": 22, "entity_value": "Müller"},
                {"entity_type": "GPE", "start_position": 26, "end_position": 33, "entity_value": "Zürich\n"},
                {"entity_type": "TITLE", "start_position": 0, "end_position": 5, "entity_value": "Grüße"}]}
        ]);
        let p = write(dir.path(), "p.json", &body.to_string());
        let ex = load_presidio(&p, "p").unwrap();
        let t = &ex[0].text;
        let got: Vec<(&str, &str)> = ex[0]
            .gold
            .iter()
            .map(|s| (s.kind.as_str(), &t[s.start..s.end]))
            .collect();
        assert_eq!(got, [("PERSON", "Jürgen Müller"), ("GPE", "Zürich")]);
        assert_eq!(ex[0].group, "p:3");
    }

    #[test]
    fn mojibake_is_repaired_and_offsets_follow() {
        let (text, map) = repair_mojibake("to Ann Lee ג€“ sadly");
        assert_eq!(text, "to Ann Lee – sadly");
        // "Ann Lee" keeps its offsets; "sadly" moves two characters left.
        assert_eq!((map[3], map[10]), (3, 10));
        assert_eq!((map[15], map[20]), (13, 18));
        assert_eq!(map.len(), "to Ann Lee ג€“ sadly".chars().count() + 1);
    }

    #[test]
    fn address_parts_become_one_span() {
        let text = "78 Rua das Pedras 930\n Apt. 363\n São Paulo\n Kenya 92342 and Tom in Lima";
        let at = |piece: &str, kind: &str| {
            let b = text.find(piece).unwrap();
            Span {
                start: b,
                end: b + piece.len(),
                kind: kind.into(),
            }
        };
        let spans = vec![
            at("78", "STREET_ADDRESS"),
            at("Rua das Pedras 930", "STREET_ADDRESS"),
            at("Apt. 363", "STREET_ADDRESS"),
            at("São Paulo", "GPE"),
            at("Kenya", "GPE"),
            at("92342", "STREET_ADDRESS"),
            at("Tom", "PERSON"),
            at("Lima", "GPE"),
        ];
        let merged = merge_address_parts(text, spans);
        let got: Vec<(&str, &str)> = merged
            .iter()
            .map(|s| (&text[s.start..s.end], s.kind.as_str()))
            .map(|(t, k)| (t, if k == "STREET_ADDRESS" { "A" } else { k }))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "78 Rua das Pedras 930\n Apt. 363\n São Paulo\n Kenya 92342",
                    "A"
                ),
                ("Tom", "PERSON"),
                ("Lima", "GPE")
            ]
        );
    }

    #[test]
    fn conll_iob1_and_bio() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "w.txt",
            "John I-PER\nSmith I-PER\nmet I-PER\n... O\nat O\nAcme I-ORG\n\n-DOCSTART- O\n\nAnn I-PER\nBob B-PER\n",
        );
        let ex = load_conll(&p, "w", true).unwrap();
        let spans = |e: &TokenExample| {
            e.gold
                .iter()
                .map(|s| (s.kind.clone(), e.text[s.start..s.end].to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            spans(&ex[0]),
            [
                ("PERSON".into(), "John Smith met".into()),
                ("ORGANIZATION".into(), "Acme".into())
            ]
        );
        assert_eq!(ex.len(), 2, "DOCSTART skipped");
        assert_eq!(
            spans(&ex[1]),
            [
                ("PERSON".into(), "Ann".into()),
                ("PERSON".into(), "Bob".into())
            ]
        );
        let p = write(
            dir.path(),
            "n.conll",
            "I\tO\nlove\tO\nNew\tB-location\nYork\tI-location\nand\tO\niPhones\tB-product\n",
        );
        let ex = load_conll(&p, "n", false).unwrap();
        assert_eq!(spans(&ex[0]), [("GPE".into(), "New York".into())]);
    }

    /// `--wnut-extra` appends WNUT-17's training and dev tweets after the
    /// validated examples: the validation split is the one without them and
    /// every tweet trains. A lone CoNLL file (WNUT-17's test set) loads
    /// whole for `vsr eval --all`.
    #[test]
    fn wnut_extra_is_training_only() {
        let root = tempfile::tempdir().unwrap();
        let pii = root.path().join("pii");
        for d in [
            "presidio_research/data",
            "presidio_research/tests/data",
            "wikigold",
            "wnut17",
        ] {
            std::fs::create_dir_all(pii.join(d)).unwrap();
        }
        let records = |n: usize| {
            let rows: Vec<String> = (0..n)
                .map(|i| {
                    format!(
                        r#"{{"full_text": "Call Ann now {i}.", "template_id": {i}, "spans": [{{"entity_type": "PERSON", "start_position": 5, "end_position": 8}}]}}"#
                    )
                })
                .collect();
            format!("[{}]", rows.join(","))
        };
        write(
            &pii,
            "presidio_research/data/synth_dataset_v2.json",
            &records(20),
        );
        write(
            &pii,
            "presidio_research/tests/data/generated_large.json",
            &records(20),
        );
        write(&pii, "wikigold/wikigold.conll.txt", "Acme I-ORG\nrocks O\n");
        write(
            &pii,
            "wnut17/wnut17train.conll",
            "hi\tO\n@bob\tO\nin\tO\nParis\tB-location\n\nok\tO\n",
        );
        let test = write(
            &pii,
            "wnut17/emerging.test.annotated",
            "Ann\tB-person\nLee\tI-person\n",
        );

        let plain = load("pii", root.path()).unwrap();
        // The dev file is missing: an error naming it.
        let opts = LoadOptions {
            wnut_extra: true,
            ..Default::default()
        };
        let err = load_with("pii", root.path(), opts).unwrap_err();
        assert!(format!("{err:#}").contains("emerging.dev.conll"), "{err:#}");
        write(
            &pii,
            "wnut17/emerging.dev.conll",
            "Acme\tB-corporation\nfans\tO\n",
        );
        let extra = load_with("pii", root.path(), opts).unwrap();
        assert_eq!(extra.validated, plain.examples.len());
        assert_eq!(extra.examples.len(), plain.examples.len() + 3);
        let tweets: Vec<(&str, Vec<&str>)> = extra.examples[extra.validated..]
            .iter()
            .map(|e| {
                (
                    e.text.as_str(),
                    e.gold.iter().map(|s| s.kind.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            tweets,
            [
                ("hi @bob in Paris", vec!["GPE"]),
                ("ok", vec![]),
                ("Acme fans", vec!["ORGANIZATION"])
            ]
        );
        let (t0, v0) = crate::training::token::split(&plain, None, 0.1, 42);
        let (t1, v1) = crate::training::token::split(&extra, None, 0.1, 42);
        assert_eq!(v1, v0, "validation split unchanged");
        assert!(!v0.is_empty());
        let (n0, n) = (plain.examples.len(), extra.examples.len());
        assert_eq!(t1, t0.into_iter().chain(n0..n).collect::<Vec<_>>());
        assert!(load_with("hallucination", root.path(), opts).is_err());

        let alone = load("pii", &test).unwrap();
        assert_eq!(alone.validated, 1);
        assert_eq!(alone.examples[0].text, "Ann Lee");
        assert_eq!(alone.examples[0].gold[0].kind, "PERSON");
        let presidio = pii.join("presidio_research/data/synth_dataset_v2.json");
        let alone = load("pii", &presidio).unwrap();
        assert_eq!(alone.examples.len(), 20);
        assert_eq!(alone.examples[0].gold[0].kind, "PERSON");
        assert!(load_with("pii", &test, opts).is_err());
    }

    #[test]
    fn group_split_keeps_groups_together() {
        let ex: Vec<TokenExample> = (0..200)
            .map(|i| TokenExample {
                first: None,
                text: "x".into(),
                gold: vec![],
                group: format!("g{}", i % 20),
                source: "t",
            })
            .collect();
        let (t, v) = group_split(&ex, 0.1, 1);
        assert_eq!(t.len() + v.len(), 200);
        assert_eq!(v.len(), 20, "2 of 20 groups");
        let vg: std::collections::HashSet<_> = v.iter().map(|&i| &ex[i].group).collect();
        assert!(t.iter().all(|&i| !vg.contains(&ex[i].group)));
        assert_eq!(group_split(&ex, 0.1, 1).1, v);
    }
}
