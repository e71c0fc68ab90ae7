#!/usr/bin/env bash
# GPU placement and telemetry bench. CPU parts run anywhere: the server's /v2/devices, a short load on
# the digits model, and the CPU gauges it exported. GPU parts run only where nvidia-smi finds a GPU
# (build with --features cuda, see docs/CUDA.md): the same load with two instances per GPU
# (instance_group kind = "gpu", count = 2), then the NVML sample comparison: mean nv_gpu_utilization
# over the run vs the busy fraction measured from the server's own compute time. Before that, the
# custom ops' GPU parity tests (src/ops, vs their CPU `_ref`; pinned-buffer transfers) and kernel
# timings (examples/ops_gpu.rs). Last, the embeddings load (MiniLM, `ferrite bench --protocol tei`,
# 64 connections, random 20-word texts) on the CPU and on GPU 0 with prefetch off and on (a
# staging thread uploading batch N+1 through pinned buffers while N computes), as a markdown table
# printed at the end.
# Usage: benches/gpu.sh [SECONDS] [CONCURRENCY]   (defaults 5 s, 16)
# Output, in RESULTS_DIR (default: gpu-results/ in the repository root; a relative path is taken from
# the current directory; $OUT is used where it is set and RESULTS_DIR is not):
#   gpu.log        everything the script printed
#   gpu-table.md   the embeddings table ($TABLE overrides its path)
#   logs.tgz       every server and test log
# Env: PORT (default 18300; the GPU run uses PORT+100), PROFILE=release|debug (default release), FERRITE_BIN (default $CARGO_TARGET_DIR/$PROFILE/ferrite).
# FERRITE_BUNDLE=DIR: run from prebuilt binaries and models (benches/gpu-bundle.sh, relative to the
# repository root) on a GPU machine with no Rust toolchain: `FERRITE_BUNDLE=.gpu benches/gpu.sh`.
# The GPU parity tests run with FERRITE_REQUIRE_GPU=1, so one that finds no CUDA device fails.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RESULTS_DIR=$(realpath -m "${RESULTS_DIR:-${OUT:-$ROOT/gpu-results}}")
export RESULTS_DIR
mkdir -p "$RESULTS_DIR"
# Everything printed also goes to gpu.log (the script runs itself once more behind tee).
if [[ -z "${GPU_SH_LOGGING:-}" ]]; then
  set +e
  GPU_SH_LOGGING=1 "$BASH" "$0" "$@" 2>&1 | tee "$RESULTS_DIR/gpu.log"
  rc=${PIPESTATUS[0]}
  echo "benches/gpu.sh: exit $rc; results in $RESULTS_DIR (gpu.log, gpu-table.md, logs.tgz)" >&2
  exit "$rc"
fi
cd "$ROOT"
DUR=${1:-5}
CONC=${2:-16}
PROFILE=${PROFILE:-release}
PORT=${PORT:-18300}
# Steps that would start after DEADLINE seconds are skipped (and reported), so that the table and the
# summary still print inside the device tool's time limit.
DEADLINE=${DEADLINE:-380}
MODELS=models
tmp=$(mktemp -d)
# On exit: stop the servers, keep every server and test log (logs.tgz in RESULTS_DIR).
trap 'kill $(jobs -p) 2>/dev/null || true; tar czf "$RESULTS_DIR/logs.tgz" -C "$tmp" --exclude=./bin . 2>/dev/null; rm -rf "$tmp"' EXIT
# Some CUDA images ship without curl: the same GET through python3 (exit 1 on an HTTP error).
if ! command -v curl >/dev/null; then
  curl() {
    python3 -c 'import sys, urllib.request as u
url = sys.argv[1] if "://" in sys.argv[1] else "http://" + sys.argv[1]
sys.stdout.write(u.urlopen(url, timeout=5).read().decode())' "${@: -1}" 2>/dev/null
  }
