#!/usr/bin/env bash
# Load test: Ferrite's /v2/models/digits/infer (JSON and binary extension) and /v1 :predict against a
# bare hyper server (examples/hello_hyper.rs) on the same machine, in the same run, with wrk.
# Usage: benches/load.sh [SECONDS] [CONNECTIONS] [ROUNDS]   (defaults 5 s, 64 connections, 3 rounds)
# The targets take turns, ROUNDS times, so that machine noise hits them alike; each line reports the
# median round (req/s, and that round's latency percentiles) and the ratio to bare hyper's median.
# Paste the table into benches/RESULTS.md with the date and machine.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-5}
CONN=${2:-64}
ROUNDS=${3:-3}
THREADS=${WRK_THREADS:-2}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)"; apt-get install -y wrk >/dev/null; }
cargo build --release --bin ferrite --example hello_hyper >&2
for port in 18000 18002 18080; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "port $port is already in use: stop that server first" >&2; exit 1; fi
done
T=${CARGO_TARGET_DIR:-target}/release
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT

"$T/ferrite" serve --model-repository "${MODELS:-models}" --host 127.0.0.1 --http-port 18000 --metrics-port 18002 --grpc-port 18001 2>"$tmp/ferrite.log" &
"$T/examples/hello_hyper" 18080 2>"$tmp/hello.log" &
for _ in $(seq 100); do curl -sf localhost:18000/v2/health/ready >/dev/null && break; sleep 0.1; done
curl -sf localhost:18000/v2/health/ready >/dev/null || { echo "ferrite did not become ready:" >&2; cat "$tmp/ferrite.log" >&2; exit 1; }

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
# 64 rows per request: where the JSON encoding of tensors starts to cost.
big = [float(random.randint(0, 16)) for _ in range(64 * 64)]
json.dump({"inputs": [{"name": "pixels", "shape": [64, 64], "datatype": "FP32", "data": big}]}, open(f"{tmp}/infer64.json", "w"))
head = json.dumps({"inputs": [{"name": "pixels", "shape": [64, 64], "datatype": "FP32",
                               "parameters": {"binary_data_size": 4 * 64 * 64}}],
                   "parameters": {"binary_data_output": True}}).encode()
open(f"{tmp}/infer64.bin", "wb").write(head + struct.pack("<4096f", *big))
open(f"{tmp}/infer64.bin.len", "w").write(str(len(head)))
PY

cat > "$tmp/post.lua" <<'LUA'
local f = io.open(os.getenv("BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("CTYPE") or "application/json"
local hl = os.getenv("HEADER_LEN")
if hl and hl ~= "" then wrk.headers["Inference-Header-Content-Length"] = hl end
LUA

run() { # name url body [ctype] [header_len] -> appends "rps p50 p99 non2xx" to $tmp/<name>
  local out
  out=$(BODY=$3 CTYPE=${4:-application/json} HEADER_LEN=${5:-} wrk -t"$THREADS" -c"$CONN" -d"${DUR}s" --latency -s "$tmp/post.lua" "$2")
  awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Non-2xx/ {e=$NF}
       END {print r, p50, p99, (e == "" ? 0 : e)}' <<<"$out" >>"$tmp/$1.runs"
}
names=(hyper v2json v2binary v1predict v2json64 v2binary64)
declare -A label=([hyper]="bare hyper (POST, 64-float JSON)" [v2json]="ferrite v2 infer JSON"
                  [v2binary]="ferrite v2 infer binary" [v1predict]="ferrite v1 :predict"
                  [v2json64]="ferrite v2 infer JSON, 64 rows/request" [v2binary64]="ferrite v2 infer binary, 64 rows/request")
for _ in $(seq "$ROUNDS"); do
  run hyper http://127.0.0.1:18080/ "$tmp/infer.json"
  run v2json http://127.0.0.1:18000/v2/models/digits/infer "$tmp/infer.json"
  run v2binary http://127.0.0.1:18000/v2/models/digits/infer "$tmp/infer.bin" application/octet-stream "$(cat "$tmp/infer.bin.len")"
  run v1predict "http://127.0.0.1:18000/v1/models/digits:predict" "$tmp/predict.json"
  run v2json64 http://127.0.0.1:18000/v2/models/digits/infer "$tmp/infer64.json"
  run v2binary64 http://127.0.0.1:18000/v2/models/digits/infer "$tmp/infer64.bin" application/octet-stream "$(cat "$tmp/infer64.bin.len")"
done
median() { sort -n -k1,1 "$tmp/$1.runs" | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'; }
base=$(median hyper | awk '{print $1}')
echo "| target ($CONN connections, ${DUR}s x $ROUNDS rounds) | median req/s | vs bare hyper | p50 | p99 | non-2xx |"
echo "|---|---|---|---|---|---|"
for n in "${names[@]}"; do
  read -r rps p50 p99 err <<<"$(median "$n")"
  printf '| %s | %.0f | %.2f | %s | %s | %s |\n' "${label[$n]}" "$rps" "$(awk -v a="$rps" -v b="$base" 'BEGIN {print a / b}')" "$p50" "$p99" "$err"
done
curl -s localhost:18002/metrics | awk '/^nv_inference_(count|exec_count)\{/ {print "# " $0}'
