//! `vsr validate`: the checks the filter runs when it loads a config, from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::config_file;

#[derive(clap::Args)]
pub struct ValidateArgs {
    /// The router config (YAML).
    #[arg(long, short, env = "VSR_CONFIG")]
    config: PathBuf,
}

pub fn run(args: ValidateArgs) -> anyhow::Result<ExitCode> {
    match config_file::load(&args.config)? {
        Ok(loaded) => {
            println!(
                "{}: valid ({} decisions, {} models)",
                args.config.display(),
                loaded.config.decisions.len(),
                loaded.config.providers.models.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}
