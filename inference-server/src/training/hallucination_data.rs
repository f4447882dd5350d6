//! Data of the `hallucination` pair-token task, from `hallucination/` under
//! `--data`: first text = context + question, second text = an answer, a
//! label per answer token (`supported` / `hallucinated`).
//!
//! Trained on (all from HaluEval QA, whose items carry the knowledge the
//! answer must be grounded in):
//! * `qa_one-turn_data.json` + `qa_multi-turn_data.json`: the same 500
//!   questions, knowledge and right answers, with one hallucinated answer
//!   each (two per question when they differ). The items are labelled per
//!   answer, not per token: the right answer → every token `supported`,
//!   a hallucinated answer → `hallucinated`, except its words that also
//!   occur in the knowledge or question and function words, which get no
//!   label ([`unlabelled_pieces`]: whole-answer labels say nothing about
//!   them, and labelling "It was … in" `hallucinated` taught the head that
//!   any restating sentence is) ([`Source::QaRight`],
//!   [`Source::QaHallucinated`]);
//! * the right answer inside a short carrier sentence ("It was X.", …),
//!   every token `supported` ([`Source::QaRightSentence`]): the right
//!   answers are 1–3 words and the hallucinated ones sentences, which would
//!   otherwise teach "a sentence is hallucinated";
//! * knowledge sentences copied verbatim as the answer (`supported`) and
//!   the same sentences with one number or one capitalised name replaced by
//!   one that is not in the knowledge (a year shifted, a name from another
//!   item): only the replaced words are `hallucinated`
//!   ([`Source::KnowledgeCopy`], [`Source::KnowledgeSubstituted`]). These
//!   are the only token-precise labels.
//!
//! Read but not trained on (no context to be grounded in, see
//! [`unused_sources`]): HaluEval `general_data.json` (ChatGPT answers to
//! user queries with `hallucination_spans`) and HaluQuestQA
//! (`factuality_span` of long-form answers). Their spans are located in the
//! answers ([`locate`]) to report how many would be usable.
//!
//! Split groups: one per HaluEval question (every example derived from it).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::token_data::{trim, Span, TokenDataset, TokenExample, IGNORED_KIND};
use super::Rng;

pub const TASK: &str = "hallucination";
/// Label order of the head (`supported` is the "outside" label).
pub const LABELS: [&str; 2] = ["supported", "hallucinated"];
pub const HALLUCINATED: &str = "hallucinated";
/// The derivation is fixed (not `--seed`), so `vsr eval` rebuilds the same
/// examples.
const DERIVE_SEED: u64 = 0xA11C;
/// Knowledge sentences used per question (copy + substituted each).
const SENTENCES_PER_ITEM: usize = 2;

/// Where an example comes from (its `source` name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    QaRight,
    QaRightSentence,
    QaHallucinated,
    KnowledgeCopy,
    KnowledgeSubstituted,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::QaRight,
        Source::QaRightSentence,
        Source::QaHallucinated,
        Source::KnowledgeCopy,
        Source::KnowledgeSubstituted,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Source::QaRight => "halueval_qa_right",
            Source::QaRightSentence => "halueval_qa_right_sentence",
            Source::QaHallucinated => "halueval_qa_hallucinated",
            Source::KnowledgeCopy => "knowledge_copy",
            Source::KnowledgeSubstituted => "knowledge_substituted",
        }
    }
    pub fn derivation(self) -> &'static str {
        match self {
            Source::QaRight => "HaluEval QA `right_answer` as is → every token `supported`",
            Source::QaRightSentence => {
                "HaluEval QA `right_answer` in a carrier sentence (`It is X.`, `It was X.`, \
                 `The answer is X.`, `X is the answer.`, `I think it is X.`) → every token `supported`"
            }
            Source::QaHallucinated => {
                "HaluEval QA `hallucinated_answer` (one-turn and multi-turn files; identical ones \
                 once) → `hallucinated`, except words (alphanumeric runs, case-insensitive) and \
                 punctuation that also occur in the knowledge or question, and function words \
                 (a, an, the, it, is, was, …): those tokens get no label (not in the loss, not \
                 scored), since the items are labelled per answer and say nothing about them"
            }
            Source::KnowledgeCopy => {
                "a sentence of the item's `knowledge` (≥ 5 words, with a number or a non-initial \
                 capitalised name) copied as the answer → every token `supported`"
            }
            Source::KnowledgeSubstituted => {
                "the same sentence with one number (years shifted by 1–40, other numbers \
                 changed) or one capitalised name (replaced by a name from another item's \
                 knowledge that is not in this knowledge) substituted → the substituted \
                 words `hallucinated`, the rest `supported`"
            }
        }
    }
}