fi
BUNDLE=${FERRITE_BUNDLE:-}
if [[ -n "$BUNDLE" ]]; then
  [[ -f "$BUNDLE/bin.tar.xz" ]] || { echo "no $BUNDLE/bin.tar.xz: run benches/gpu-bundle.sh first" >&2; exit 1; }
  BUNDLE=$(realpath "$BUNDLE")
  # Unpacked outside the bundle (it must stay small enough to carry).
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))' \
    "$BUNDLE/bin.tar.xz" "$tmp"
  BINDIR=$tmp/bin
  BIN=$BINDIR/ferrite
  MODELS=$BUNDLE/root/models
  export FERRITE_REPO_ROOT=$BUNDLE/root
  # The binaries NEED libcuda.so.1 (the driver's) and CUDA 13's runtime, cuBLAS, cuRAND and NVRTC:
  # from the toolkit (next to nvcc, or /usr/local/cuda) if it has them, whose NVRTC matches the
  # driver, else from the pip wheels (torch's) that python3 sees; the driver's own folder last.
  nvcc_lib=$(dirname "$(readlink -f "$(command -v nvcc || echo /nonexistent/bin/nvcc)")")/..
  libs=$(python3 - "$nvcc_lib" <<'PY'
import glob, os, site, sys
dirs = []
roots = [os.path.join(sys.argv[1], "lib64"), os.path.join(sys.argv[1], "targets/x86_64-linux/lib"),
         "/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"] + site.getsitepackages()
for name in ("libcudart.so.13", "libcublas.so.13", "libcublasLt.so.13", "libcurand.so.10", "libnvrtc.so.13"):
    for root in roots:
        hits = glob.glob(os.path.join(root, name)) or glob.glob(os.path.join(root, "nvidia", "**", name), recursive=True)
        if hits:
            d = os.path.realpath(os.path.dirname(hits[0]))
            if d not in dirs:
                dirs.append(d)
            break
if os.path.isdir("/usr/local/nvidia/lib64"):
    dirs.append("/usr/local/nvidia/lib64")
print(":".join(dirs))
PY
)
  [[ -n "$libs" ]] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  echo "bundle $BUNDLE; CUDA libraries from: ${libs:-none found}"
  # Which NVRTC the kernels will be compiled with, against the driver's CUDA version.
  python3 -c 'import ctypes
n = ctypes.CDLL("libnvrtc.so.13"); a, b = ctypes.c_int(), ctypes.c_int(); n.nvrtcVersion(ctypes.byref(a), ctypes.byref(b))
print(f"NVRTC {a.value}.{b.value}")' 2>/dev/null || echo "NVRTC: libnvrtc.so.13 not loadable"
  { timeout 20 nvidia-smi -L && timeout 20 nvidia-smi | sed -n 3p; } 2>/dev/null || echo "nvidia-smi lists no GPU"
  if timeout 20 ldd "$BIN" | grep 'not found'; then echo "the bundled binaries cannot start here (libraries above not found)" >&2; exit 1; fi
else
  BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/$PROFILE/ferrite}
  if [[ ! -x "$BIN" ]]; then
    flag=(); [[ $PROFILE == release ]] && flag=(--release)
    cargo build "${flag[@]}" --bin ferrite >&2
  fi
fi
TABLE=${TABLE:-$RESULTS_DIR/gpu-table.md}

# start REPO PORT: a server on 127.0.0.1:PORT (metrics on PORT+2), sampling every 200 ms; its output
# goes to its log only (a slow-stopping server must not hold the caller's pipe open)
start() {
  for port in "$2" $(($2 + 2)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is already in use (set PORT=...)" >&2; return 1; fi
  done
  "$BIN" serve --model-repository "$1" --host 127.0.0.1 --http-port "$2" --metrics-port $(($2 + 2)) --grpc-port $(($2 + 1)) \
    --metrics-interval-ms 200 >>"$tmp/server-$2.log" 2>&1 </dev/null &
  for _ in $(seq 300); do curl -sf -m 5 "localhost:$2/v2/health/ready" >/dev/null && return 0; sleep 0.2; done
  echo "server on $2 did not become ready:" >&2; tail -n 40 "$tmp/server-$2.log" >&2; return 1
}

# model_ready MODEL PORT: fails, with the server's log, unless MODEL is ready (a model whose instances
# could not be placed, e.g. kind = "gpu" where CUDA fails, leaves the server up without it)
model_ready() {
  curl -sf -m 5 "localhost:$2/v2/models/$1/ready" >/dev/null && return 0
  echo "model $1 is not ready on port $2; server log:" >&2
  tail -n 30 "$tmp/server-$2.log" >&2
  return 1
}

# load PORT: DUR seconds of CONC concurrent digits requests; prints req/s and the metric deltas
load() {
  python3 - "$1" "$DUR" "$CONC" <<'PY'
import json, sys, threading, time, urllib.request
port, dur, conc = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
url = f"http://127.0.0.1:{port}/v2/models/digits/infer"
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}]}).encode()
def scrape():
    text = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics", timeout=10).read().decode()
    out = {}
    for l in text.splitlines():
        if l and not l.startswith("#"):
            k, v = l.rsplit(" ", 1)
            out[k] = float(v)
    return out
