#!/usr/bin/env bash
# Issue 4: MiniLM served end to end, f32 vs q8 (made here with `ferrite quantize`), one server at a
# time, taking turns for ROUNDS rounds: wrk -t2 -c64 for DUR seconds on /embed (one sentence per
# request, benches/embed/rotate.lua over the 400 bench sentences); VmRSS when ready, at its peak
# during the load, right after it and 2 s after it.
# Usage: benches/q8_vs_f32.sh [DUR=10] [ROUNDS=2]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
ROUNDS=${2:-2}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
command -v wrk >/dev/null || { echo "need wrk (apt-get install wrk)" >&2; exit 1; }
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release)" >&2; exit 1; }
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 >/dev/null 2>&1

mkdir -p "$tmp/f32/minilm/1" "$tmp/q8/minilm/1"
for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$tmp/f32/minilm/1/"; done
cp "$MODELS/minilm/config.toml" "$MODELS/minilm/validation.jsonl" "$tmp/f32/minilm/"
"$FERRITE_BIN" quantize minilm --version 1 --to q8 --model-repository "$tmp/f32" >&2
cp "$tmp/f32/minilm/2/"* "$tmp/q8/minilm/1/"
cp "$MODELS/minilm/config.toml" "$MODELS/minilm/validation.jsonl" "$tmp/q8/minilm/"
rm -rf "$tmp/f32/minilm/2"
# Capacity, not shedding: no queue-time budget (wrk would count instant 503s as requests).
for w in f32 q8; do sed -i -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "$tmp/$w/minilm/config.toml"; done

rss() { awk '/^VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
echo "| weights | round | req/s | VmRSS ready (MB) | peak during load | right after | 2 s after |"
echo "|---|---|---|---|---|---|---|"
for round in $(seq "$ROUNDS"); do
  for w in f32 q8; do
    log="$tmp/$w.log"
    "$FERRITE_BIN" serve --model-repository "$tmp/$w" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 2>"$log" &
    pid=$!
    addr=""
    for _ in $(seq 200); do
      addr=$(grep -oE 'listening on http://[0-9.:]+' "$log" | head -n 1 | sed 's|listening on http://||' || true)
      [[ -n "$addr" ]] && curl -sf "http://$addr/v2/health/ready" >/dev/null && break
      sleep 0.3
    done
    sleep 0.5
    ready=$(rss $pid)
    # peak: the highest of 4 samples a second while wrk runs
    (peak=0; for _ in $(seq $((DUR * 4))); do sleep 0.25; v=$(rss $pid); ((v > peak)) && peak=$v; done; echo "$peak" >"$tmp/peak") &
    sampler=$!
    out=$(BODIES="$tmp/sent/tei.jsonl" wrk -t2 -c64 -d"${DUR}s" --timeout 30s -s benches/embed/rotate.lua "http://$addr/embed")
    wait $sampler
    after=$(rss $pid)
    sleep 2 # workers idle for 1 s release their freed memory (worker::RELEASE_AFTER_IDLE)
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    echo "| $w | $round | $rps | $ready | $(cat "$tmp/peak") | $after | $(rss $pid) |"
    kill $pid
    wait $pid 2>/dev/null || true
  done
done