/// One merged HaluEval QA item.
#[derive(Debug, Clone)]
pub struct QaItem {
    pub knowledge: String,
    pub question: String,
    pub right: String,
    pub hallucinated: Vec<String>,
}

/// The two QA files merged by question (their knowledge and right answers
/// agree; a question whose knowledge differs between the files is an error).
pub fn read_qa(files: &[PathBuf]) -> anyhow::Result<Vec<QaItem>> {
    let mut items: Vec<QaItem> = Vec::new();
    let mut by_q: BTreeMap<String, usize> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let v: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("{}: line {}", f.display(), n + 1))?;
            let get = |k: &str| v[k].as_str().unwrap_or_default().trim().to_string();
            let (k, q, r, h) = (
                get("knowledge"),
                get("question"),
                get("right_answer"),
                get("hallucinated_answer"),
            );
            if q.is_empty() || r.is_empty() || h.is_empty() {
                continue;
            }
            match by_q.get(&q) {
                Some(&i) => {
                    if items[i].knowledge != k {
                        bail!(
                            "{}: line {}: knowledge differs for {q:?}",
                            f.display(),
                            n + 1
                        );
                    }
                    if !items[i].hallucinated.contains(&h) && h != items[i].right {
                        items[i].hallucinated.push(h);
                    }
                }
                None => {
                    by_q.insert(q.clone(), items.len());
                    items.push(QaItem {
                        knowledge: k,
                        question: q,
                        hallucinated: if h != r { vec![h] } else { vec![] },
                        right: r,
                    });
                }
            }
        }
    }
    Ok(items)
}

/// Sentences of a HaluEval knowledge text (paragraphs are joined without a
/// space: `…century.First for Women…`): a `.`, `!` or `?` after a
/// lower-case letter, digit or closing bracket/quote, followed by an
/// upper-case letter or by whitespace, ends a sentence. Byte ranges,
/// trimmed.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for (k, &(b, c)) in chars.iter().enumerate() {
        if !matches!(c, '.' | '!' | '?') {
            continue;
        }
        let prev_ok = k > 0 && {
            let p = chars[k - 1].1;
            p.is_lowercase() || p.is_ascii_digit() || matches!(p, ')' | '"' | '\'')
        };
        let next_ok = chars
            .get(k + 1)
            .is_none_or(|&(_, n)| n.is_whitespace() || n.is_uppercase());
        if prev_ok && next_ok {
            let end = b + c.len_utf8();
            push_trimmed(text, start, end, &mut out);
            start = end;
        }
    }
    push_trimmed(text, start, text.len(), &mut out);
    out
}

fn push_trimmed(text: &str, s: usize, e: usize, out: &mut Vec<(usize, usize)>) {
    let piece = &text[s..e];
    let lead = piece.len() - piece.trim_start().len();
    let tail = piece.len() - piece.trim_end().len();
    if s + lead < e - tail {
        out.push((s + lead, e - tail));
    }
}