done, n, errors, util = time.time() + dur, [0], {}, []
def worker():
    while time.time() < done:
        try:
            urllib.request.urlopen(urllib.request.Request(url, body, {"content-type": "application/json"}), timeout=30).read()
            n[0] += 1
        except Exception as e:
            key = getattr(e, "code", type(e).__name__)
            errors[key] = errors.get(key, 0) + 1
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
print(f"  {n[0] / wall:9.1f} req/s   {execs:.0f} executions, mean batch {rows / max(execs, 1):.1f}"
      + (f"   errors {errors}" if errors else ""))
print(f"  nv_cpu_utilization {after.get('nv_cpu_utilization', float('nan')):.2f}   "
      f"rss {after.get('ferrite_process_resident_memory_bytes', 0) / 2**20:.0f} MiB")
gpus = max((len(u) for u in util), default=0)
if gpus:
    reported = sum(sum(u) for u in util if u) / max(1, sum(len(u) for u in util if u))
    # compute_infer_us is per request (Triton's convention): every row of a batch carries the batch's
    # forward time, so batch time ~ infer_us / mean batch. Instances on one GPU can overlap: an estimate.
    busy = min(1.0, infer_us / max(rows / max(execs, 1), 1) / 1e6 / wall / gpus)
    # Indicative only: NVML counts time a kernel runs; "busy" is wall time in compute (launch
    # overhead and synchronize included, overlapping instances counted twice, capped at 1).
    print(f"  NVML mean nv_gpu_utilization {reported:.2f} vs busy fraction measured {busy:.2f} ({gpus} GPU(s); indicative)")
sys.exit(1 if errors or not n[0] else 0)
PY
}

# embed NAME PORT: MiniLM under `ferrite bench` (TEI /embed, 64 connections); appends a row to $TABLE
embed() {
  timeout -k 5 90 "$BIN" bench -u "http://127.0.0.1:$2" --metrics-url "http://127.0.0.1:$(($2 + 2))/metrics" -m minilm \
    --protocol tei --text-words 20 --concurrency-range 64:64 --warmup-ms 2000 --max-windows 5 \
    --json "$tmp/$1.json" >&2
  python3 - "$1" "$tmp/$1.json" >>"$TABLE" <<'PY'
import json, sys
s = json.load(open(sys.argv[2]))["steps"][0]
srv, lat = s.get("server") or {}, s["latency"]
print(f"| {sys.argv[1]} | {s['throughput']:.0f} | {lat['p50_us'] / 1e3:.1f} | {lat['p99_us'] / 1e3:.1f} | "
      f"{srv.get('avg_batch', float('nan')):.1f} | {srv.get('compute_input_us', float('nan')):.0f} | "
      f"{srv.get('compute_infer_us', float('nan')):.0f} | {sum(s['errors'].values())} |")
sys.exit(1 if s["errors"] or not s["throughput"] else 0)
PY
}

# minilm_repo DIR KIND PREFETCH [TOP]: MiniLM (weights symlinked) with instance kind and prefetch set,
# and TOP's lines (top-level `key = value`, e.g. cuda_fused_ops = true) replacing the config's line
# for that key, or added at the top
minilm_repo() {
  local cfg="$1/minilm/config.toml" line key
  mkdir -p "$1/minilm/1"
  for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$1/minilm/1/"; done
  ln -sf "$(realpath "$MODELS/minilm/validation.jsonl")" "$1/minilm/"   # the [validation] gate's set
  sed -e "s/^kind = .*/kind = \"$2\"/" -e "s/^architecture = .*/&\nprefetch = $3/" \
    "$MODELS/minilm/config.toml" >"$cfg"
  while IFS= read -r line; do
    [[ -n "$line" ]] || continue
    key=${line%% =*}
    if grep -q "^$key = " "$cfg"; then
      sed -i "s|^$key = .*|$line|" "$cfg"
    else
      printf '%s\n' "$line" | cat - "$cfg" >"$cfg.tmp" && mv "$cfg.tmp" "$cfg"
    fi
  done <<<"${4:-}"
}

