//! Whole-file checks that serde cannot do: references, duplicates, ranges, regexes.
//! Every problem is collected (not only the first), each with the field path.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::signals::keyword::keyword_pattern;

/// What the running router can serve. Signals and plugins that need the inference
/// sidecar are refused (not silently ignored) where it cannot be called (the browser
/// playground); the filter and the CLI have it.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    pub inference_sidecar: bool,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities {
            inference_sidecar: true,
        }
    }
}

impl Capabilities {
    /// Keyword signals and header/body plugins only.
    pub const KEYWORDS_ONLY: Capabilities = Capabilities {
        inference_sidecar: false,
    };
}

/// Checks a parsed config; an empty list means it is valid.
pub fn validate(cfg: &UserConfig, caps: Capabilities) -> Vec<ConfigError> {
    let mut v = Validator {
        errors: Vec::new(),
        caps,
    };
    v.listeners(cfg);
    let names = v.signals(&cfg.signals);
    let models = v.providers(&cfg.providers);
    v.decisions(cfg, &names, &models);
    v.globals(cfg, &models);
    v.sidecar_sections(cfg);
    v.errors
}

struct Validator {
    errors: Vec<ConfigError>,
    caps: Capabilities,
}

/// Names that end up in header values and comma-separated lists.
fn check_name(name: &str) -> Option<&'static str> {
    if name.trim().is_empty() {
        Some("must not be empty")
    } else if name.chars().any(|c| !(' '..='~').contains(&c) || c == ',') {
        Some("must be printable ASCII without commas (it is sent in response headers)")
    } else {
        None
    }
}

fn is_header_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers a plugin must not touch: the proxy and the router own them.
const RESERVED_HEADERS: [&str; 6] = [
    "content-length",
    "host",
    "transfer-encoding",
    "x-selected-model",
    "x-gateway-model-name",
    "connection",
];

/// A parsed `host[:port][/path]` endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub path: String,
}

/// Parses `host[:port][/path]`, defaulting the port by protocol.
pub fn parse_endpoint(s: &str, protocol: Protocol) -> Result<Endpoint, String> {
    let s = s.trim();
    if s.contains("://") {
        return Err(
            "write host[:port][/path] without a scheme; use `protocol` for http/https".into(),
        );
    }
    let (authority, path) = match s.find('/') {
        Some(i) => (&s[..i], s[i..].trim_end_matches('/').to_string()),
        None => (s, String::new()),
    };
    let default_port = match protocol {
        Protocol::Http => 80,
        Protocol::Https => 443,
    };
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        // [ipv6]:port
        let end = rest.find(']').ok_or("unclosed '[' in IPv6 address")?;
        let host = &rest[..end];
        let port = match rest[end + 1..].strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| format!("invalid port '{p}'"))?,
            None => default_port,
        };
        (host.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("invalid port '{p}'"))?,
            ),
            None => (authority.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("missing host".into());
    }
    if port == 0 {
        return Err("port must be 1-65535".into());
    }
    if !host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c))
    {
        return Err(format!("invalid host '{host}'"));
    }
    Ok(Endpoint { host, port, path })
}

