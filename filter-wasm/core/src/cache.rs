//! The semantic cache key. The sidecar compares embeddings only inside one partition, so
//! the partition holds everything that must match exactly: the selected model, a hash of
//! the forwarded request minus the last user message (system prompt, earlier turns,
//! tools, sampling parameters, reasoning switches) and the prompt's negation markers, so
//! "turn on the lights" never answers "turn off the lights" however close the vectors are.

use sha2::{Digest, Sha256};

use crate::openai::{ChatRequest, Role};

/// Fields that change how an answer is delivered, not what it says.
const DELIVERY_FIELDS: [&str; 4] = ["stream", "stream_options", "user", "metadata"];

/// Words that flip a request's meaning while barely moving its embedding.
const NEGATIONS: [&str; 16] = [
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot",
    "off", "disable", "stop", "dont", "avoid", "except",
];

/// The sorted negation markers of `text` (`n't` contractions count as `not`).
pub fn negation_signature(text: &str) -> String {
    let mut found: Vec<&str> = Vec::new();
    for word in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '’'))
        .filter(|w| !w.is_empty())
    {
        let lower = word.to_lowercase();
        let marker = if lower.ends_with("n't") || lower.ends_with("n’t") {
            Some("not")
        } else {
            NEGATIONS.iter().copied().find(|n| *n == lower)
        };
        if let Some(m) = marker {
            if !found.contains(&m) {
                found.push(m);
            }
        }
    }
    found.sort_unstable();
    found.join("+")
}

/// The partition of a forwarded request (already rewritten for `model`).
pub fn partition(model: &str, forwarded: &ChatRequest<'_>) -> String {
    let last_user = forwarded
        .messages
        .iter()
        .rposition(|m| m.role == Role::User);
    let mut h = Sha256::new();
    let mut feed = |tag: &str, bytes: &[u8]| {
        h.update((tag.len() as u64).to_le_bytes());
        h.update(tag.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for (k, v) in &forwarded.fields {
        if k == "messages" || DELIVERY_FIELDS.contains(&k.as_ref()) {
            continue;
        }
        feed(k, v.get().as_bytes());
    }
    for (i, m) in forwarded.messages.iter().enumerate() {
        if Some(i) == last_user {
            feed("last_user", b"");
        } else {
            feed("message", m.raw.get().as_bytes());
        }
    }
    let digest: String = h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let negations = negation_signature(forwarded.last_user_text());
    format!("{model}|{digest}|{negations}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(body: &str) -> String {
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        partition("m", &req)
    }

    #[test]
    fn negations() {
        assert_eq!(negation_signature("Turn on the lights"), "");
        assert_eq!(negation_signature("Turn off the lights"), "off");
        assert_eq!(
            negation_signature("Why don't cats NOT like water, no?"),
            "no+not"
        );
    }

    #[test]
    fn what_counts_in_the_partition() {
        let a = part(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"how tall is everest"}]}"#,
        );
        // The last user message and delivery options do not count.
        let b = part(
            r#"{"model":"m","stream":true,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"what is the height of everest"}]}"#,
        );
        assert_eq!(a, b);
        // A different system prompt, sampling parameter or negation does.
        let c = part(
            r#"{"model":"m","messages":[{"role":"system","content":"be verbose"},{"role":"user","content":"how tall is everest"}]}"#,
        );
        let d = part(
            r#"{"model":"m","temperature":1.5,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"how tall is everest"}]}"#,
        );
        let e = part(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"how tall is everest not"}]}"#,
        );
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e);
    }
}
