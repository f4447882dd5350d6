//! Added latency of the full ML pipeline: one Envoy with two listeners on the same
//! `vsr mock-llm` upstream, one without the wasm filter (Envoy alone) and one with the
//! router filter calling a real `vsr serve` sidecar (shipped models under `models/`) for
//! every signal: keywords, a domain head, an embedding signal, the jailbreak guard on every
//! request, a decision with a PII mask plugin and the semantic cache.
//!
//! Sides, run in interleaved rounds at each concurrency:
//! * `envoy alone`: the baseline listener;
//! * `pipeline, miss`: a unique ~30-token prompt per request (its own e-mail address, so
//!   the PII mask rewrites it) on a decision whose cache threshold is 1.0: the lookup
//!   searches the whole, growing partition and misses, then the answer is stored;
//! * `pipeline, hit`: one fixed prompt on a decision with threshold 0.95: classify, then a
//!   cache hit answered by the filter (no upstream call, no store). Its requests differ in
//!   `temperature`, so its one entry has a partition of its own; `--hit-partition shared`
//!   looks it up among the miss side's entries instead.
//!
//! Prints p50/p99 and requests/s per side, the added latency (pipeline − baseline), the
//! guard and cache outcomes seen in the response headers, and the sidecar's own stage
//! timings from its `/metrics`.
//!
//! Usage: `scripts/bench-pipeline.sh [--seconds S] [--rounds R] [--clients 1,16]
//! [--jailbreak auto|on|off] [--pii on|off] [--no-hit-side] [--hit-partition own|shared]
//! [--sidecar-timeout 5s]`
//! (see docs/BENCHMARKS.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{bail, Context, Result};
use vsr_e2e::bench::{self, Args, RequestSource, Sample, Summary};
use vsr_e2e::{free_port, paths, Sidecar, Stack};

/// The response headers whose values the bench tallies per side.
const WATCH: &[&str] = &[
    "x-vsr-selected-decision",
    "x-vsr-degraded",
    "x-vsr-cache-hit",
    "x-vsr-pii-masked",
    "x-vsr-jailbreak-blocked",
];

const MISS_DECISION: &str = "private_request";
const HIT_DECISION: &str = "faq";

/// The router config. `@…@` placeholders are the harness's ([`Stack`]).
fn config(jailbreak: bool, pii: bool, timeout: &str) -> String {
    let guard = if jailbreak {
        "prompt_guard: {enabled: true}\n"
    } else {
        ""
    };
    let pii_plugin = if pii {
        "      - {type: pii, configuration: {enabled: true, action: mask}}\n"
    } else {
        ""
    };
    format!(
        r#"version: v0.1
listeners:
  - {{name: http, address: 127.0.0.1, port: @LISTENER_PORT@, timeout: 30s}}
inference_sidecar:
  address: "@SIDECAR@"
  timeout: {timeout}
  failure_mode: open
{guard}semantic_cache: {{enabled: true, similarity_threshold: 0.95, ttl_seconds: 3600}}
signals:
  keywords:
    - {{name: private_words, operator: OR, keywords: [confidential, private]}}
    - {{name: faq_words, operator: OR, keywords: [faq]}}
  domains:
    - {{name: law, mmlu_categories: [law]}}
    - {{name: mathematics, mmlu_categories: [math]}}
    - {{name: health, mmlu_categories: [health]}}
  embeddings:
    - name: billing
      threshold: 0.6
      candidates: ["I want a refund for my order", "my invoice has the wrong amount", "cancel my subscription and refund me"]
decisions:
  - name: {HIT_DECISION}
    priority: 60
    rules: {{operator: OR, conditions: [{{type: keyword, name: faq_words}}]}}
    modelRefs: [{{model: llm}}]
    plugins:
{pii_plugin}      - {{type: semantic-cache, configuration: {{enabled: true, similarity_threshold: 0.95}}}}
  - name: {MISS_DECISION}
    priority: 50
    rules:
      operator: OR
      conditions:
        - {{type: keyword, name: private_words}}
        - {{type: domain, name: law}}
        - {{type: embedding, name: billing}}
    modelRefs: [{{model: llm}}]
    plugins:
{pii_plugin}      - {{type: semantic-cache, configuration: {{enabled: true, similarity_threshold: 1.0}}}}
  - name: math
    priority: 10
    rules: {{operator: OR, conditions: [{{type: domain, name: mathematics}}]}}
    modelRefs: [{{model: llm}}]
providers:
  models:
    - {{name: llm, endpoints: [{{endpoint: "@MOCK:llm@"}}]}}
  default_model: llm
"#
    )
}