/// Substitutable pieces of a sentence: digit runs, and runs of capitalised
/// words (not the sentence's first word), without surrounding punctuation.
/// `(start, end, is_number)`, byte ranges.
pub fn candidates(s: &str) -> Vec<(usize, usize, bool)> {
    let mut out = Vec::new();
    // Digit runs.
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let j = (i..bytes.len())
                .find(|&j| !bytes[j].is_ascii_digit())
                .unwrap_or(bytes.len());
            out.push((i, j, true));
            i = j;
        } else {
            i += 1;
        }
    }
    // Capitalised word runs.
    let words = word_ranges(s);
    let mut run: Option<(usize, usize)> = None;
    for (n, &(ws, we)) in words.iter().enumerate() {
        let w = &s[ws..we];
        let cap = n > 0
            && w.chars().next().is_some_and(char::is_uppercase)
            && w.chars().count() > 1
            && w.chars().skip(1).any(char::is_lowercase);
        let adjacent = run.is_some_and(|(_, re)| s[re..ws].chars().all(|c| c == ' '));
        match (cap, run) {
            (true, Some((rs, _))) if adjacent => run = Some((rs, we)),
            (true, _) => {
                out.extend(run.take().map(|(a, b)| (a, b, false)));
                run = Some((ws, we));
            }
            (false, _) => out.extend(run.take().map(|(a, b)| (a, b, false))),
        }
    }
    out.extend(run.map(|(a, b)| (a, b, false)));
    out
}

/// Words (split on whitespace) with leading/trailing punctuation removed
/// (an English possessive `'s` too), byte ranges; empty ones skipped.
fn word_ranges(s: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut pos = 0;
    for w in s.split_whitespace() {
        let ws = pos + s[pos..].find(w).unwrap_or(0);
        pos = ws + w.len();
        let core = w.trim_matches(|c: char| !c.is_alphanumeric());
        if core.is_empty() {
            continue;
        }
        let cs = ws + w.find(core).unwrap_or(0);
        let mut ce = cs + core.len();
        if s[cs..ce].ends_with("'s") {
            ce -= 2;
        }
        if cs < ce {
            out.push((cs, ce));
        }
    }
    out
}

/// A different number of the same kind: a year-like 4-digit number in
/// 1000..=2099 moves by 1–40 years; other numbers get another value of the
/// same digit count.
fn other_number(n: &str, rng: &mut Rng) -> String {
    let v: u64 = n.parse().unwrap_or(0);
    if n.len() == 4 && (1000..=2099).contains(&v) {
        let d = 1 + rng.next_u64() % 40;
        let up = rng.next_u64().is_multiple_of(2) && v + d <= 2099;
        return (if up || v < 1000 + d { v + d } else { v - d }).to_string();
    }
    let lo = if n.len() == 1 {
        1
    } else {
        10u64.pow(n.len() as u32 - 1)
    };
    let hi = 10u64.pow(n.len().min(18) as u32);
    loop {
        let x = lo + rng.next_u64() % (hi - lo);
        if x != v {
            return x.to_string();
        }
    }
}

/// `sentence` with one candidate replaced: the new text and the replaced
/// range in it. Names come from `names` (skipping ones in `knowledge`).
pub fn substitute(
    sentence: &str,
    knowledge: &str,
    names: &[&str],
    rng: &mut Rng,
) -> Option<(String, Span)> {
    let cands = candidates(sentence);
    if cands.is_empty() {
        return None;
    }
    let (s, e, number) = cands[(rng.next_u64() % cands.len() as u64) as usize];
    let replacement = if number {
        other_number(&sentence[s..e], rng)
    } else {
        let pick = (0..20).find_map(|_| {
            let n = names[(rng.next_u64() % names.len().max(1) as u64) as usize];
            (!knowledge.contains(n) && n != &sentence[s..e]).then_some(n)
        })?;
        pick.to_string()
    };
    let text = format!("{}{}{}", &sentence[..s], replacement, &sentence[e..]);
    Some((
        text,
        Span {
            start: s,
            end: s + replacement.len(),
            kind: HALLUCINATED.into(),
        },
    ))
}

const CARRIERS: [&str; 5] = [
    "It is {}.",
    "It was {}.",
    "The answer is {}.",
    "{} is the answer.",
    "I think it is {}.",
];

