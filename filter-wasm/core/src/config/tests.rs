use super::validate::{parse_duration_ms, parse_endpoint, Capabilities, Endpoint};
use super::*;

const BASE: &str = r#"
version: v0.1
listeners:
  - {name: http, address: 127.0.0.1, port: 8801, timeout: 300s}
signals:
  keywords:
    - {name: math, operator: OR, keywords: [integral, derivative]}
    - {name: code, operator: AND, keywords: [python, bug], case_sensitive: true}
  domains:
    - {name: science, description: science, mmlu_categories: [physics, "computer science"]}
decisions:
  - name: math_route
    priority: 10
    rules:
      operator: OR
      conditions:
        - {type: keyword, name: math}
        - operator: NOT
          conditions: [{type: keyword, name: code}]
    modelRefs: [{model: qwen, use_reasoning: true}]
    plugins:
      - type: system_prompt
        configuration: {system_prompt: "You are a math tutor.", mode: insert}
      - type: header_mutation
        configuration: {add: [{name: x-team, value: math}], delete: [x-debug]}
providers:
  models:
    - name: qwen
      reasoning_family: qwen3
      endpoints: [{endpoint: "127.0.0.1:8101", weight: 2}]
      access_key: "${QWEN_KEY}"
    - name: gpt
      endpoints: [{endpoint: "api.example.com/v1", protocol: https}]
      access_key: sk-literal
  default_model: gpt
  reasoning_families:
    qwen3: {type: chat_template_kwargs, parameter: enable_thinking}
"#;

fn load(yaml: &str) -> UserConfig {
    UserConfig::from_yaml("test.yaml", yaml).unwrap()
}

fn errors(yaml: &str) -> Vec<ConfigError> {
    validate(&load(yaml), Capabilities::default())
}

/// Replaces one snippet of BASE, failing if the snippet is not there (keeps tests honest).
fn edit(from: &str, to: &str) -> String {
    assert!(BASE.contains(from), "test bug: {from:?} not in BASE");
    BASE.replacen(from, to, 1)
}

fn assert_error(yaml: &str, path: &str, needle: &str) {
    let errs = errors(yaml);
    assert!(
        errs.iter()
            .any(|e| e.path == path && e.message.contains(needle)),
        "expected error at {path} containing {needle:?}, got {errs:#?}"
    );
}

#[test]
fn base_config_is_valid() {
    let cfg = load(BASE);
    assert_eq!(errors(BASE), vec![]);
    assert_eq!(cfg.default_model(), Some("gpt"));
    assert_eq!(cfg.auto_model_names, vec!["MoM", "auto"]);
    assert_eq!(cfg.strategy, Strategy::Priority);
    assert!(
        matches!(&cfg.decisions[0].rules.conditions[1], Condition::Group(g) if g.operator == RuleOperator::NOT)
    );
}

#[test]
fn json_form_parses_like_yaml() {
    let v: serde_json::Value = serde_yaml::from_str(BASE).unwrap();
    let cfg = UserConfig::from_json("plugin", v.to_string().as_bytes()).unwrap();
    assert_eq!(cfg.decisions[0].name, "math_route");
}

#[test]
fn shape_errors_name_file_and_field_path() {
    let e = UserConfig::from_yaml(
        "f.yaml",
        &edit("priority: 10", "priority: 10\n    colour: red"),
    )
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("f.yaml: decisions[0].colour: unknown field `colour`"),
        "{text}"
    );
    assert!(text.contains("line 14"), "{text}");

    let e = UserConfig::from_yaml(
        "f.yaml",
        &edit(
            "operator: OR, keywords: [integral",
            "operator: XOR, keywords: [integral",
        ),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("signals.keywords[0].operator"),
        "{e}"
    );

    let e = UserConfig::from_yaml(
        "f.yaml",
        &edit("- {type: keyword, name: math}", "- {type: keyword}"),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("decisions[0].rules.conditions[0]"),
        "{e}"
    );

    let e = UserConfig::from_yaml("f.yaml", &edit("type: system_prompt", "type: teleport"))
        .unwrap_err();
    assert!(e.to_string().contains("decisions[0].plugins[0]"), "{e}");

    let e = UserConfig::from_yaml("f.yaml", "signals: {}\n").unwrap_err();
    assert!(e.to_string().contains("missing field `providers`"), "{e}");
}

#[test]
fn dangling_references_are_named() {
    assert_error(
        &edit(
            "{type: keyword, name: math}",
            "{type: keyword, name: maths}",
        ),
        "decisions[0].rules.conditions[0].name",
        "unknown keyword signal 'maths'",
    );
    assert_error(
        &edit("modelRefs: [{model: qwen", "modelRefs: [{model: llama"),
        "decisions[0].modelRefs[0].model",
        "unknown model 'llama'",
    );
    assert_error(
        &edit("default_model: gpt", "default_model: nope"),
        "providers.default_model",
        "unknown model 'nope'",
    );
    assert_error(
        &edit("reasoning_family: qwen3", "reasoning_family: qwen4"),
        "providers.models[0].reasoning_family",
        "unknown reasoning family",
    );
}

