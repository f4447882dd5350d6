//! The artifacts under test. Each is found via an environment variable or its usual place,
//! and checked to be newer than its sources so a stale build cannot pass for the new code.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// How to get everything the e2e tests need.
pub const SETUP: &str = "run `bash scripts/setup.sh` (Envoy into .venv), then \
     `cargo build -p inference-server` (the vsr binary) and \
     `cargo build -p filter-wasm --target wasm32-wasip1 --profile wasm` (the filter)";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The `vsr` binary: `VSR_BIN`, else the newer of `target/{debug,release}/vsr`.
pub fn vsr() -> PathBuf {
    artifact(
        "VSR_BIN",
        &["target/debug/vsr", "target/release/vsr"],
        &["inference-server/src", "filter-wasm/core/src"],
    )
}

/// The filter module: `VSR_WASM`, else the `wasm` profile build output.
pub fn wasm() -> PathBuf {
    artifact(
        "VSR_WASM",
        &["target/wasm32-wasip1/wasm/filter_wasm.wasm"],
        &["filter-wasm/src", "filter-wasm/core/src"],
    )
}

/// The Envoy binary: `VSR_ENVOY`, else `.venv/bin/envoy`.
pub fn envoy() -> PathBuf {
    artifact("VSR_ENVOY", &[".venv/bin/envoy"], &[])
}

fn artifact(env: &str, candidates: &[&str], sources: &[&str]) -> PathBuf {
    let root = root();
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist; {SETUP}", p.display());
        return p;
    }
    let found = candidates
        .iter()
        .map(|c| root.join(c))
        .filter(|p| p.is_file())
        .max_by_key(|p| modified(p))
        .unwrap_or_else(|| {
            panic!(
                "none of {candidates:?} exists under {} (or set {env}); {SETUP}",
                root.display()
            )
        });
    if let Some(newer) = newest_source(&root, sources).filter(|(t, _)| *t > modified(&found)) {
        panic!(
            "{} is older than {}: rebuild it (or set {env} to use it anyway); {SETUP}",
            found.display(),
            newer.1.display()
        );
    }
    found
}

fn modified(p: &Path) -> SystemTime {
    p.metadata()
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The most recently modified source file under `sources` (skipping `src/bin/` and unit-test
/// modules: `tests.rs` files and `tests/` folders are `#[cfg(test)]` here, so editing them
/// does not rebuild the artifact). Only sources: Cargo relinks on every source change, but
/// not on a manifest edit that changes nothing it builds.
fn newest_source(root: &Path, sources: &[&str]) -> Option<(SystemTime, PathBuf)> {
    let mut stack: Vec<PathBuf> = sources.iter().map(|s| root.join(s)).collect();
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            if p.ends_with("src/bin") || p.file_name().is_some_and(|n| n == "tests") {
                continue; // other binaries and unit tests, not linked into the artifact
            }
            stack.extend(
                std::fs::read_dir(&p)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path()),
            );
        } else if p.extension().is_some_and(|e| e == "rs" || e == "yaml")
            && p.file_name().is_none_or(|n| n != "tests.rs")
        {
            let t = modified(&p);
            if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                newest = Some((t, p));
            }
        }
    }
    newest
}
