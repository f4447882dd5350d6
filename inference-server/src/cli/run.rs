//! `vsr run`: renders the bootstrap into `.vsr/`, starts Envoy (and, with
//! `--mock-backends`, a mock LLM per local endpoint), waits until Envoy is ready and
//! supervises it until Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use router_core::config::validate::parse_endpoint;
use router_core::config::{Protocol, UserConfig};
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;

use super::render::{render_config, EnvoyArgs};
use crate::mock_llm::serve_mock;
use crate::project;
use crate::supervise::{describe, wait_envoy_ready, Supervised};

#[derive(clap::Args)]
pub struct RunArgs {
    /// The router config (YAML).
    #[arg(long, short, env = "VSR_CONFIG")]
    config: PathBuf,
    /// Also serve a mock LLM on every http endpoint at 127.0.0.1 or localhost.
    #[arg(long)]
    mock_backends: bool,
    #[command(flatten)]
    envoy: EnvoyArgs,
    /// The Envoy binary; else `envoy` on PATH, else the project's `.venv/bin/envoy`.
    #[arg(long = "envoy", env = "VSR_ENVOY")]
    envoy_binary: Option<PathBuf>,
    /// Envoy worker threads.
    #[arg(long, env = "VSR_CONCURRENCY", default_value_t = 2)]
    concurrency: u16,
    /// Envoy log level (trace, debug, info, warn, error, critical, off).
    #[arg(long, env = "VSR_LOG_LEVEL", default_value = "warn")]
    log_level: String,
    /// Seconds to wait for Envoy to report ready.
    #[arg(long, default_value_t = 30)]
    ready_timeout: u64,
    /// Seconds Envoy gets to drain after SIGTERM before it is killed.
    #[arg(long, default_value_t = 5)]
    stop_grace: u64,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<ExitCode> {
    let Some(rendered) = render_config(&args.config, &args.envoy)? else {
        return Ok(ExitCode::FAILURE);
    };
    if !rendered.wasm.is_file() {
        bail!(
            "the filter {} does not exist; build it with `cargo build -p filter-wasm --target wasm32-wasip1 --profile wasm` or pass --wasm",
            rendered.wasm.display()
        );
    }
    let envoy_bin = project::envoy_binary(args.envoy_binary.as_deref())?;
    let state = project::state_dir()?;
    let stem = args
        .config
        .file_stem()
        .map_or("config".into(), |s| s.to_string_lossy().into_owned());
    let bootstrap = state.join(format!("{stem}.envoy.yaml"));
    std::fs::write(&bootstrap, &rendered.yaml)
        .with_context(|| format!("cannot write {}", bootstrap.display()))?;

    // Aborted when dropped at the end of this function.
    let _mocks = if args.mock_backends {
        MockBackends::start(&rendered.config).await?
    } else {
        MockBackends::default()
    };

    // Seam: when a config needs the inference sidecar, start it here (another `Supervised`,
    // ready-checked like Envoy) so Envoy never serves before its callout target is up.

    let mut cmd = tokio::process::Command::new(&envoy_bin);
    cmd.arg("-c")
        .arg(&bootstrap)
        .args([
            "--concurrency",
            &args.concurrency.to_string(),
            "--log-level",
            &args.log_level,
        ])
        // Several routers (and test suites) may run side by side on one machine.
        .arg("--disable-hot-restart");
    let mut envoy = Supervised::spawn("envoy", cmd, &state.join(format!("{stem}.envoy.log")))?;
    let admin = SocketAddr::from(([127, 0, 0, 1], args.envoy.admin_port));

    let mut sigterm = signal(SignalKind::terminate())?;
    let ready = tokio::select! {
        r = wait_envoy_ready(&mut envoy, admin, Duration::from_secs(args.ready_timeout)) => r.map(|_| true),
        _ = tokio::signal::ctrl_c() => Ok(false),
        _ = sigterm.recv() => Ok(false),
    };
    match ready {
        Err(e) => {
            envoy.stop(Duration::from_secs(args.stop_grace)).await?;
            return Err(e);
        }
        Ok(false) => {
            eprintln!("vsr: stopping envoy before it was ready");
            envoy.stop(Duration::from_secs(args.stop_grace)).await?;
            return Ok(ExitCode::SUCCESS);
        }
        Ok(true) => {}
    }
    print_banner(&rendered.config, admin, &envoy, &bootstrap);

    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
        status = envoy.exited() => {
            eprintln!("vsr: envoy exited unexpectedly ({}); last log lines:\n{}", describe(status), envoy.log_tail(40));
            return Ok(ExitCode::FAILURE);
        }
    }
    eprintln!("vsr: stopping envoy");
    envoy.stop(Duration::from_secs(args.stop_grace)).await?;
    Ok(ExitCode::SUCCESS)
}

fn print_banner(
    cfg: &UserConfig,
    admin: SocketAddr,
    envoy: &Supervised,
    bootstrap: &std::path::Path,
) {
    let auto = cfg.auto_model_names.first().map_or("MoM", String::as_str);
    for l in &cfg.listeners {
        println!(
            "vsr: listener {} ready on http://{}:{}",
            l.name, l.address, l.port
        );
    }
    if let Some(l) = cfg.listeners.first() {
        println!(
            "  curl -s http://{}:{}/v1/chat/completions -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{auto}\",\"messages\":[{{\"role\":\"user\",\"content\":\"Prove that 2+2=4\"}}]}}'",
            l.address, l.port
        );
    }
    println!(
        "  envoy admin http://{admin}, bootstrap {}, log {}",
        bootstrap.display(),
        envoy.log_path().display()
    );
    println!("  Ctrl-C stops everything.");
}

/// In-process mock LLMs, one per local port, stopped when dropped.
#[derive(Default)]
struct MockBackends(Vec<JoinHandle<()>>);

impl MockBackends {
    /// A mock named after the model for every http endpoint on 127.0.0.1 or localhost.
    async fn start(cfg: &UserConfig) -> anyhow::Result<Self> {
        let mut by_port: BTreeMap<u16, String> = BTreeMap::new();
        for m in &cfg.providers.models {
            for e in &m.endpoints {
                let Ok(ep) = parse_endpoint(&e.endpoint, e.protocol) else {
                    continue;
                };
                let local = ep.host == "127.0.0.1" || ep.host == "localhost";
                if !local || e.protocol == Protocol::Https {
                    eprintln!(
                        "vsr: no mock for {} endpoint {} (only http on 127.0.0.1/localhost)",
                        m.name, e.endpoint
                    );
                    continue;
                }
                by_port.entry(ep.port).or_insert_with(|| m.name.clone());
            }
        }
        let mut tasks = Vec::new();
        for (port, name) in by_port {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| {
                    format!("cannot start the mock backend for {name} on 127.0.0.1:{port}")
                })?;
            println!("vsr: mock backend {name} on http://127.0.0.1:{port}");
            tasks.push(tokio::spawn(async move {
                if let Err(e) = serve_mock(listener, &name).await {
                    eprintln!("vsr: mock backend {name} failed: {e}");
                }
            }));
        }
        Ok(MockBackends(tasks))
    }
}

impl Drop for MockBackends {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