mkdir -p "$(dirname "$TABLE")"
{
  gpu0=$(timeout 20 nvidia-smi -L 2>/dev/null | sed -n 1p || true)
  echo "benches/gpu.sh on $(hostname), $(date -u +%F), ${gpu0:-no GPU}"
  echo
  echo "| MiniLM /embed, 64 connections | req/s | p50 ms | p99 ms | mean batch | input us/req | infer us/req | errors |"
  echo "|---|---|---|---|---|---|---|---|"
} >"$TABLE"

has_gpu() { command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi -L >/dev/null 2>&1; }
# step NAME CMD...: runs CMD in a subshell that stops at its first error and stops the servers it
# started; a failed step is reported and the script goes on, since a lent GPU is scarce and one run
# should measure all it can. The script fails at the end if any step did. Every program a step runs
# has a time bound (a hung kernel must not eat the lease).
failed=()
summary=()
step() {
  local name=$1 rc
  shift
  if ((SECONDS > DEADLINE)); then
    failed+=("$name (skipped: past the ${DEADLINE} s deadline)")
    summary+=("skipped  $name")
    echo "!! step skipped: $name (past the ${DEADLINE} s deadline)" >&2
    return 0
  fi
  set +e
  (
    set -e
    trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
    "$@"
  )
  rc=$?
  set -e
  if [[ $rc != 0 ]]; then
    failed+=("$name")
    summary+=("FAILED   $name (exit $rc, at ${SECONDS} s)")
    echo "!! step failed: $name (exit $rc)" >&2
  else
    summary+=("ok       $name (at ${SECONDS} s)")
  fi
}

# A parity test that finds no CUDA device fails (FERRITE_REQUIRE_GPU=1): nvidia-smi sees a GPU here.
# Any SKIPPED line still fails the step, should a test skip some other way.
# The ops (CUDA vs the CPU _ref), pinned transfers, NVML read through the real source, then MiniLM's
# GPU path (pinned staging, device gather) against the CPU packed path.
gpu_parity() {
  if [[ -n "$BUNDLE" ]]; then
    parity() {
      FERRITE_REQUIRE_GPU=1 timeout -k 5 120 "$BINDIR/lib-tests" ops:: device::transfer telemetry::gpu --nocapture \
        && FERRITE_REQUIRE_GPU=1 timeout -k 5 90 "$BINDIR/embeddings-tests" cuda_ --nocapture
    }
  else
    parity() {
      FERRITE_REQUIRE_GPU=1 cargo test --release --features cuda --lib -- ops:: device::transfer telemetry::gpu --nocapture \
        && FERRITE_REQUIRE_GPU=1 cargo test --release --features cuda --test embeddings -- cuda_ --nocapture
    }
  fi
  if ! parity >"$tmp/ops-test.log" 2>&1 || grep -q SKIPPED "$tmp/ops-test.log"; then
    grep -E 'SKIPPED|panicked|^test |^test result|^error' "$tmp/ops-test.log" >&2 || tail -n 40 "$tmp/ops-test.log" >&2
    echo "GPU op parity tests failed or skipped" >&2
    return 1
  fi
  grep -E '^test .*cuda|^test result' "$tmp/ops-test.log"
}

gpu_timings() {
  if [[ -n "$BUNDLE" ]]; then timeout -k 5 60 "$BINDIR/ops_gpu"; else cargo run --release --features cuda --example ops_gpu; fi
}

