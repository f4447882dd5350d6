//! The compiled router: built once per configuration (regexes, rule trees, header values),
//! then asked per request what to do: a [`Step`].
//!
//! Order on the request (docs/CONFIG.md): parse → signals (keywords here, model signals
//! from one sidecar `Classify` call) → decision → jailbreak guard → PII guard → semantic
//! cache lookup (a second, small call) → routing rewrite. Each sidecar call is a
//! [`Step::Call`]; the flow sends it and hands the answer (or the failure) to
//! [`Router::resume`], so the router itself never waits.

use std::collections::HashMap;

use prost::Message as _;
use vsr_proto::v1 as pb;

use crate::cache;
use crate::config::validate::parse_duration_ms;
use crate::config::validate::{parse_access_key, AccessKey, Capabilities};
use crate::config::{
    ConfigError, FailureMode, HeaderMutationPlugin, JailbreakPlugin, ModelRef, PiiAction,
    PiiPlugin, Plugin, ReasoningKind, SemanticCachePlugin, SignalKind, Strategy,
    SystemPromptPlugin, UserConfig,
};
use crate::decision::{self, DecisionRule, Rule};
use crate::guard;
use crate::mutate::{self, Edits, ReasoningEdit};
use crate::openai::{ApiError, ChatRequest, Role};
use crate::response::{self, LocalReply};
use crate::signals::keyword::KeywordMatcher;
use crate::signals::model::{task, ModelFacts, ModelSignals};
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
    pub const RESP_SELECTED_CATEGORY: &str = "x-vsr-selected-category";
    pub const RESP_MATCHED_DOMAINS: &str = "x-vsr-matched-domains";
    pub const RESP_MATCHED_EMBEDDINGS: &str = "x-vsr-matched-embeddings";
    pub const RESP_MATCHED_FACT_CHECK: &str = "x-vsr-matched-fact-check";
    pub const RESP_MATCHED_USER_FEEDBACK: &str = "x-vsr-matched-user-feedback";
    pub const RESP_MATCHED_PREFERENCE: &str = "x-vsr-matched-preference";
    pub const RESP_DEGRADED: &str = "x-vsr-degraded";
    pub const RESP_JAILBREAK_BLOCKED: &str = "x-vsr-jailbreak-blocked";
    pub const RESP_JAILBREAK_TYPE: &str = "x-vsr-jailbreak-type";
    pub const RESP_JAILBREAK_CONFIDENCE: &str = "x-vsr-jailbreak-confidence";
    pub const RESP_PII_VIOLATION: &str = "x-vsr-pii-violation";
    pub const RESP_PII_TYPES: &str = "x-vsr-pii-types";
    pub const RESP_PII_MASKED: &str = "x-vsr-pii-masked";
    pub const RESP_CACHE_HIT: &str = "x-vsr-cache-hit";
}

/// The sidecar's gRPC service and methods.
pub mod rpc {
    pub const SERVICE: &str = "vsr.inference.v1.Inference";
    pub const CLASSIFY: &str = "Classify";
    pub const REGISTER_CANDIDATES: &str = "RegisterCandidates";
    pub const CACHE_LOOKUP: &str = "CacheLookup";
    pub const CACHE_STORE: &str = "CacheStore";
}

/// gRPC status codes the router tells apart.
const GRPC_NOT_FOUND: u32 = 5;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_UNAVAILABLE: u32 = 14;

/// Earlier messages checked by the guards beside the prompt (the most recent ones).
pub const MAX_GUARDED_MESSAGES: usize = 32;

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
    jailbreak: Option<JailbreakPlugin>,
    pii: Option<PiiPlugin>,
    cache: Option<SemanticCachePlugin>,
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
    /// Store a 2xx answer in the semantic cache under this key.
    pub cache_store: Option<CacheStore>,
}

/// Where a 2xx answer goes in the semantic cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheStore {
    pub partition: String,
    pub embedding: Vec<f32>,
    pub ttl_seconds: u32,
}

/// What the flow does next with a chat request.
#[derive(Debug)]
pub enum Step {
    /// Forward upstream as planned.
    Route(RoutePlan),
    /// Answer locally (errors, blocks, cache hits).
    Reply(LocalReply),
    /// Call the sidecar, then hand the outcome to [`Router::resume`].
    Call(Callout),
}

