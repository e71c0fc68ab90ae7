#!/usr/bin/env bash
# GPU placement and telemetry bench. CPU parts run anywhere: the server's /v2/devices, a short load on
# the digits model, and the CPU gauges it exported. GPU parts run only where nvidia-smi finds a GPU
# (build with --features cuda, see ../shared/CUDA.md): the same load with two instances per GPU
# (instance_group kind = "gpu", count = 2), then the NVML sample comparison: mean nv_gpu_utilization
# over the run vs the busy fraction measured from the server's own compute time. Before that, the
# custom ops' GPU parity tests (src/ops, vs their CPU `_ref`; pinned-buffer transfers) and kernel
# timings (examples/ops_gpu.rs). Last, the embeddings load (MiniLM, `ferrite bench --protocol tei`,
# 64 connections, random 20-word texts) on the CPU and on GPU 0 with prefetch off and on (a
# staging thread uploading batch N+1 through pinned buffers while N computes), as a markdown table
# printed at the end and written to $TABLE (default target/gpu-table.md).
# Usage: benches/gpu.sh [SECONDS] [CONCURRENCY]   (defaults 5 s, 16)
# Env: PORT (default 18300; the GPU run uses PORT+100), PROFILE=release|debug (default release), FERRITE_BIN (default $CARGO_TARGET_DIR/$PROFILE/ferrite).
set -euo pipefail
cd "$(dirname "$0")/.."
TABLE=${TABLE:-target/gpu-table.md}
DUR=${1:-5}
CONC=${2:-16}
PROFILE=${PROFILE:-release}
PORT=${PORT:-18300}
BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/$PROFILE/ferrite}
if [[ ! -x "$BIN" ]]; then
  flag=(); [[ $PROFILE == release ]] && flag=(--release)
  cargo build "${flag[@]}" --bin ferrite >&2
fi
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

# start REPO PORT: a server on 127.0.0.1:PORT (metrics on PORT+2), sampling every 200 ms
start() {
  for port in "$2" $(($2 + 2)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is already in use (set PORT=...)" >&2; return 1; fi
  done
  "$BIN" serve --model-repository "$1" --host 127.0.0.1 --http-port "$2" --metrics-port $(($2 + 2)) \
    --metrics-interval-ms 200 2>"$tmp/server-$2.log" &
  for _ in $(seq 300); do curl -sf "localhost:$2/v2/health/ready" >/dev/null && return 0; sleep 0.2; done
  echo "server on $2 did not become ready:" >&2; cat "$tmp/server-$2.log" >&2; return 1
}

# load PORT: DUR seconds of CONC concurrent digits requests; prints req/s and the metric deltas
load() {
  python3 - "$1" "$DUR" "$CONC" <<'PY'
import json, sys, threading, time, urllib.request
port, dur, conc = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}).encode()
def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics").read().decode()
    out = {}
    for l in text.splitlines():
        if l and not l.startswith("#"):
            k, v = l.rsplit(" ", 1)
            out[k] = float(v)
    return out
done, n, util = time.time() + dur, [0], []
def worker():
    while time.time() < done:
        urllib.request.urlopen(urllib.request.Request(url, body, {"content-type": "application/json"})).read()
        n[0] += 1
def sampler():
    while time.time() < done:
        m = scrape()
        util.append([v for k, v in m.items() if k.startswith("nv_gpu_utilization{")])
        time.sleep(0.25)
before, t0 = scrape(), time.time()
ts = [threading.Thread(target=worker) for _ in range(conc)] + [threading.Thread(target=sampler)]
[t.start() for t in ts]; [t.join() for t in ts]
wall, after = time.time() - t0, scrape()
d = lambda k: after.get(k, 0) - before.get(k, 0)
mv = '{model="digits",version="1"}'
execs, rows, infer_us = d("nv_inference_exec_count" + mv), d("nv_inference_count" + mv), d("nv_inference_compute_infer_duration_us" + mv)
print(f"  {n[0] / wall:9.1f} req/s   {execs:.0f} executions, mean batch {rows / max(execs, 1):.1f}")
print(f"  nv_cpu_utilization {after.get('nv_cpu_utilization', float('nan')):.2f}   "
      f"rss {after.get('ferrite_process_resident_memory_bytes', 0) / 2**20:.0f} MiB")
gpus = max((len(u) for u in util), default=0)
if gpus:
    reported = sum(sum(u) for u in util if u) / max(1, sum(len(u) for u in util if u))
    # compute_infer_us is per request (Triton's convention): every row of a batch carries the batch's
    # forward time, so batch time ~ infer_us / mean batch. Instances on one GPU can overlap: an estimate.
    busy = min(1.0, infer_us / max(rows / max(execs, 1), 1) / 1e6 / wall / gpus)
    print(f"  NVML mean nv_gpu_utilization {reported:.2f} vs busy fraction measured {busy:.2f} ({gpus} GPU(s))")
PY
}