/// Function words left unlabelled in whole-answer-hallucinated answers
/// (negations are not among them: they are often the hallucination).
const FUNCTION_WORDS: [&str; 34] = [
    "a", "an", "the", "it", "its", "is", "was", "were", "are", "be", "been", "in", "on", "of",
    "at", "to", "for", "by", "and", "or", "with", "as", "that", "this", "he", "she", "they", "his",
    "her", "their", "from", "which", "who", "s",
];

/// Pieces of `text`: runs of alphanumeric chars, and single other non-space
/// chars; byte ranges.
fn pieces(text: &str) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    let mut run: Option<usize> = None;
    for (b, c) in text.char_indices() {
        if c.is_alphanumeric() {
            run.get_or_insert(b);
            continue;
        }
        if let Some(s) = run.take() {
            out.push((s, b));
        }
        if !c.is_whitespace() {
            out.push((b, b + c.len_utf8()));
        }
    }
    if let Some(s) = run {
        out.push((s, text.len()));
    }
    out
}

/// The pieces of a whole-answer-hallucinated `answer` that get no label:
/// those occurring (case-insensitively) among the pieces of `first`, and
/// function words. Spans of kind [`IGNORED_KIND`].
pub fn unlabelled_pieces(first: &str, answer: &str) -> Vec<Span> {
    let known: HashSet<String> = pieces(first)
        .into_iter()
        .map(|(s, e)| first[s..e].to_lowercase())
        .collect();
    pieces(answer)
        .into_iter()
        .filter(|&(s, e)| {
            let p = answer[s..e].to_lowercase();
            known.contains(&p) || FUNCTION_WORDS.contains(&p.as_str())
        })
        .map(|(start, end)| Span {
            start,
            end,
            kind: IGNORED_KIND.into(),
        })
        .collect()
}

fn whole(text: &str) -> Vec<Span> {
    trim(
        text,
        Span {
            start: 0,
            end: text.len(),
            kind: HALLUCINATED.into(),
        },
    )
    .into_iter()
    .collect()
}

/// Every training example derived from the QA items (see the module doc).
pub fn derive(items: &[QaItem]) -> Vec<TokenExample> {
    let mut rng = Rng::new(DERIVE_SEED);
    let names: Vec<&str> = items
        .iter()
        .flat_map(|it| {
            candidates(&it.knowledge)
                .into_iter()
                .filter(|c| !c.2)
                .map(|(s, e, _)| &it.knowledge[s..e])
                .collect::<Vec<_>>()
        })
        .collect();
    let mut out = Vec::new();
    for (n, it) in items.iter().enumerate() {
        let first = format!("{} {}", it.knowledge, it.question);
        let group = format!("halueval_qa:{n}");
        let mut push = |text: String, gold: Vec<Span>, src: Source| {
            out.push(TokenExample {
                first: Some(first.clone()),
                text,
                gold,
                group: group.clone(),
                source: src.name(),
            })
        };
        push(it.right.clone(), vec![], Source::QaRight);
        let carrier = CARRIERS[(rng.next_u64() % CARRIERS.len() as u64) as usize];
        let mut right = it.right.trim_end_matches('.').to_string();
        if carrier.starts_with("{}") {
            if let Some(c) = right.chars().next() {
                right = c.to_uppercase().chain(right.chars().skip(1)).collect();
            }
        }
        push(
            carrier.replace("{}", &right),
            vec![],
            Source::QaRightSentence,
        );
        for h in &it.hallucinated {
            let mut gold = whole(h);
            gold.extend(unlabelled_pieces(&first, h));
            push(h.clone(), gold, Source::QaHallucinated);
        }
        let mut sents: Vec<&str> = sentences(&it.knowledge)
            .into_iter()
            .map(|(s, e)| &it.knowledge[s..e])
            .filter(|s| s.split_whitespace().count() >= 5 && !candidates(s).is_empty())
            .collect();
        rng.shuffle(&mut sents);
        for s in sents.into_iter().take(SENTENCES_PER_ITEM) {
            push(s.to_string(), vec![], Source::KnowledgeCopy);
            if let Some((text, span)) = substitute(s, &it.knowledge, &names, &mut rng) {
                push(text, vec![span], Source::KnowledgeSubstituted);
            }
        }
    }
    out
}

