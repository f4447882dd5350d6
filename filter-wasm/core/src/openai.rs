//! The OpenAI chat request as the router sees it, and OpenAI-shaped errors.
//!
//! The body is parsed once into borrowed views: top-level fields and messages keep their
//! raw JSON so that a rewrite re-serialises only what changed (see [`crate::mutate`]).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// An error answered to the client as `{"error": {message, type, param, code}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u32,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid_request(
        message: impl Into<String>,
        param: Option<&str>,
        code: &'static str,
    ) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
            code: Some(code),
        }
    }

    pub fn too_large(limit: usize) -> Self {
        ApiError {
            status: 413,
            message: format!("request body is larger than the limit of {limit} bytes"),
            kind: "invalid_request_error",
            param: None,
            code: Some("request_too_large"),
        }
    }

    pub fn model_not_found(model: &str) -> Self {
        ApiError {
            status: 404,
            message: format!("The model '{model}' does not exist or you do not have access to it."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    /// The JSON body.
    pub fn body(&self) -> String {
        serde_json::json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        })
        .to_string()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

/// Roles of the chat format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    Developer,
    User,
    Assistant,
    Tool,
    Function,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "system" => Role::System,
            "developer" => Role::Developer,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" => Role::Tool,
            "function" => Role::Function,
            _ => return None,
        })
    }
}

/// One message: its role, its text (string content, or the text parts joined by newlines)
/// and its raw JSON.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub role: Role,
    pub text: Cow<'a, str>,
    pub raw: &'a RawValue,
}

/// A parsed chat completion request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    /// Top-level fields in the client's order, values still raw.
    pub fields: Vec<(Cow<'a, str>, &'a RawValue)>,
    pub model: Cow<'a, str>,
    pub stream: bool,
    pub messages: Vec<Message<'a>>,
    /// The body this was parsed from.
    pub source: &'a [u8],
}

impl<'a> ChatRequest<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, ApiError> {
        let fields: Fields<'a> = serde_json::from_slice(body).map_err(|e| {
            if e.is_data() {
                ApiError::invalid_request(
                    "request body must be a JSON object",
                    None,
                    "invalid_type",
                )
            } else {
                ApiError::invalid_request(
                    format!("request body is not valid JSON: {e}"),
                    None,
                    "invalid_json",
                )
            }
        })?;
        let fields = fields.0;
        let get = |name: &str| {
            fields
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| *v)
        };

        let model = match get("model") {
            None => {
                return Err(ApiError::invalid_request(
                    "you must provide a model parameter",
                    Some("model"),
                    "missing_required_parameter",
                ))
            }
            Some(raw) => match serde_json::from_str::<Cow<'a, str>>(raw.get()) {
                Ok(m) if !m.trim().is_empty() => m,
                Ok(_) => {
                    return Err(ApiError::invalid_request(
                        "'model' must not be empty",
                        Some("model"),
                        "invalid_value",
                    ))
                }
                Err(_) => {
                    return Err(ApiError::invalid_request(
                        "'model' must be a string",
                        Some("model"),
                        "invalid_type",
                    ))
                }
            },
        };

        let stream = match get("stream") {
            None => false,
            Some(raw) => match serde_json::from_str::<Option<bool>>(raw.get()) {
                Ok(b) => b.unwrap_or(false),
                Err(_) => {
                    return Err(ApiError::invalid_request(
                        "'stream' must be a boolean",
                        Some("stream"),
                        "invalid_type",
                    ))
                }
            },
        };

        let raw_messages = get("messages").ok_or_else(|| {
            ApiError::invalid_request(
                "you must provide a messages parameter",
                Some("messages"),
                "missing_required_parameter",
            )
        })?;
        let list: Vec<&'a RawValue> = serde_json::from_str(raw_messages.get()).map_err(|_| {
            ApiError::invalid_request(
                "'messages' must be an array",
                Some("messages"),
                "invalid_type",
            )
        })?;
        if list.is_empty() {
            return Err(ApiError::invalid_request(
                "'messages' must contain at least one message",
                Some("messages"),
                "empty_array",
            ));
        }
        let messages = list
            .into_iter()
            .enumerate()
            .map(|(i, raw)| parse_message(i, raw))
            .collect::<Result<Vec<_>, _>>()?;

        Ok(ChatRequest {
            fields,
            model,
            stream,
            messages,
            source: body,
        })
    }

    /// The text signals are computed on: the last user message.
    pub fn last_user_text(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.text.as_ref())
            .unwrap_or("")
    }

    pub fn field(&self, name: &str) -> Option<&'a RawValue> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| *v)
    }
}