# embed NAME PORT: MiniLM under `ferrite bench` (TEI /embed, 64 connections); appends a row to $TABLE
embed() {
  "$BIN" bench -u "http://127.0.0.1:$2" --metrics-url "http://127.0.0.1:$(($2 + 2))/metrics" -m minilm \
    --protocol tei --text-words 20 --concurrency-range 64:64 --warmup-ms 2000 --max-windows 5 \
    --json "$tmp/$1.json" >&2
  python3 - "$1" "$tmp/$1.json" >>"$TABLE" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))["steps"][0]
srv, lat = s.get("server") or {}, s["latency"]
print(f"| {sys.argv[1]} | {s['throughput']:.0f} | {lat['p50_us'] / 1e3:.1f} | {lat['p99_us'] / 1e3:.1f} | "
      f"{srv.get('avg_batch', float('nan')):.1f} | {srv.get('compute_input_us', float('nan')):.0f} | "
      f"{srv.get('compute_infer_us', float('nan')):.0f} | {sum(s['errors'].values())} |")
PY
}

# minilm_repo DIR KIND PREFETCH: MiniLM (weights symlinked) with instance kind and prefetch set
minilm_repo() {
  mkdir -p "$1/minilm/1"
  for f in models/minilm/1/*; do ln -sf "$(realpath "$f")" "$1/minilm/1/"; done
  sed -e "s/^kind = .*/kind = \"$2\"/" -e "s/^architecture = .*/&\nprefetch = $3/" \
    models/minilm/config.toml >"$1/minilm/config.toml"
}

mkdir -p "$(dirname "$TABLE")"
{
  echo "benches/gpu.sh on $(hostname), $(date -u +%F), $(nvidia-smi -L 2>/dev/null | head -n 1 || echo 'no GPU')"
  echo
  echo "| MiniLM /embed, 64 connections | req/s | p50 ms | p99 ms | mean batch | input us/req | infer us/req | errors |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$TABLE"

echo "== CPU: digits (kind = auto, as committed)"
start models "$PORT"
curl -sf "localhost:$PORT/v2/devices" | python3 -c 'import json,sys; [print("  device", d["id"], d["kind"], d["name"], "instances:", [(i["model"], i["version"], i["count"]) for i in d["instances"]]) for d in json.load(sys.stdin)["devices"]]'
load "$PORT"
kill %% 2>/dev/null || true

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "== GPU: custom ops, CUDA vs the CPU _ref (parity tests), then kernel timings vs kernels/README.md floors"
  # nvidia-smi sees a GPU here, so a parity test that skips (no CUDA device) counts as a failure.
  # Then MiniLM's GPU path (pinned staging, device gather) against the CPU packed path.
  if ! { cargo test --release --features cuda --lib -- ops:: device::transfer --nocapture \
      && cargo test --release --features cuda --test embeddings -- cuda_ --nocapture; } >"$tmp/ops-test.log" 2>&1 \
    || grep -q SKIPPED "$tmp/ops-test.log"; then
    grep -E 'SKIPPED|panicked|^test |^test result|^error' "$tmp/ops-test.log" >&2 || tail -n 40 "$tmp/ops-test.log" >&2
    echo "GPU op parity tests failed or skipped" >&2
    exit 1
  fi
  grep -E '^test .*cuda|^test result' "$tmp/ops-test.log"
  cargo run --release --features cuda --example ops_gpu
  echo "== GPU: digits, two instances per GPU (kind = gpu, count = 2)"
  cp -r models/digits "$tmp/digits" && mkdir -p "$tmp/repo" && mv "$tmp/digits" "$tmp/repo/digits"
  sed -i 's/^count = .*/count = 2/; s/^kind = .*/kind = "gpu"/' "$tmp/repo/digits/config.toml"
  start "$tmp/repo" $((PORT + 100))
  curl -sf "localhost:$((PORT + 100))/v2/devices" | python3 -m json.tool | head -60
  load $((PORT + 100))
  nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,power.draw --format=csv
  kill %% 2>/dev/null || true
fi

[[ -f models/minilm/1/model.safetensors ]] || scripts/fetch-models.sh >&2
echo "== Embeddings: MiniLM on the CPU (kind = cpu)"
minilm_repo "$tmp/emb-cpu" cpu false
start "$tmp/emb-cpu" $((PORT + 200))
embed "minilm cpu" $((PORT + 200))
kill %% 2>/dev/null || true
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  for pf in false true; do
    echo "== Embeddings: MiniLM on GPU (kind = gpu), prefetch = $pf"
    minilm_repo "$tmp/emb-gpu-$pf" gpu $pf
    port=$((PORT + 300 + ${#pf}))
    start "$tmp/emb-gpu-$pf" $port
    embed "minilm gpu, prefetch $pf" $port
    kill %% 2>/dev/null || true
  done
else
  echo "== GPU parts skipped: no GPU (nvidia-smi missing or lists none)"
fi
echo
cat "$TABLE"
