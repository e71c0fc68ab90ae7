#!/usr/bin/env bash
# Issue 15 item 1: what one large request costs the server in memory before it is answered.
# For each body kind, starts the binary on a one-model repository (digits, or minilm for the
# texts), resets its peak RSS (/proc/PID/clear_refs 5), sends one request of about SIZE_MIB MiB,
# and reports the growth of the peak (VmHWM) as a multiple of the body size. Every body is refused
# after it is decoded (too many rows or texts for the model), which is where the peak is. Bodies
# (made here, deterministic):
#   v2-nested   KServe v2 JSON, FP32 `data` as nested rows [[64 values], ...]
#   v2-flat     KServe v2 JSON, FP32 `data` flat
#   v2-int16    KServe v2 JSON, INT16 nested (a type without serde's direct path)
#   v1          KServe v1 {"instances": [[64 values], ...]}
#   openai      OpenAI /v1/embeddings, "input": many tiny texts (1-8 characters)
#   tei         TEI /embed, "inputs": the same texts
#   v2-bytes    KServe v2 JSON, BYTES `data`: the same texts
#   v2-bytes-bin  KServe v2 binary extension, the same texts as length-prefixed BYTES
# Usage: benches/body_memory.sh [SIZE_MIB=16] [KIND...]; env FERRITE_BIN (default
# target/release/ferrite). The text kinds need models/minilm's weights (scripts/fetch-models.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-16}
shift || true
KINDS=("$@")
[[ ${#KINDS[@]} -gt 0 ]] || KINDS=(v2-nested v2-flat v2-int16 v1 openai tei v2-bytes v2-bytes-bin)
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
tmp=$(mktemp -d)
pid=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/repo" "$tmp/text-repo"
cp -r models/digits "$tmp/repo/"
# -L: the weights may be links to a shared copy.
cp -rL models/minilm "$tmp/text-repo/"
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
# Tiny texts: a word of 1-8 letters each, about 7 bytes of JSON apiece ("abcd",).
words = ["".join(chr(97 + random.randint(0, 25)) for _ in range(random.randint(1, 8))) for _ in range(5000)]
per_text = sum(len(w) + 3 for w in words) / len(words)
texts = [words[i % len(words)] for i in range(int(size / per_text))]
dump("openai", {"model": "minilm", "input": texts})
dump("tei", {"inputs": texts})
dump("v2-bytes", {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]})
raw = b"".join(len(t).to_bytes(4, "little") + t.encode() for t in texts)
header = json.dumps({"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": len(raw)}}]}).encode()
with open(f"{tmp}/v2-bytes-bin.json", "wb") as f:
    f.write(header + raw)
with open(f"{tmp}/v2-bytes-bin.header", "w") as f:
    f.write(str(len(header)))
PY
printf '| body | MiB | status | peak RSS growth MiB | growth / body |\n|---|---|---|---|---|\n'
for kind in "${KINDS[@]}"; do
  log="$tmp/$kind.log"
  repo=$tmp/repo
  path=/v2/models/digits/infer
  extra=()
  case $kind in
    v1) path=/v1/models/digits:predict ;;
    openai) repo=$tmp/text-repo path=/v1/embeddings ;;
    tei) repo=$tmp/text-repo path=/embed ;;
    v2-bytes) repo=$tmp/text-repo path=/v2/models/minilm/infer ;;
    v2-bytes-bin)
      repo=$tmp/text-repo path=/v2/models/minilm/infer
      extra=(-H "inference-header-content-length: $(cat "$tmp/v2-bytes-bin.header")") ;;
  esac
  : >"$log" # before the server opens it: the wait below must not read a missing file
  "$FERRITE_BIN" serve --model-repository "$repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
    --access-log=false --max-body-bytes $((SIZE * 2 * 1024 * 1024)) 2>"$log" &
  pid=$!
  for _ in $(seq 1200); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1)
  url=${url#listening on }
  echo 5 >"/proc/$pid/clear_refs"
  before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' "${extra[@]}" \
    --data-binary "@$tmp/$kind.json" "$url$path")
  after=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  bytes=$(stat -c %s "$tmp/$kind.json")
  awk -v k="$kind" -v b="$bytes" -v s="$status" -v d=$((after - before)) \
    'BEGIN {printf "| %s | %.1f | %s | %.0f | %.1f |\n", k, b / 1048576, s, d / 1024, d * 1024 / b}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
done
