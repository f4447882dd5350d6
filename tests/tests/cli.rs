//! The `vsr` commands as users run them: `init`, `validate` on broken configs, `render`,
//! `envoy --mode validate` on what `render` produces and on the example in `envoy/`,
//! `eval --labelled`, and a small `train` run.

use std::path::Path;
use std::process::Command;

use vsr_e2e::paths;
use vsr_e2e::stack::{vsr, vsr_render};

/// A minimal valid config; each case below breaks it in one place.
const VALID: &str = r#"
listeners: [{name: l, address: 127.0.0.1, port: 18801}]
signals:
  keywords:
    - {name: k, operator: OR, keywords: [word]}
decisions:
  - name: d
    rules: {operator: OR, conditions: [{type: keyword, name: k}]}
    modelRefs: [{model: m}]
providers:
  models: [{name: m, endpoints: [{endpoint: "127.0.0.1:18101"}]}]
"#;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

/// `vsr validate` on `text`: (exit ok, stdout, stderr).
fn validate(text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "c.yaml", text);
    vsr(&["validate", "--config", &path], &[])
}

/// `envoy --mode validate` (which also starts the filter VM and loads the config).
fn envoy_validate(bootstrap: &Path, env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(paths::envoy())
        .envs(env.iter().copied())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "error",
            "-c",
        ])
        .arg(bootstrap)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn valid_config_reports_counts() {
    let (ok, out, err) = validate(VALID);
    assert!(ok, "{err}");
    assert!(
        out.trim_end()
            .ends_with("c.yaml: valid (1 decisions, 1 models)"),
        "{out}"
    );
}

#[test]
fn broken_configs_name_the_field() {
    let cases = [
        (
            "unknown field",
            VALID.replace("rules:", "priorty: 2\n    rules:"),
            "decisions[0].priorty: unknown field `priorty`",
        ),
        (
            "dangling signal",
            VALID.replace("{type: keyword, name: k}", "{type: keyword, name: nope}"),
            "decisions[0].rules.conditions[0].name: unknown keyword signal 'nope'",
        ),
        (
            "unknown model",
            VALID.replace("[{model: m}]", "[{model: ghost}]"),
            "decisions[0].modelRefs[0].model: unknown model 'ghost'",
        ),
        (
            "duplicate names",
            VALID.replace(
                "keywords: [word]}",
                "keywords: [word]}\n    - {name: k, operator: OR, keywords: [other]}",
            ),
            "signals.keywords[1].name: duplicate name 'k'",
        ),
        (
            "invalid regex",
            VALID.replace("keywords: [word]}", "keywords: ['a(b'], regex: true}"),
            "signals.keywords[0].keywords[0]: invalid regex",
        ),
        (
            "empty modelRefs",
            VALID.replace("[{model: m}]", "[]"),
            "decisions[0].modelRefs: must list at least one model",
        ),
        (
            "unset env key",
            VALID.replace(
                "endpoints:",
                "access_key: '${VSR_E2E_SURELY_UNSET}', endpoints:",
            ),
            "providers.models[0].access_key: environment variable VSR_E2E_SURELY_UNSET is not set",
        ),
    ];
    for (what, text, expected) in cases {
        let (ok, out, err) = validate(&text);
        assert!(!ok, "{what}: accepted\n{out}");
        assert!(
            err.contains(&format!("c.yaml: {expected}")),
            "{what}: expected `{expected}` in\n{err}"
        );
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let text = VALID
        .replace("[{model: m}]", "[{model: ghost}]")
        .replace("name: k, operator", "name: '', operator");
    let (ok, _, err) = validate(&text);
    assert!(!ok);
    assert!(err.lines().count() >= 2, "{err}");
    assert!(err.contains("signals.keywords[0].name"), "{err}");
    assert!(err.contains("decisions[0].modelRefs[0].model"), "{err}");
}

#[test]
fn init_writes_a_valid_config_and_keeps_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = vsr(&["init"], &[]);
    assert!(ok);
    let (ok, _, err) = validate(&stdout);
    assert!(ok, "init output does not validate: {err}");

    let path = dir
        .path()
        .join("config.yaml")
        .to_string_lossy()
        .into_owned();
    assert!(vsr(&["init", "--output", &path], &[]).0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), stdout);
    std::fs::write(&path, "mine").unwrap();
    let (ok, _, err) = vsr(&["init", "--output", &path], &[]);
    assert!(!ok && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
    assert!(vsr(&["init", "--output", &path, "--force"], &[]).0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), stdout);
}