// Prompt parts. No negations ("not", "never", …): the cache partition includes them.
// ~30 tokens with [CLS]/[SEP] (the bench prints the mean). Every combination scores below
// 0.3 on the jailbreak head of 25 Nov 2026 (threshold 0.7): a maths-proof and a "keep this
// private" variant were false positives and were replaced, so that every request takes the
// same path. Blocks are still counted and reported.
const OPENERS: [&str; 4] = [
    "Confidential:",
    "Private:",
    "Confidential question:",
    "Private question:",
];
const SITUATIONS: [&str; 24] = [
    "my landlord wants to keep the whole deposit after I moved out",
    "my internet provider charged me twice on this month's invoice",
    "I need to integrate a rational function with a square root below",
    "our startup is drafting a contract with a freelance designer",
    "my grandmother takes two medicines that might interact badly",
    "the court set a hearing date that clashes with my surgery",
    "a customer wants a refund for a subscription renewed without notice",
    "we found a memory leak in the payment service after the deploy",
    "I am planning a two week trip through Japan in early spring",
    "the bank froze my account after a large transfer from abroad",
    "my car failed its inspection because of worn brake pads",
    "our team must choose between renting and buying office space",
    "my employer changed my shift pattern with one day of warning",
    "the insurance company rejected the claim for my broken window",
    "I inherited a small flat together with two cousins",
    "our school wants a fair way to split the robotics budget",
    "my doctor suggested physiotherapy for a stiff lower back",
    "the supplier delivered half of the order and billed all of it",
    "our bakery wants to hire two seasonal workers for December",
    "a neighbour keeps parking across the entrance to our garage",
    "the airline lost my suitcase on a connecting flight",
    "I signed a gym membership that renews automatically every year",
    "my daughter asks how vaccines teach the immune system",
    "the tax office sent a letter about last year's deductions",
];
const ASKS: [&str; 8] = [
    "What are my options?",
    "Explain the steps briefly.",
    "What should I do first?",
    "Give me a short checklist.",
    "Which documents do I need?",
    "How long does this usually take?",
    "Summarise the risks for me.",
    "Draft a polite reply I can send.",
];
const NAMES: [&str; 8] = ["anna", "omar", "li", "sara", "tom", "priya", "lucas", "jo"];

/// The `n`-th miss-side prompt: the same shape, unique through its e-mail address.
fn miss_prompt(n: u64) -> String {
    // A cheap integer hash, so consecutive requests pick unrelated parts.
    let h = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    let pick = |len: usize, shift: u32| ((h >> shift) as usize) % len;
    format!(
        "{} {}. {} {}{n}@example.com",
        OPENERS[pick(OPENERS.len(), 0)],
        SITUATIONS[pick(SITUATIONS.len(), 8)],
        ASKS[pick(ASKS.len(), 24)],
        NAMES[pick(NAMES.len(), 40)],
    )
}

/// The one hit-side prompt.
const HIT_PROMPT: &str =
    "faq: which documents do I need to open a business account at the bank, and how long does it take? anna@example.com";

/// Temperature of the miss side's requests. The hit side's differs unless
/// `--hit-partition shared`, which puts its one entry in a cache partition of its own.
const TEMPERATURE: f64 = 0.2;
const HIT_OWN_TEMPERATURE: f64 = 0.3;