// === sources read but not trained on ===

/// Normalises for [`locate`]: lower-case, whitespace runs → one space.
/// Returns the normalised chars with the byte offset of each in `text`.
fn normalised(text: &str) -> Vec<(char, usize)> {
    let mut out: Vec<(char, usize)> = Vec::with_capacity(text.len());
    for (b, c) in text.char_indices() {
        if c.is_whitespace() {
            if out.last().is_some_and(|l| l.0 != ' ') {
                out.push((' ', b));
            }
        } else {
            out.extend(c.to_lowercase().map(|l| (l, b)));
        }
    }
    out
}

/// Byte range of `span` in `answer`: an exact match, else a match ignoring
/// case and differences in whitespace (annotators re-typed spans). `None`
/// when it is not in the answer.
pub fn locate(answer: &str, span: &str) -> Option<(usize, usize)> {
    let span = span.trim();
    if span.is_empty() {
        return None;
    }
    if let Some(b) = answer.find(span) {
        return Some((b, b + span.len()));
    }
    let a = normalised(answer);
    let s: Vec<char> = normalised(span).into_iter().map(|x| x.0).collect();
    if s.is_empty() || s.len() > a.len() {
        return None;
    }
    (0..=a.len() - s.len())
        .find(|&i| a[i..i + s.len()].iter().map(|x| x.0).eq(s.iter().copied()))
        .map(|i| {
            let (_, last) = a[i + s.len() - 1];
            let end = last + answer[last..].chars().next().map_or(0, char::len_utf8);
            (a[i].1, end)
        })
}

/// A Python list literal of strings (`['a', "b's"]`, HaluQuestQA's span
/// columns) → the strings; `None` when it is not one.
pub fn python_str_list(s: &str) -> Option<Vec<String>> {
    let s = s.trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let Some(q) = chars.next() else { break };
        if q != '\'' && q != '"' {
            return None;
        }
        let mut cur = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => cur.push('\n'),
                    'r' => cur.push('\r'),
                    't' => cur.push('\t'),
                    other => cur.push(other),
                },
                c if c == q => break,
                c => cur.push(c),
            }
        }
        out.push(cur);
    }
    Some(out)
}

/// Counts of a source read but not trained on.
#[derive(Debug, Clone, Default)]
pub struct UnusedSource {
    pub path: PathBuf,
    /// Answers with at least one annotated span.
    pub answers_with_spans: usize,
    pub spans: usize,
    /// Spans found in the answer text by [`locate`].
    pub located: usize,
}

/// HaluEval `general_data.json` and HaluQuestQA: how many annotated spans
/// can be located in their answers (missing files are skipped).
pub fn unused_sources(root: &Path) -> anyhow::Result<Vec<UnusedSource>> {
    let mut out = Vec::new();
    let general = root.join("halueval/general_data.json");
    if general.is_file() {
        let mut u = UnusedSource {
            path: general.clone(),
            ..Default::default()
        };
        let text = std::fs::read_to_string(&general)?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line)?;
            if v["hallucination"].as_str() != Some("yes") {
                continue;
            }
            let answer = v["chatgpt_response"].as_str().unwrap_or_default();
            let spans = v["hallucination_spans"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            u.answers_with_spans += usize::from(!spans.is_empty());
            for s in spans {
                u.spans += 1;
                u.located += usize::from(locate(answer, s.as_str().unwrap_or_default()).is_some());
            }
        }
        out.push(u);
    }
    let hq = root.join("haluquestqa/HaluQuestQA.tsv");
    if hq.is_file() {
        let mut u = UnusedSource {
            path: hq.clone(),
            ..Default::default()
        };
        let text = std::fs::read_to_string(&hq)?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('\t').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        if let (Some(a1), Some(a2), Some(sp), Some(lab)) = (
            col("ans1_text"),
            col("ans2_text"),
            col("factuality_span"),
            col("factuality_label"),
        ) {
            for line in lines {
                let f: Vec<&str> = line.split('\t').collect();
                let (Some(spans), Some(which)) = (
                    f.get(sp).and_then(|s| python_str_list(s)),
                    f.get(lab).and_then(|s| python_str_list(s)),
                ) else {
                    continue;
                };
                u.answers_with_spans += usize::from(!spans.is_empty());
                for (k, s) in spans.iter().enumerate() {
                    let answer = match which.get(k).map(String::as_str) {
                        Some("answer2") => f.get(a2),
                        _ => f.get(a1),
                    };
                    u.spans += 1;
                    u.located += usize::from(answer.and_then(|a| locate(a, s)).is_some());
                }
            }
        }
        out.push(u);
    }
    Ok(out)
}

