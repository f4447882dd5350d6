//! `vsr serve` (to be written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ServeArgs {}

pub fn run(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vsr serve` is not implemented yet")
}