#[test]
fn render_refuses_invalid_configs() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.yaml",
        &VALID.replace("[{model: m}]", "[{model: ghost}]"),
    );
    let (ok, out, err) = vsr_render(Path::new(&path), &paths::wasm(), 9901, &[]);
    assert!(!ok);
    assert!(out.is_empty(), "no bootstrap for an invalid config: {out}");
    assert!(err.contains("decisions[0].modelRefs[0].model"), "{err}");
}

#[test]
fn rendered_default_config_passes_envoy_validation() {
    let dir = tempfile::tempdir().unwrap();
    let (_, default, _) = vsr(&["init"], &[]);
    let config = write(dir.path(), "default.yaml", &default);
    let (ok, yaml, err) = vsr_render(Path::new(&config), &paths::wasm(), 9901, &[]);
    assert!(ok, "{err}");
    let bootstrap = write(dir.path(), "envoy.yaml", &yaml);
    let (ok, log) = envoy_validate(Path::new(&bootstrap), &[]);
    assert!(ok, "envoy rejected the rendered bootstrap:\n{log}");
}

#[test]
fn tls_weighted_and_env_key_config_passes_envoy_validation_without_the_key() {
    let secret = "sk-never-in-the-bootstrap";
    let text = r#"
listeners: [{name: l, address: 127.0.0.1, port: 18802, timeout: 90s}]
providers:
  models:
    - name: remote
      access_key: ${VSR_E2E_REMOTE_KEY}
      endpoints:
        - {name: primary, endpoint: "api.example.com/v1beta", protocol: https, weight: 3}
        - {name: backup, endpoint: "backup.example.com:8443/v1beta", protocol: https}
    - {name: local, endpoints: [{endpoint: "localhost:18103"}]}
"#;
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "tls.yaml", text);
    let (ok, yaml, err) = vsr_render(
        Path::new(&config),
        &paths::wasm(),
        9901,
        &[("VSR_E2E_REMOTE_KEY", secret)],
    );
    assert!(ok, "{err}");
    assert!(
        !yaml.contains(secret),
        "the access key was written into the bootstrap"
    );
    assert!(
        yaml.contains("VSR_E2E_REMOTE_KEY"),
        "host_env_keys must name the variable"
    );
    let bootstrap = write(dir.path(), "envoy.yaml", &yaml);
    // The filter reads the key from Envoy's environment (host_env_keys) when it loads.
    let (ok, log) = envoy_validate(Path::new(&bootstrap), &[]);
    assert!(
        !ok && log.contains("VSR_E2E_REMOTE_KEY is not set"),
        "the filter must refuse a missing key:\n{log}"
    );
    let (ok, log) = envoy_validate(Path::new(&bootstrap), &[("VSR_E2E_REMOTE_KEY", secret)]);
    assert!(ok, "envoy rejected the rendered bootstrap:\n{log}");
}

#[test]
fn example_bootstrap_is_what_render_produces() {
    let dir = tempfile::tempdir().unwrap();
    let (_, default, _) = vsr(&["init"], &[]);
    let config = write(dir.path(), "default.yaml", &default);
    let (ok, yaml, err) = vsr_render(
        Path::new(&config),
        Path::new("/etc/envoy/filter_wasm.wasm"),
        9901,
        &[],
    );
    assert!(ok, "{err}");
    let example = std::fs::read_to_string(paths::root().join("envoy/envoy.yaml")).unwrap();
    assert!(
        example == yaml,
        "envoy/envoy.yaml is stale; regenerate it as envoy/README.md says"
    );
}

