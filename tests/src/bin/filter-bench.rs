//! Filter overhead benchmark: the same request stream through one Envoy on two listeners,
//! one with the router filter and one without (same mock upstream, same process), run in
//! interleaved rounds at concurrency 1 and 32. Prints p50/p99 latency and requests/s per
//! side and the ratios filter/baseline.
//!
//! Usage: `cargo run --release -p vsr-e2e --bin filter-bench -- [--seconds S] [--rounds R]`
//! (after `scripts/setup.sh` and building the wasm filter and `vsr`; see docs/BENCHMARKS.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

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

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("port {port} did not open within 30 s")
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    reader: BufReader<TcpStream>,
    request: Arc<Vec<u8>>,
}

/// The request bytes every client sends.
fn request_bytes(path: &str, model: &str) -> Vec<u8> {
    let body = BODY.replace("MODEL", model);
    format!(
        "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Conn {
    fn new(port: u16, request: Arc<Vec<u8>>) -> Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(Conn {
            reader: BufReader::new(s),
            request,
        })
    }

    /// Sends the request and reads the whole response; returns the status.
    fn roundtrip(&mut self) -> Result<u16> {
        self.reader.get_mut().write_all(&self.request)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("bad status line")?
            .parse()?;
        let (mut length, mut chunked) = (0usize, false);
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                line.clear();
                self.reader.read_line(&mut line)?;
                let size = usize::from_str_radix(line.trim(), 16)?;
                let mut buf = vec![0; size + 2];
                self.reader.read_exact(&mut buf)?;
                if size == 0 {
                    break;
                }
            }
        } else {
            let mut buf = vec![0; length];
            self.reader.read_exact(&mut buf)?;
        }
        Ok(status)
    }
}

#[derive(Default)]
struct Sample {
    latencies_us: Vec<u64>,
    seconds: f64,
    /// CPU seconds Envoy spent during the sample: less sensitive to other load than latency.
    envoy_cpu: f64,
}

/// User + system CPU seconds of a process so far.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("no utime")?.parse::<f64>()?
        + fields.get(12).context("no stime")?.parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// `clients` threads, each on its own connection, for `seconds`.
fn load(
    port: u16,
    clients: usize,
    seconds: f64,
    request: &Arc<Vec<u8>>,
    envoy: u32,
) -> Result<Sample> {
    let cpu_before = cpu_seconds(envoy)?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let request = request.clone();
            std::thread::spawn(move || -> Result<Vec<u64>> {
                let mut conn = Conn::new(port, request)?;
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let status = conn.roundtrip()?;
                    if status != 200 {
                        bail!("status {status} from port {port}");
                    }
                    lat.push(t.elapsed().as_micros() as u64);
                }
                Ok(lat)
            })
        })
        .collect();
    let mut s = Sample::default();
    for h in handles {
        s.latencies_us.extend(
            h.join()
                .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
        );
    }
    s.seconds = start.elapsed().as_secs_f64();
    s.envoy_cpu = cpu_seconds(envoy)? - cpu_before;
    Ok(s)
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

struct Summary {
    p50_ms: f64,
    p99_ms: f64,
    rps: f64,
    cpu_us_per_request: f64,
}

fn summarise(samples: &[Sample]) -> Summary {
    let mut all: Vec<u64> = samples
        .iter()
        .flat_map(|s| s.latencies_us.iter().copied())
        .collect();
    all.sort_unstable();
    let secs: f64 = samples.iter().map(|s| s.seconds).sum();
    let cpu: f64 = samples.iter().map(|s| s.envoy_cpu).sum();
    Summary {
        p50_ms: pct(&all, 0.5),
        p99_ms: pct(&all, 0.99),
        rps: all.len() as f64 / secs,
        cpu_us_per_request: cpu * 1e6 / all.len() as f64,
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: f64| -> f64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seconds = arg("--seconds", 3.0);
    let rounds = arg("--rounds", 4.0) as usize;
    let concurrency = arg("--envoy-concurrency", 2.0) as usize;
    let text = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or(default.to_string())
    };
    // `--path /x/v1/chat/completions` measures the filter's pass-through cost (no buffering),
    // `--model model-a` an explicit model (buffer + parse, body untouched).
    let request = Arc::new(request_bytes(
        &text("--path", "/v1/chat/completions"),
        &text("--model", "MoM"),
    ));

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
        (free_port()?, free_port()?, free_port()?, free_port()?);
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
    let bootstrap = with_baseline_listener(&String::from_utf8(rendered.stdout)?, baseline)?;
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
    load(filtered, 4, 1.0, &request, pid)?;
    load(baseline, 4, 1.0, &request, pid)?;

    println!("filter-bench: {rounds} interleaved rounds x {seconds}s per side, envoy --concurrency {concurrency}");
    println!("| clients | side | p50 ms | p99 ms | req/s | Envoy CPU µs/request |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for clients in [1usize, 32] {
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            // Alternate which side goes first so drift hits both equally.
            if r % 2 == 0 {
                with.push(load(filtered, clients, seconds, &request, pid)?);
                without.push(load(baseline, clients, seconds, &request, pid)?);
            } else {
                without.push(load(baseline, clients, seconds, &request, pid)?);
                with.push(load(filtered, clients, seconds, &request, pid)?);
            }
        }
        let (w, b) = (summarise(&with), summarise(&without));
        for (side, s) in [("envoy + filter", &w), ("envoy alone", &b)] {
            println!(
                "| {clients} | {side} | {:.3} | {:.3} | {:.0} | {:.1} |",
                s.p50_ms, s.p99_ms, s.rps, s.cpu_us_per_request
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

/// Adds a copy of the first listener on `port` without the wasm filter.
fn with_baseline_listener(bootstrap: &str, port: u16) -> Result<String> {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(bootstrap)?;
    let listeners = doc
        .get_mut("static_resources")
        .and_then(|s| s.get_mut("listeners"))
        .and_then(|l| l.as_sequence_mut())
        .context("bootstrap has no static_resources.listeners")?;
    let mut copy = listeners.first().cloned().context("no listener")?;
    copy["name"] = "baseline".into();
    copy["address"]["socket_address"]["port_value"] = port.into();
    let chains = copy["filter_chains"]
        .as_sequence_mut()
        .context("listener has no filter_chains")?;
    for chain in chains {
        for f in chain["filters"].as_sequence_mut().into_iter().flatten() {
            if let Some(http) = f["typed_config"]["http_filters"].as_sequence_mut() {
                http.retain(|h| h["name"].as_str() != Some("envoy.filters.http.wasm"));
            }
        }
    }
    listeners.push(copy);
    Ok(serde_yaml::to_string(&doc)?)
}