gpu_digits() {
  rm -rf "$tmp/repo" "$tmp/repo-cpu" && mkdir -p "$tmp/repo" "$tmp/repo-cpu"
  cp -r "$MODELS/digits" "$tmp/repo/digits" && cp -r "$MODELS/digits" "$tmp/repo-cpu/digits"
  sed -i 's/^count = .*/count = 2/; s/^kind = .*/kind = "gpu"/' "$tmp/repo/digits/config.toml"
  sed -i 's/^kind = .*/kind = "cpu"/' "$tmp/repo-cpu/digits/config.toml"
  start "$tmp/repo" $((PORT + 100))
  model_ready digits $((PORT + 100))
  start "$tmp/repo-cpu" $((PORT + 110))
  model_ready digits $((PORT + 110))
  show_devices $((PORT + 100))
  # The same 16 random inputs through the GPU and the CPU servers: probabilities within 1e-4.
  python3 - $((PORT + 100)) $((PORT + 110)) <<'PY'
import json, random, sys, urllib.request
rows = [[random.uniform(0, 16) for _ in range(64)] for _ in range(16)]
body = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [16, 64], "data": sum(rows, [])}]}).encode()
def infer(port):
    r = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/digits/infer", body, {"content-type": "application/json"})
    out = json.loads(urllib.request.urlopen(r, timeout=30).read())["outputs"]
    return {o["name"]: o["data"] for o in out}
gpu, cpu = infer(int(sys.argv[1])), infer(int(sys.argv[2]))
worst = max(abs(a - b) for k in gpu for a, b in zip(gpu[k], cpu[k]) if isinstance(a, float))
print(f"  digits GPU vs CPU, 16 random rows: largest difference {worst:.2e}")
sys.exit(0 if worst <= 1e-4 else 1)
PY
  # nvidia-smi while the load runs (after it the GPU is idle)
  (sleep 2; timeout 20 nvidia-smi --query-gpu=index,uuid,utilization.gpu,memory.used,memory.total,power.draw --format=csv) &
  load $((PORT + 100))
  wait $!
  nvml_check $((PORT + 100))
}

