//! Filter overhead benchmark: the same request stream through one Envoy on two listeners,
//! one with the router filter and one without (same mock upstream, same process), run in
//! interleaved rounds at concurrency 1 and 32. Prints p50/p99 latency and requests/s per
//! side and the ratios filter/baseline.
//!
//! Usage: `cargo run --release -p vsr-e2e --bin filter-bench -- [--seconds S] [--rounds R]`
//! (after `scripts/setup.sh` and building the wasm filter and `vsr`; see docs/BENCHMARKS.md).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vsr_e2e::bench::{self, Args, RequestSource, Sample};
use vsr_e2e::{free_port, wait_until};

/// 10 keyword rules of 5 keywords and 10 decisions, all models on one mock upstream.
fn bench_config(mock_port: u16, listen_port: u16) -> String {
    let topics = [
        (
            "math",
            ["integral", "derivative", "equation", "algebra", "theorem"],
        ),
        ("code", ["python", "rust", "compile", "function", "debug"]),
        (
            "physics",
            ["quantum", "velocity", "momentum", "relativity", "photon"],
        ),
        (
            "chemistry",
            ["molecule", "reaction", "catalyst", "oxidation", "isotope"],
        ),
        (
            "biology",
            ["cell", "protein", "enzyme", "genome", "mitosis"],
        ),
        (
            "law",
            ["contract", "statute", "plaintiff", "liability", "tort"],
        ),
        (
            "finance",
            ["stock", "bond", "dividend", "portfolio", "inflation"],
        ),
        (
            "history",
            ["empire", "dynasty", "revolution", "medieval", "treaty"],
        ),
        (
            "health",
            ["symptom", "diagnosis", "vaccine", "therapy", "dosage"],
        ),
        (
            "urgent",
            ["urgent", "asap", "immediately", "emergency", "critical"],
        ),
    ];
    let mut y = format!(
        "listeners:\n  - {{name: bench, address: 127.0.0.1, port: {listen_port}, timeout: 30s}}\nsignals:\n  keywords:\n"
    );
    for (name, kws) in &topics {
        y += &format!(
            "    - {{name: {name}, operator: OR, keywords: [{}]}}\n",
            kws.join(", ")
        );
    }
    y += "decisions:\n";
    for (i, (name, _)) in topics.iter().enumerate() {
        let model = if i % 2 == 0 { "model-a" } else { "model-b" };
        y += &format!(
            "  - name: {name}_route\n    priority: {}\n    rules: {{operator: OR, conditions: [{{type: keyword, name: {name}}}]}}\n    modelRefs: [{{model: {model}, use_reasoning: true}}]\n    plugins:\n      - {{type: system_prompt, configuration: {{system_prompt: \"You are an expert in {name}.\"}}}}\n",
            100 - i
        );
    }
    y += &format!(
        "providers:\n  models:\n    - {{name: model-a, reasoning_family: qwen3, endpoints: [{{endpoint: \"127.0.0.1:{mock_port}\"}}]}}\n    - {{name: model-b, endpoints: [{{endpoint: \"127.0.0.1:{mock_port}\"}}]}}\n  default_model: model-b\n  reasoning_families:\n    qwen3: {{type: chat_template_kwargs, parameter: enable_thinking}}\n"
    );
    y
}

/// A ~30-token prompt that matches one rule, so the filter does the full rewrite.
/// `MODEL` is replaced by `--model` (default `MoM`).
const BODY: &str = r#"{"model":"MODEL","messages":[{"role":"system","content":"You are helpful."},{"role":"user","content":"Can you explain how to solve this quadratic equation step by step and check the roots against the original equation please?"}],"temperature":0.2,"max_tokens":64}"#;

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn find(env: &str, candidates: &[PathBuf]) -> Result<PathBuf> {
    if let Ok(p) = std::env::var(env) {
        return Ok(PathBuf::from(p));
    }
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .with_context(|| {
            format!(
                "none of {candidates:?} exists (set {env}); run scripts/setup.sh and build first"
            )
        })
}

fn wait_for_port(port: u16) -> Result<()> {
    if wait_until(Duration::from_secs(30), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }) {
        return Ok(());
    }
    bail!("port {port} did not open within 30 s")
}

/// One side for `seconds` at `clients`, with Envoy's CPU time.
fn side(
    port: u16,
    clients: usize,
    seconds: f64,
    request: &RequestSource,
    envoy: u32,
) -> Result<Sample> {
    bench::load(port, clients, seconds, request, &[envoy], &[])
}