#[test]
fn duplicates_and_empties_are_rejected() {
    assert_error(
        &edit("name: code, operator", "name: math, operator"),
        "signals.keywords[1].name",
        "duplicate name 'math'",
    );
    assert_error(
        &edit("- name: gpt\n", "- name: qwen\n"),
        "providers.models[1].name",
        "duplicate name 'qwen'",
    );
    assert_error(
        &edit(
            "modelRefs: [{model: qwen, use_reasoning: true}]",
            "modelRefs: []",
        ),
        "decisions[0].modelRefs",
        "at least one model",
    );
    assert_error(
        &edit("keywords: [integral, derivative]", "keywords: []"),
        "signals.keywords[0].keywords",
        "at least one keyword",
    );
    assert_error(
        &edit(
            "keywords: [integral, derivative]",
            "keywords: [integral, \" \"]",
        ),
        "signals.keywords[0].keywords[1]",
        "must not be empty",
    );
    assert_error(
        &edit(
            "conditions: [{type: keyword, name: code}]",
            "conditions: []",
        ),
        "decisions[0].rules.conditions[1].conditions",
        "at least one condition",
    );
    assert_error(
        &edit("- name: math_route", "- name: \"math,route\""),
        "decisions[0].name",
        "without commas",
    );
}

#[test]
fn invalid_regex_is_named() {
    let yaml = edit(
        "keywords: [integral, derivative]}",
        "keywords: [\"(unclosed\"], regex: true}",
    );
    assert_error(&yaml, "signals.keywords[0].keywords[0]", "invalid regex");
    // The same text as a literal keyword is fine: literals are escaped.
    assert_eq!(
        errors(&edit(
            "keywords: [integral, derivative]}",
            "keywords: [\"(unclosed\"]}"
        )),
        vec![]
    );
}

#[test]
fn ranges_endpoints_and_values_are_checked() {
    assert_error(
        &edit("port: 8801", "port: 70000"),
        "listeners[0].port",
        "not in 1-65535",
    );
    assert_error(
        &edit("address: 127.0.0.1", "address: localhost:1"),
        "listeners[0].address",
        "not an IP address",
    );
    assert_error(
        &edit("timeout: 300s", "timeout: 5 minutes"),
        "listeners[0].timeout",
        "invalid duration",
    );
    assert_error(
        &edit("\"127.0.0.1:8101\"", "\"http://127.0.0.1:8101\""),
        "providers.models[0].endpoints[0].endpoint",
        "without a scheme",
    );
    assert_error(
        &edit("\"127.0.0.1:8101\"", "\"127.0.0.1:99999\""),
        "providers.models[0].endpoints[0].endpoint",
        "invalid port",
    );
    assert_error(
        &edit("weight: 2", "weight: 0"),
        "providers.models[0].endpoints[0].weight",
        "at least 1",
    );
    assert_error(
        &edit("\"${QWEN_KEY}\"", "\"${QWEN KEY}\""),
        "providers.models[0].access_key",
        "not a valid environment variable",
    );
    assert_error(
        &edit(
            "use_reasoning: true}",
            "use_reasoning: true, reasoning_effort: extreme}",
        ),
        "decisions[0].modelRefs[0].reasoning_effort",
        "not one of",
    );
    assert_error(
        &format!("{BASE}auto_model_names: [gpt]\n"),
        "auto_model_names[0]",
        "also a model",
    );
    assert_error(
        &edit("version: v0.1", "version: v9"),
        "version",
        "unsupported version",
    );
    assert_error(
        &edit(
            "mmlu_categories: [physics, \"computer science\"]",
            "mmlu_categories: [physics, astrology]",
        ),
        "signals.domains[0].mmlu_categories[1]",
        "not an MMLU-Pro category",
    );
}

#[test]
fn plugin_configurations_are_checked() {
    assert_error(
        &edit(
            "{system_prompt: \"You are a math tutor.\", mode: insert}",
            "{system_prompt: \"\"}",
        ),
        "decisions[0].plugins[0].configuration.system_prompt",
        "must not be empty",
    );
    assert_error(
        &edit("delete: [x-debug]", "delete: [content-length]"),
        "decisions[0].plugins[1].configuration.delete[0]",
        "managed by the router",
    );
    assert_error(
        &edit(
            "{name: x-team, value: math}",
            "{name: \"bad header\", value: math}",
        ),
        "decisions[0].plugins[1].configuration.add[0].name",
        "not a valid HTTP header name",
    );
    assert_error(
        &edit(
            "{name: x-team, value: math}",
            "{name: x-team, value: \"a\\nb\"}",
        ),
        "decisions[0].plugins[1].configuration.add[0].name",
        "CR, LF",
    );
    let twice = edit("      - type: header_mutation", "      - type: system_prompt\n        configuration: {system_prompt: again}\n      - type: header_mutation");
    assert_error(&twice, "decisions[0].plugins[1].type", "configured twice");
}

