#!/usr/bin/env bash
# Sidecar benchmark: our candle sidecar vs onnxruntime-python vs
# sentence-transformers (PyTorch), same machine, same model, same prompts.
#
#   scripts/bench-sidecar.sh            # everything (~10 minutes on 2 cores)
#   SKIP_PYTHON=1 scripts/bench-sidecar.sh
#
# Python engines go into a scratch venv outside the repo ($BENCH_VENV,
# default /tmp/bench-venv); the ONNX export is made there with torch.
# Results are printed as markdown (copied into docs/BENCHMARKS.md, section 2).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${BENCH_VENV:-/tmp/bench-venv}"
work="${BENCH_WORK:-/tmp/vsr-bench}"
model="models/base/all-MiniLM-L6-v2"
mkdir -p "$work"
[ -f "$model/model.safetensors" ] || { echo "missing $model: run scripts/setup.sh" >&2; exit 1; }

cargo build --release -p inference-server --bin sidecar-bench
bench=target/release/sidecar-bench
export VSR_BASE_MODEL="$model"

echo "## Machine"
echo
echo "- CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; $(free -g | awk '/Mem:/{print $2}') GiB RAM"
echo "- $("$bench" flops)"
echo

echo "## Candle forward pass alone (embedding only, in-process, fastest of N)"
echo
"$bench" forward
echo

echo "## Multi-task cost (backend forward pass, in-process, random-weight heads with real shapes)"
echo
"$bench" multitask
echo

echo "## Our sidecar over gRPC (in-process server, tonic client)"
echo
"$bench" grpc
echo

[ "${SKIP_PYTHON:-0}" = 1 ] && exit 0
"$bench" prompts > "$work/prompts.json"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import torch, sentence_transformers, onnxruntime, onnx" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check numpy torch sentence-transformers onnxruntime onnx onnxscript
fi
cat > "$work/bench_python.py" <<'PY'
import json, os, sys, time, statistics
import numpy as np
import torch
import onnxruntime as ort
from tokenizers import Tokenizer
from sentence_transformers import SentenceTransformer

model_dir, work = sys.argv[1], sys.argv[2]
threads = os.cpu_count()
torch.set_num_threads(threads)
prompts = json.load(open(os.path.join(work, "prompts.json")))

def peak_numpy():
    n = 2048
    a = np.random.rand(n, n).astype(np.float32); b = np.random.rand(n, n).astype(np.float32)
    a @ b
    t = time.perf_counter(); reps = 10
    for _ in range(reps): a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9

def peak_torch():
    n = 2048
    a = torch.rand(n, n); b = torch.rand(n, n)
    a @ b
    t = time.perf_counter(); reps = 10
    for _ in range(reps): a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9

print(f"- numpy f32 matmul 2048^3: {peak_numpy():.1f} GFLOP/s; torch {torch.__version__}: {peak_torch():.1f} GFLOP/s ({threads} threads)")
print(f"- onnxruntime {ort.__version__}, torch {torch.__version__} (CPU execution; the PyPI wheel is the CUDA build, no GPU present)")
print()

st = SentenceTransformer(model_dir, device="cpu")
st.max_seq_length = 512
onnx_path = os.path.join(work, "minilm.onnx")
if not os.path.exists(onnx_path):
    from transformers import AutoModel
    from torch.export import Dim
    m = AutoModel.from_pretrained(model_dir).eval()
    # Example batch with padding, so the mask path is traced for real.
    ids = torch.tensor([[101] + list(range(2000, 2014)) + [102], [101] + list(range(3000, 3009)) + [102] + [0] * 5])
    mask, types = (ids != 0).long(), torch.zeros_like(ids)
    b, s = Dim("b", min=1, max=1024), Dim("s", min=2, max=512)
    with torch.no_grad():
        torch.onnx.export(m, (ids, mask, types), onnx_path, dynamo=True, opset_version=18,
                          input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
                          dynamic_shapes=({0: b, 1: s}, {0: b, 1: s}, {0: b, 1: s}))
so = ort.SessionOptions()
so.intra_op_num_threads = threads
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
tok.no_truncation(); tok.no_padding()

def ort_embed(texts):
    encs = tok.encode_batch(texts)
    n = max(len(e.ids) for e in encs)
    ids = np.zeros((len(texts), n), np.int64); mask = np.zeros_like(ids)
    for i, e in enumerate(encs):
        ids[i, :len(e.ids)] = e.ids; mask[i, :len(e.ids)] = 1
    h = sess.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    m = mask[..., None].astype(np.float32)
    v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
    return v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)

def st_embed(texts):
    return st.encode(texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True)

# Same answers first (else the speed comparison means nothing).
a, b = ort_embed(prompts["short"][:4]), st_embed(prompts["short"][:4])
d = np.abs(a - b).max()
print(f"- onnxruntime vs sentence-transformers max |diff| on 4 prompts: {d:.2e}")
assert d < 1e-4, "the ONNX export does not match sentence-transformers"
print()
print("| engine | prompt | batch | embeddings/s | p50 ms | p99 ms | requests |")
print("|---|---|---:|---:|---:|---:|---:|")
for name, fn in [("onnxruntime-python", ort_embed), ("sentence-transformers (torch)", st_embed)]:
    for pname, key in [("~30 tok", "short"), ("~128 tok", "long")]:
        texts = prompts[key]
        for bs in [1, 8, 32]:
            reps = max(256 // bs, 8)
            fn(texts[:bs])
            lat = []
            t = time.perf_counter()
            for i in range(reps):
                batch = [texts[(i * bs + j) % len(texts)] for j in range(bs)]
                t0 = time.perf_counter(); fn(batch); lat.append(time.perf_counter() - t0)
            total = time.perf_counter() - t
            lat.sort()
            p = lambda q: lat[round((len(lat) - 1) * q)] * 1e3
            print(f"| {name} | {pname} | {bs} | {reps * bs / total:.1f} | {p(0.5):.2f} | {p(0.99):.2f} | {reps} |")
PY
echo "## Python engines (same prompts)"
echo
HF_HUB_OFFLINE=1 "$venv/bin/python" "$work/bench_python.py" "$model" "$work" 2>/dev/null
