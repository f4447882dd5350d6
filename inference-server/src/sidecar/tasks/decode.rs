//! Raw head logits → labels, probabilities and character spans.

/// Result of a sequence (or pair) classification.
#[derive(Debug, Clone, PartialEq)]
pub struct SequenceResult {
    pub label: String,
    pub confidence: f32,
    /// Probability per label, in the task's label order.
    pub scores: Vec<(String, f32)>,
}

/// A merged entity span (character and byte offsets, end exclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: String,
    pub start: usize,
    pub end: usize,
    pub byte_start: usize,
    pub byte_end: usize,
    pub score: f32,
    /// Who found it: [`SOURCE_MODEL`] or [`SOURCE_PATTERN`].
    pub source: &'static str,
}

/// [`Entity::source`] of spans decoded from a token head.
pub const SOURCE_MODEL: &str = "model";
/// [`Entity::source`] of spans found by a deterministic recognizer.
pub const SOURCE_PATTERN: &str = "pattern";

/// One labelled token (character and byte offsets, end exclusive).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLabel {
    pub start: usize,
    pub end: usize,
    pub byte_start: usize,
    pub byte_end: usize,
    pub label: String,
    pub score: f32,
}

/// Numerically stable softmax.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

/// Sequence logits → label, confidence and per-label probabilities.
pub fn sequence(labels: &[String], probs: &[f32]) -> SequenceResult {
    let best = argmax(probs);
    SequenceResult {
        label: labels.get(best).cloned().unwrap_or_default(),
        confidence: probs.get(best).copied().unwrap_or(0.0),
        scores: labels.iter().cloned().zip(probs.iter().copied()).collect(),
    }
}

/// Maps byte offsets of `text` to character offsets.
pub struct CharIndex {
    /// `starts[i]` = byte offset of char `i`; one extra entry = `text.len()`.
    starts: Vec<usize>,
}

impl CharIndex {
    pub fn new(text: &str) -> Self {
        let mut starts: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        starts.push(text.len());
        Self { starts }
    }

    /// Character index of the char containing byte `b` (or the end).
    pub fn char_at(&self, b: usize) -> usize {
        match self.starts.binary_search(&b) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        }
    }

    /// Character end for an exclusive byte end (rounded up to a char boundary).
    pub fn char_end(&self, b: usize) -> usize {
        match self.starts.binary_search(&b) {
            Ok(i) | Err(i) => i,
        }
    }
}

/// Splits a BIO/IO tag into (is_begin, entity type); `None` for `O`.
fn tag(label: &str) -> Option<(bool, &str)> {
    if label == "O" {
        None
    } else if let Some(t) = label.strip_prefix("B-") {
        Some((true, t))
    } else if let Some(t) = label.strip_prefix("I-") {
        Some((false, t))
    } else {
        Some((false, label))
    }
}

/// Per-token probability rows → labelled tokens. `offsets[i]` is the byte
/// range of token `i` in `text`, `None` for special tokens (skipped).
pub fn token_labels(
    labels: &[String],
    probs: &[Vec<f32>],
    offsets: &[Option<(usize, usize)>],
    text: &str,
) -> Vec<TokenLabel> {
    let index = CharIndex::new(text);
    probs
        .iter()
        .zip(offsets)
        .filter_map(|(p, off)| {
            let (bs, be) = (*off)?;
            let best = argmax(p);
            Some(TokenLabel {
                start: index.char_at(bs),
                end: index.char_end(be),
                byte_start: bs,
                byte_end: be,
                label: labels.get(best).cloned().unwrap_or_default(),
                score: p.get(best).copied().unwrap_or(0.0),
            })
        })
        .collect()
}

/// A token head's raw logits for one text (row-major `[tokens, num_labels]`,
/// special tokens included, `offsets` as in [`token_labels`]) → entity spans.
pub fn token_entities(
    labels: &[String],
    logits: &[f32],
    num_labels: usize,
    offsets: &[Option<(usize, usize)>],
    text: &str,
) -> Vec<Entity> {
    let probs: Vec<Vec<f32>> = logits.chunks_exact(num_labels).map(softmax).collect();
    let mut tokens = token_labels(labels, &probs, offsets, text);
    let rows: Vec<&Vec<f32>> = probs
        .iter()
        .zip(offsets)
        .filter_map(|(p, off)| off.map(|_| p))
        .collect();
    constrain_bio(labels, &rows, &mut tokens, text);
    trim_punctuation_words(join_adjacent(entities(&tokens, text), text), text)
}

