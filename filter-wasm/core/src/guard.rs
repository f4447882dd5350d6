//! The request guards: jailbreak and PII verdicts from the sidecar's answers over every
//! message of the conversation, and PII masking of the forwarded messages.

use serde_json::Value;
use vsr_proto::v1 as pb;

use crate::signals::model::task;

/// The label the jailbreak task uses for harmless text; every other label is a type of attack.
pub const BENIGN: &str = "benign";

#[derive(Debug, Clone, PartialEq)]
pub struct JailbreakVerdict {
    /// The most likely non-benign label.
    pub kind: String,
    /// 1 − P(benign), the worst over all checked messages.
    pub confidence: f32,
}

/// The worst jailbreak verdict over `results` (one task result list per checked text).
pub fn jailbreak<'a>(
    results: impl Iterator<Item = &'a pb::TaskResult>,
) -> Option<JailbreakVerdict> {
    let mut worst: Option<JailbreakVerdict> = None;
    for r in results.filter(|r| r.task == task::JAILBREAK) {
        let Some(pb::task_result::Output::Sequence(seq)) = &r.output else {
            continue;
        };
        let (confidence, kind) = if seq.scores.is_empty() {
            // Only the arg-max is known.
            if seq.label == BENIGN {
                (1.0 - seq.confidence, String::new())
            } else {
                (seq.confidence, seq.label.clone())
            }
        } else {
            let benign: f32 = seq
                .scores
                .iter()
                .filter(|s| s.label == BENIGN)
                .map(|s| s.score)
                .sum();
            let kind = seq
                .scores
                .iter()
                .filter(|s| s.label != BENIGN)
                .max_by(|a, b| a.score.total_cmp(&b.score))
                .map(|s| s.label.clone())
                .unwrap_or_default();
            (1.0 - benign, kind)
        };
        if worst.as_ref().is_none_or(|w| confidence > w.confidence) {
            worst = Some(JailbreakVerdict {
                kind: if kind.is_empty() {
                    "jailbreak".into()
                } else {
                    kind
                },
                confidence: confidence.clamp(0.0, 1.0),
            });
        }
    }
    worst
}

/// One PII entity in one checked text.
#[derive(Debug, Clone, PartialEq)]
pub struct PiiSpan {
    /// Which checked text (0 = the prompt, then the extra texts in order).
    pub text: usize,
    pub entity_type: String,
    pub byte_start: usize,
    pub byte_end: usize,
}

