#!/usr/bin/env bash
# Semantic cache benchmark (docs/BENCHMARKS.md, section 3):
#   1. memory backend: N random 384-d unit vectors in one partition (default
#      100000), lookup p50/p99 in-process and through CacheLookup over gRPC,
#      recall@1 against brute force;
#   2. redis backend: lookup p50/p99 by partition size, against a scratch
#      redis-server started here on a free port (no persistence).
#
#   scripts/bench-cache.sh            # N = 100000
#   scripts/bench-cache.sh 20000
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
n="${1:-100000}"
model="models/base/all-MiniLM-L6-v2"
[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server not found: run scripts/setup.sh" >&2; exit 1; }

cargo build --release -p inference-server --bin sidecar-bench
bench=target/release/sidecar-bench
export VSR_BASE_MODEL="$model"

echo "## Machine"
echo
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "## Memory backend"
echo
"$bench" cache "$n"
echo

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
dir="$(mktemp -d)"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" >/dev/null &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
echo "## Redis backend ($(redis-server --version | cut -d' ' -f3), same machine)"
echo
"$bench" cache-redis "redis://127.0.0.1:$port"