fn chat_body(text: &str, temperature: f64) -> String {
    serde_json::json!({
        "model": "MoM",
        "messages": [{"role": "user", "content": text}],
        "temperature": temperature,
        "max_tokens": 64,
    })
    .to_string()
}

const PATH: &str = "/v1/chat/completions";

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Side {
    Baseline = 0,
    Miss = 1,
    Hit = 2,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Baseline => "envoy alone",
            Side::Miss => "pipeline, cache miss + store",
            Side::Hit => "pipeline, cache hit",
        }
    }
}

/// Sidecar counters and histogram sums at one moment (from `/metrics`).
#[derive(Clone, Default)]
struct Stages(BTreeMap<&'static str, f64>);

/// `(key, metric, labels)`: the sum of the series of `metric` that carry all `labels`.
/// Histograms as `_sum` (seconds) and `_count`.
type Series = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);
const SERIES: [Series; 18] = [
    (
        "classify_ok",
        "vsr_requests_total",
        &[("method", "classify"), ("status", "ok")],
    ),
    ("engine_sum", "vsr_request_duration_seconds_sum", &[]),
    ("engine_n", "vsr_request_duration_seconds_count", &[]),
    ("queue_sum", "vsr_queue_duration_seconds_sum", &[]),
    ("queue_n", "vsr_queue_duration_seconds_count", &[]),
    ("tokenize_sum", "vsr_tokenize_duration_seconds_sum", &[]),
    ("tokenize_n", "vsr_tokenize_duration_seconds_count", &[]),
    ("forward_sum", "vsr_inference_duration_seconds_sum", &[]),
    ("forward_n", "vsr_inference_duration_seconds_count", &[]),
    ("rows_sum", "vsr_batch_size_sum", &[]),
    ("lookup_sum", "vsr_cache_lookup_duration_seconds_sum", &[]),
    ("lookup_n", "vsr_cache_lookup_duration_seconds_count", &[]),
    ("hits", "vsr_cache_lookups_total", &[("result", "hit")]),
    ("misses", "vsr_cache_lookups_total", &[("result", "miss")]),
    ("stored", "vsr_cache_stores_total", &[("result", "stored")]),
    (
        "jailbreak_ok",
        "vsr_task_requests_total",
        &[("task", "jailbreak"), ("status", "ok")],
    ),
    (
        "pii_ok",
        "vsr_task_requests_total",
        &[("task", "pii"), ("status", "ok")],
    ),
    (
        "domain_ok",
        "vsr_task_requests_total",
        &[("task", "domain"), ("status", "ok")],
    ),
];

impl Stages {
    fn read(sidecar: &Sidecar) -> Stages {
        let text = sidecar.metrics();
        let mut values = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, labels) = match series.split_once('{') {
                Some((m, l)) => (m, l.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels: Vec<(&str, &str)> = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            for (key, name, want) in SERIES {
                if name == metric && want.iter().all(|w| labels.contains(w)) {
                    *values.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
                }
            }
        }
        Stages(values)
    }

    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }

    /// `self` += `after` − `before`.
    fn add_delta(&mut self, before: &Stages, after: &Stages) {
        for (key, _, _) in SERIES {
            *self.0.entry(key).or_default() += after.get(key) - before.get(key);
        }
    }

    /// Mean milliseconds of histogram `name` (`name_sum` / `name_n`).
    fn mean_ms(&self, name: &str) -> f64 {
        self.get(&format!("{name}_sum")) * 1e3 / self.get(&format!("{name}_n")).max(1.0)
    }
}

/// Everything the bench starts, and how to reach it.
struct Rig {
    stack: Stack,
    sidecar: Sidecar,
    baseline_port: u16,
    /// Envoy, then the sidecar.
    pids: [u32; 2],
}

impl Rig {
    fn port(&self, side: Side) -> u16 {
        match side {
            Side::Baseline => self.baseline_port,
            Side::Miss | Side::Hit => self.stack.port,
        }
    }
}