#[test]
fn example_bootstrap_passes_envoy_validation() {
    // Point the example at the local build of the filter; everything else is as shipped.
    let example = std::fs::read_to_string(paths::root().join("envoy/envoy.yaml")).unwrap();
    let local = example.replace(
        "/etc/envoy/filter_wasm.wasm",
        &paths::wasm().to_string_lossy(),
    );
    assert_ne!(
        local, example,
        "the example must load the filter from /etc/envoy/filter_wasm.wasm"
    );
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = write(dir.path(), "envoy.yaml", &local);
    let (ok, log) = envoy_validate(Path::new(&bootstrap), &[]);
    assert!(ok, "envoy rejected envoy/envoy.yaml:\n{log}");
}

/// `vsr eval --task domain --model models/domain --labelled FILE [extra]`.
fn eval_labelled(file: &str, extra: &[&str]) -> (bool, String, String) {
    let root = paths::root();
    let base = root.join("models/base/all-MiniLM-L6-v2");
    let model = root.join("models/domain");
    let mut args = vec![
        "eval",
        "--task",
        "domain",
        "--model",
        model.to_str().unwrap(),
        "--labelled",
        file,
    ];
    args.extend_from_slice(extra);
    vsr(&args, &[("VSR_BASE_MODEL", base.to_str().unwrap())])
}

/// `vsr eval --labelled` scores hand-written `label<TAB>text` lines with the shipped head
/// (the domain probe) and names the line of a label the task does not have.
#[test]
fn eval_labelled_scores_the_domain_probe_and_names_bad_lines() {
    let probe = paths::root().join("models/domain/probe-prompts.tsv");
    let (ok, out, err) = eval_labelled(probe.to_str().unwrap(), &["--json"]);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["examples"], 42, "{report}");
    // The shipped head gets 32 of 42 (docs/MODELS.md); far below means it did not load right.
    assert!(report["accuracy"].as_f64().unwrap() > 0.6, "{report}");

    let dir = tempfile::tempdir().unwrap();
    let bad = write(
        dir.path(),
        "bad.tsv",
        "math\tWhat is 2 + 2?\nastrology\tWhat is my sign?\n",
    );
    let (ok, _, err) = eval_labelled(&bad, &[]);
    assert!(!ok);
    assert!(
        err.contains("bad.tsv:2: `astrology` is not a label of the task"),
        "{err}"
    );
}