/// Cuts the words at either end of a span that hold no letter or digit,
/// and drops spans left with none: on informal text the head runs a name
/// into a dash or bracket ("Toni Kroos -", "[ Staaaahp") or tags a lone
/// "[" or "*"; no entity begins or ends with a word of punctuation alone.
fn trim_punctuation_words(spans: Vec<Entity>, text: &str) -> Vec<Entity> {
    spans
        .into_iter()
        .filter_map(|mut e| {
            let s = text.get(e.byte_start..e.byte_end)?;
            // Byte offset of a word of `s` (a sub-slice of it) in `s`.
            let at = |w: &str| w.as_ptr() as usize - s.as_ptr() as usize;
            let mut kept = s
                .split_whitespace()
                .filter(|w| w.chars().any(char::is_alphanumeric));
            let first = kept.next()?;
            let last = kept.next_back().unwrap_or(first);
            let (a, b) = (at(first), at(last) + last.len());
            e.start += s[..a].chars().count();
            e.end -= s[b..].chars().count();
            e.byte_end = e.byte_start + b;
            e.byte_start += a;
            Some(e)
        })
        .collect()
}

/// Joins spans of one type separated only by spaces or tabs, or touching:
/// the head often opens a second `B-` inside a multi-word name ("Maja S" +
/// "Hermansen", "Unionville (" + "Orange)"), while two distinct entities of
/// one type with nothing but a space between them are rare in text. A line
/// break still separates.
fn join_adjacent(spans: Vec<Entity>, text: &str) -> Vec<Entity> {
    let mut out: Vec<(Entity, usize)> = Vec::with_capacity(spans.len());
    for e in spans {
        if let Some((last, n)) = out.last_mut() {
            let gap = text.get(last.byte_end..e.byte_start);
            if last.kind == e.kind && gap.is_some_and(|g| g.chars().all(|c| c == ' ' || c == '\t'))
            {
                last.end = e.end;
                last.byte_end = e.byte_end;
                last.score = (last.score * *n as f32 + e.score) / (*n + 1) as f32;
                *n += 1;
                continue;
            }
        }
        out.push((e, 1));
    }
    out.into_iter().map(|(e, _)| e).collect()
}

/// Entity types whose spans may continue over a line break: in the
/// presidio sets only addresses do (322 of 6 918 gold spans, all
/// `ADDRESS`/`STREET_ADDRESS`); a name or organisation at the end of one line
/// and the start of the next are two things.
const MULTI_LINE_TYPES: &[&str] = &["STREET_ADDRESS"];

/// Relabels the first piece of every word with the most probable tag
/// sequence in which `I-X` only follows `B-X` or `I-X`, and not across a
/// line break unless X is in [`MULTI_LINE_TYPES`] (Viterbi over
/// log-probabilities). Per-word argmax breaks one entity into pieces of
/// different types ("Ella H. Snider" → PERSON, ORGANIZATION, PERSON) or
/// opens spans on a stray `I-`; the constraint makes the type of a span one
/// decision. `rows[i]` are the probabilities of `tokens[i]`. Label sets
/// without `I-` tags are left as they are.
fn constrain_bio(labels: &[String], rows: &[&Vec<f32>], tokens: &mut [TokenLabel], text: &str) {
    // `inside[j] = Some(k)`: label `j` is `I-X` and label `k` is `B-X`.
    let inside: Vec<Option<usize>> = labels
        .iter()
        .map(|l| {
            let t = l.strip_prefix("I-")?;
            labels.iter().position(|b| b.strip_prefix("B-") == Some(t))
        })
        .collect();
    if inside.iter().all(Option::is_none) {
        return;
    }
    // `I-X` may not cross a line break unless X is a multi-line type.
    let crosses: Vec<bool> = labels
        .iter()
        .map(|l| {
            l.strip_prefix("I-")
                .is_some_and(|t| !MULTI_LINE_TYPES.contains(&t))
        })
        .collect();
    let allowed = |from: Option<usize>, to: usize, line_break: bool| match inside[to] {
        None => true,
        Some(b) => from.is_some_and(|f| f == b || f == to) && !(line_break && crosses[to]),
    };
    let mut prev_end: Option<usize> = None;
    let words: Vec<usize> = (0..tokens.len())
        .filter(|&i| {
            let t = &tokens[i];
            let continues = prev_end == Some(t.byte_start) && inside_word(text, t.byte_start);
            prev_end = Some(t.byte_end);
            !continues
        })
        .collect();
    let n = labels.len();
    let log = |i: usize, j: usize| {
        rows[i]
            .get(j)
            .map_or(f32::NEG_INFINITY, |p| p.max(1e-12).ln())
    };
    let mut score: Vec<f32> = Vec::with_capacity(n);
    let mut back: Vec<Vec<usize>> = Vec::with_capacity(words.len());
    for (w, &i) in words.iter().enumerate() {
        let mut next = vec![f32::NEG_INFINITY; n];
        let mut from = vec![0; n];
        let line_break = i > 0
            && text
                .get(tokens[i - 1].byte_end..tokens[i].byte_start)
                .is_some_and(|gap| gap.contains('\n'));
        for (j, slot) in next.iter_mut().enumerate() {
            if w == 0 {
                if allowed(None, j, false) {
                    *slot = log(i, j);
                }
                continue;
            }
            for (k, &s) in score.iter().enumerate() {
                if s > f32::NEG_INFINITY && allowed(Some(k), j, line_break) && s + log(i, j) > *slot
                {
                    *slot = s + log(i, j);
                    from[j] = k;
                }
            }
        }
        score = next;
        back.push(from);
    }
    let Some(mut j) = score
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(j, _)| j)
    else {
        return;
    };
    for w in (0..words.len()).rev() {
        let i = words[w];
        if let Some(label) = labels.get(j) {
            tokens[i].label = label.clone();
            tokens[i].score = rows[i].get(j).copied().unwrap_or(0.0);
        }
        j = back[w][j];
    }
}

