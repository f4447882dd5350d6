//! The served `pii` task: the deterministic recognizers ([`super::recognizers`])
//! united with the spans of the trained token head, each entity reported once.
//!
//! Overlap policy: a recognizer span of a structurally validated type
//! ([`VALIDATED_TYPES`]: Luhn, mod-97, SSA ranges, address parsers) always
//! wins; otherwise the longer span wins, then the higher score, then the
//! recognizer. Without a trained head the task answers from the
//! recognizers alone.

use super::decode::{CharIndex, Entity, SOURCE_PATTERN};
use super::recognizers;

/// The task name that gets the recognizers.
pub const PII_TASK: &str = "pii";

/// Recognizer types whose spans passed a checksum or structural check: they
/// keep their type over any overlapping model span.
pub const VALIDATED_TYPES: [&str; 4] = ["CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS"];

/// Spans of the deterministic recognizers as entities (char and byte offsets).
pub fn pattern_entities(text: &str) -> Vec<Entity> {
    let index = CharIndex::new(text);
    recognizers::recognize(text)
        .into_iter()
        .map(|s| Entity {
            kind: s.entity_type.to_string(),
            start: index.char_at(s.byte_start),
            end: index.char_end(s.byte_end),
            byte_start: s.byte_start,
            byte_end: s.byte_end,
            score: s.score,
            source: SOURCE_PATTERN,
        })
        .collect()
}

/// Recognizer spans ∪ `model` spans of `text`, without overlaps (see the
/// module docs), sorted by position.
pub fn union(text: &str, model: Vec<Entity>) -> Vec<Entity> {
    let mut all = pattern_entities(text);
    all.extend(model);
    let validated =
        |e: &Entity| e.source == SOURCE_PATTERN && VALIDATED_TYPES.contains(&e.kind.as_str());
    all.sort_by(|a, b| {
        validated(b)
            .cmp(&validated(a))
            .then((b.end - b.start).cmp(&(a.end - a.start)))
            .then(b.score.total_cmp(&a.score))
            .then((b.source == SOURCE_PATTERN).cmp(&(a.source == SOURCE_PATTERN)))
            .then(a.byte_start.cmp(&b.byte_start))
    });
    let mut kept: Vec<Entity> = Vec::with_capacity(all.len());
    for e in all {
        if kept
            .iter()
            .all(|k| e.byte_end <= k.byte_start || e.byte_start >= k.byte_end)
        {
            kept.push(e);
        }
    }
    kept.sort_by_key(|e| e.byte_start);
    kept
}

#[cfg(test)]
mod tests {
    use super::super::decode::SOURCE_MODEL;
    use super::*;

    fn model(text: &str, piece: &str, kind: &str, score: f32) -> Entity {
        let b = text.find(piece).unwrap();
        let index = CharIndex::new(text);
        Entity {
            kind: kind.into(),
            start: index.char_at(b),
            end: index.char_end(b + piece.len()),
            byte_start: b,
            byte_end: b + piece.len(),
            score,
            source: SOURCE_MODEL,
        }
    }

    fn show<'a>(text: &'a str, es: &[Entity]) -> Vec<(&'a str, String, &'static str)> {
        es.iter()
            .map(|e| (&text[e.byte_start..e.byte_end], e.kind.clone(), e.source))
            .collect()
    }

    #[test]
    fn recognizers_alone_with_char_offsets() {
        let text = "Grüße, SSN 078-05-1120";
        let es = union(text, vec![]);
        assert_eq!(
            show(text, &es),
            [("078-05-1120", "US_SSN".into(), "pattern")]
        );
        assert_eq!((es[0].start, es[0].end), (11, 22));
        assert_eq!((es[0].byte_start, es[0].byte_end), (13, 24));
    }

    #[test]
    fn validated_type_beats_a_longer_model_span() {
        let text = "card 4111 1111 1111 1111 now";
        let es = union(
            text,
            vec![model(text, "4111 1111 1111 1111 now", "DATE_TIME", 0.99)],
        );
        assert_eq!(
            show(text, &es),
            [("4111 1111 1111 1111", "CREDIT_CARD".into(), "pattern")]
        );
    }

    #[test]
    fn otherwise_longer_then_higher_score() {
        let text = "Ask John Smith at john.smith@example.com in Berlin";
        let es = union(
            text,
            vec![
                model(text, "John Smith", "PERSON", 0.9),
                model(text, "john.smith", "PERSON", 0.8),
                model(text, "Berlin", "LOCATION", 0.95),
            ],
        );
        assert_eq!(
            show(text, &es),
            [
                ("John Smith", "PERSON".into(), "model"),
                ("john.smith@example.com", "EMAIL_ADDRESS".into(), "pattern"),
                ("Berlin", "LOCATION".into(), "model"),
            ]
        );
        // A longer model span wins over an unvalidated recognizer span.
        let text = "visit Acme Corp.com today";
        let es = union(
            text,
            vec![model(text, "Acme Corp.com", "ORGANIZATION", 0.7)],
        );
        assert_eq!(
            show(text, &es),
            [("Acme Corp.com", "ORGANIZATION".into(), "model")]
        );
    }
}