fn parse_message<'a>(i: usize, raw: &'a RawValue) -> Result<Message<'a>, ApiError> {
    #[derive(Deserialize)]
    struct Wire<'a> {
        #[serde(borrow)]
        role: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        content: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Parts(#[serde(borrow)] Vec<Part<'a>>),
    }
    #[derive(Deserialize)]
    struct Part<'a> {
        #[serde(rename = "type", borrow)]
        kind: Cow<'a, str>,
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    }

    let param = format!("messages[{i}]");
    let wire: Wire<'a> = serde_json::from_str(raw.get()).map_err(|_| {
        ApiError::invalid_request(
            format!("'{param}' must be an object with a 'role'"),
            Some(&param),
            "invalid_type",
        )
    })?;
    let role_name = wire.role.ok_or_else(|| {
        ApiError::invalid_request(
            format!("'{param}.role' is required"),
            Some(&format!("{param}.role")),
            "missing_required_parameter",
        )
    })?;
    let role = Role::parse(&role_name).ok_or_else(|| {
        ApiError::invalid_request(
            format!("'{role_name}' is not a valid role (system, developer, user, assistant, tool, function)"),
            Some(&format!("{param}.role")),
            "invalid_value",
        )
    })?;
    let text = match wire.content {
        None => Cow::Borrowed(""),
        Some(c) if c.get() == "null" => Cow::Borrowed(""),
        Some(c) => match serde_json::from_str::<Content<'a>>(c.get()) {
            Ok(Content::Text(t)) => t,
            Ok(Content::Parts(parts)) => {
                let mut texts = parts
                    .into_iter()
                    .filter(|p| p.kind == "text" || p.kind == "input_text")
                    .filter_map(|p| p.text);
                match (texts.next(), texts.next()) {
                    (None, _) => Cow::Borrowed(""),
                    (Some(one), None) => one,
                    (Some(a), Some(b)) => {
                        let mut s = String::with_capacity(a.len() + b.len() + 1);
                        s.push_str(&a);
                        s.push('\n');
                        s.push_str(&b);
                        for t in texts {
                            s.push('\n');
                            s.push_str(&t);
                        }
                        Cow::Owned(s)
                    }
                }
            }
            Err(_) => {
                return Err(ApiError::invalid_request(
                    format!("'{param}.content' must be a string or an array of content parts"),
                    Some(&format!("{param}.content")),
                    "invalid_type",
                ))
            }
        },
    };
    Ok(Message { role, text, raw })
}

/// Top-level object fields in order, values left raw.
struct Fields<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Fields<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Fields<'a>, M::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    let v: &'de RawValue = m.next_value()?;
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
            fn visit_seq<S: SeqAccess<'de>>(self, _: S) -> Result<Fields<'a>, S::Error> {
                Err(de::Error::invalid_type(de::Unexpected::Seq, &self))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Writes `s` as a JSON string literal.
pub fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ChatRequest<'_>, ApiError> {
        ChatRequest::parse(s.as_bytes())
    }

    #[test]
    fn parses_string_and_part_contents() {
        let body = r#"{"model":"MoM","stream":true,"messages":[
            {"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"hello"},{"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"world"}]},
            {"role":"assistant","content":null,"tool_calls":[]},
            {"role":"user","content":"what is 2+2?"}]}"#;
        let r = parse(body).unwrap();
        assert_eq!(r.model, "MoM");
        assert!(r.stream);
        assert_eq!(r.messages.len(), 4);
        assert_eq!(r.messages[1].text, "hello\nworld");
        assert_eq!(r.last_user_text(), "what is 2+2?");
        assert_eq!(r.fields.len(), 3);
    }

    #[test]
    fn escaped_strings_are_decoded() {
        let r =
            parse(r#"{"model":"a\u0041","messages":[{"role":"user","content":"line\n\"q\""}]}"#)
                .unwrap();
        assert_eq!(r.model, "aA");
        assert_eq!(r.last_user_text(), "line\n\"q\"");
    }

    #[test]
    fn bad_inputs_are_400_with_param() {
        let cases = [
            ("{not json", None, "invalid_json"),
            ("[1,2]", None, "invalid_type"),
            (
                r#"{"messages":[{"role":"user","content":"x"}]}"#,
                Some("model"),
                "missing_required_parameter",
            ),
            (
                r#"{"model":3,"messages":[]}"#,
                Some("model"),
                "invalid_type",
            ),
            (
                r#"{"model":"m"}"#,
                Some("messages"),
                "missing_required_parameter",
            ),
            (
                r#"{"model":"m","messages":{}}"#,
                Some("messages"),
                "invalid_type",
            ),
            (
                r#"{"model":"m","messages":[]}"#,
                Some("messages"),
                "empty_array",
            ),
            (
                r#"{"model":"m","messages":["hi"]}"#,
                Some("messages[0]"),
                "invalid_type",
            ),
            (
                r#"{"model":"m","messages":[{"content":"hi"}]}"#,
                Some("messages[0].role"),
                "missing_required_parameter",
            ),
            (
                r#"{"model":"m","messages":[{"role":"robot","content":"hi"}]}"#,
                Some("messages[0].role"),
                "invalid_value",
            ),
            (
                r#"{"model":"m","messages":[{"role":"user","content":5}]}"#,
                Some("messages[0].content"),
                "invalid_type",
            ),
            (
                r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#,
                Some("stream"),
                "invalid_type",
            ),
        ];
        for (body, param, code) in cases {
            let e = parse(body).expect_err(body);
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}");
            assert_eq!(e.code, Some(code), "{body}");
            let v: serde_json::Value = serde_json::from_str(&e.body()).unwrap();
            assert_eq!(v["error"]["type"], "invalid_request_error");
        }
    }
}
