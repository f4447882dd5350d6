#!/usr/bin/env bash
# Runs every test against real parts: sets up (wasm target, Envoy, base model), builds the
# wasm filter and the `vsr` binary the end-to-end tests drive, then runs the workspace tests.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
echo "[test] building the wasm filter"
cargo build --quiet -p filter-wasm --target wasm32-wasip1 --profile wasm
echo "[test] building vsr"
cargo build --quiet -p inference-server --bin vsr
echo "[test] cargo test"
cargo test --workspace --no-fail-fast
