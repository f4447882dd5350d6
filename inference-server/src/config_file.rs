//! Loading a user config file the way the filter will: YAML → typed config → the same
//! `Router::new` the filter runs in `on_configure`, so a file that passes here loads there
//! (given the same environment for `${VAR}` access keys).

use std::path::Path;

use anyhow::Context;
use router_core::config::{ConfigErrors, UserConfig};
use router_core::{Capabilities, Router};

/// A config file that parsed and validated.
pub struct LoadedConfig {
    /// The file's text, kept so the bootstrap embeds what the user wrote (not a typed round trip).
    pub text: String,
    pub config: UserConfig,
}

/// Reads and checks `path`. `Err` is an I/O problem; `Ok(Err(..))` lists every config problem.
pub fn load(path: &Path) -> anyhow::Result<Result<LoadedConfig, ConfigErrors>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(check(&path.display().to_string(), text))
}

/// Parses and validates config text; `source` names it in error messages.
pub fn check(source: &str, text: String) -> Result<LoadedConfig, ConfigErrors> {
    let config = UserConfig::from_yaml(source, &text)?;
    let env = |var: &str| std::env::var(var).ok();
    match Router::new(&config, &env, Capabilities::default()) {
        Ok(_) => Ok(LoadedConfig { text, config }),
        Err(errors) => Err(ConfigErrors {
            source: source.to_string(),
            errors,
        }),
    }
}

/// The config as JSON for the filter: the YAML converted value by value, so fields this
/// binary does not know (a newer filter might) are passed through untouched.
pub fn to_filter_json(text: &str) -> anyhow::Result<String> {
    let value: serde_json::Value =
        serde_yaml::from_str(text).context("config is not convertible to JSON")?;
    Ok(serde_json::to_string(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_conversion_keeps_every_field() {
        let json = to_filter_json(
            "providers:\n  models: [{name: m, endpoints: [{endpoint: 'h:1'}]}]\nfuture_field: 3\n",
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["future_field"], 3);
        assert_eq!(
            v["providers"]["models"][0]["endpoints"][0]["endpoint"],
            "h:1"
        );
    }

    #[test]
    fn errors_name_the_source() {
        let errs = check("x.yaml", "providers: {models: []}\n".into())
            .err()
            .unwrap();
        assert!(
            errs.to_string().starts_with("x.yaml: providers.models: "),
            "{errs}"
        );
    }
}