/// `vsr train` on a small domain file written here: a second run with the same
/// `--feature-cache` loads the frozen features instead of recomputing them and
/// trains exactly the same weights (the run is deterministic, its dropout
/// masks included, and the cache holds what the first run computed);
/// `--head-embedding` reaches `task.json` and `--head-dropout` the card;
/// `--train-seed` retrains on the same split; `--pooling mean` reaches
/// `task.json` and the card.
#[test]
fn train_reuses_cached_features_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let topics = [
        ("math", "Solve for x when {i}x + 3 equals {j}."),
        (
            "law",
            "Is a contract signed by a {i}-year-old enforceable under clause {j}?",
        ),
        (
            "biology",
            "How many chromosomes does a cell of species {i} keep after mitosis {j}?",
        ),
        (
            "economics",
            "What happens to demand when the price rises by {i} percent in year {j}?",
        ),
    ];
    let mut lines = String::new();
    for (category, template) in topics {
        for i in 2..14 {
            let q = template
                .replace("{i}", &i.to_string())
                .replace("{j}", &(i * 7 + 1).to_string());
            lines += &serde_json::json!({"question": q, "category": category}).to_string();
            lines.push('\n');
        }
    }
    std::fs::create_dir(dir.path().join("domain")).unwrap();
    write(&dir.path().join("domain"), "mmlu_pro.jsonl", &lines);
    let base = paths::root().join("models/base/all-MiniLM-L6-v2");
    let cache = dir.path().join("features");
    let train = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "train",
            "--task",
            "domain",
            "--data",
            dir.path().to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
            "--max-tokens",
            "32",
            "--feature-cache",
            cache.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let (ok, _, err) = vsr(&args, &[("VSR_BASE_MODEL", base.to_str().unwrap())]);
        (ok, out, err)
    };
    let options = ["--head-embedding", "--head-dropout", "0.3"];
    let (ok, first, log) = train("first", &options);
    assert!(ok && log.contains("frozen features saved to"), "{log}");
    let (ok, second, log) = train("second", &options);
    assert!(ok && log.contains("frozen features from"), "{log}");
    let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
    assert!(
        read(&first, "adapter.safetensors") == read(&second, "adapter.safetensors"),
        "a run on cached features trained different weights"
    );
    let spec: serde_json::Value = serde_json::from_slice(&read(&second, "task.json")).unwrap();
    assert_eq!(spec["head"]["with_embedding"], true, "{spec}");
    let card = String::from_utf8(read(&second, "model-card.md")).unwrap();
    assert!(card.contains("loaded from `--feature-cache`"), "{card}");
    assert!(card.contains("shared sentence embedding"), "{card}");
    assert!(card.contains("dropout 0.3 on the head's inputs"), "{card}");

    // Another training seed: the same split (so the same cached features),
    // other weights, and the card says which seed trained them.
    let reseeded = [&options[..], &["--train-seed", "7"]].concat();
    let (ok, third, log) = train("third", &reseeded);
    assert!(ok && log.contains("frozen features from"), "{log}");
    assert!(
        read(&first, "adapter.safetensors") != read(&third, "adapter.safetensors"),
        "--train-seed did not change the weights"
    );
    let spec3: serde_json::Value = serde_json::from_slice(&read(&third, "task.json")).unwrap();
    assert_eq!(spec3["metadata"]["split"], spec["metadata"]["split"]);
    let card = String::from_utf8(read(&third, "model-card.md")).unwrap();
    assert!(card.contains("training seed 7"), "{card}");

    // Mean pooling: same cached features (the pooling comes after the
    // frozen layers), other weights, written to `task.json` and the card.
    let mean = [&options[..], &["--pooling", "mean"]].concat();
    let (ok, fourth, log) = train("fourth", &mean);
    assert!(ok && log.contains("frozen features from"), "{log}");
    let spec4: serde_json::Value = serde_json::from_slice(&read(&fourth, "task.json")).unwrap();
    assert_eq!(spec4["pooling"], "mean", "{spec4}");
    assert_eq!(spec["pooling"], "cls", "{spec}");
    let card = String::from_utf8(read(&fourth, "model-card.md")).unwrap();
    assert!(card.contains("mean pooling"), "{card}");

    // `vsr eval --predictions`: one JSON line per validation example with
    // its served probabilities, whose argmax agrees with the report.
    let preds = dir.path().join("predictions.jsonl");
    let (ok, out, err) = vsr(
        &[
            "eval",
            "--task",
            "domain",
            "--model",
            first.to_str().unwrap(),
            "--data",
            dir.path().to_str().unwrap(),
            "--json",
            "--predictions",
            preds.to_str().unwrap(),
        ],
        &[("VSR_BASE_MODEL", base.to_str().unwrap())],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let labels: Vec<String> = serde_json::from_value(spec["labels"].clone()).unwrap();
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(&preds)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let report = &report["report"];
    assert_eq!(
        rows.len() as u64,
        report["examples"].as_u64().unwrap(),
        "{report}"
    );
    let mut right = 0;
    for r in &rows {
        let p: Vec<f64> = serde_json::from_value(r["probabilities"].clone()).unwrap();
        assert_eq!(p.len(), labels.len(), "{r}");
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-4, "{r}");
        let best = (0..p.len()).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap();
        right += usize::from(labels[best] == r["gold"].as_str().unwrap());
    }
    let accuracy = right as f64 / rows.len() as f64;
    assert!(
        (accuracy - report["accuracy"].as_f64().unwrap()).abs() < 1e-9,
        "{accuracy} vs {report}"
    );

    let (ok, _, err) = train("bad", &["--head-dropout", "1"]);
    assert!(!ok);
    assert!(
        err.contains("--head-dropout must be in [0, 1), got 1"),
        "{err}"
    );
    let (ok, _, err) = train("bad", &["--pooling", "max"]);
    assert!(!ok);
    assert!(err.contains("expected `cls` or `mean`, got `max`"), "{err}");
}
