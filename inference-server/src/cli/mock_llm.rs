//! `vsr mock-llm` (to be written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct MockLlmArgs {}

pub fn run(_args: MockLlmArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vsr mock-llm` is not implemented yet")
}
