//! The user configuration, in the vLLM Semantic Router v0.1 format
//! (`listeners`, `signals`, `decisions`, `providers`) plus a few global options.
//!
//! These types are the one definition of the config: the CLI reads them from YAML, the
//! filter from the JSON that `vsr render` embeds in the Envoy bootstrap. Shape errors
//! (unknown fields, wrong types) come from serde with the field path; everything that
//! needs the whole file (references, duplicates, regexes) is checked by [`validate`].

pub mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

pub use validate::validate;

/// Model names a client sends to let the router choose.
pub const DEFAULT_AUTO_MODEL_NAMES: [&str; 2] = ["MoM", "auto"];

/// Default limit on a request body the filter buffers (1 MiB, Envoy's default buffer).
pub const DEFAULT_MAX_REQUEST_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub signals: Signals,
    #[serde(default)]
    pub decisions: Vec<Decision>,
    pub providers: Providers,
    /// How a decision is picked when several match.
    #[serde(default)]
    pub strategy: Strategy,
    /// `model` values that ask the router to choose.
    #[serde(default = "default_auto_model_names")]
    pub auto_model_names: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Where and how the filter calls the inference sidecar.
    #[serde(default)]
    pub inference_sidecar: InferenceSidecar,
    /// Confidence thresholds of the model-backed signals.
    #[serde(default)]
    pub classifier: ClassifierThresholds,
    /// The jailbreak guard's default for every request; a decision's `jailbreak` plugin overrides it.
    #[serde(default)]
    pub prompt_guard: PromptGuard,
    /// The semantic cache's backend and defaults; a decision's `semantic-cache` plugin overrides them.
    #[serde(default)]
    pub semantic_cache: SemanticCacheConfig,
}

fn default_auto_model_names() -> Vec<String> {
    DEFAULT_AUTO_MODEL_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
    pub port: u32,
    /// Upstream request timeout, e.g. `300s`, `5m`, `500ms`.
    #[serde(default)]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Larger chat request bodies are answered with 413.
    #[serde(default = "default_max_body")]
    pub max_request_body_bytes: usize,
}

fn default_max_body() -> usize {
    DEFAULT_MAX_REQUEST_BODY_BYTES
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body_bytes: DEFAULT_MAX_REQUEST_BODY_BYTES,
        }
    }
}

/// Default sidecar gRPC address (`vsr serve --grpc-port 50051`).
pub const DEFAULT_SIDECAR_ADDRESS: &str = "127.0.0.1:50051";
/// Default budget for one sidecar call.
pub const DEFAULT_SIDECAR_TIMEOUT: &str = "200ms";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferenceSidecar {
    /// `host:port` of the sidecar's gRPC server (the Envoy cluster `vsr render` writes).
    #[serde(default = "default_sidecar_address")]
    pub address: String,
    /// Envoy cluster the filter calls; `vsr render` defines it from `address`.
    #[serde(default = "default_sidecar_cluster")]
    pub cluster: String,
    /// Budget for each call, e.g. `200ms`.
    #[serde(default = "default_sidecar_timeout")]
    pub timeout: String,
    /// What a request gets when the sidecar cannot answer in time.
    #[serde(default)]
    pub failure_mode: FailureMode,
}

fn default_sidecar_address() -> String {
    DEFAULT_SIDECAR_ADDRESS.to_string()
}
fn default_sidecar_cluster() -> String {
    "vsr_sidecar".to_string()
}
fn default_sidecar_timeout() -> String {
    DEFAULT_SIDECAR_TIMEOUT.to_string()
}