/// Labelled tokens → entity spans: `B-X` starts a span, `I-X`/`X` continues
/// a span of the same type (or starts one), `O` ends it. The first piece of
/// a word decides for the whole word: later pieces (adjacent, letters or
/// digits on both sides) join its span whatever their own tag, or stay out
/// of spans when it was `O`. Punctuation is its own word, so a span never
/// swallows the comma after a name.
pub fn entities(tokens: &[TokenLabel], text: &str) -> Vec<Entity> {
    let mut out: Vec<Entity> = Vec::new();
    let mut open: Option<(Entity, usize)> = None; // (span, token count)
    let mut close = |open: &mut Option<(Entity, usize)>| {
        if let Some((mut e, n)) = open.take() {
            e.score /= n as f32;
            out.push(e);
        }
    };
    let mut prev_end: Option<usize> = None;
    for t in tokens {
        let in_word = prev_end == Some(t.byte_start) && inside_word(text, t.byte_start);
        prev_end = Some(t.byte_end);
        if in_word {
            if open
                .as_ref()
                .is_some_and(|(e, _)| e.byte_end == t.byte_start)
            {
                extend(&mut open, t);
            }
            continue;
        }
        match tag(&t.label) {
            None => close(&mut open),
            Some((begin, kind)) => {
                let same = open.as_ref().is_some_and(|(e, _)| e.kind == kind);
                if same && !begin {
                    extend(&mut open, t);
                } else {
                    close(&mut open);
                    open = Some((
                        Entity {
                            kind: kind.to_string(),
                            start: t.start,
                            end: t.end,
                            byte_start: t.byte_start,
                            byte_end: t.byte_end,
                            score: t.score,
                            source: SOURCE_MODEL,
                        },
                        1,
                    ));
                }
            }
        }
    }
    close(&mut open);
    out
}

/// Whether byte `b` of `text` lies between two letters or digits (a word
/// piece boundary, not a word boundary).
fn inside_word(text: &str, b: usize) -> bool {
    let before = text.get(..b).and_then(|s| s.chars().next_back());
    let after = text.get(b..).and_then(|s| s.chars().next());
    before.is_some_and(char::is_alphanumeric) && after.is_some_and(char::is_alphanumeric)
}

