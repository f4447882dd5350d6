//! `vsr render` (to be written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RenderArgs {}

pub fn run(_args: RenderArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vsr render` is not implemented yet")
}
