#!/usr/bin/env bash
# Added latency of the full ML pipeline: one Envoy, a listener with the router filter calling
# a real `vsr serve` sidecar (models/ + MiniLM) for every signal, guard and the semantic cache,
# and a listener without the filter, same mock upstream, interleaved rounds at 1 and 16 clients.
#
#   scripts/bench-pipeline.sh                     # defaults: --seconds 5 --rounds 4 --clients 1,16
#   scripts/bench-pipeline.sh --jailbreak on      # require the jailbreak head (fails if missing)
#
# Extra arguments go to pipeline-bench:
#   --seconds S, --rounds R, --clients 1,16
#   --jailbreak auto|on|off   auto (default): the guard runs iff models/jailbreak/ is installed
#   --pii on|off              the decisions' PII mask plugin (on; without models/pii/ only the
#                             sidecar's pattern recognizers run, which the output says loudly)
#   --no-hit-side             skip the cache-hit side
#   --hit-partition own|shared  own (default): the cache-hit prompt sits alone in its cache
#                             partition; shared: among the miss side's ~1-2k entries (HNSW path)
#   --sidecar-timeout 5s      the filter's budget per sidecar call
# Run it on an otherwise idle machine: it prints the load average and any `vsr train` it sees.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh >/dev/null
cargo build --quiet -p filter-wasm --target wasm32-wasip1 --profile wasm
cargo build --quiet --release -p inference-server --bin vsr -p vsr-e2e --bin pipeline-bench
VSR_BIN=target/release/vsr VSR_WASM=target/wasm32-wasip1/wasm/filter_wasm.wasm \
  exec target/release/pipeline-bench "$@"
