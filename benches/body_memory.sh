#!/usr/bin/env bash
# Issue 15 item 1: what one large request costs the server in memory before it is answered.
# For each body kind, starts the binary on a digits-only repository, resets its peak RSS
# (/proc/PID/clear_refs 5), sends one request of about SIZE_MIB MiB, and reports the growth of
# the peak (VmHWM) as a multiple of the body size. Bodies (made here, deterministic):
#   v2-nested  KServe v2 JSON, FP32 `data` as nested rows [[64 values], ...]
#   v2-flat    KServe v2 JSON, FP32 `data` flat
#   v2-int16   KServe v2 JSON, INT16 nested (a type without serde's direct path)
#   v1         KServe v1 {"instances": [[64 values], ...]}
# Usage: benches/body_memory.sh [SIZE_MIB=16]; env FERRITE_BIN (default target/release/ferrite).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-16}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
tmp=$(mktemp -d)
pid=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/repo"
cp -r models/digits "$tmp/repo/"
python3 - "$tmp" "$SIZE" <<'PY'
import json, random, sys
tmp, size = sys.argv[1], int(sys.argv[2]) * 1024 * 1024
random.seed(0)
row = lambda: [random.randint(0, 16) for _ in range(64)]
rows = [row() for _ in range(1000)]
per_row = len(json.dumps(rows[0])) + 1
n = size // per_row
data = [rows[i % 1000] for i in range(n)]
def dump(name, obj):
    with open(f"{tmp}/{name}.json", "w") as f:
        json.dump(obj, f, separators=(",", ":"))
dump("v2-nested", {"inputs": [{"name": "pixels", "shape": [n, 64], "datatype": "FP32", "data": data}]})
dump("v2-flat", {"inputs": [{"name": "pixels", "shape": [n, 64], "datatype": "FP32", "data": [x for r in data for x in r]}]})
dump("v2-int16", {"inputs": [{"name": "pixels", "shape": [n, 64], "datatype": "INT16", "data": data}]})
dump("v1", {"instances": data})
PY
printf '| body | MiB | status | peak RSS growth MiB | growth / body |\n|---|---|---|---|---|\n'
for kind in v2-nested v2-flat v2-int16 v1; do
  log="$tmp/$kind.log"
  "$FERRITE_BIN" serve --model-repository "$tmp/repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
    --access-log=false --max-body-bytes $((SIZE * 2 * 1024 * 1024)) 2>"$log" &
  pid=$!
  for _ in $(seq 300); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1)
  url=${url#listening on }
  path=/v2/models/digits/infer
  [[ $kind == v1 ]] && path=/v1/models/digits:predict
  echo 5 >"/proc/$pid/clear_refs"
  before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    --data-binary "@$tmp/$kind.json" "$url$path")
  after=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  bytes=$(stat -c %s "$tmp/$kind.json")
  awk -v k="$kind" -v b="$bytes" -v s="$status" -v d=$((after - before)) \
    'BEGIN {printf "| %s | %.1f | %s | %.0f | %.1f |\n", k, b / 1048576, s, d / 1024, d * 1024 / b}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
done