#[test]
fn model_signals_and_plugins_need_the_sidecar() {
    let keywords_only = |yaml: &str| validate(&load(yaml), Capabilities::KEYWORDS_ONLY);
    let yaml = edit(
        "- {type: keyword, name: math}",
        "- {type: domain, name: science}",
    );
    let errs = keywords_only(&yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "decisions[0].rules.conditions[0].type");
    assert!(errs[0].message.contains("need the inference sidecar"));
    assert_eq!(errors(&yaml), vec![]);

    let yaml = edit("      - type: header_mutation", "      - type: jailbreak\n        configuration: {enabled: true, threshold: 0.7}\n      - type: header_mutation");
    let errs = keywords_only(&yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "decisions[0].plugins[1].type");
    assert!(errs[0]
        .message
        .contains("plugin 'jailbreak' needs the inference sidecar"));
    assert_eq!(errors(&yaml), vec![]);
    // A disabled plugin needs nothing.
    let yaml = yaml.replace("{enabled: true, threshold: 0.7}", "{enabled: false}");
    assert_eq!(keywords_only(&yaml), vec![]);
}

#[test]
fn sidecar_sections_are_checked() {
    let with = |extra: &str| format!("{BASE}\n{extra}\n");
    let parse_error = |yaml: &str, path: &str, needle: &str| {
        let e = UserConfig::from_yaml("t.yaml", yaml).unwrap_err();
        assert_eq!(e.errors[0].path, path, "{e}");
        assert!(e.errors[0].message.contains(needle), "{e}");
    };
    assert_error(
        &with("inference_sidecar: {address: localhost}"),
        "inference_sidecar.address",
        "needs a port",
    );
    assert_error(
        &with("inference_sidecar: {timeout: 5 seconds}"),
        "inference_sidecar.timeout",
        "invalid duration",
    );
    parse_error(
        &with("inference_sidecar: {failure_mode: maybe}"),
        "inference_sidecar.failure_mode",
        "unknown variant",
    );
    assert_error(
        &with("prompt_guard: {enabled: true, threshold: 1.5}"),
        "prompt_guard.threshold",
        "not in [0, 1]",
    );
    assert_error(
        &with("prompt_guard: {block_status: 302}"),
        "prompt_guard.block_status",
        "not 200 or a 4xx",
    );
    assert_error(
        &with("semantic_cache: {enabled: true, eviction_policy: fifo}"),
        "semantic_cache.eviction_policy",
        "only lru",
    );
    parse_error(
        &with("semantic_cache: {backend_type: milvus}"),
        "semantic_cache.backend_type",
        "unknown variant",
    );
    assert_error(
        &with("classifier: {domain_threshold: -1}"),
        "classifier.domain_threshold",
        "not in [0, 1]",
    );
    assert_eq!(
        errors(&with(
            "inference_sidecar: {address: \"10.0.0.5:50051\", timeout: 150ms, failure_mode: closed}\n\
             prompt_guard: {enabled: true, threshold: 0.8, block_status: 403}\n\
             semantic_cache: {enabled: true, backend_type: redis, redis: {address: \"127.0.0.1:6380\"}}"
        )),
        vec![]
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let yaml = edit("default_model: gpt", "default_model: nope").replace("port: 8801", "port: 0");
    assert_eq!(errors(&yaml).len(), 2);
}

#[test]
fn endpoint_and_duration_parsing() {
    assert_eq!(
        parse_endpoint("api.openai.com", Protocol::Https),
        Ok(Endpoint {
            host: "api.openai.com".into(),
            port: 443,
            path: String::new()
        })
    );
    assert_eq!(
        parse_endpoint("10.0.0.1:8000/openai/", Protocol::Http),
        Ok(Endpoint {
            host: "10.0.0.1".into(),
            port: 8000,
            path: "/openai".into()
        })
    );
    assert_eq!(
        parse_endpoint("[::1]:9000", Protocol::Http),
        Ok(Endpoint {
            host: "::1".into(),
            port: 9000,
            path: String::new()
        })
    );
    assert!(parse_endpoint(":80", Protocol::Http).is_err());
    assert_eq!(parse_duration_ms("300s"), Ok(300_000));
    assert_eq!(parse_duration_ms("250ms"), Ok(250));
    assert_eq!(parse_duration_ms("5m"), Ok(300_000));
    assert!(parse_duration_ms("5d").is_err());
}
