//! Rewrites a chat request body. Unchanged fields and messages are copied as the client
//! sent them (raw JSON); only the model, reasoning fields and the system message are
//! written anew. This keeps the per-request cost near one copy of the body.

use serde_json::{Map, Value};

use crate::config::SystemPromptMode;
use crate::openai::{json_string, ChatRequest, Role};

/// How the reasoning switch reaches the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum ReasoningEdit<'a> {
    /// `chat_template_kwargs: {<param>: on}`, merged into what the client sent.
    TemplateKwarg { param: &'a str, on: bool },
    /// `<param>: <effort>`; None removes the field (reasoning off).
    Effort {
        param: &'a str,
        effort: Option<&'a str>,
    },
}

#[derive(Debug, Clone, Default)]
pub struct Edits<'a> {
    pub model: Option<&'a str>,
    pub reasoning: Option<ReasoningEdit<'a>>,
    pub system_prompt: Option<(&'a str, SystemPromptMode)>,
    /// Replaced messages: (index, new raw JSON, new text), e.g. PII masked.
    pub messages: &'a [(usize, String, String)],
}

/// Writes the request with `edits` applied.
pub fn rewrite(req: &ChatRequest<'_>, edits: &Edits<'_>) -> Vec<u8> {
    let mut out = String::with_capacity(
        req.fields
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 256,
    );
    out.push('{');
    let mut first = true;
    let mut push = |out: &mut String, key: &str, value: &str| {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(&json_string(key));
        out.push(':');
        out.push_str(value);
    };

    let (kwargs_param, effort_param) = match &edits.reasoning {
        Some(ReasoningEdit::TemplateKwarg { .. }) => (Some("chat_template_kwargs"), None),
        Some(ReasoningEdit::Effort { param, .. }) => (None, Some(*param)),
        None => (None, None),
    };
    let mut wrote_reasoning = false;

    for (key, raw) in &req.fields {
        let key = key.as_ref();
        match key {
            "model" if edits.model.is_some() => {
                push(&mut out, key, &json_string(edits.model.unwrap_or_default()));
            }
            "messages" if edits.system_prompt.is_some() || !edits.messages.is_empty() => {
                push(
                    &mut out,
                    key,
                    &rewrite_messages(req, edits.system_prompt, edits.messages),
                );
            }
            _ if Some(key) == kwargs_param => {
                if let Some(ReasoningEdit::TemplateKwarg { param, on }) = &edits.reasoning {
                    let mut map =
                        serde_json::from_str::<Map<String, Value>>(raw.get()).unwrap_or_default();
                    map.insert(param.to_string(), Value::Bool(*on));
                    push(&mut out, key, &Value::Object(map).to_string());
                    wrote_reasoning = true;
                }
            }
            _ if Some(key) == effort_param => {
                if let Some(ReasoningEdit::Effort {
                    effort: Some(e), ..
                }) = &edits.reasoning
                {
                    push(&mut out, key, &json_string(e));
                }
                wrote_reasoning = true;
            }
            _ => push(&mut out, key, raw.get()),
        }
    }
    if !wrote_reasoning {
        match &edits.reasoning {
            Some(ReasoningEdit::TemplateKwarg { param, on }) => {
                push(
                    &mut out,
                    "chat_template_kwargs",
                    &format!("{{{}:{on}}}", json_string(param)),
                );
            }
            Some(ReasoningEdit::Effort {
                param,
                effort: Some(e),
            }) => push(&mut out, param, &json_string(e)),
            _ => {}
        }
    }
    out.push('}');
    out.into_bytes()
}