impl Default for InferenceSidecar {
    fn default() -> Self {
        InferenceSidecar {
            address: default_sidecar_address(),
            cluster: default_sidecar_cluster(),
            timeout: default_sidecar_timeout(),
            failure_mode: FailureMode::Open,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Route by keywords and the default model, marked `x-vsr-degraded: <reason>`.
    #[default]
    Open,
    /// Answer 503 with an OpenAI-shaped error.
    Closed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierThresholds {
    /// The domain label counts only at this probability or above.
    #[serde(default = "default_domain_threshold")]
    pub domain_threshold: f32,
    #[serde(default = "half")]
    pub fact_check_threshold: f32,
    #[serde(default = "half")]
    pub user_feedback_threshold: f32,
    /// Cosine similarity of the prompt to a preference's description.
    #[serde(default = "default_preference_threshold")]
    pub preference_threshold: f32,
}

fn default_domain_threshold() -> f32 {
    0.3
}
fn half() -> f32 {
    0.5
}
fn default_preference_threshold() -> f32 {
    0.35
}

impl Default for ClassifierThresholds {
    fn default() -> Self {
        ClassifierThresholds {
            domain_threshold: default_domain_threshold(),
            fact_check_threshold: half(),
            user_feedback_threshold: half(),
            preference_threshold: default_preference_threshold(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptGuard {
    #[serde(default)]
    pub enabled: bool,
    /// Block at this jailbreak probability or above.
    #[serde(default = "default_guard_threshold")]
    pub threshold: f32,
    /// Status of a blocked answer (jailbreak or PII): 200 like the v0.1 router, or 403.
    #[serde(default = "default_block_status")]
    pub block_status: u32,
}

fn default_guard_threshold() -> f32 {
    0.7
}
fn default_block_status() -> u32 {
    200
}

impl Default for PromptGuard {
    fn default() -> Self {
        PromptGuard {
            enabled: false,
            threshold: default_guard_threshold(),
            block_status: default_block_status(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticCacheConfig {
    /// Default for requests whose decision has no `semantic-cache` plugin.
    #[serde(default)]
    pub enabled: bool,
    #[serde(default)]
    pub backend_type: CacheBackend,
    #[serde(default = "default_similarity")]
    pub similarity_threshold: f32,
    /// Bound of the memory backend (the sidecar evicts least recently used entries).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    #[serde(default = "default_ttl")]
    pub ttl_seconds: u64,
    /// Only `lru` is implemented.
    #[serde(default = "default_eviction")]
    pub eviction_policy: String,
    /// Used when `backend_type: redis`.
    #[serde(default)]
    pub redis: RedisConfig,
}

fn default_similarity() -> f32 {
    0.9
}
fn default_max_entries() -> u64 {
    10_000
}
fn default_ttl() -> u64 {
    3600
}
fn default_eviction() -> String {
    "lru".to_string()
}

impl Default for SemanticCacheConfig {
    fn default() -> Self {
        SemanticCacheConfig {
            enabled: false,
            backend_type: CacheBackend::Memory,
            similarity_threshold: default_similarity(),
            max_entries: default_max_entries(),
            ttl_seconds: default_ttl(),
            eviction_policy: default_eviction(),
            redis: RedisConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// An HNSW index inside the sidecar process.
    #[default]
    Memory,
    /// A Redis server shared by every sidecar replica.
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `host:port`.
    #[serde(default = "default_redis_address")]
    pub address: String,
}

fn default_redis_address() -> String {
    "127.0.0.1:6379".to_string()
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            address: default_redis_address(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Highest `priority` wins; ties go to the decision written first.
    #[default]
    Priority,
    /// Highest fraction of satisfied conditions wins; ties go to the decision written first.
    Confidence,
}

// === signals ===

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signals {
    #[serde(default)]
    pub keywords: Vec<KeywordSignal>,
    #[serde(default)]
    pub embeddings: Vec<EmbeddingSignal>,
    #[serde(default)]
    pub domains: Vec<DomainSignal>,
    #[serde(default)]
    pub fact_check: Vec<DescribedSignal>,
    #[serde(default)]
    pub user_feedbacks: Vec<DescribedSignal>,
    #[serde(default)]
    pub preferences: Vec<DescribedSignal>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordSignal {
    pub name: String,
    pub operator: KeywordOperator,
    pub keywords: Vec<String>,
    #[serde(default)]
    pub case_sensitive: bool,
    /// Extension: treat each keyword as a regular expression instead of a literal word.
    #[serde(default)]
    pub regex: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeywordOperator {
    /// Every keyword occurs.
    AND,
    /// At least one keyword occurs.
    OR,
    /// No keyword occurs.
    NOR,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSignal {
    pub name: String,
    pub threshold: f32,
    pub candidates: Vec<String>,
    #[serde(default)]
    pub aggregation_method: Aggregation,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    #[default]
    Max,
    Mean,
    Any,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSignal {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// MMLU-Pro categories that map to this domain; defaults to the domain's own name.
    #[serde(default)]
    pub mmlu_categories: Option<Vec<String>>,
}

/// `fact_check`, `user_feedbacks` and `preferences` entries: a name and what it means.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescribedSignal {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// The 14 MMLU-Pro categories the domain classifier predicts.
pub const MMLU_PRO_CATEGORIES: [&str; 14] = [
    "biology",
    "business",
    "chemistry",
    "computer_science",
    "economics",
    "engineering",
    "health",
    "history",
    "law",
    "math",
    "other",
    "philosophy",
    "physics",
    "psychology",
];

/// `computer science` and `Computer_Science` both name `computer_science`.
pub fn normalize_category(name: &str) -> String {
    name.trim().to_ascii_lowercase().replace([' ', '-'], "_")
}

// === decisions ===

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub priority: i64,
    pub rules: RuleGroup,
    #[serde(rename = "modelRefs")]
    pub model_refs: Vec<ModelRef>,
    #[serde(default)]
    pub plugins: Vec<Plugin>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RuleOperator {
    AND,
    OR,
    /// True when none of the conditions holds (with one condition: its negation).
    NOT,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleGroup {
    pub operator: RuleOperator,
    pub conditions: Vec<Condition>,
}

/// A leaf `{type, name}` naming a signal, or a nested `{operator, conditions}` group.
#[derive(Debug, Clone)]
pub enum Condition {
    Signal { kind: SignalKind, name: String },
    Group(RuleGroup),
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(rename = "type")]
            kind: Option<SignalKind>,
            name: Option<String>,
            operator: Option<RuleOperator>,
            conditions: Option<Vec<Condition>>,
        }
        use serde::de::Error;
        let raw = Raw::deserialize(d)?;
        match raw {
            Raw { kind: Some(kind), name: Some(name), operator: None, conditions: None } => {
                Ok(Condition::Signal { kind, name })
            }
            Raw { kind: None, name: None, operator: Some(operator), conditions: Some(conditions) } => {
                Ok(Condition::Group(RuleGroup { operator, conditions }))
            }
            _ => Err(D::Error::custom(
                "a condition is either {type, name} naming a signal or {operator, conditions} grouping conditions",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalKind {
    Keyword,
    Embedding,
    Domain,
    FactCheck,
    UserFeedback,
    Preference,
}

impl SignalKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalKind::Keyword => "keyword",
            SignalKind::Embedding => "embedding",
            SignalKind::Domain => "domain",
            SignalKind::FactCheck => "fact_check",
            SignalKind::UserFeedback => "user_feedback",
            SignalKind::Preference => "preference",
        }
    }

    /// Where signals of this kind are declared.
    pub fn section(self) -> &'static str {
        match self {
            SignalKind::Keyword => "signals.keywords",
            SignalKind::Embedding => "signals.embeddings",
            SignalKind::Domain => "signals.domains",
            SignalKind::FactCheck => "signals.fact_check",
            SignalKind::UserFeedback => "signals.user_feedbacks",
            SignalKind::Preference => "signals.preferences",
        }
    }
}

impl fmt::Display for SignalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    pub model: String,
    #[serde(default)]
    pub use_reasoning: bool,
    #[serde(default)]
    pub reasoning_effort: Option<String>,
    #[serde(default)]
    pub lora_name: Option<String>,
}

// === plugins ===

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", content = "configuration", deny_unknown_fields)]
pub enum Plugin {
    #[serde(rename = "system_prompt")]
    SystemPrompt(SystemPromptPlugin),
    #[serde(rename = "header_mutation")]
    HeaderMutation(HeaderMutationPlugin),
    #[serde(rename = "semantic-cache")]
    SemanticCache(SemanticCachePlugin),
    #[serde(rename = "jailbreak")]
    Jailbreak(JailbreakPlugin),
    #[serde(rename = "pii")]
    Pii(PiiPlugin),
    #[serde(rename = "hallucination")]
    Hallucination(serde_json::Map<String, serde_json::Value>),
}

impl Plugin {
    pub fn type_name(&self) -> &'static str {
        match self {
            Plugin::SystemPrompt(_) => "system_prompt",
            Plugin::HeaderMutation(_) => "header_mutation",
            Plugin::SemanticCache(_) => "semantic-cache",
            Plugin::Jailbreak(_) => "jailbreak",
            Plugin::Pii(_) => "pii",
            Plugin::Hallucination(_) => "hallucination",
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemPromptPlugin {
    #[serde(default = "yes")]
    pub enabled: bool,
    pub system_prompt: String,
    #[serde(default)]
    pub mode: SystemPromptMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SystemPromptMode {
    /// The configured prompt replaces the request's system message (or becomes the first message).
    #[default]
    Replace,
    /// The configured prompt is put before the request's own system text.
    Insert,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMutationPlugin {
    /// Appended to the upstream request.
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Set, replacing any value the client sent.
    #[serde(default)]
    pub update: Vec<HeaderValue>,
    /// Removed from the upstream request.
    #[serde(default)]
    pub delete: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticCachePlugin {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub similarity_threshold: Option<f32>,
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailbreakPlugin {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub threshold: Option<f32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PiiPlugin {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub threshold: Option<f32>,
    #[serde(default)]
    pub pii_types_allowed: Vec<String>,
    #[serde(default)]
    pub action: PiiAction,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiAction {
    #[default]
    Block,
    Mask,
}

// === providers ===

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Providers {
    pub models: Vec<ModelConfig>,
    /// Serves requests no decision matched; the first model when absent.
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub reasoning_families: BTreeMap<String, ReasoningFamily>,
    #[serde(default = "default_effort")]
    pub default_reasoning_effort: String,
    /// Accepted for compatibility with v0.1 files; using it is reported as unsupported.
    #[serde(default)]
    pub external_models: Vec<serde_json::Value>,
}

fn default_effort() -> String {
    "high".to_string()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub reasoning_family: Option<String>,
    pub endpoints: Vec<EndpointConfig>,
    /// A literal key or `${ENV_VAR}`; sent upstream as `Authorization: Bearer <key>`.
    #[serde(default)]
    pub access_key: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    /// `host[:port][/path]`.
    pub endpoint: String,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Http,
    Https,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasoningFamily {
    #[serde(rename = "type")]
    pub kind: ReasoningKind,
    pub parameter: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningKind {
    /// `chat_template_kwargs: {<parameter>: true|false}` (Qwen3, DeepSeek on vLLM).
    ChatTemplateKwargs,
    /// `<parameter>: low|medium|high` (gpt-oss, OpenAI o-series).
    ReasoningEffort,
}

// === loading ===

/// One problem in a config file: where (a field path) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in one config source, each printed as `source: path: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if e.path.is_empty() {
                write!(f, "{}: {}", self.source, e.message)?;
            } else {
                write!(f, "{}: {}: {}", self.source, e.path, e.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

fn path_error<E: fmt::Display>(source: &str, err: serde_path_to_error::Error<E>) -> ConfigErrors {
    let path = err.path().to_string();
    let path = if path == "." { String::new() } else { path };
    let mut message = err.inner().to_string();
    // serde_yaml prefixes its own (shorter) path; the full one is already in `path`.
    if let Some((head, rest)) = message.split_once(": ") {
        if !head.contains(' ') && path.starts_with(head) {
            message = rest.to_string();
        }
    }
    ConfigErrors {
        source: source.to_string(),
        errors: vec![ConfigError::new(path, message)],
    }
}

impl UserConfig {
    /// Parses the JSON form (what the filter receives) without semantic validation.
    pub fn from_json(source: &str, json: &[u8]) -> Result<Self, ConfigErrors> {
        let mut de = serde_json::Deserializer::from_slice(json);
        serde_path_to_error::deserialize(&mut de).map_err(|e| path_error(source, e))
    }

    /// Parses the YAML form (what users write) without semantic validation.
    #[cfg(any(test, feature = "yaml"))]
    pub fn from_yaml(source: &str, yaml: &str) -> Result<Self, ConfigErrors> {
        let de = serde_yaml::Deserializer::from_str(yaml);
        serde_path_to_error::deserialize(de).map_err(|e| path_error(source, e))
    }

    /// Whether routing this config calls the inference sidecar: a decision uses a model
    /// signal, or a guard or the cache is enabled somewhere.
    pub fn needs_sidecar(&self) -> bool {
        fn model_signal(g: &RuleGroup) -> bool {
            g.conditions.iter().any(|c| match c {
                Condition::Signal { kind, .. } => *kind != SignalKind::Keyword,
                Condition::Group(inner) => model_signal(inner),
            })
        }
        self.prompt_guard.enabled
            || self.semantic_cache.enabled
            || self.decisions.iter().any(|d| {
                model_signal(&d.rules)
                    || d.plugins.iter().any(|p| match p {
                        Plugin::Jailbreak(j) => j.enabled,
                        Plugin::Pii(x) => x.enabled,
                        Plugin::SemanticCache(c) => c.enabled,
                        _ => false,
                    })
            })
    }

    pub fn default_model(&self) -> Option<&str> {
        self.providers
            .default_model
            .as_deref()
            .or_else(|| self.providers.models.first().map(|m| m.name.as_str()))
    }
}