/// Which task heads are installed under `models/`.
fn installed(task: &str) -> bool {
    paths::root()
        .join("models")
        .join(task)
        .join("task.json")
        .is_file()
}

fn banner(lines: &[String]) {
    let bar = "!".repeat(78);
    eprintln!("{bar}");
    for l in lines {
        eprintln!("!! {l}");
    }
    eprintln!("{bar}");
}

/// Load average and any `vsr train` running: the numbers mean little on a busy machine.
fn machine_state() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    let mut training = 0;
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let words: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if words.len() > 1 && words[0].ends_with(b"vsr") && words[1] == b"train" {
            training += 1;
        }
    }
    format!(
        "load average {} (1/5/15 min), {training} `vsr train` running",
        load.join(" ")
    )
}

/// Mean tokens (with `[CLS]`/`[SEP]`) of `texts`, from the sidecar's embeddings endpoint.
fn mean_tokens(sidecar: &Sidecar, texts: &[String]) -> Result<f64> {
    let url = format!("http://127.0.0.1:{}/v1/embeddings", sidecar.http_port);
    let body = serde_json::json!({ "input": texts }).to_string();
    let reply = vsr_e2e::http::post(&url, &[], body.as_bytes());
    let tokens = reply.json()["usage"]["prompt_tokens"]
        .as_f64()
        .context("no usage.prompt_tokens from /v1/embeddings")?;
    Ok(tokens / texts.len() as f64)
}

