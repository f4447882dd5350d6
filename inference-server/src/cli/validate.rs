//! `vsr validate` (to be written).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ValidateArgs {}

pub fn run(_args: ValidateArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vsr validate` is not implemented yet")
}