/// Loads the `hallucination` data from `data` (the datasets root or its
/// `hallucination/` folder).
pub fn load(data: &Path) -> anyhow::Result<TokenDataset> {
    let root = if data.join(TASK).is_dir() {
        data.join(TASK)
    } else {
        data.to_path_buf()
    };
    let files = vec![
        root.join("halueval/qa_one-turn_data.json"),
        root.join("halueval/qa_multi-turn_data.json"),
    ];
    for f in &files {
        if !f.is_file() {
            bail!(
                "{} is missing (pass the datasets root or its `hallucination` folder as --data)",
                f.display()
            );
        }
    }
    let items = read_qa(&files)?;
    let examples = derive(&items);
    let mut note = format!(
        "{} HaluEval QA questions (the one-turn and multi-turn files hold the same questions, \
         knowledge and right answers; their hallucinated answers are merged, {} distinct); \
         first text = `knowledge` + ` ` + `question`, second text = the answer. Derived \
         examples by source: ",
        items.len(),
        items.iter().map(|i| i.hallucinated.len()).sum::<usize>()
    );
    let counts: Vec<String> = Source::ALL
        .iter()
        .map(|s| {
            format!(
                "`{}` {} ({})",
                s.name(),
                examples.iter().filter(|e| e.source == s.name()).count(),
                s.derivation()
            )
        })
        .collect();
    note.push_str(&counts.join("; "));
    let unused = unused_sources(&root)?;
    for u in &unused {
        note.push_str(&format!(
            ". Not trained on: `{}` ({} answers with spans, {} spans, {} located in the answer \
             text): no knowledge context, so the labels judge world knowledge the encoder \
             cannot check against the first text (the query){}",
            u.path.display(),
            u.answers_with_spans,
            u.spans,
            u.located,
            if u.path.ends_with("general_data.json") {
                "; the spans are also coarse (median 43% of the response, a third nearly all of it)"
            } else {
                "; long-form (ELI5) answers far from HaluEval's short QA answers"
            }
        ));
    }
    let distinct: HashSet<&str> = examples.iter().map(|e| e.group.as_str()).collect();
    eprintln!(
        "{}: {} QA items, {} examples in {} groups",
        root.display(),
        items.len(),
        examples.len(),
        distinct.len()
    );
    Ok(TokenDataset {
        labels: LABELS.iter().map(|s| s.to_string()).collect(),
        validated: examples.len(),
        examples,
        sources: files,
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_joined_paragraphs() {
        let k = "Arthur's Magazine (1844–1846) was published in Philadelphia.First for Women \
                 is published by Bauer Media Group in the U.S. It was founded in 1989.";
        let got: Vec<&str> = sentences(k).into_iter().map(|(s, e)| &k[s..e]).collect();
        assert_eq!(
            got,
            [
                "Arthur's Magazine (1844–1846) was published in Philadelphia.",
                "First for Women is published by Bauer Media Group in the U.S. It was founded in 1989."
            ]
        );
    }

    #[test]
    fn candidates_are_numbers_and_capitalised_runs() {
        let s = "The Eiffel Tower in Paris was completed in 1889 by Gustave Eiffel's company.";
        let got: Vec<(&str, bool)> = candidates(s)
            .into_iter()
            .map(|(a, b, n)| (&s[a..b], n))
            .collect();
        assert_eq!(
            got,
            [
                ("1889", true),
                ("Eiffel Tower", false),
                ("Paris", false),
                ("Gustave Eiffel", false)
            ]
        );
    }

    #[test]
    fn substitution_marks_exactly_the_new_words() {
        let s = "The Eiffel Tower in Paris was completed in 1889.";
        let names = ["Napoleon Bonaparte", "Paris", "Berlin"];
        for seed in 0..40 {
            let mut rng = Rng::new(seed);
            let (text, span) = substitute(s, s, &names, &mut rng).unwrap();
            assert_ne!(text, s);
            let new = &text[span.start..span.end];
            assert!(
                !s.contains(new) || new.chars().all(|c| c.is_ascii_digit()),
                "{new}"
            );
            // Everything outside the span is the original text.
            assert!(s.starts_with(&text[..span.start]));
            assert!(s.ends_with(&text[span.end..]));
            assert_eq!(span.kind, HALLUCINATED);
        }
    }

    #[test]
    fn years_move_and_stay_years() {
        let mut rng = Rng::new(3);
        for _ in 0..100 {
            let y: u64 = other_number("1889", &mut rng).parse().unwrap();
            assert!(y != 1889 && (1849..=1929).contains(&y), "{y}");
        }
        let n = other_number("7", &mut rng);
        assert!(n.len() == 1 && n != "7" && n != "0");
    }

    #[test]
    fn locate_exact_then_case_and_whitespace_insensitive() {
        let a = "It's called supersampling. So that each final pixel\n is 4 pixels.";
        assert_eq!(locate(a, "supersampling"), Some((12, 25)));
        let (s, e) = locate(a, "That each final pixel is 4 pixels.").unwrap();
        assert_eq!(&a[s..e], "that each final pixel\n is 4 pixels.");
        assert_eq!(locate(a, "Incomplete answer"), None);
        let k = "Grüße aus Köln";
        let (s, e) = locate(k, "KÖLN").unwrap();
        assert_eq!(&k[s..e], "Köln");
    }

    #[test]
    fn python_lists_parse() {
        assert_eq!(
            python_str_list(r#"['a b', "it's", 'x\'y\\n']"#).unwrap(),
            ["a b", "it's", "x'y\\n"]
        );
        assert_eq!(python_str_list("[]").unwrap(), Vec::<String>::new());
        assert!(python_str_list("nan").is_none());
    }

    fn item(q: &str, right: &str, hallu: &[&str]) -> QaItem {
        QaItem {
            knowledge: "The Eiffel Tower is in Paris. It was completed in 1889 by Gustave Eiffel."
                .into(),
            question: q.into(),
            right: right.into(),
            hallucinated: hallu.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn derived_labels() {
        let items = [
            item(
                "When was it completed?",
                "1889",
                &["It was completed in 1920."],
            ),
            item(
                "Who built it?",
                "gustave Eiffel",
                &["Napoleon built it in Rome."],
            ),
        ];
        let ex = derive(&items);
        for e in &ex {
            assert!(e.first.as_ref().unwrap().ends_with('?'));
            let gold: Vec<&str> = e.gold.iter().map(|s| &e.text[s.start..s.end]).collect();
            match e.source {
                "halueval_qa_right" | "halueval_qa_right_sentence" | "knowledge_copy" => {
                    assert!(gold.is_empty(), "{e:?}")
                }
                "halueval_qa_hallucinated" => {
                    assert_eq!(gold[0], e.text.as_str());
                    assert!(e.gold[1..].iter().all(|s| s.kind == IGNORED_KIND));
                }
                "knowledge_substituted" => {
                    assert_eq!(gold.len(), 1);
                    assert!(
                        !e.first.as_ref().unwrap().contains(gold[0])
                            || gold[0].parse::<u64>().is_ok()
                    );
                }
                other => panic!("unknown source {other}"),
            }
        }
        let right_sentences: Vec<&str> = ex
            .iter()
            .filter(|e| e.source == "halueval_qa_right_sentence")
            .map(|e| e.text.as_str())
            .collect();
        assert_eq!(right_sentences.len(), 2);
        assert!(right_sentences[0].contains("1889") && right_sentences[0].ends_with('.'));
        assert!(ex.iter().any(|e| e.source == "knowledge_substituted"));
        // Groups: one per question.
        assert!(ex
            .iter()
            .all(|e| e.group == "halueval_qa:0" || e.group == "halueval_qa:1"));
    }

    /// Pair alignment with the real tokenizer: the first text's tokens are
    /// ignored by the loss and have type id 0, the answer's have type id 1,
    /// and only the tokens of the substituted words are `hallucinated`.
    #[test]
    fn pair_alignment_labels_answer_tokens_only() {
        use super::super::token_data::{align_windows, IGNORE};
        use crate::sidecar::tokenize::Tokenization;
        let tok = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/base/all-MiniLM-L6-v2/tokenizer.json");
        let tok = Tokenization::load(&tok, 64).unwrap();
        let answer = "It was completed in 1920 by Napoleon.";
        let at = answer.find("1920").unwrap();
        let ex = TokenExample {
            first: Some(
                "The Eiffel Tower is in Paris, completed in 1889. When was it completed?".into(),
            ),
            text: answer.into(),
            gold: vec![
                Span {
                    start: at,
                    end: at + 4,
                    kind: HALLUCINATED.into(),
                },
                Span {
                    start: answer.find("Napoleon").unwrap(),
                    end: answer.len() - 1,
                    kind: HALLUCINATED.into(),
                },
            ],
            group: "g".into(),
            source: "t",
        };
        let labels: Vec<String> = LABELS.iter().map(|s| s.to_string()).collect();
        let rows = align_windows(&tok, &ex, &labels).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        let first_sep = r
            .ids
            .iter()
            .position(|&i| i == r.ids[r.ids.len() - 1])
            .unwrap();
        assert!(r.labels[..=first_sep].iter().all(|&l| l == IGNORE));
        assert!(r.type_ids[..=first_sep].iter().all(|&t| t == 0));
        assert!(r.type_ids[first_sep + 1..].iter().all(|&t| t == 1));
        assert_eq!(*r.labels.last().unwrap(), IGNORE);
        let words: Vec<(&str, u32)> = r
            .offsets
            .iter()
            .zip(&r.labels)
            .filter_map(|(o, &l)| o.map(|(s, e)| (&answer[s..e], l)))
            .collect();
        let hallucinated: Vec<&str> = words.iter().filter(|w| w.1 == 1).map(|w| w.0).collect();
        // "napoleon" may be split into word pieces; all of them are marked.
        assert_eq!(hallucinated.concat().to_lowercase(), "1920napoleon");
        assert!(words.iter().all(|w| w.1 <= 1));
        assert_eq!(words.first().unwrap(), &("It", 0));
    }

    #[test]
    fn restated_and_function_words_of_hallucinated_answers_are_unlabelled() {
        let first = "The Eiffel Tower is in Paris, completed in 1889. When was it completed?";
        let answer = "It was completed in 1920 by Napoleon's army.";
        let got: Vec<&str> = unlabelled_pieces(first, answer)
            .iter()
            .map(|s| &answer[s.start..s.end])
            .collect();
        assert_eq!(got, ["It", "was", "completed", "in", "by", "s", "."]);
    }

    #[test]
    fn qa_files_merge_by_question() {
        let dir = tempfile::tempdir().unwrap();
        let row = |h: &str| {
            serde_json::json!({"knowledge": "K.", "question": "Q?", "right_answer": "R", "hallucinated_answer": h})
                .to_string()
        };
        let a = dir.path().join("a.json");
        let b = dir.path().join("b.json");
        std::fs::write(&a, row("H1") + "\n").unwrap();
        std::fs::write(&b, row("H2") + "\n" + &row("H1") + "\n").unwrap();
        let items = read_qa(&[a, b]).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].hallucinated, ["H1", "H2"]);
    }
}