/// One request through the router with the harness client, checked end to end.
fn check_path(rig: &Rig, body: &str, decision: &str, want_hit: bool, pii: bool) -> Result<()> {
    let body: serde_json::Value = serde_json::from_str(body)?;
    let text = &body["messages"][0]["content"];
    let r = rig.stack.chat(&body);
    let h = |n: &str| r.header(n).unwrap_or("-").to_string();
    let problems: Vec<String> = [
        (r.status != 200).then(|| format!("status {}", r.status)),
        (h("x-vsr-selected-decision") != decision).then(|| {
            format!(
                "decision {} (want {decision})",
                h("x-vsr-selected-decision")
            )
        }),
        (h("x-vsr-degraded") != "-").then(|| format!("degraded: {}", h("x-vsr-degraded"))),
        ((h("x-vsr-cache-hit") == "true") != want_hit).then(|| {
            format!(
                "x-vsr-cache-hit {} (want hit = {want_hit})",
                h("x-vsr-cache-hit")
            )
        }),
        (pii && h("x-vsr-pii-masked") == "-").then(|| "no x-vsr-pii-masked".to_string()),
        (h("x-vsr-jailbreak-blocked") != "-").then(|| "jailbreak guard blocked it".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !problems.is_empty() {
        bail!(
            "pipeline check failed for {text:?}: {}\n{}",
            problems.join("; "),
            rig.stack
                .envoy_log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    if pii && !want_hit && r.body.contains("@example.com") {
        bail!(
            "the e-mail address reached the upstream unmasked: {}",
            r.body
        );
    }
    Ok(())
}

struct Run {
    samples: BTreeMap<Side, Vec<Sample>>,
    stages: BTreeMap<Side, Stages>,
}

fn main() -> Result<()> {
    let args = Args::from_env();
    let seconds = args.num("--seconds", 5.0)?;
    let rounds = args.num("--rounds", 4.0)? as usize;
    let clients: Vec<usize> = args
        .text("--clients", "1,16")
        .split(',')
        .map(|c| c.trim().parse().context("--clients takes e.g. 1,16"))
        .collect::<Result<_>>()?;
    let timeout = args.text("--sidecar-timeout", "5s");
    let with_hits = !args.flag("--no-hit-side");
    let hit_temperature = match args.text("--hit-partition", "own").as_str() {
        "own" => HIT_OWN_TEMPERATURE,
        "shared" => TEMPERATURE,
        other => bail!("--hit-partition {other}: use own or shared"),
    };
    let jailbreak = match args.text("--jailbreak", "auto").as_str() {
        "auto" => installed("jailbreak"),
        "on" => true,
        "off" => false,
        other => bail!("--jailbreak {other}: use auto, on or off"),
    };
    let pii = match args.text("--pii", "on").as_str() {
        "on" => true,
        "off" => false,
        other => bail!("--pii {other}: use on or off"),
    };

    // Loud notes on what this run leaves out.
    let mut left_out = Vec::new();
    if !jailbreak {
        left_out.push(if installed("jailbreak") {
            "jailbreak guard OFF (--jailbreak off): the run does not include it".to_string()
        } else {
            "models/jailbreak is NOT installed: the jailbreak guard is OFF in this run \
             (the sidecar would answer FAILED_PRECONDITION); rerun with --jailbreak on once \
             the head lands"
                .to_string()
        });
    }
    if !pii {
        left_out.push("PII plugin OFF (--pii off): the run does not include it".to_string());
    } else if !installed("pii") {
        left_out.push(
            "models/pii is NOT installed: PII detection runs the sidecar's pattern \
             recognizers only, WITHOUT the token head's cost; rerun once the head lands"
                .to_string(),
        );
    }
    if !installed("domain") {
        bail!(
            "models/domain is not installed: the domain signal needs it (vsr train --task domain)"
        );
    }
    if !left_out.is_empty() {
        banner(&left_out);
    }

    let dir = tempfile::tempdir()?;
    let sidecar = Sidecar::start(dir.path(), &[]);
    let baseline_port = free_port();
    let mut edit_error = None;
    let stack = Stack::start_edited(
        &config(jailbreak, pii, &timeout),
        &[],
        Some(&sidecar.address()),
        |bootstrap| match bench::with_baseline_listener(&bootstrap, baseline_port) {
            Ok(b) => b,
            Err(e) => {
                edit_error = Some(e);
                bootstrap
            }
        },
    );
    if let Some(e) = edit_error {
        return Err(e.context("adding the baseline listener"));
    }
    let pids = [
        bench::pid_listening_on(stack.admin_port)?,
        bench::pid_listening_on(sidecar.http_port)?,
    ];
    let rig = Rig {
        stack,
        sidecar,
        baseline_port,
        pids,
    };

    // Requests: unique prompts for the miss side (one counter for the whole run).
    let counter = AtomicU64::new(0);
    let miss = move || {
        let n = counter.fetch_add(1, Ordering::Relaxed);
        bench::post_json(PATH, &chat_body(&miss_prompt(n), TEMPERATURE))
    };
    let fixed = bench::post_json(PATH, &chat_body(&miss_prompt(u64::MAX), TEMPERATURE));
    let baseline_req = move || fixed.clone();
    let hit_body = chat_body(HIT_PROMPT, hit_temperature);
    let hit_bytes = bench::post_json(PATH, &hit_body);
    let hit = move || hit_bytes.clone();
    // Indexed by `Side as usize`.
    let sources: [&RequestSource; 3] = [&baseline_req, &miss, &hit];
    let source = |side: Side| sources[side as usize];

    // Every path does what it should before anything is timed.
    let miss_body = chat_body(&miss_prompt(u64::MAX - 1), TEMPERATURE);
    check_path(&rig, &miss_body, MISS_DECISION, false, pii)?;
    check_path(&rig, &hit_body, HIT_DECISION, false, pii)?; // stores it
    check_path(&rig, &hit_body, HIT_DECISION, true, pii)?;
    let samples: Vec<String> = (0..64).map(|i| miss_prompt(1000 + i)).collect();
    let tokens = mean_tokens(&rig.sidecar, &samples)?;
    let hit_tokens = mean_tokens(&rig.sidecar, &[HIT_PROMPT.to_string()])?;
    // Warm-up: V8 compiles the module lazily per worker; the sidecar's allocator too.
    for side in [Side::Baseline, Side::Miss, Side::Hit] {
        bench::load(rig.port(side), 4, 2.0, source(side), &rig.pids, WATCH)?;
    }

    let sides: Vec<Side> = if with_hits {
        vec![Side::Baseline, Side::Miss, Side::Hit]
    } else {
        vec![Side::Baseline, Side::Miss]
    };
    println!(
        "pipeline-bench: {rounds} interleaved rounds x {seconds}s per side, envoy --concurrency 2, \
         sidecar threads = cores ({}); prompts {tokens:.1} tokens incl. [CLS]/[SEP] (mean of 64; \
         hit prompt {hit_tokens:.0})",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "tasks per request: domain, {}{}embedding (cache), candidate set `billing`; keywords in the filter",
        if jailbreak { "jailbreak, " } else { "" },
        if pii {
            if installed("pii") {
                "pii (token head + recognizers), "
            } else {
                "pii (recognizers only), "
            }
        } else {
            ""
        },
    );
    println!("machine at start: {}", machine_state());
    println!();

    let mut runs = Vec::new();
    for &c in &clients {
        let mut run = Run {
            samples: BTreeMap::new(),
            stages: BTreeMap::new(),
        };
        for r in 0..rounds {
            // Rotate the order so each side goes first in some round.
            let mut order = sides.clone();
            order.rotate_left(r % sides.len());
            for side in order {
                let before = Stages::read(&rig.sidecar);
                let s = bench::load(rig.port(side), c, seconds, source(side), &rig.pids, WATCH)?;
                let after = Stages::read(&rig.sidecar);
                run.stages
                    .entry(side)
                    .or_default()
                    .add_delta(&before, &after);
                run.samples.entry(side).or_default().push(s);
            }
        }
        runs.push((c, run));
    }
    let end = machine_state();
    let totals = Stages::read(&rig.sidecar);

    println!("| clients | side | requests | p50 ms | p99 ms | req/s | Envoy CPU µs/req | sidecar CPU µs/req |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    let mut summaries: Vec<(usize, BTreeMap<Side, Summary>)> = Vec::new();
    for (c, run) in &runs {
        let mut by_side = BTreeMap::new();
        for (side, samples) in &run.samples {
            let s = bench::summarise(samples);
            println!(
                "| {c} | {} | {} | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} |",
                side.label(),
                s.requests,
                s.p50_ms,
                s.p99_ms,
                s.rps,
                s.cpu_us_per_request[0],
                s.cpu_us_per_request[1]
            );
            by_side.insert(*side, s);
        }
        summaries.push((*c, by_side));
    }

    println!();
    println!("| clients | pipeline side | added p50 ms (target ≤ 10) | added p99 ms (target ≤ 30) | throughput vs baseline |");
    println!("|---:|---|---:|---:|---:|");
    let mut unmet = Vec::new();
    for (c, by_side) in &summaries {
        let b = &by_side[&Side::Baseline];
        for side in sides.iter().filter(|s| **s != Side::Baseline) {
            let p = &by_side[side];
            let (d50, d99) = (p.p50_ms - b.p50_ms, p.p99_ms - b.p99_ms);
            let mark = |v: f64, t: f64| if v <= t { "" } else { " ✗" };
            println!(
                "| {c} | {} | {d50:.2}{} | {d99:.2}{} | {:.3}× |",
                side.label(),
                mark(d50, 10.0),
                mark(d99, 30.0),
                p.rps / b.rps
            );
            if *c == 16 && *side == Side::Miss && (d50 > 10.0 || d99 > 30.0) {
                unmet.push(format!(
                    "at 16 clients (cache miss) added p50 {d50:.1} ms / p99 {d99:.1} ms against targets 10 / 30 ms"
                ));
            }
        }
    }

    println!();
    println!("Response outcomes (x-vsr-* headers), all rounds:");
    println!();
    println!("| clients | side | non-200 | degraded | PII masked | cache hit | jailbreak blocked | decision |");
    println!("|---:|---|---:|---:|---:|---:|---:|---|");
    let mut bad = Vec::new();
    let mut warnings = Vec::new();
    for (c, by_side) in &summaries {
        for side in sides.iter().filter(|s| **s != Side::Baseline) {
            let s = &by_side[side];
            let non_200: usize = s
                .statuses
                .iter()
                .filter(|(k, _)| **k != 200)
                .map(|(_, v)| v)
                .sum();
            let degraded: usize = s
                .headers
                .iter()
                .filter(|(k, _)| k.starts_with("x-vsr-degraded"))
                .map(|(_, v)| v)
                .sum();
            let masked: usize = s
                .headers
                .iter()
                .filter(|(k, _)| k.starts_with("x-vsr-pii-masked"))
                .map(|(_, v)| v)
                .sum();
            let decisions: Vec<String> = s
                .headers
                .iter()
                .filter_map(|(k, v)| {
                    k.strip_prefix("x-vsr-selected-decision: ")
                        .map(|d| format!("{d} {v}"))
                })
                .collect();
            let hits = s.count("x-vsr-cache-hit: true");
            let blocked = s.count("x-vsr-jailbreak-blocked: true");
            println!(
                "| {c} | {} | {non_200} | {degraded} | {masked} | {hits} | {blocked} | {} |",
                side.label(),
                decisions.join(", ")
            );
            if blocked > 0 {
                warnings.push(format!(
                    "{c} clients, {}: the jailbreak guard blocked {blocked} benign prompts \
                     (false positives; those skip the cache and the upstream)",
                    side.label()
                ));
            }
            let passed = s.requests - blocked;
            let want_hits = if *side == Side::Hit { passed } else { 0 };
            if non_200 + degraded > 0 || hits != want_hits || (pii && masked < passed) {
                bad.push(format!("{c} clients, {}", side.label()));
            }
        }
        let b = &by_side[&Side::Baseline];
        if b.statuses.keys().any(|k| *k != 200) {
            bad.push(format!("{c} clients, envoy alone: non-200 answers"));
        }
    }

    println!();
    println!("Sidecar stages (from its /metrics, deltas over each side's rounds; means):");
    println!();
    println!("| clients | side | Classify calls/req | engine ms/call | queue ms | tokenize ms | forward ms/pass | rows/pass | passes/req | cache lookup µs | lookups hit/miss | stores |");
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for (c, run) in &runs {
        for side in sides.iter().filter(|s| **s != Side::Baseline) {
            let st = &run.stages[side];
            let n = summaries
                .iter()
                .find(|(cc, _)| cc == c)
                .map_or(1, |(_, m)| m[side].requests)
                .max(1) as f64;
            println!(
                "| {c} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.0}/{:.0} | {:.0} |",
                side.label(),
                st.get("classify_ok") / n,
                st.mean_ms("engine"),
                st.mean_ms("queue"),
                st.mean_ms("tokenize"),
                st.mean_ms("forward"),
                st.get("rows_sum") / st.get("forward_n").max(1.0),
                st.get("forward_n") / n,
                st.mean_ms("lookup") * 1e3,
                st.get("hits"),
                st.get("misses"),
                st.get("stored"),
            );
        }
    }
    println!();
    println!(
        "sidecar task calls since start (ok): domain {:.0}, jailbreak {:.0}, pii {:.0}",
        totals.get("domain_ok"),
        totals.get("jailbreak_ok"),
        totals.get("pii_ok")
    );
    println!("machine at end: {end}");
    for l in &left_out {
        println!("NOTE: {l}");
    }
    for w in &warnings {
        println!("WARNING: {w}");
    }
    for u in &unmet {
        println!("TARGET NOT MET: {u}");
    }
    if !bad.is_empty() {
        bail!(
            "some answers did not take the intended path (see the outcomes table): {}",
            bad.join("; ")
        );
    }
    Ok(())
}
