#!/usr/bin/env bash
# Load test: Ferrite's /v2/models/digits/infer (JSON and binary extension) and /v1 :predict against a
# bare hyper server (examples/hello_hyper.rs) on the same machine, in the same run, with wrk.
# Usage: benches/load.sh [SECONDS] [CONNECTIONS]   (defaults 15 s, 64 connections)
# Prints one line per target; paste the table into benches/RESULTS.md with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
CONN=${2:-64}
THREADS=${WRK_THREADS:-2}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y wrk >/dev/null; }
cargo build --release --bin ferrite --example hello_hyper >&2
T=${CARGO_TARGET_DIR:-target}/release
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

"$T/ferrite" serve --model-repository models --host 127.0.0.1 --http-port 18000 --metrics-port 18002 2>"$tmp/ferrite.log" &
"$T/examples/hello_hyper" 18080 2>"$tmp/hello.log" &
for _ in $(seq 100); do curl -sf localhost:18000/v2/health/ready >/dev/null && break; sleep 0.1; done

python3 - "$tmp" <<'PY'
import json, random, struct, sys
tmp = sys.argv[1]
random.seed(0)
px = [float(random.randint(0, 16)) for _ in range(64)]
json.dump({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": px}]}, open(f"{tmp}/infer.json", "w"))
json.dump({"instances": [px]}, open(f"{tmp}/predict.json", "w"))
head = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                               "parameters": {"binary_data_size": 256}}],
                   "parameters": {"binary_data_output": True}}).encode()
open(f"{tmp}/infer.bin", "wb").write(head + struct.pack("<64f", *px))
open(f"{tmp}/infer.bin.len", "w").write(str(len(head)))
PY

cat > "$tmp/post.lua" <<'LUA'
local f = io.open(os.getenv("BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/json"
local hl = os.getenv("HEADER_LEN")
if hl and hl ~= "" then wrk.headers["Inference-Header-Content-Length"] = hl end
LUA

run() { # name url body [ctype] [header_len]
  local out
  out=$(BODY=$3 CTYPE=${4:-application/json} HEADER_LEN=${5:-} wrk -t"$THREADS" -c"$CONN" -d"${DUR}s" --latency -s "$tmp/post.lua" "$2")
  local rps p50 p99 non2xx
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  printf '| %-34s | %10s | %8s | %8s | %s |\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}"
}
echo "| target | req/s | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|"
run "bare hyper (POST, 64-float JSON)" http://127.0.0.1:18080/ "$tmp/infer.json"
run "ferrite v2 infer JSON" http://127.0.0.1:18000/v2/models/digits/infer "$tmp/infer.json"
run "ferrite v2 infer binary" http://127.0.0.1:18000/v2/models/digits/infer "$tmp/infer.bin" application/octet-stream "$(cat "$tmp/infer.bin.len")"
run "ferrite v1 predict" "http://127.0.0.1:18000/v1/models/digits:predict" "$tmp/predict.json"
curl -s localhost:18002/metrics | awk '/^nv_inference_(count|exec_count)\{/ {print "# " $0}'