/// Parses durations such as `300s`, `5m`, `1h`, `250ms`, in milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration '{s}' (e.g. 300s, 5m, 250ms)"))?;
    let factor = match unit {
        "ms" => 1,
        "s" | "" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => {
            return Err(format!(
                "invalid duration unit in '{s}' (use ms, s, m or h)"
            ))
        }
    };
    Ok(n * factor)
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }

    fn name(&mut self, path: String, name: &str, seen: &mut HashSet<String>) {
        if let Some(problem) = check_name(name) {
            self.err(path, problem);
        } else if !seen.insert(name.to_string()) {
            self.err(path, format!("duplicate name '{name}'"));
        }
    }

    fn listeners(&mut self, cfg: &UserConfig) {
        let mut seen = HashSet::new();
        let mut ports = HashSet::new();
        for (i, l) in cfg.listeners.iter().enumerate() {
            let p = format!("listeners[{i}]");
            self.name(format!("{p}.name"), &l.name, &mut seen);
            if l.port == 0 || l.port > 65535 {
                self.err(
                    format!("{p}.port"),
                    format!("port {} is not in 1-65535", l.port),
                );
            } else if !ports.insert((l.address.clone(), l.port)) {
                self.err(
                    format!("{p}.port"),
                    format!("{}:{} is used by another listener", l.address, l.port),
                );
            }
            if l.address.parse::<std::net::IpAddr>().is_err() {
                self.err(
                    format!("{p}.address"),
                    format!("'{}' is not an IP address", l.address),
                );
            }
            if let Some(t) = &l.timeout {
                if let Err(e) = parse_duration_ms(t) {
                    self.err(format!("{p}.timeout"), e);
                }
            }
        }
    }

    /// Returns the declared signal names per kind.
    fn signals(&mut self, s: &Signals) -> HashMap<SignalKind, HashSet<String>> {
        let mut names: HashMap<SignalKind, HashSet<String>> = HashMap::new();

        let seen = names.entry(SignalKind::Keyword).or_default();
        let mut errs = Vec::new();
        for (i, k) in s.keywords.iter().enumerate() {
            let p = format!("signals.keywords[{i}]");
            if let Some(problem) = check_name(&k.name) {
                errs.push(ConfigError::new(format!("{p}.name"), problem));
            } else if !seen.insert(k.name.clone()) {
                errs.push(ConfigError::new(
                    format!("{p}.name"),
                    format!("duplicate name '{}'", k.name),
                ));
            }
            if k.keywords.is_empty() {
                errs.push(ConfigError::new(
                    format!("{p}.keywords"),
                    "must list at least one keyword",
                ));
            }
            for (j, kw) in k.keywords.iter().enumerate() {
                if kw.trim().is_empty() {
                    errs.push(ConfigError::new(
                        format!("{p}.keywords[{j}]"),
                        "keyword must not be empty",
                    ));
                    continue;
                }
                if let Err(e) = regex::Regex::new(&keyword_pattern(kw, k.case_sensitive, k.regex)) {
                    errs.push(ConfigError::new(
                        format!("{p}.keywords[{j}]"),
                        format!("invalid regex: {e}"),
                    ));
                }
            }
        }
        self.errors.extend(errs);

        let mut seen = HashSet::new();
        for (i, e) in s.embeddings.iter().enumerate() {
            let p = format!("signals.embeddings[{i}]");
            self.name(format!("{p}.name"), &e.name, &mut seen);
            if !(0.0..=1.0).contains(&e.threshold) {
                self.err(
                    format!("{p}.threshold"),
                    format!("{} is not in [0, 1]", e.threshold),
                );
            }
            if e.candidates.is_empty() {
                self.err(
                    format!("{p}.candidates"),
                    "must list at least one candidate text",
                );
            }
            for (j, c) in e.candidates.iter().enumerate() {
                if c.trim().is_empty() {
                    self.err(
                        format!("{p}.candidates[{j}]"),
                        "candidate text must not be empty",
                    );
                }
            }
        }
        names.insert(SignalKind::Embedding, seen);

        let mut seen = HashSet::new();
        for (i, d) in s.domains.iter().enumerate() {
            let p = format!("signals.domains[{i}]");
            self.name(format!("{p}.name"), &d.name, &mut seen);
            let cats: Vec<String> = match &d.mmlu_categories {
                Some(c) => c.clone(),
                None => vec![d.name.clone()],
            };
            if d.mmlu_categories.as_ref().is_some_and(|c| c.is_empty()) {
                self.err(
                    format!("{p}.mmlu_categories"),
                    "must list at least one category",
                );
            }
            for (j, c) in cats.iter().enumerate() {
                if !MMLU_PRO_CATEGORIES.contains(&normalize_category(c).as_str()) {
                    let path = if d.mmlu_categories.is_some() {
                        format!("{p}.mmlu_categories[{j}]")
                    } else {
                        format!("{p}.name")
                    };
                    self.err(
                        path,
                        format!(
                            "'{c}' is not an MMLU-Pro category (one of: {})",
                            MMLU_PRO_CATEGORIES.join(", ")
                        ),
                    );
                }
            }
        }
        names.insert(SignalKind::Domain, seen);

        for (kind, list) in [
            (SignalKind::FactCheck, &s.fact_check),
            (SignalKind::UserFeedback, &s.user_feedbacks),
            (SignalKind::Preference, &s.preferences),
        ] {
            let mut seen = HashSet::new();
            for (i, d) in list.iter().enumerate() {
                self.name(format!("{}[{i}].name", kind.section()), &d.name, &mut seen);
            }
            names.insert(kind, seen);
        }
        names
    }

    /// Returns the model names declared.
    fn providers(&mut self, p: &Providers) -> HashSet<String> {
        let mut seen = HashSet::new();
        if p.models.is_empty() {
            self.err("providers.models", "must declare at least one model");
        }
        for (i, m) in p.models.iter().enumerate() {
            let path = format!("providers.models[{i}]");
            self.name(format!("{path}.name"), &m.name, &mut seen);
            if m.endpoints.is_empty() {
                self.err(
                    format!("{path}.endpoints"),
                    "must list at least one endpoint",
                );
            }
            for (j, e) in m.endpoints.iter().enumerate() {
                if let Err(msg) = parse_endpoint(&e.endpoint, e.protocol) {
                    self.err(
                        format!("{path}.endpoints[{j}].endpoint"),
                        format!("'{}': {msg}", e.endpoint),
                    );
                }
                if e.weight == Some(0) {
                    self.err(
                        format!("{path}.endpoints[{j}].weight"),
                        "weight must be at least 1",
                    );
                }
            }
            if let Some(f) = &m.reasoning_family {
                if !p.reasoning_families.contains_key(f) {
                    self.err(
                        format!("{path}.reasoning_family"),
                        format!(
                            "unknown reasoning family '{f}' (not in providers.reasoning_families)"
                        ),
                    );
                }
            }
            if let Some(key) = &m.access_key {
                if let Err(msg) = parse_access_key(key) {
                    self.err(format!("{path}.access_key"), msg);
                }
            }
        }
        if let Some(d) = &p.default_model {
            if !seen.contains(d) {
                self.err(
                    "providers.default_model",
                    format!("unknown model '{d}' (not in providers.models)"),
                );
            }
        }
        for (name, fam) in &p.reasoning_families {
            if fam.parameter.trim().is_empty() {
                self.err(
                    format!("providers.reasoning_families.{name}.parameter"),
                    "must not be empty",
                );
            }
        }
        if !is_effort(&p.default_reasoning_effort) {
            self.err(
                "providers.default_reasoning_effort",
                format!(
                    "'{}' is not one of minimal, low, medium, high",
                    p.default_reasoning_effort
                ),
            );
        }
        if !p.external_models.is_empty() {
            self.err(
                "providers.external_models",
                "external models are not supported by this router yet",
            );
        }
        seen
    }

    fn decisions(
        &mut self,
        cfg: &UserConfig,
        signals: &HashMap<SignalKind, HashSet<String>>,
        models: &HashSet<String>,
    ) {
        let mut seen = HashSet::new();
        for (i, d) in cfg.decisions.iter().enumerate() {
            let p = format!("decisions[{i}]");
            self.name(format!("{p}.name"), &d.name, &mut seen);
            self.rule_group(&format!("{p}.rules"), &d.rules, signals);
            if d.model_refs.is_empty() {
                self.err(format!("{p}.modelRefs"), "must list at least one model");
            }
            for (j, m) in d.model_refs.iter().enumerate() {
                if !models.contains(&m.model) {
                    self.err(
                        format!("{p}.modelRefs[{j}].model"),
                        format!("unknown model '{}' (not in providers.models)", m.model),
                    );
                }
                if let Some(e) = &m.reasoning_effort {
                    if !is_effort(e) {
                        self.err(
                            format!("{p}.modelRefs[{j}].reasoning_effort"),
                            format!("'{e}' is not one of minimal, low, medium, high"),
                        );
                    }
                }
            }
            let mut types = HashSet::new();
            for (j, plugin) in d.plugins.iter().enumerate() {
                let pp = format!("{p}.plugins[{j}]");
                if !types.insert(plugin.type_name()) {
                    self.err(
                        format!("{pp}.type"),
                        format!("plugin '{}' is configured twice", plugin.type_name()),
                    );
                }
                self.plugin(&pp, plugin);
            }
        }
    }

    fn rule_group(
        &mut self,
        path: &str,
        g: &RuleGroup,
        signals: &HashMap<SignalKind, HashSet<String>>,
    ) {
        if g.conditions.is_empty() {
            self.err(
                format!("{path}.conditions"),
                "must list at least one condition",
            );
        }
        for (i, c) in g.conditions.iter().enumerate() {
            let p = format!("{path}.conditions[{i}]");
            match c {
                Condition::Group(inner) => self.rule_group(&p, inner, signals),
                Condition::Signal { kind, name } => {
                    let declared = signals.get(kind).is_some_and(|s| s.contains(name));
                    if !declared {
                        self.err(
                            format!("{p}.name"),
                            format!("unknown {kind} signal '{name}' (not in {})", kind.section()),
                        );
                    } else if *kind != SignalKind::Keyword && !self.caps.inference_sidecar {
                        self.err(
                            format!("{p}.type"),
                            format!(
                                "{kind} signals need the inference sidecar, which this build cannot call; \
                                 only keyword conditions can be used"
                            ),
                        );
                    }
                }
            }
        }
    }

    fn plugin(&mut self, p: &str, plugin: &Plugin) {
        let cp = format!("{p}.configuration");
        match plugin {
            Plugin::SystemPrompt(s) => {
                if s.enabled && s.system_prompt.trim().is_empty() {
                    self.err(
                        format!("{cp}.system_prompt"),
                        "must not be empty when the plugin is enabled",
                    );
                }
            }
            Plugin::HeaderMutation(h) => {
                let named = h
                    .add
                    .iter()
                    .enumerate()
                    .map(|(i, v)| {
                        (
                            format!("{cp}.add[{i}].name"),
                            v.name.as_str(),
                            Some(v.value.as_str()),
                        )
                    })
                    .chain(h.update.iter().enumerate().map(|(i, v)| {
                        (
                            format!("{cp}.update[{i}].name"),
                            v.name.as_str(),
                            Some(v.value.as_str()),
                        )
                    }))
                    .chain(
                        h.delete
                            .iter()
                            .enumerate()
                            .map(|(i, n)| (format!("{cp}.delete[{i}]"), n.as_str(), None)),
                    );
                let mut errs = Vec::new();
                for (path, name, value) in named {
                    let lower = name.to_ascii_lowercase();
                    if !is_header_token(name) {
                        errs.push(ConfigError::new(
                            path,
                            format!("'{name}' is not a valid HTTP header name"),
                        ));
                    } else if RESERVED_HEADERS.contains(&lower.as_str())
                        || lower.starts_with("x-vsr-")
                    {
                        errs.push(ConfigError::new(
                            path,
                            format!(
                                "header '{name}' is managed by the router and cannot be mutated"
                            ),
                        ));
                    } else if value
                        .is_some_and(|v| v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0))
                    {
                        errs.push(ConfigError::new(
                            path,
                            "header value must not contain CR, LF or NUL",
                        ));
                    }
                }
                self.errors.extend(errs);
            }
            Plugin::SemanticCache(c) => {
                self.threshold(&cp, "similarity_threshold", c.similarity_threshold);
                self.needs_sidecar(p, plugin, c.enabled);
            }
            Plugin::Jailbreak(j) => {
                self.threshold(&cp, "threshold", j.threshold);
                self.needs_sidecar(p, plugin, j.enabled);
            }
            Plugin::Pii(x) => {
                self.threshold(&cp, "threshold", x.threshold);
                self.needs_sidecar(p, plugin, x.enabled);
            }
            Plugin::Hallucination(_) => self.needs_sidecar(p, plugin, true),
        }
    }

    fn threshold(&mut self, cp: &str, field: &str, t: Option<f32>) {
        if let Some(t) = t {
            if !(0.0..=1.0).contains(&t) {
                self.err(format!("{cp}.{field}"), format!("{t} is not in [0, 1]"));
            }
        }
    }

    fn needs_sidecar(&mut self, p: &str, plugin: &Plugin, enabled: bool) {
        if enabled && !self.caps.inference_sidecar {
            self.err(
                format!("{p}.type"),
                format!(
                    "plugin '{}' needs the inference sidecar, which this build cannot call",
                    plugin.type_name()
                ),
            );
        }
    }

    fn globals(&mut self, cfg: &UserConfig, models: &HashSet<String>) {
        if cfg.auto_model_names.is_empty() {
            self.err("auto_model_names", "must list at least one name");
        }
        for (i, n) in cfg.auto_model_names.iter().enumerate() {
            if n.trim().is_empty() {
                self.err(format!("auto_model_names[{i}]"), "must not be empty");
            } else if models.contains(n) {
                self.err(
                    format!("auto_model_names[{i}]"),
                    format!("'{n}' is also a model in providers.models"),
                );
            }
        }
        if cfg.limits.max_request_body_bytes == 0 {
            self.err("limits.max_request_body_bytes", "must be at least 1");
        }
        if let Some(v) = &cfg.version {
            if v != "v0.1" {
                self.err(
                    "version",
                    format!("unsupported version '{v}' (this router reads v0.1)"),
                );
            }
        }
    }
}

