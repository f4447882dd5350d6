//! `vsr`: the router's command-line program.

use clap::{Parser, Subcommand};

/// mimalloc keeps freed tensor memory for the next batch, where glibc
/// returns it and page-faults fresh zeroed pages back in (docs/BENCHMARKS.md §2).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use inference_server::cli;

#[derive(Parser)]
#[command(
    name = "vsr",
    version,
    about = "Semantic router for LLM traffic: Envoy + proxy-wasm filter + inference sidecar"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a commented default config.
    Init(cli::init::InitArgs),
    /// Check a config file; exit 0 when valid, else print every error.
    Validate(cli::validate::ValidateArgs),
    /// Print the Envoy bootstrap for a config.
    Render(cli::render::RenderArgs),
    /// Start Envoy (and the sidecar, when needed) for a config; Ctrl-C stops everything.
    Run(cli::run::RunArgs),
    /// An OpenAI-compatible mock backend that echoes what it received.
    MockLlm(cli::mock_llm::MockLlmArgs),
    /// Start the inference sidecar (gRPC + HTTP).
    Serve(cli::serve::ServeArgs),
    /// Fine-tune a task head (LoRA + linear head) and write it for the sidecar.
    Train(cli::train::TrainArgs),
    /// Join task directories trained with other seeds into one averaged task.
    Ensemble(cli::ensemble::EnsembleArgs),
    /// Score a trained task directory (accuracy, macro-F1, per-class P/R, confusion).
    Eval(cli::eval::EvalArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Init(a) => cli::init::run(a),
        Command::Validate(a) => cli::validate::run(a),
        Command::Render(a) => cli::render::run(a),
        Command::Run(a) => cli::run::run(a),
        Command::MockLlm(a) => cli::mock_llm::run(a),
        Command::Serve(a) => cli::serve::run(a),
        Command::Train(a) => cli::train::run(a),
        Command::Ensemble(a) => cli::ensemble::run(a),
        Command::Eval(a) => cli::eval::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
