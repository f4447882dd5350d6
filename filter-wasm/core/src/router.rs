//! The compiled router: built once per configuration (regexes, rule trees, header values),
//! then asked per request for a [`RoutePlan`].

use std::collections::HashMap;

use crate::config::validate::{parse_access_key, AccessKey, Capabilities};
use crate::config::{
    ConfigError, HeaderMutationPlugin, ModelRef, Plugin, ReasoningKind, SignalKind, Strategy,
    SystemPromptPlugin, UserConfig,
};
use crate::decision::{self, DecisionRule, Rule};
use crate::mutate::{self, Edits, ReasoningEdit};
use crate::openai::{ApiError, ChatRequest};
use crate::signals::keyword::KeywordMatcher;
use crate::signals::SignalSet;

/// Request headers the router owns: a client must not be able to pick a route by sending them.
/// Every routed request sets or removes each of them.
pub const ROUTING_HEADERS: [&str; 3] = [
    headers::SELECTED_MODEL,
    headers::SELECTED_DECISION,
    headers::GATEWAY_MODEL_NAME,
];

pub mod headers {
    pub const SELECTED_MODEL: &str = "x-selected-model";
    pub const SELECTED_DECISION: &str = "x-vsr-selected-decision";
    pub const GATEWAY_MODEL_NAME: &str = "X-Gateway-Model-Name";
    pub const AUTHORIZATION: &str = "authorization";
    pub const RESP_SELECTED_MODEL: &str = "x-vsr-selected-model";
    pub const RESP_SELECTED_DECISION: &str = "x-vsr-selected-decision";
    pub const RESP_SELECTED_REASONING: &str = "x-vsr-selected-reasoning";
    pub const RESP_MATCHED_KEYWORDS: &str = "x-vsr-matched-keywords";
    pub const RESP_INJECTED_SYSTEM_PROMPT: &str = "x-vsr-injected-system-prompt";
}

#[derive(Debug)]
struct Model {
    reasoning: Option<(ReasoningKind, String)>,
    /// `Bearer <key>`, resolved at load time.
    authorization: Option<String>,
}

#[derive(Debug)]
struct CompiledDecision {
    name: String,
    model_ref: ModelRef,
    system_prompt: Option<SystemPromptPlugin>,
    header_mutation: Option<HeaderMutationPlugin>,
}

/// A change to the upstream request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    Set(String, String),
    Add(String, String),
    Remove(String),
}

/// What to do with one chat request.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePlan {
    pub model: String,
    pub decision: Option<String>,
    /// The router chose the model (an auto name was asked for).
    pub auto: bool,
    /// The new body, when it changed.
    pub body: Option<Vec<u8>>,
    pub request_headers: Vec<HeaderOp>,
    /// Added to a 2xx response.
    pub response_headers: Vec<(&'static str, String)>,
}

#[derive(Debug)]
pub struct Router {
    keywords: KeywordMatcher,
    keyword_names: Vec<String>,
    rules: Vec<DecisionRule>,
    decisions: Vec<CompiledDecision>,
    models: HashMap<String, Model>,
    default_model: String,
    auto_names: Vec<String>,
    strategy: Strategy,
    default_effort: String,
    max_body: usize,
    models_json: String,
}