impl Validator {
    fn sidecar_sections(&mut self, cfg: &UserConfig) {
        let sc = &cfg.inference_sidecar;
        if let Err(e) = parse_host_port(&sc.address) {
            self.err("inference_sidecar.address", e);
        }
        if !is_header_token(&sc.cluster) {
            self.err(
                "inference_sidecar.cluster",
                format!("'{}' is not a valid cluster name", sc.cluster),
            );
        }
        match parse_duration_ms(&sc.timeout) {
            Ok(0) => self.err("inference_sidecar.timeout", "must be more than 0"),
            Ok(ms) if ms > 60_000 => self.err(
                "inference_sidecar.timeout",
                "must be at most 60s (it is added to every routed request)",
            ),
            Ok(_) => {}
            Err(e) => self.err("inference_sidecar.timeout", e),
        }
        let c = &cfg.classifier;
        for (field, t) in [
            ("domain_threshold", c.domain_threshold),
            ("fact_check_threshold", c.fact_check_threshold),
            ("user_feedback_threshold", c.user_feedback_threshold),
            ("preference_threshold", c.preference_threshold),
        ] {
            self.threshold("classifier", field, Some(t));
        }
        let g = &cfg.prompt_guard;
        self.threshold("prompt_guard", "threshold", Some(g.threshold));
        if !(g.block_status == 200 || (400..=499).contains(&g.block_status)) {
            self.err(
                "prompt_guard.block_status",
                format!("{} is not 200 or a 4xx status", g.block_status),
            );
        }
        if g.enabled && !self.caps.inference_sidecar {
            self.err(
                "prompt_guard.enabled",
                "the jailbreak guard needs the inference sidecar, which this build cannot call",
            );
        }
        let c = &cfg.semantic_cache;
        if !(c.similarity_threshold > 0.0 && c.similarity_threshold <= 1.0) {
            self.err(
                "semantic_cache.similarity_threshold",
                format!("{} is not in (0, 1]", c.similarity_threshold),
            );
        }
        if c.max_entries == 0 {
            self.err("semantic_cache.max_entries", "must be at least 1");
        }
        if c.ttl_seconds == 0 {
            self.err("semantic_cache.ttl_seconds", "must be at least 1");
        }
        if c.eviction_policy != "lru" {
            self.err(
                "semantic_cache.eviction_policy",
                format!("'{}' is not supported (only lru)", c.eviction_policy),
            );
        }
        if let Err(e) = parse_host_port(&c.redis.address) {
            self.err("semantic_cache.redis.address", e);
        }
        if c.enabled && !self.caps.inference_sidecar {
            self.err(
                "semantic_cache.enabled",
                "the semantic cache needs the inference sidecar, which this build cannot call",
            );
        }
    }
}

