//! Finds the base encoder: a local directory, or a Hugging Face hub id
//! (`owner/name`, optionally `owner/name@revision`) fetched with `hf-hub`
//! into its cache (`HF_HOME`, default `~/.cache/huggingface`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Files the base encoder needs.
pub const BASE_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// Resolves `spec` to a directory holding [`BASE_FILES`], plus a model id
/// for responses (the directory name or the hub id).
pub fn resolve_base(spec: &str) -> anyhow::Result<(PathBuf, String)> {
    let path = Path::new(spec);
    if path.is_dir() {
        for f in BASE_FILES {
            if !path.join(f).is_file() {
                bail!("base model directory {} has no {f}; run scripts/setup.sh to download all-MiniLM-L6-v2", path.display());
            }
        }
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| spec.to_string());
        return Ok((path.to_path_buf(), id));
    }
    if is_hub_id(spec) {
        return from_hub(spec);
    }
    bail!("base model directory {} not found; run scripts/setup.sh to download all-MiniLM-L6-v2 (or pass a Hugging Face hub id like sentence-transformers/all-MiniLM-L6-v2)", path.display())
}

/// `owner/name[@rev]` with no path-like parts.
fn is_hub_id(spec: &str) -> bool {
    let id = spec.split('@').next().unwrap_or(spec);
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

fn from_hub(spec: &str) -> anyhow::Result<(PathBuf, String)> {
    use hf_hub::api::sync::ApiBuilder;
    use hf_hub::{Repo, RepoType};
    let (id, revision) = match spec.split_once('@') {
        Some((id, rev)) => (id, rev.to_string()),
        None => (spec, "main".to_string()),
    };
    let api = ApiBuilder::new()
        .with_progress(false)
        .build()
        .context("Hugging Face hub client")?;
    let repo = api.repo(Repo::with_revision(
        id.to_string(),
        RepoType::Model,
        revision,
    ));
    let mut dir = None;
    for f in BASE_FILES {
        let p = repo
            .get(f)
            .with_context(|| format!("downloading {f} of {spec} from the Hugging Face hub"))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    let dir = dir.context("hub download returned no directory")?;
    Ok((dir, id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_told_from_paths() {
        assert!(is_hub_id("sentence-transformers/all-MiniLM-L6-v2"));
        assert!(is_hub_id("org/model@v1.0"));
        assert!(!is_hub_id("models/base/all-MiniLM-L6-v2"));
        assert!(!is_hub_id("./base"));
        assert!(!is_hub_id("/abs/path"));
    }

    #[test]
    fn missing_directory_says_to_run_setup() {
        let e = resolve_base("no/such/dir/here").unwrap_err().to_string();
        assert!(e.contains("scripts/setup.sh"), "{e}");
    }
}