fn main() -> Result<()> {
    let args = Args::from_env();
    let seconds = args.num("--seconds", 3.0)?;
    let rounds = args.num("--rounds", 4.0)? as usize;
    let concurrency = args.num("--envoy-concurrency", 2.0)? as usize;
    // `--path /x/v1/chat/completions` measures the filter's pass-through cost (no buffering),
    // `--model model-a` an explicit model (buffer + parse, body untouched).
    let bytes = bench::post_json(
        &args.text("--path", "/v1/chat/completions"),
        &BODY.replace("MODEL", &args.text("--model", "MoM")),
    );
    let request = move || bytes.clone();

    let root = root();
    let vsr = find(
        "VSR_BIN",
        &[
            root.join("target/release/vsr"),
            root.join("target/debug/vsr"),
        ],
    )?;
    let envoy = find("VSR_ENVOY", &[root.join(".venv/bin/envoy")])?;
    let wasm = find(
        "VSR_WASM",
        &[root.join("target/wasm32-wasip1/wasm/filter_wasm.wasm")],
    )?;
    let work = std::env::temp_dir().join(format!("vsr-filter-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;

    let (mock_port, filtered, baseline, admin) =
        (free_port(), free_port(), free_port(), free_port());
    let cfg_path = work.join("bench.yaml");
    std::fs::write(&cfg_path, bench_config(mock_port, filtered))?;

    let _mock = Proc(
        Command::new(&vsr)
            .args([
                "mock-llm",
                "--port",
                &mock_port.to_string(),
                "--name",
                "bench",
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("starting vsr mock-llm")?,
    );
    let rendered = Command::new(&vsr)
        .args(["render", "--config"])
        .arg(&cfg_path)
        .arg("--wasm")
        .arg(&wasm)
        .args(["--admin-port", &admin.to_string()])
        .output()?;
    if !rendered.status.success() {
        bail!(
            "vsr render failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
    }
    let bootstrap = bench::with_baseline_listener(&String::from_utf8(rendered.stdout)?, baseline)?;
    let boot_path = work.join("envoy.yaml");
    std::fs::write(&boot_path, bootstrap)?;
    let envoy_proc = Proc(
        Command::new(&envoy)
            .arg("-c")
            .arg(&boot_path)
            .args([
                "--concurrency",
                &concurrency.to_string(),
                "--log-level",
                "error",
                "--disable-hot-restart",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting envoy")?,
    );
    let pid = envoy_proc.0.id();
    for p in [mock_port, filtered, baseline] {
        wait_for_port(p)?;
    }
    // Warm both paths (V8 compiles the module lazily per worker).
    side(filtered, 4, 1.0, &request, pid)?;
    side(baseline, 4, 1.0, &request, pid)?;

    println!("filter-bench: {rounds} interleaved rounds x {seconds}s per side, envoy --concurrency {concurrency}");
    println!("| clients | side | p50 ms | p99 ms | req/s | Envoy CPU µs/request |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for clients in [1usize, 32] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // Alternate which side goes first so drift hits both equally.
            if r % 2 == 0 {
                with.push(side(filtered, clients, seconds, &request, pid)?);
                without.push(side(baseline, clients, seconds, &request, pid)?);
            } else {
                without.push(side(baseline, clients, seconds, &request, pid)?);
                with.push(side(filtered, clients, seconds, &request, pid)?);
            }
        }
        bench::all_ok(&with, "envoy + filter")?;
        bench::all_ok(&without, "envoy alone")?;
        let (w, b) = (bench::summarise(&with), bench::summarise(&without));
        for (side, s) in [("envoy + filter", &w), ("envoy alone", &b)] {
            println!(
                "| {clients} | {side} | {:.3} | {:.3} | {:.0} | {:.1} |",
                s.p50_ms, s.p99_ms, s.rps, s.cpu_us_per_request[0]
            );
        }
        ratios.push((
            clients,
            w.p50_ms / b.p50_ms,
            w.p99_ms / b.p99_ms,
            w.rps / b.rps,
        ));
    }
    println!();
    println!(
        "| clients | p50 ratio (target <= 1.20) | p99 ratio | throughput ratio (target >= 0.85) |"
    );
    println!("|---|---|---|---|");
    for (c, p50, p99, tput) in ratios {
        println!("| {c} | {p50:.3} | {p99:.3} | {tput:.3} |");
    }
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}