/// `host:port` with an explicit port and no path.
pub fn parse_host_port(s: &str) -> Result<Endpoint, String> {
    let e = parse_endpoint(s, Protocol::Http)?;
    if !e.path.is_empty() {
        return Err(format!("'{s}' must be host:port without a path"));
    }
    if !s.trim().ends_with(&format!(":{}", e.port)) {
        return Err(format!("'{s}' needs a port (host:port)"));
    }
    Ok(e)
}

fn is_effort(e: &str) -> bool {
    matches!(e, "minimal" | "low" | "medium" | "high")
}

/// An access key is a literal or a whole `${ENV_VAR}` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessKey<'a> {
    Literal(&'a str),
    Env(&'a str),
}

pub fn parse_access_key(key: &str) -> Result<AccessKey<'_>, String> {
    if let Some(inner) = key.strip_prefix("${") {
        let var = inner
            .strip_suffix('}')
            .ok_or("unclosed '${' (write ${ENV_VAR})")?;
        if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("'{var}' is not a valid environment variable name"));
        }
        return Ok(AccessKey::Env(var));
    }
    if key.is_empty() {
        return Err("must not be empty (omit the field for no key)".into());
    }
    if key.bytes().any(|b| b.is_ascii_control()) {
        return Err("must not contain control characters".into());
    }
    Ok(AccessKey::Literal(key))
}
