//! `vsr init`: writes the commented default config, a working starting point that
//! routes by keyword to two mock backends on 127.0.0.1.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};

/// The config `vsr init` writes; it validates (see the test below).
pub const DEFAULT_CONFIG: &str = include_str!("default-config.yaml");

#[derive(clap::Args)]
pub struct InitArgs {
    /// File to write; the config goes to stdout when omitted.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Overwrite the output file if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(args: InitArgs) -> anyhow::Result<ExitCode> {
    let Some(path) = args.output else {
        std::io::stdout().write_all(DEFAULT_CONFIG.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    };
    if path.exists() && !args.force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(&path, DEFAULT_CONFIG)
        .with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!(
        "wrote {}; check it with `vsr validate --config {0}`",
        path.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        let loaded = crate::config_file::check("default", DEFAULT_CONFIG.to_string()).unwrap();
        assert_eq!(loaded.config.decisions.len(), 3);
        assert_eq!(loaded.config.default_model(), Some("qwen3-8b"));
    }
}
