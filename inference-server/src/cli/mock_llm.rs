//! `vsr mock-llm`: an OpenAI-compatible backend that echoes what it received
//! (see [`crate::mock_llm`]); the upstream for tests, benchmarks and `vsr run --mock-backends`.

use std::process::ExitCode;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::mock_llm::serve_mock;

#[derive(clap::Args)]
pub struct MockLlmArgs {
    /// Port to listen on.
    #[arg(long, env = "VSR_MOCK_PORT")]
    port: u16,
    /// Name reported in answers (`mock.backend`, `x-mock-backend`).
    #[arg(long, env = "VSR_MOCK_NAME", default_value = "mock")]
    name: String,
    /// Address to listen on.
    #[arg(long, env = "VSR_MOCK_HOST", default_value = "127.0.0.1")]
    host: String,
}

pub fn run(args: MockLlmArgs) -> anyhow::Result<ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
                .await
                .with_context(|| format!("cannot listen on {}:{}", args.host, args.port))?;
            eprintln!(
                "mock-llm {}: listening on http://{}",
                args.name,
                listener.local_addr()?
            );
            let mut sigterm = signal(SignalKind::terminate())?;
            tokio::select! {
                r = serve_mock(listener, &args.name) => r?,
                _ = tokio::signal::ctrl_c() => {}
                _ = sigterm.recv() => {}
            }
            Ok(ExitCode::SUCCESS)
        })
}
