//! `vsr init` (to be written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct InitArgs {}

pub fn run(_args: InitArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vsr init` is not implemented yet")
}