/// One gRPC call to the sidecar and what to resume with.
#[derive(Debug)]
pub struct Callout {
    pub method: &'static str,
    pub message: Vec<u8>,
    pub pending: Pending,
}

/// A request waiting for the sidecar.
#[derive(Debug)]
pub struct Pending {
    body: Vec<u8>,
    now: u64,
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// `extra[i]` is the message index of extra text `i`.
    Classify {
        extra: Vec<usize>,
        retried: bool,
    },
    Register {
        extra: Vec<usize>,
    },
    Cache {
        plan: Box<RoutePlan>,
        store: CacheStore,
        stream: bool,
    },
}

/// How a sidecar call ended.
#[derive(Debug, Clone, Copy)]
pub enum CallOutcome<'a> {
    Ok(&'a [u8]),
    /// gRPC status code (Envoy reports its own timeouts as DEADLINE_EXCEEDED); 14 when the
    /// call could not be dispatched at all.
    Failed(u32),
}

#[derive(Debug, Clone, Copy)]
struct CacheSettings {
    enabled: bool,
    threshold: f32,
    ttl_seconds: u64,
}

/// Names of the model-backed signals, for response headers.
#[derive(Debug, Default)]
struct SignalNames {
    domains: Vec<String>,
    embeddings: Vec<String>,
    fact_check: Vec<String>,
    user_feedbacks: Vec<String>,
    preferences: Vec<String>,
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
    model_signals: ModelSignals,
    names: SignalNames,
    cluster: String,
    timeout_ms: u64,
    failure_mode: FailureMode,
    /// The global jailbreak guard (None when disabled).
    guard_default: Option<f32>,
    block_status: u32,
    cache_default: CacheSettings,
    /// Some decision (or the global default) enables each: the sidecar must run it.
    any_jailbreak: bool,
    any_pii: bool,
    any_cache: bool,
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
            let mut jailbreak = None;
            let mut pii = None;
            let mut cache = None;
            for p in &d.plugins {
                match p {
                    Plugin::SystemPrompt(s) if s.enabled => system_prompt = Some(s.clone()),
                    Plugin::HeaderMutation(h) => header_mutation = Some(h.clone()),
                    Plugin::Jailbreak(j) => jailbreak = Some(j.clone()),
                    Plugin::Pii(x) => pii = Some(x.clone()),
                    Plugin::SemanticCache(c) => cache = Some(c.clone()),
                    _ => {}
                }
            }
            decisions.push(CompiledDecision {
                name: d.name.clone(),
                model_ref: model_ref.clone(),
                system_prompt,
                header_mutation,
                jailbreak,
                pii,
                cache,
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

        let guard_default = cfg
            .prompt_guard
            .enabled
            .then_some(cfg.prompt_guard.threshold);
        let sc = &cfg.semantic_cache;
        let cache_default = CacheSettings {
            enabled: sc.enabled,
            threshold: sc.similarity_threshold,
            ttl_seconds: sc.ttl_seconds,
        };
        let any_jailbreak = guard_default.is_some()
            || decisions
                .iter()
                .any(|d| d.jailbreak.as_ref().is_some_and(|j| j.enabled));
        let any_pii = decisions
            .iter()
            .any(|d| d.pii.as_ref().is_some_and(|p| p.enabled));
        let any_cache = sc.enabled
            || decisions
                .iter()
                .any(|d| d.cache.as_ref().is_some_and(|c| c.enabled));
        let names = |v: &[crate::config::DescribedSignal]| -> Vec<String> {
            v.iter().map(|s| s.name.clone()).collect()
        };
        let s = &cfg.signals;

        Ok(Router {
            model_signals: ModelSignals::compile(cfg),
            names: SignalNames {
                domains: s.domains.iter().map(|d| d.name.clone()).collect(),
                embeddings: s.embeddings.iter().map(|d| d.name.clone()).collect(),
                fact_check: names(&s.fact_check),
                user_feedbacks: names(&s.user_feedbacks),
                preferences: names(&s.preferences),
            },
            cluster: cfg.inference_sidecar.cluster.clone(),
            // Validated already; the default covers configs checked by older builds.
            timeout_ms: parse_duration_ms(&cfg.inference_sidecar.timeout).unwrap_or(200),
            failure_mode: cfg.inference_sidecar.failure_mode,
            guard_default,
            block_status: cfg.prompt_guard.block_status,
            cache_default,
            any_jailbreak,
            any_pii,
            any_cache,
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

    /// The Envoy cluster of the sidecar and the budget of each call.
    pub fn sidecar_cluster(&self) -> &str {
        &self.cluster
    }

    pub fn sidecar_timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// The `RegisterCandidates` message this config needs at startup, if any.
    pub fn register_message(&self) -> Option<Vec<u8>> {
        self.model_signals
            .register_request()
            .map(|r| r.encode_to_vec())
    }

    /// Head tasks to run on the prompt, and those (guards) to run on every other message.
    fn tasks(&self, auto: bool) -> (Vec<&'static str>, Vec<&'static str>) {
        let mut prompt = if auto {
            self.model_signals.tasks()
        } else {
            Vec::new()
        };
        let mut guards = Vec::new();
        if (auto && self.any_jailbreak) || self.guard_default.is_some() {
            guards.push(task::JAILBREAK);
        }
        if auto && self.any_pii {
            guards.push(task::PII);
        }
        prompt.extend(&guards);
        if (auto && self.any_cache) || self.cache_default.enabled {
            prompt.push(task::EMBEDDING);
        }
        (prompt, guards)
    }

    /// The first step for a chat completion body; `now` is the Unix time in seconds.
    pub fn route(&self, body: Vec<u8>, now: u64) -> Step {
        let req = match ChatRequest::parse(&body) {
            Ok(r) => r,
            Err(e) => return Step::Reply(error_reply(&e)),
        };
        match self.classify_call(&req, false) {
            Some((message, extra)) => {
                drop(req);
                Step::Call(Callout {
                    method: rpc::CLASSIFY,
                    message,
                    pending: Pending {
                        body,
                        now,
                        stage: Stage::Classify {
                            extra,
                            retried: false,
                        },
                    },
                })
            }
            None => self.finish(&req, None, None, now),
        }
    }

    /// The encoded `Classify` call for `req`, or None when no model output is needed.
    fn classify_call(&self, req: &ChatRequest<'_>, _retry: bool) -> Option<(Vec<u8>, Vec<usize>)> {
        let auto = self.is_auto(req);
        let (tasks, guards) = self.tasks(auto);
        let sets = if auto {
            self.model_signals.candidate_sets()
        } else {
            Vec::new()
        };
        let text = req.last_user_text();
        if (tasks.is_empty() && sets.is_empty()) || text.trim().is_empty() {
            return None;
        }
        let last_user = req.messages.iter().rposition(|m| m.role == Role::User);
        let mut extra = Vec::new();
        let mut extra_texts = Vec::new();
        if !guards.is_empty() {
            for (i, m) in req.messages.iter().enumerate().rev() {
                if Some(i) == last_user || m.text.trim().is_empty() {
                    continue;
                }
                if extra.len() == MAX_GUARDED_MESSAGES {
                    break;
                }
                extra.push(i);
                extra_texts.push(pb::ExtraText {
                    text: m.text.to_string(),
                    tasks: guards.iter().map(|t| t.to_string()).collect(),
                });
            }
        }
        let msg = pb::ClassifyRequest {
            text: text.to_string(),
            tasks: tasks.iter().map(|t| t.to_string()).collect(),
            candidate_sets: sets,
            top_k: 0,
            extra_texts,
        };
        Some((msg.encode_to_vec(), extra))
    }

    fn is_auto(&self, req: &ChatRequest<'_>) -> bool {
        self.auto_names.iter().any(|n| *n == req.model)
    }

    /// Continues a request after a sidecar call.
    pub fn resume(&self, pending: Pending, outcome: CallOutcome<'_>) -> Step {
        let Pending { body, now, stage } = pending;
        let req = match ChatRequest::parse(&body) {
            Ok(r) => r,
            Err(e) => return Step::Reply(error_reply(&e)),
        };
        match stage {
            Stage::Classify { extra, retried } => match outcome {
                CallOutcome::Ok(bytes) => match pb::ClassifyResponse::decode(bytes) {
                    Ok(resp) => self.finish(&req, Some((resp, extra)), None, now),
                    Err(_) => self.sidecar_failed(&req, "sidecar_bad_response", now),
                },
                // The sidecar restarted and lost the candidate sets: register, then retry once.
                CallOutcome::Failed(GRPC_NOT_FOUND) if !retried => match self.register_message() {
                    Some(message) => {
                        drop(req);
                        Step::Call(Callout {
                            method: rpc::REGISTER_CANDIDATES,
                            message,
                            pending: Pending {
                                body,
                                now,
                                stage: Stage::Register { extra },
                            },
                        })
                    }
                    None => self.sidecar_failed(&req, "sidecar_error", now),
                },
                CallOutcome::Failed(code) => self.sidecar_failed(&req, failure_reason(code), now),
            },
            Stage::Register { extra } => match outcome {
                CallOutcome::Ok(_) => match self.classify_call(&req, true) {
                    Some((message, _)) => {
                        drop(req);
                        Step::Call(Callout {
                            method: rpc::CLASSIFY,
                            message,
                            pending: Pending {
                                body,
                                now,
                                stage: Stage::Classify {
                                    extra,
                                    retried: true,
                                },
                            },
                        })
                    }
                    None => self.finish(&req, None, None, now),
                },
                CallOutcome::Failed(code) => self.sidecar_failed(&req, failure_reason(code), now),
            },
            Stage::Cache {
                mut plan,
                store,
                stream,
            } => {
                let hit = match outcome {
                    CallOutcome::Ok(bytes) => pb::CacheLookupResponse::decode(bytes)
                        .ok()
                        .filter(|r| r.hit)
                        .and_then(|r| response::parse_completion(&r.response)),
                    CallOutcome::Failed(_) => None,
                };
                match hit {
                    Some(completion) => {
                        let (content_type, body) = response::render(&completion, stream);
                        let mut headers = vec![
                            ("content-type".to_string(), content_type.to_string()),
                            (headers::RESP_CACHE_HIT.to_string(), "true".to_string()),
                        ];
                        headers.extend(
                            plan.response_headers
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.clone())),
                        );
                        Step::Reply(LocalReply {
                            status: 200,
                            headers,
                            body,
                        })
                    }
                    None => {
                        // A lookup that failed would most likely fail to store too.
                        if matches!(outcome, CallOutcome::Ok(_)) {
                            plan.cache_store = Some(store);
                        }
                        Step::Route(*plan)
                    }
                }
            }
        }
    }

    /// The sidecar could not answer: fail open (keywords and defaults) or closed (503).
    fn sidecar_failed(&self, req: &ChatRequest<'_>, reason: &str, now: u64) -> Step {
        match self.failure_mode {
            FailureMode::Closed => Step::Reply(error_reply(&ApiError {
                status: 503,
                message: format!(
                    "the router's inference sidecar could not answer ({reason}); try again later"
                ),
                kind: "service_unavailable",
                param: None,
                code: Some("sidecar_unavailable"),
            })),
            FailureMode::Open => self.finish(req, None, Some(reason), now),
        }
    }

    /// Decision, guards, rewrite and cache lookup, given the sidecar's answer (if any).
    fn finish(
        &self,
        req: &ChatRequest<'_>,
        model_out: Option<(pb::ClassifyResponse, Vec<usize>)>,
        degraded: Option<&str>,
        now: u64,
    ) -> Step {
        use headers::*;

        let mut signals = SignalSet {
            keywords: self.keywords.evaluate(req.last_user_text()),
            ..Default::default()
        };
        let facts = match &model_out {
            Some((resp, _)) => self.model_signals.evaluate(resp, &mut signals),
            None => ModelFacts::default(),
        };
        let auto = self.is_auto(req);
        let selected = if auto {
            decision::select(&self.rules, self.strategy, &signals)
        } else {
            None
        };
        let decision = selected.and_then(|s| self.decisions.get(s.index));

        let model_name = if auto {
            decision
                .map(|d| d.model_ref.model.as_str())
                .unwrap_or(&self.default_model)
        } else {
            req.model.as_ref()
        };
        let Some(model) = self.models.get(model_name) else {
            return Step::Reply(error_reply(&ApiError::model_not_found(model_name)));
        };

        // Guards, on every checked text.
        let mut masked: Vec<(usize, String, String)> = Vec::new();
        let mut pii_masked_types = None;
        if let Some((resp, extra)) = &model_out {
            let jailbreak_threshold = match decision.and_then(|d| d.jailbreak.as_ref()) {
                Some(j) if j.enabled => Some(j.threshold.or(self.guard_default).unwrap_or(0.7)),
                Some(_) => None,
                None => self.guard_default,
            };
            if let Some(threshold) = jailbreak_threshold {
                let all = resp
                    .results
                    .iter()
                    .chain(resp.extra_results.iter().flat_map(|e| e.results.iter()));
                if let Some(v) = guard::jailbreak(all).filter(|v| v.confidence >= threshold) {
                    let message = format!(
                        "This request was blocked by the semantic router's prompt guard: \
                         a {} attempt was detected (confidence {:.2}).",
                        v.kind, v.confidence
                    );
                    return Step::Reply(self.blocked(
                        req,
                        model_name,
                        &message,
                        now,
                        vec![
                            (RESP_JAILBREAK_BLOCKED, "true".into()),
                            (RESP_JAILBREAK_TYPE, v.kind.clone()),
                            (RESP_JAILBREAK_CONFIDENCE, format!("{:.3}", v.confidence)),
                        ],
                    ));
                }
            }
            if let Some(p) = decision.and_then(|d| d.pii.as_ref()).filter(|p| p.enabled) {
                let per_text = std::iter::once(resp.results.as_slice())
                    .chain(resp.extra_results.iter().map(|e| e.results.as_slice()));
                let spans =
                    guard::denied_pii(per_text, p.threshold.unwrap_or(0.5), &p.pii_types_allowed);
                if !spans.is_empty() {
                    let types = guard::types_list(&spans);
                    match p.action {
                        PiiAction::Block => {
                            let message = format!(
                                "This request was blocked by the semantic router's PII policy: \
                                 it contains personal data of types {types}."
                            );
                            return Step::Reply(self.blocked(
                                req,
                                model_name,
                                &message,
                                now,
                                vec![(RESP_PII_VIOLATION, "true".into()), (RESP_PII_TYPES, types)],
                            ));
                        }
                        PiiAction::Mask => {
                            let last_user = req.messages.iter().rposition(|m| m.role == Role::User);
                            // Text 0 is the prompt, text k the k-th extra message.
                            let message_of = |t: usize| {
                                if t == 0 {
                                    last_user
                                } else {
                                    extra.get(t - 1).copied()
                                }
                            };
                            let mut by_message: HashMap<usize, Vec<(usize, usize, &str)>> =
                                HashMap::new();
                            for s in &spans {
                                if let Some(m) = message_of(s.text) {
                                    by_message.entry(m).or_default().push((
                                        s.byte_start,
                                        s.byte_end,
                                        s.entity_type.as_str(),
                                    ));
                                }
                            }
                            for (m, spans) in by_message {
                                if let Some((raw, text)) = req
                                    .messages
                                    .get(m)
                                    .and_then(|msg| guard::mask_message(msg.raw.get(), &spans))
                                {
                                    masked.push((m, raw, text));
                                }
                            }
                            pii_masked_types = Some(types);
                        }
                    }
                }
            }
        }

        // Every routing header is set or removed, so whatever the client sent is gone.
        let decision_header = match decision {
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
        if let Some(c) = &facts.category {
            response_headers.push((RESP_SELECTED_CATEGORY, c.clone()));
        }
        let n = &self.names;
        for (header, kind, names) in [
            (RESP_MATCHED_DOMAINS, SignalKind::Domain, &n.domains),
            (
                RESP_MATCHED_EMBEDDINGS,
                SignalKind::Embedding,
                &n.embeddings,
            ),
            (
                RESP_MATCHED_FACT_CHECK,
                SignalKind::FactCheck,
                &n.fact_check,
            ),
            (
                RESP_MATCHED_USER_FEEDBACK,
                SignalKind::UserFeedback,
                &n.user_feedbacks,
            ),
            (
                RESP_MATCHED_PREFERENCE,
                SignalKind::Preference,
                &n.preferences,
            ),
        ] {
            if let Some(list) = signals.matched(kind, names) {
                response_headers.push((header, list));
            }
        }
        if let Some(reason) = degraded {
            response_headers.push((RESP_DEGRADED, reason.to_string()));
        }
        if let Some(types) = pii_masked_types {
            response_headers.push((RESP_PII_MASKED, types));
        }

        let mut edits = Edits {
            messages: &masked,
            ..Default::default()
        };
        if auto {
            edits.model = Some(model_name);
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
        }
        // An explicit model with nothing to mask goes upstream byte for byte.
        let body = (auto || !masked.is_empty()).then(|| mutate::rewrite(req, &edits));

        let plan = RoutePlan {
            model: model_name.to_string(),
            decision: decision.map(|d| d.name.clone()),
            auto,
            body,
            request_headers,
            response_headers,
            cache_store: None,
        };

        // Semantic cache: decision's plugin, else the global default.
        let cache = match decision.and_then(|d| d.cache.as_ref()) {
            Some(c) => CacheSettings {
                enabled: c.enabled,
                threshold: c
                    .similarity_threshold
                    .unwrap_or(self.cache_default.threshold),
                ttl_seconds: c.ttl_seconds.unwrap_or(self.cache_default.ttl_seconds),
            },
            None => self.cache_default,
        };
        let embedding = model_out
            .as_ref()
            .and_then(|(r, _)| r.embedding.as_ref())
            .map(|e| &e.values)
            .filter(|v| !v.is_empty());
        if let (true, Some(embedding)) = (cache.enabled, embedding) {
            let forwarded = plan.body.as_deref().unwrap_or(req_bytes(req));
            if let Ok(fwd) = ChatRequest::parse(forwarded) {
                let store = CacheStore {
                    partition: cache::partition(model_name, &fwd),
                    embedding: embedding.clone(),
                    ttl_seconds: cache.ttl_seconds.min(u32::MAX as u64) as u32,
                };
                let message = pb::CacheLookupRequest {
                    partition: store.partition.clone(),
                    embedding: store.embedding.clone(),
                    similarity_threshold: cache.threshold,
                }
                .encode_to_vec();
                return Step::Call(Callout {
                    method: rpc::CACHE_LOOKUP,
                    message,
                    pending: Pending {
                        body: plan.body.clone().unwrap_or_else(|| forwarded.to_vec()),
                        now,
                        stage: Stage::Cache {
                            plan: Box::new(plan),
                            store,
                            stream: req.stream,
                        },
                    },
                });
            }
        }
        Step::Route(plan)
    }

    /// A `content_filter` completion (JSON or SSE as the client asked) with guard headers.
    fn blocked(
        &self,
        req: &ChatRequest<'_>,
        model: &str,
        message: &str,
        now: u64,
        extra: Vec<(&'static str, String)>,
    ) -> LocalReply {
        let id = format!("chatcmpl-vsr-blocked-{now}");
        let completion = response::completion(&id, model, now, message, "content_filter");
        let (content_type, body) = response::render(&completion, req.stream);
        let mut headers = vec![
            ("content-type".to_string(), content_type.to_string()),
            (headers::RESP_SELECTED_MODEL.to_string(), model.to_string()),
        ];
        headers.extend(extra.into_iter().map(|(k, v)| (k.to_string(), v)));
        LocalReply {
            status: self.block_status,
            headers,
            body,
        }
    }

    /// The `CacheStore` message for a 2xx answer (JSON or SSE), or None when the answer is
    /// not a cacheable chat completion.
    pub fn cache_store_message(
        store: &CacheStore,
        response_body: &[u8],
        sse: bool,
    ) -> Option<Vec<u8>> {
        let completion = if sse {
            response::reassemble_sse(response_body)?
        } else {
            response::parse_completion(response_body)?
        };
        Some(
            pb::CacheStoreRequest {
                partition: store.partition.clone(),
                embedding: store.embedding.clone(),
                response: completion.to_string().into_bytes(),
                ttl_seconds: store.ttl_seconds,
            }
            .encode_to_vec(),
        )
    }
}

/// The body `req` was parsed from (its fields borrow from it; the whole object is the
/// raw text between the first and last field).
fn req_bytes<'a>(req: &ChatRequest<'a>) -> &'a [u8] {
    req.source
}

fn failure_reason(code: u32) -> &'static str {
    match code {
        GRPC_DEADLINE_EXCEEDED => "sidecar_timeout",
        GRPC_UNAVAILABLE => "sidecar_unavailable",
        GRPC_NOT_FOUND => "sidecar_candidates_missing",
        _ => "sidecar_error",
    }
}

/// An OpenAI-shaped error as a local reply.
pub fn error_reply(e: &ApiError) -> LocalReply {
    LocalReply {
        status: e.status,
        headers: vec![("content-type".into(), response::CONTENT_TYPE_JSON.into())],
        body: e.body().into_bytes(),
    }
}