/// Entities at or above `threshold` whose type is not allowed.
pub fn denied_pii<'a>(
    per_text: impl Iterator<Item = &'a [pb::TaskResult]>,
    threshold: f32,
    allowed: &[String],
) -> Vec<PiiSpan> {
    let mut out = Vec::new();
    for (i, results) in per_text.enumerate() {
        for r in results.iter().filter(|r| r.task == task::PII) {
            let Some(pb::task_result::Output::Tokens(tokens)) = &r.output else {
                continue;
            };
            for e in &tokens.entities {
                if e.score < threshold || allowed.iter().any(|a| a.eq_ignore_ascii_case(&e.r#type))
                {
                    continue;
                }
                out.push(PiiSpan {
                    text: i,
                    entity_type: e.r#type.clone(),
                    byte_start: e.byte_start as usize,
                    byte_end: e.byte_end as usize,
                });
            }
        }
    }
    out
}

/// Distinct entity types, sorted, comma-separated (for headers: types only, never text).
pub fn types_list(spans: &[PiiSpan]) -> String {
    let mut types: Vec<&str> = spans.iter().map(|s| s.entity_type.as_str()).collect();
    types.sort_unstable();
    types.dedup();
    types.join(",")
}

/// `text` with each span replaced by `<TYPE>`. Overlapping spans merge (the first type
/// wins); spans off char boundaries or outside the text are ignored.
pub fn mask_text(text: &str, spans: &[(usize, usize, &str)]) -> String {
    let mut spans: Vec<_> = spans
        .iter()
        .filter(|(s, e, _)| {
            s < e && *e <= text.len() && text.is_char_boundary(*s) && text.is_char_boundary(*e)
        })
        .collect();
    spans.sort_by_key(|(s, e, _)| (*s, std::cmp::Reverse(*e)));
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (s, e, kind) in spans {
        if *s < at {
            at = at.max(*e);
            continue;
        }
        out.push_str(&text[at..*s]);
        out.push('<');
        out.push_str(kind);
        out.push('>');
        at = *e;
    }
    out.push_str(&text[at..]);
    out
}

/// A message's raw JSON with its text masked. `joined` spans are byte offsets into the
/// message text as the router sees it (string content, or text parts joined by `\n`);
/// each text part is masked where the spans fall. Returns (new raw JSON, new joined text).
pub fn mask_message(raw: &str, spans: &[(usize, usize, &str)]) -> Option<(String, String)> {
    let mut msg: Value = serde_json::from_str(raw).ok()?;
    let content = msg.get_mut("content")?;
    match content {
        Value::String(s) => {
            let masked = mask_text(s, spans);
            *s = masked.clone();
            Some((msg.to_string(), masked))
        }
        Value::Array(parts) => {
            let mut offset = 0usize;
            let mut joined = Vec::new();
            for p in parts.iter_mut() {
                let is_text = matches!(
                    p.get("type").and_then(Value::as_str),
                    Some("text" | "input_text")
                );
                let Some(Value::String(t)) = p.get_mut("text").filter(|_| is_text) else {
                    continue;
                };
                let len = t.len();
                let local: Vec<(usize, usize, &str)> = spans
                    .iter()
                    .filter(|(s, e, _)| *s < offset + len && *e > offset)
                    .map(|(s, e, k)| (s.saturating_sub(offset), (e - offset).min(len), *k))
                    .collect();
                let masked = mask_text(t, &local);
                *t = masked.clone();
                joined.push(masked);
                offset += len + 1;
            }
            Some((msg.to_string(), joined.join("\n")))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jb(label: &str, benign: f32) -> pb::TaskResult {
        pb::TaskResult {
            task: "jailbreak".into(),
            output: Some(pb::task_result::Output::Sequence(
                pb::SequenceClassification {
                    label: label.into(),
                    confidence: benign.max(1.0 - benign),
                    scores: vec![
                        pb::LabelScore {
                            label: "benign".into(),
                            score: benign,
                        },
                        pb::LabelScore {
                            label: "jailbreak".into(),
                            score: 1.0 - benign,
                        },
                    ],
                },
            )),
        }
    }

    #[test]
    fn worst_message_decides() {
        let results = [jb("benign", 0.9), jb("jailbreak", 0.05)];
        let v = jailbreak(results.iter()).unwrap();
        assert_eq!(v.kind, "jailbreak");
        assert!((v.confidence - 0.95).abs() < 1e-6);
        assert!(jailbreak(std::iter::empty()).is_none());
    }

    #[test]
    fn masking_strings_and_parts() {
        let text = "mail bob@x.io or call 555-1234";
        assert_eq!(
            mask_text(text, &[(5, 13, "EMAIL_ADDRESS"), (22, 30, "PHONE_NUMBER")]),
            "mail <EMAIL_ADDRESS> or call <PHONE_NUMBER>"
        );
        // Overlaps merge into one placeholder covering both; bad offsets are ignored.
        assert_eq!(
            mask_text("abcdef", &[(1, 4, "A"), (2, 5, "B"), (9, 12, "C")]),
            "a<A>f"
        );
        assert_eq!(mask_text("é!", &[(1, 2, "X")]), "é!");

        let raw = r#"{"role":"user","content":[{"type":"text","text":"I am Ann"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"ssn 078-05-1120"}]}"#;
        // Joined text: "I am Ann\nssn 078-05-1120"; the SSN is at 13..24.
        let (new_raw, joined) = mask_message(raw, &[(13, 24, "US_SSN")]).unwrap();
        assert_eq!(joined, "I am Ann\nssn <US_SSN>");
        let v: Value = serde_json::from_str(&new_raw).unwrap();
        assert_eq!(v["content"][2]["text"], "ssn <US_SSN>");
        assert_eq!(v["content"][1]["image_url"]["url"], "u");
    }
}
