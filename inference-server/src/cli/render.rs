//! `vsr render`: prints the Envoy bootstrap for a config (see [`crate::bootstrap`]).

use std::path::PathBuf;
use std::process::ExitCode;

use router_core::config::ConfigErrors;

use crate::{bootstrap, config_file, project};

#[derive(clap::Args)]
pub struct RenderArgs {
    /// The router config (YAML).
    #[arg(long, short, env = "VSR_CONFIG")]
    config: PathBuf,
    #[command(flatten)]
    envoy: EnvoyArgs,
}

/// Bootstrap settings shared by `render` and `run`.
#[derive(clap::Args, Clone)]
pub struct EnvoyArgs {
    /// The filter module; defaults to the build output under the project root.
    #[arg(long, env = "VSR_WASM")]
    pub wasm: Option<PathBuf>,
    /// Port of Envoy's admin interface (bound to 127.0.0.1).
    #[arg(long, env = "VSR_ADMIN_PORT", default_value_t = 9901)]
    pub admin_port: u16,
    /// CA bundle that verifies `https` upstreams.
    #[arg(
        long,
        env = "VSR_CA_BUNDLE",
        default_value = "/etc/ssl/certs/ca-certificates.crt"
    )]
    pub ca_bundle: PathBuf,
}

/// A validated config and its bootstrap, or every error (already printed).
pub(crate) fn render_config(
    config: &std::path::Path,
    envoy: &EnvoyArgs,
) -> anyhow::Result<Option<Rendered>> {
    let loaded = match config_file::load(config)? {
        Ok(l) => l,
        Err(errors) => {
            eprintln!("{errors}");
            return Ok(None);
        }
    };
    let wasm = project::wasm_path(envoy.wasm.as_deref())?;
    let filter_json = config_file::to_filter_json(&loaded.text)?;
    let opts = bootstrap::Options {
        filter_json: &filter_json,
        wasm: &wasm,
        admin_port: envoy.admin_port,
        ca_bundle: &envoy.ca_bundle,
    };
    match bootstrap::render(&loaded.config, &opts) {
        Ok(yaml) => Ok(Some(Rendered {
            yaml,
            wasm,
            config: loaded.config,
        })),
        Err(errors) => {
            eprintln!(
                "{}",
                ConfigErrors {
                    source: config.display().to_string(),
                    errors
                }
            );
            Ok(None)
        }
    }
}

pub(crate) struct Rendered {
    pub yaml: String,
    pub wasm: PathBuf,
    pub config: router_core::config::UserConfig,
}

pub fn run(args: RenderArgs) -> anyhow::Result<ExitCode> {
    let Some(rendered) = render_config(&args.config, &args.envoy)? else {
        return Ok(ExitCode::FAILURE);
    };
    if !rendered.wasm.is_file() {
        eprintln!(
            "warning: {} does not exist (yet); build it with `cargo build -p filter-wasm --target wasm32-wasip1 --profile wasm`",
            rendered.wasm.display()
        );
    }
    print!("{}", rendered.yaml);
    Ok(ExitCode::SUCCESS)
}