fn extend(open: &mut Option<(Entity, usize)>, t: &TokenLabel) {
    if let Some((e, n)) = open {
        e.end = t.end;
        e.byte_end = t.byte_end;
        e.score += t.score;
        *n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tl(bs: usize, be: usize, label: &str, text: &str) -> TokenLabel {
        let i = CharIndex::new(text);
        TokenLabel {
            start: i.char_at(bs),
            end: i.char_end(be),
            byte_start: bs,
            byte_end: be,
            label: label.into(),
            score: 0.5,
        }
    }

    #[test]
    fn merges_bio_tags_with_char_offsets() {
        let text = "mail é bob@x.io now";
        // "é" is 2 bytes: "mail " 0..5, "é" 5..7, " " 7, "bob" 8..11, "@" 11..12, "x.io" 12..16
        let toks = vec![
            tl(0, 4, "O", text),
            tl(5, 7, "O", text),
            tl(8, 11, "B-EMAIL", text),
            tl(11, 12, "I-EMAIL", text),
            tl(12, 16, "I-EMAIL", text),
            tl(17, 20, "O", text),
        ];
        let e = entities(&toks, text);
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].byte_start, e[0].byte_end), (8, 16));
        assert_eq!((e[0].start, e[0].end), (7, 15));
        assert_eq!(&text[e[0].byte_start..e[0].byte_end], "bob@x.io");
        assert_eq!(e[0].kind, "EMAIL");
    }

    #[test]
    fn first_piece_decides_and_punctuation_stays_out() {
        let text = "Sandra Gairbekov, hi!";
        // sandra | gair ##bek ##ov | , | hi | !
        let toks = vec![
            tl(0, 6, "B-PERSON", text),
            tl(7, 11, "I-PERSON", text),
            tl(11, 14, "B-STREET_ADDRESS", text),
            tl(14, 16, "O", text),
            tl(16, 17, "O", text),
            tl(18, 20, "O", text),
            tl(20, 21, "O", text),
        ];
        let e = entities(&toks, text);
        assert_eq!(e.len(), 1, "{e:?}");
        // The comma right after the name is not glued on by adjacency.
        assert_eq!(&text[e[0].byte_start..e[0].byte_end], "Sandra Gairbekov");
        assert_eq!(e[0].kind, "PERSON");
        assert!((e[0].score - 0.5).abs() < 1e-6);
        // A word whose first piece is O stays out, whatever its later pieces say.
        let text = "hello there";
        let toks = vec![tl(0, 3, "O", text), tl(3, 5, "B-PERSON", text)];
        assert!(entities(&toks, text).is_empty());
    }

    #[test]
    fn begin_tag_splits_adjacent_words() {
        let text = "Ann Bob";
        let toks = vec![tl(0, 3, "B-NAME", text), tl(4, 7, "B-NAME", text)];
        assert_eq!(entities(&toks, text).len(), 2);
    }

    /// Logits that give `label` most of the mass (and `second` the rest).
    fn row(labels: &[String], label: &str, second: &str, p: f32) -> Vec<f32> {
        labels
            .iter()
            .map(|l| {
                if l == label {
                    p.ln()
                } else if l == second {
                    (1.0 - p).ln()
                } else {
                    -30.0
                }
            })
            .collect()
    }

    fn label_set(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// [`token_entities`] over per-token logit rows → (span text, type).
    fn decoded<'t>(
        labels: &[String],
        rows: &[Vec<f32>],
        offsets: &[Option<(usize, usize)>],
        text: &'t str,
    ) -> Vec<(&'t str, String)> {
        token_entities(labels, &rows.concat(), labels.len(), offsets, text)
            .into_iter()
            .map(|e| (&text[e.byte_start..e.byte_end], e.kind))
            .collect()
    }

    #[test]
    fn constrained_decoding_keeps_one_type_per_span() {
        let labels = label_set(&["O", "B-PERSON", "I-PERSON", "B-ORG", "I-ORG"]);
        // "Ella H. Snider": the "." leans to I-ORG, which may not follow
        // I-PERSON; the constrained path keeps one PERSON span.
        let text = "Ella H. Snider";
        let offsets = [
            None,
            Some((0, 4)),
            Some((5, 6)),
            Some((6, 7)),
            Some((8, 14)),
            None,
        ];
        let rows = [
            row(&labels, "O", "B-PERSON", 0.9),
            row(&labels, "B-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.8),
            row(&labels, "I-ORG", "I-PERSON", 0.6),
            row(&labels, "I-PERSON", "O", 0.8),
            row(&labels, "O", "B-PERSON", 0.9),
        ];
        assert_eq!(
            decoded(&labels, &rows, &offsets, text),
            [("Ella H. Snider", "PERSON".to_string())]
        );
        // Plain argmax would have split it.
        let probs: Vec<Vec<f32>> = rows.iter().map(|r| softmax(r)).collect();
        assert_eq!(
            entities(&token_labels(&labels, &probs, &offsets, text), text).len(),
            3
        );
    }

    #[test]
    fn second_begin_on_one_line_joins_but_a_line_break_separates() {
        let labels = label_set(&["O", "B-PERSON", "I-PERSON"]);
        let text = "Maja S Hermansen\nAnn";
        let offsets = [Some((0, 4)), Some((5, 6)), Some((7, 16)), Some((17, 20))];
        let rows = [
            row(&labels, "B-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.9),
            row(&labels, "B-PERSON", "I-PERSON", 0.6),
            row(&labels, "B-PERSON", "O", 0.9),
        ];
        let got: Vec<_> = decoded(&labels, &rows, &offsets, text)
            .into_iter()
            .map(|(t, _)| t)
            .collect();
        assert_eq!(got, ["Maja S Hermansen", "Ann"]);
    }

    #[test]
    fn only_addresses_continue_over_a_line_break() {
        let labels = label_set(&[
            "O",
            "B-PERSON",
            "I-PERSON",
            "B-ORGANIZATION",
            "B-STREET_ADDRESS",
            "I-STREET_ADDRESS",
        ]);
        let text = "Marisa Alves\nLegistorm\n9 Main St\nSpringfield";
        let offsets = [
            Some((0, 6)),
            Some((7, 12)),
            Some((13, 22)),
            Some((23, 24)),
            Some((25, 29)),
            Some((30, 32)),
            Some((33, 44)),
        ];
        // "Legistorm" leans to I-PERSON; "Springfield" to I-STREET_ADDRESS.
        let rows = [
            row(&labels, "B-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "B-ORGANIZATION", 0.6),
            row(&labels, "B-STREET_ADDRESS", "O", 0.9),
            row(&labels, "I-STREET_ADDRESS", "O", 0.9),
            row(&labels, "I-STREET_ADDRESS", "O", 0.9),
            row(&labels, "I-STREET_ADDRESS", "O", 0.9),
        ];
        let got = decoded(&labels, &rows, &offsets, text);
        let want = [
            ("Marisa Alves", "PERSON"),
            ("Legistorm", "ORGANIZATION"),
            ("9 Main St\nSpringfield", "STREET_ADDRESS"),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((t, k), (wt, wk)) in got.iter().zip(want) {
            assert_eq!((*t, k.as_str()), (wt, wk));
        }
    }

    #[test]
    fn touching_spans_of_one_type_join() {
        let labels = label_set(&["O", "B-GPE", "I-GPE"]);
        // unionville | ( | orange | ): the head reopened B-GPE inside.
        let text = "Unionville (Orange) club";
        let offsets = [
            Some((0, 10)),
            Some((11, 12)),
            Some((12, 18)),
            Some((18, 19)),
            Some((20, 24)),
        ];
        let rows = [
            row(&labels, "B-GPE", "O", 0.9),
            row(&labels, "I-GPE", "O", 0.9),
            row(&labels, "B-GPE", "I-GPE", 0.6),
            row(&labels, "I-GPE", "O", 0.9),
            row(&labels, "O", "B-GPE", 0.9),
        ];
        assert_eq!(
            decoded(&labels, &rows, &offsets, text),
            [("Unionville (Orange)", "GPE".to_string())]
        );
    }

    #[test]
    fn punctuation_words_are_cut_from_span_ends() {
        let labels = label_set(&["O", "B-PERSON", "I-PERSON"]);
        // "[ Zoë Kroos - ] lol [": the name ran into the brackets and dash,
        // and a lone "[" was tagged.
        let text = "[ Zoë Kroos - ] lol [";
        let offsets = [
            Some((0, 1)),
            Some((2, 6)),
            Some((7, 12)),
            Some((13, 14)),
            Some((15, 16)),
            Some((17, 20)),
            Some((21, 22)),
        ];
        let rows = [
            row(&labels, "B-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.9),
            row(&labels, "I-PERSON", "O", 0.9),
            row(&labels, "O", "B-PERSON", 0.9),
            row(&labels, "B-PERSON", "O", 0.9),
        ];
        let es = token_entities(&labels, &rows.concat(), labels.len(), &offsets, text);
        assert_eq!(es.len(), 1, "{es:?}");
        assert_eq!(&text[es[0].byte_start..es[0].byte_end], "Zoë Kroos");
        // Character offsets follow ("ë" is two bytes).
        assert_eq!((es[0].start, es[0].end), (2, 11));
        assert_eq!((es[0].byte_start, es[0].byte_end), (2, 12));
    }

    #[test]
    fn softmax_sums_to_one() {
        let p = softmax(&[1.0, 2.0, 3.0]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(
            sequence(&["a".into(), "b".into(), "c".into()], &p).label,
            "c"
        );
    }
}
