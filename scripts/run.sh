#!/usr/bin/env bash
# Sets up and runs the router with the default config and built-in mock LLM backends.
# Then, in another terminal:
#   curl -s localhost:8801/v1/chat/completions -H 'content-type: application/json' \
#     -d '{"model":"MoM","messages":[{"role":"user","content":"Solve the integral of x^2"}]}' -i
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/setup.sh
echo "[run] building (release; the first build takes a few minutes)"
cargo build --quiet -p filter-wasm --target wasm32-wasip1 --profile wasm
cargo build --quiet --release -p inference-server --bin vsr
mkdir -p .vsr
[ -f .vsr/config.yaml ] || target/release/vsr init --output .vsr/config.yaml
exec target/release/vsr run --config .vsr/config.yaml --mock-backends