impl Router {
    /// Validates and compiles `cfg`. `env` resolves `${VAR}` access keys.
    pub fn new(
        cfg: &UserConfig,
        env: &dyn Fn(&str) -> Option<String>,
        caps: Capabilities,
    ) -> Result<Router, Vec<ConfigError>> {
        let errors = crate::config::validate(cfg, caps);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut errors = Vec::new();

        let keywords = KeywordMatcher::compile(&cfg.signals.keywords).map_err(|e| vec![e])?;
        let index_of = |kind: SignalKind, name: &str| -> Option<usize> {
            let s = &cfg.signals;
            match kind {
                SignalKind::Keyword => s.keywords.iter().position(|k| k.name == name),
                SignalKind::Embedding => s.embeddings.iter().position(|k| k.name == name),
                SignalKind::Domain => s.domains.iter().position(|k| k.name == name),
                SignalKind::FactCheck => s.fact_check.iter().position(|k| k.name == name),
                SignalKind::UserFeedback => s.user_feedbacks.iter().position(|k| k.name == name),
                SignalKind::Preference => s.preferences.iter().position(|k| k.name == name),
            }
        };

        let mut rules = Vec::with_capacity(cfg.decisions.len());
        let mut decisions = Vec::with_capacity(cfg.decisions.len());
        for (i, d) in cfg.decisions.iter().enumerate() {
            let (Some(rule), Some(model_ref)) =
                (Rule::compile(&d.rules, &index_of), d.model_refs.first())
            else {
                errors.push(ConfigError::new(
                    format!("decisions[{i}]"),
                    "cannot compile rules",
                ));
                continue;
            };
            rules.push(DecisionRule {
                priority: d.priority,
                rule,
            });
            let mut system_prompt = None;
            let mut header_mutation = None;
            for p in &d.plugins {
                match p {
                    Plugin::SystemPrompt(s) if s.enabled => system_prompt = Some(s.clone()),
                    Plugin::HeaderMutation(h) => header_mutation = Some(h.clone()),
                    _ => {}
                }
            }
            decisions.push(CompiledDecision {
                name: d.name.clone(),
                model_ref: model_ref.clone(),
                system_prompt,
                header_mutation,
            });
        }

        let mut models = HashMap::new();
        for (i, m) in cfg.providers.models.iter().enumerate() {
            let authorization = match m.access_key.as_deref().map(parse_access_key) {
                None => None,
                Some(Ok(AccessKey::Literal(k))) => Some(format!("Bearer {k}")),
                Some(Ok(AccessKey::Env(var))) => match env(var) {
                    Some(k) if !k.is_empty() => Some(format!("Bearer {k}")),
                    _ => {
                        errors.push(ConfigError::new(
                            format!("providers.models[{i}].access_key"),
                            format!("environment variable {var} is not set"),
                        ));
                        None
                    }
                },
                Some(Err(e)) => {
                    errors.push(ConfigError::new(
                        format!("providers.models[{i}].access_key"),
                        e,
                    ));
                    None
                }
            };
            let reasoning = m
                .reasoning_family
                .as_ref()
                .and_then(|f| cfg.providers.reasoning_families.get(f))
                .map(|f| (f.kind, f.parameter.clone()));
            models.insert(
                m.name.clone(),
                Model {
                    reasoning,
                    authorization,
                },
            );
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let default_model = cfg.default_model().unwrap_or_default().to_string();
        let ids = cfg
            .auto_model_names
            .iter()
            .chain(cfg.providers.models.iter().map(|m| &m.name));
        let models_json = serde_json::json!({
            "object": "list",
            "data": ids.map(|id| serde_json::json!({"id": id, "object": "model", "created": 0, "owned_by": "vllm-semantic-router"})).collect::<Vec<_>>(),
        })
        .to_string();

        Ok(Router {
            keywords,
            keyword_names: cfg
                .signals
                .keywords
                .iter()
                .map(|k| k.name.clone())
                .collect(),
            rules,
            decisions,
            models,
            default_model,
            auto_names: cfg.auto_model_names.clone(),
            strategy: cfg.strategy,
            default_effort: cfg.providers.default_reasoning_effort.clone(),
            max_body: cfg.limits.max_request_body_bytes,
            models_json,
        })
    }

    pub fn max_body_bytes(&self) -> usize {
        self.max_body
    }

    /// The `GET /v1/models` answer: auto names, then configured models.
    pub fn models_json(&self) -> &str {
        &self.models_json
    }

    /// Signals, decision and rewrite for one chat completion body.
    pub fn route_chat(&self, body: &[u8]) -> Result<RoutePlan, ApiError> {
        use headers::*;

        let req = ChatRequest::parse(body)?;
        let signals = SignalSet {
            keywords: self.keywords.evaluate(req.last_user_text()),
        };
        let selected = decision::select(&self.rules, self.strategy, &signals);
        let decision = selected.and_then(|s| self.decisions.get(s.index));

        let auto = self.auto_names.iter().any(|n| *n == req.model);
        let model_name = if auto {
            decision
                .map(|d| d.model_ref.model.as_str())
                .unwrap_or(&self.default_model)
        } else {
            req.model.as_ref()
        };
        let model = self
            .models
            .get(model_name)
            .ok_or_else(|| ApiError::model_not_found(model_name))?;

        // Every routing header is set or removed, so whatever the client sent is gone.
        let decision_header = match decision.filter(|_| auto) {
            Some(d) => HeaderOp::Set(SELECTED_DECISION.into(), d.name.clone()),
            None => HeaderOp::Remove(SELECTED_DECISION.into()),
        };
        let mut request_headers = vec![
            HeaderOp::Set(SELECTED_MODEL.into(), model_name.into()),
            HeaderOp::Set(GATEWAY_MODEL_NAME.into(), model_name.into()),
            decision_header,
        ];
        if let Some(auth) = &model.authorization {
            request_headers.push(HeaderOp::Set(AUTHORIZATION.into(), auth.clone()));
        }
        let mut response_headers = vec![(RESP_SELECTED_MODEL, model_name.to_string())];
        let matched: Vec<&str> = signals
            .keywords
            .iter()
            .zip(&self.keyword_names)
            .filter(|(hit, _)| **hit)
            .map(|(_, n)| n.as_str())
            .collect();
        if !matched.is_empty() {
            response_headers.push((RESP_MATCHED_KEYWORDS, matched.join(",")));
        }

        if !auto {
            // An explicit model: the body goes upstream as sent.
            return Ok(RoutePlan {
                model: model_name.to_string(),
                decision: None,
                auto,
                body: None,
                request_headers,
                response_headers,
            });
        }

        let mut edits = Edits {
            model: Some(model_name),
            ..Default::default()
        };
        let use_reasoning = decision.is_some_and(|d| d.model_ref.use_reasoning);
        if let Some((kind, param)) = &model.reasoning {
            edits.reasoning = Some(match kind {
                ReasoningKind::ChatTemplateKwargs => ReasoningEdit::TemplateKwarg {
                    param,
                    on: use_reasoning,
                },
                ReasoningKind::ReasoningEffort => ReasoningEdit::Effort {
                    param,
                    effort: use_reasoning.then(|| {
                        decision
                            .and_then(|d| d.model_ref.reasoning_effort.as_deref())
                            .unwrap_or(&self.default_effort)
                    }),
                },
            });
        }
        response_headers.push((
            RESP_SELECTED_REASONING,
            if use_reasoning { "on" } else { "off" }.into(),
        ));

        if let Some(d) = decision {
            response_headers.push((RESP_SELECTED_DECISION, d.name.clone()));
            if let Some(sp) = &d.system_prompt {
                edits.system_prompt = Some((&sp.system_prompt, sp.mode));
            }
            if let Some(h) = &d.header_mutation {
                request_headers.extend(h.delete.iter().map(|n| HeaderOp::Remove(n.clone())));
                request_headers.extend(
                    h.update
                        .iter()
                        .map(|v| HeaderOp::Set(v.name.clone(), v.value.clone())),
                );
                request_headers.extend(
                    h.add
                        .iter()
                        .map(|v| HeaderOp::Add(v.name.clone(), v.value.clone())),
                );
            }
        }
        response_headers.push((
            RESP_INJECTED_SYSTEM_PROMPT,
            edits.system_prompt.is_some().to_string(),
        ));

        Ok(RoutePlan {
            model: model_name.to_string(),
            decision: decision.map(|d| d.name.clone()),
            auto,
            body: Some(mutate::rewrite(&req, &edits)),
            request_headers,
            response_headers,
        })
    }
}