# nvml_check PORT: the server's NVML export agrees with nvidia-smi for GPU 0: a series labelled with
# its UUID, memory total within 1%, and /v2/devices showing its telemetry (the UUID join worked).
nvml_check() {
  local smi
  smi=$(timeout 20 nvidia-smi --query-gpu=uuid,memory.total,power.draw --format=csv,noheader,nounits -i 0)
  python3 - "$1" "$smi" <<'PY'
import json, sys, urllib.request
port, (uuid, mem_mib, power) = int(sys.argv[1]), [v.strip() for v in sys.argv[2].split(",")]
text = urllib.request.urlopen(f"http://127.0.0.1:{port + 2}/metrics", timeout=10).read().decode()
def val(metric):
    for l in text.splitlines():
        if l.startswith(f'{metric}{{gpu_uuid="{uuid}"}} '):
            return float(l.rsplit(" ", 1)[1])
problems = []
for m in ("nv_gpu_utilization", "nv_gpu_memory_total_bytes", "nv_gpu_memory_used_bytes", "nv_gpu_power_usage", "nv_energy_consumption"):
    if val(m) is None:
        problems.append(f"no {m} series for {uuid}")
total = val("nv_gpu_memory_total_bytes")
if total is not None and abs(total / 2**20 - float(mem_mib)) > 0.01 * float(mem_mib):
    problems.append(f"memory total {total / 2**20:.0f} MiB vs nvidia-smi {mem_mib} MiB")
util = val("nv_gpu_utilization")
if util is not None and not 0 <= util <= 1:
    problems.append(f"nv_gpu_utilization {util} is not a fraction")
print(f"  NVML export for {uuid}: utilization {util}, memory total {total}, power {val('nv_gpu_power_usage')} W "
      f"(nvidia-smi {power} W), energy {val('nv_energy_consumption')} J")
devs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/devices", timeout=10).read())["devices"]
gpus = [d for d in devs if d["kind"] == "gpu"]
if not gpus or gpus[0].get("telemetry") is None:
    problems.append("/v2/devices: GPU 0 has no telemetry (UUID join failed?)")
for p in problems:
    print("  NVML check:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY
}

# embed_on LABEL KIND PREFETCH PORT [TOP]: MiniLM with that instance kind, prefetch and extra config
# lines (see minilm_repo), one row of $TABLE
embed_on() {
  local dir="$tmp/emb-$4"
  minilm_repo "$dir" "$2" "$3" "${5:-}"
  start "$dir" "$4"
  model_ready minilm "$4"
  embed "$1" "$4"
}

# show_devices PORT: /v2/devices, one line per device (placement and whether telemetry is there)
show_devices() {
  curl -sf -m 5 "localhost:$1/v2/devices" | python3 -c 'import json, sys
for d in json.load(sys.stdin)["devices"]:
    t = d.get("telemetry")
    print("  device", d["id"], d["kind"], d["name"], "instances:", [(i["model"], i["version"], i["count"]) for i in d["instances"]],
          "telemetry:", "none" if t is None else json.dumps(t, separators=(",", ":"))[:300])'
}

# cpu_digits: digits alone on the CPU, DUR seconds of CONC clients
cpu_digits() {
  rm -rf "$tmp/repo-cpu0" && mkdir -p "$tmp/repo-cpu0" && cp -r "$MODELS/digits" "$tmp/repo-cpu0/digits"
  sed -i 's/^kind = .*/kind = "cpu"/' "$tmp/repo-cpu0/digits/config.toml"
  start "$tmp/repo-cpu0" "$PORT"
  model_ready digits "$PORT"
  show_devices "$PORT"
  load "$PORT"
}

echo "== CPU: digits (kind = cpu)"
step "digits on the CPU" cpu_digits

if has_gpu; then
  echo "== GPU: custom ops, CUDA vs the CPU _ref (parity tests)"
  step "GPU parity tests" gpu_parity
  echo "== GPU: kernel timings vs kernels/README.md floors"
  step "kernel timings" gpu_timings
  echo "== GPU: digits, two instances per GPU (kind = gpu, count = 2)"
  step "digits on GPU" gpu_digits
fi

[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2
echo "== Embeddings: MiniLM on the CPU (kind = cpu)"
step "MiniLM on the CPU" embed_on "minilm cpu" cpu false $((PORT + 200))
if has_gpu; then
  # Rows: plain candle ops with prefetch off / on, without batching (issue 3's batching-on vs
  # max_batch_size = 1 ratio on a GPU), then the custom kernels (cuda_fused_ops), f32 and q8 (int8
  # weights on the device); prefetch on (the GPU default) but in the first row.
  echo "== Embeddings: MiniLM on GPU (kind = gpu), prefetch = false"
  step "MiniLM on GPU, prefetch false" embed_on "minilm gpu, prefetch false" gpu false $((PORT + 300))
  echo "== Embeddings: MiniLM on GPU (kind = gpu), prefetch = true"
  step "MiniLM on GPU, prefetch true" embed_on "minilm gpu, prefetch true" gpu true $((PORT + 304))
  echo "== Embeddings: MiniLM on GPU, no batching (max_batch_size = 1), prefetch = true"
  step "MiniLM on GPU, max_batch_size 1" embed_on "minilm gpu, max_batch_size 1" gpu true $((PORT + 316)) \
    "max_batch_size = 1"
  echo "== Embeddings: MiniLM on GPU, custom kernels (cuda_fused_ops = true)"
  step "MiniLM on GPU, fused ops" embed_on "minilm gpu, fused ops" gpu true $((PORT + 308)) \
    "cuda_fused_ops = true"
  echo "== Embeddings: MiniLM q8 on GPU, int8 kernel (quantization = q8, cuda_fused_ops = true)"
  step "MiniLM q8 on GPU, fused ops" embed_on "minilm gpu, q8, fused ops" gpu true $((PORT + 312)) \
    "$(printf 'cuda_fused_ops = true\nquantization = "q8"')"
else
  echo "== GPU parts skipped: no GPU (nvidia-smi missing or lists none)"
fi
echo
echo "== Summary (${SECONDS} s)"
printf '  %s\n' "${summary[@]}"
if [[ -f "$tmp/ops-test.log" ]]; then
  echo "  parity tests: $(grep -c '^test .* ok$' "$tmp/ops-test.log") ok, $(grep -c 'FAILED\|panicked' "$tmp/ops-test.log") failed or panicked, $(grep -c SKIPPED "$tmp/ops-test.log") skipped"
fi
echo
cat "$TABLE"
if ((${#failed[@]})); then
  printf '!! failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