fn rewrite_messages(
    req: &ChatRequest<'_>,
    system: Option<(&str, SystemPromptMode)>,
    overrides: &[(usize, String, String)],
) -> String {
    let replaced = |i: usize| overrides.iter().find(|(j, _, _)| *j == i);
    let Some((prompt, mode)) = system else {
        let mut out = String::from("[");
        for (i, m) in req.messages.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(replaced(i).map_or(m.raw.get(), |(_, raw, _)| raw.as_str()));
        }
        out.push(']');
        return out;
    };
    let system_at = req.messages.iter().position(|m| m.role == Role::System);
    let new_system = |content: &str| {
        format!(
            "{{\"role\":\"system\",\"content\":{}}}",
            json_string(content)
        )
    };
    let mut out = String::with_capacity(
        req.messages
            .iter()
            .map(|m| m.raw.get().len() + 1)
            .sum::<usize>()
            + prompt.len()
            + 64,
    );
    out.push('[');
    if system_at.is_none() {
        out.push_str(&new_system(prompt));
    }
    for (i, m) in req.messages.iter().enumerate() {
        if i > 0 || system_at.is_none() {
            out.push(',');
        }
        let (raw, text) = match replaced(i) {
            Some((_, raw, text)) => (raw.as_str(), text.as_str()),
            None => (m.raw.get(), m.text.as_ref()),
        };
        if Some(i) == system_at {
            let content = match mode {
                SystemPromptMode::Replace => prompt.to_string(),
                SystemPromptMode::Insert if text.is_empty() => prompt.to_string(),
                SystemPromptMode::Insert => format!("{prompt}\n\n{text}"),
            };
            out.push_str(&new_system(&content));
        } else {
            out.push_str(raw);
        }
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(body: Value, edits: Edits<'_>) -> Value {
        let text = body.to_string();
        let req = ChatRequest::parse(text.as_bytes()).unwrap();
        serde_json::from_slice(&rewrite(&req, &edits)).unwrap()
    }

    #[test]
    fn only_the_model_changes_and_order_is_kept() {
        let body = r#"{"model":"MoM","temperature":0.2,"messages":[{"role":"user","content":"hi"}],"x":{"y":[1,2]}}"#;
        let req = ChatRequest::parse(body.as_bytes()).unwrap();
        let out = rewrite(
            &req,
            &Edits {
                model: Some("qwen"),
                ..Default::default()
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"model":"qwen","temperature":0.2,"messages":[{"role":"user","content":"hi"}],"x":{"y":[1,2]}}"#
        );
    }

    #[test]
    fn template_kwargs_are_merged_or_added() {
        let edits = || Edits {
            reasoning: Some(ReasoningEdit::TemplateKwarg {
                param: "enable_thinking",
                on: true,
            }),
            ..Default::default()
        };
        let msgs = json!([{"role":"user","content":"hi"}]);
        let v = apply(json!({"model":"m","messages":msgs}), edits());
        assert_eq!(v["chat_template_kwargs"], json!({"enable_thinking": true}));
        let v = apply(
            json!({"model":"m","messages":msgs,"chat_template_kwargs":{"other":1,"enable_thinking":false}}),
            edits(),
        );
        assert_eq!(
            v["chat_template_kwargs"],
            json!({"other": 1, "enable_thinking": true})
        );
    }

    #[test]
    fn effort_is_set_or_removed() {
        let msgs = json!([{"role":"user","content":"hi"}]);
        let on = Edits {
            reasoning: Some(ReasoningEdit::Effort {
                param: "reasoning_effort",
                effort: Some("high"),
            }),
            ..Default::default()
        };
        assert_eq!(
            apply(json!({"model":"m","messages":msgs}), on)["reasoning_effort"],
            "high"
        );
        let off = Edits {
            reasoning: Some(ReasoningEdit::Effort {
                param: "reasoning_effort",
                effort: None,
            }),
            ..Default::default()
        };
        let v = apply(
            json!({"model":"m","messages":msgs,"reasoning_effort":"low"}),
            off,
        );
        assert!(v.get("reasoning_effort").is_none());
    }

    #[test]
    fn system_prompt_replace_and_insert() {
        let with_system = json!({"model":"m","messages":[{"role":"system","content":"old"},{"role":"user","content":"q"}]});
        let without = json!({"model":"m","messages":[{"role":"user","content":"q"}]});
        let edit = |mode| Edits {
            system_prompt: Some(("You are a tutor.", mode)),
            ..Default::default()
        };

        let v = apply(with_system.clone(), edit(SystemPromptMode::Replace));
        assert_eq!(
            v["messages"],
            json!([{"role":"system","content":"You are a tutor."},{"role":"user","content":"q"}])
        );
        let v = apply(with_system, edit(SystemPromptMode::Insert));
        assert_eq!(v["messages"][0]["content"], "You are a tutor.\n\nold");
        for mode in [SystemPromptMode::Replace, SystemPromptMode::Insert] {
            let v = apply(without.clone(), edit(mode));
            assert_eq!(
                v["messages"],
                json!([{"role":"system","content":"You are a tutor."},{"role":"user","content":"q"}])
            );
        }
    }
}
