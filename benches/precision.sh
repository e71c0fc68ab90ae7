#!/usr/bin/env bash
# Issue 20: MiniLM served end to end in each precision path, one server at a time, taking turns
# for ROUNDS rounds: wrk -t2 -c64 for DUR seconds on /embed (one sentence per request,
# benches/embed/rotate.lua over the 400 bench sentences), and the path the server reports
# (`parameters.precision` of GET /v2/models/minilm). Variants: `precision = "<v>"` in a copy of
# models/minilm/config.toml (q8: quantized at load).
# Usage: benches/precision.sh [DUR=10] [ROUNDS=2] [VARIANTS="f32 bf16 q8"]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models),
#      FERRITE_CPU_BF16 (amx|avx512|portable: pins the bf16 kernel).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-2}
VARIANTS=${3:-f32 bf16 q8}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
command -v wrk >/dev/null || { echo "need wrk (apt-get install wrk)" >&2; exit 1; }
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release)" >&2; exit 1; }
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 >/dev/null 2>&1

for v in $VARIANTS; do
  mkdir -p "$tmp/$v/minilm/1"
  for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$tmp/$v/minilm/1/"; done
  cp "$MODELS/minilm/validation.jsonl" "$tmp/$v/minilm/"
  # Capacity, not shedding: no queue-time budget (as shipped, 64 closed-loop connections would be
  # partly answered with instant 503s, which wrk counts as requests).
  { echo "precision = \"$v\""; sed -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "$MODELS/minilm/config.toml"; } >"$tmp/$v/minilm/config.toml"
done

echo "| precision | path reported | round | req/s | p99 ms |"
echo "|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    log="$tmp/$v.log"
    "$FERRITE_BIN" serve --model-repository "$tmp/$v" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 2>"$log" &
    pid=$!
    addr=""
    for _ in $(seq 400); do
      addr=$(grep -oE 'listening on http://[0-9.:]+' "$log" | head -n 1 | sed 's|listening on http://||' || true)
      [[ -n "$addr" ]] && curl -sf "http://$addr/v2/health/ready" >/dev/null && break
      sleep 0.3
    done
    path=$(curl -sf "http://$addr/v2/models/minilm" | python3 -c 'import json,sys; print(json.load(sys.stdin)["parameters"]["precision"])')
    out=$(BODIES="$tmp/sent/tei.jsonl" wrk -t2 -c64 -d"${DUR}s" --timeout 30s --latency -s benches/embed/rotate.lua "http://$addr/embed")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1 == "99%" {v=$2; if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; print v}' <<<"$out")
    errs=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    [[ -n "$errs" ]] && echo "$v round $round: $errs non-2xx answers (req/s counts them)" >&2
    echo "| $v | $path | $round | $rps | $p99 |"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
