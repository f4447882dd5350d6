#!/usr/bin/env bash
# Filter overhead: one Envoy, a listener with the router filter and one without, same mock
# upstream, interleaved rounds at 1 and 32 clients. Extra arguments go to filter-bench
# (--seconds S, --rounds R, --path P, --model M, --envoy-concurrency N).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
cargo build --quiet -p filter-wasm --target wasm32-wasip1 --profile wasm
cargo build --quiet --release -p inference-server --bin vsr -p vsr-e2e --bin filter-bench
VSR_BIN=target/release/vsr exec target/release/filter-bench "$@"
