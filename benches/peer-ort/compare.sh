#!/usr/bin/env bash
# Issue 20: Ferrite beside ONNX Runtime's raw engine on all-MiniLM-L6-v2, in one run, on one
# sentence file (benches/embed/make_sentences.py, 1,000 asked: every sentence it can make), with the
# same number of threads (2). Measured, in this order:
#   peak       the instructions' peak rates (examples/peak_rate.rs): f32 FMA, bf16 dot, int8 dot
#   ort-f32    ONNX Runtime f32, raw engine (run_ort.py): batch 32 length-sorted, 2 intra-op threads
#   ort-int8   the same on the quantize_dynamic model
#   engine-V   Ferrite's engine alone (examples/engine_rate.rs), batch 32 length-sorted, 1 instance
#              x 2 threads per pass (ONNX Runtime's shape; its batch-1 latency too), and engine2-V:
#              2 instances x 1 thread (the served shape: instance_group count 2)
#   served-V   `ferrite serve` (2 instances x 1 thread, models/minilm's config without its
#              queue-time budget), `ferrite bench
#              --protocol tei`, 64 connections, one sentence per request; and served1-V: a server
#              with --intra-op-threads 2, 1 connection (its p50); served1z-V: the same with
#              max_queue_delay_us = 0 (no batching delay)
#   hyper      examples/hello_hyper.rs, the same client at 1 connection: the HTTP round trip
# The served rounds take turns across variants (ROUNDS rounds of DUR seconds; medians reported),
# and ONNX Runtime runs again after each round (its figure: the median of all its runs).
# Cosines: every engine's embeddings against the torch f32 reference (export.py; mean pooling, L2).
# Prints markdown tables (report.py) with the ratios of the issue's targets.
#
# Variants V (VARIANTS, default "f32 bf16 q8"): a copy of models/minilm (weights linked, config.toml and
# validation.jsonl copied: the [validation] gate loads with it) whose config.toml gets, for
#   auto  nothing (as committed: `precision = "auto"`, bf16 where the CPU has bf16 instructions)
#   q8    quantization = "q8" (weights quantized at load)
#   other V (f32, bf16): the line `precision = "V"`, or the file named by CONFIG_V (e.g.
#         CONFIG_bf16=/path/config.toml) used as the config instead
# Usage: benches/peer-ort/compare.sh [DUR=15] [ROUNDS=3]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite); EXAMPLES (folder of the
#      release examples engine_rate, peak_rate, hello_hyper; default beside FERRITE_BIN, built
#      when missing); MODELS (default models); SENTENCES (a file, one sentence per line, instead of
#      make_sentences.py's); RESULTS (keep the raw results and embeddings there); ENGINE_ROUNDS (5);
#      LATENCY_N (200 single sentences).
# Needs: benches/peer-ort/setup.sh's venv (PyPI on first use), scripts/fetch-models.sh's weights.
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR=${1:-15}
ROUNDS=${2:-3}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
EXAMPLES=${EXAMPLES:-$(dirname "$FERRITE_BIN")/examples}
MODELS=${MODELS:-models}
VARIANTS=${VARIANTS:-f32 bf16 q8}
ENGINE_ROUNDS=${ENGINE_ROUNDS:-5}
LATENCY_N=${LATENCY_N:-200}
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release, or set FERRITE_BIN)" >&2; exit 1; }
for e in engine_rate peak_rate hello_hyper; do
  [[ -x "$EXAMPLES/$e" ]] || cargo build --release --example "$e" >&2
done
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2

tmp=$(mktemp -d)
res=${RESULTS:-$tmp/results}
mkdir -p "$res"
: >"$res/results.txt"
pids=()
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
log() { echo "compare: $*" >&2; }
record() { # name: stdin lines "tool key=value..." -> "name key=value..." appended to results.txt
  sed -E "s/^[a-z]+ /$1 /" | tee -a "$res/results.txt" >&2
}

venv=$(benches/peer-ort/setup.sh)
PY=$venv/bin/python
if [[ -n "${SENTENCES:-}" ]]; then
  cp "$SENTENCES" "$tmp/sentences.txt"
else
  python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 1000 >&2
  cp "$tmp/sent/sentences.txt" "$tmp/sentences.txt"
fi
tokjson="$MODELS/minilm/1/tokenizer.json"
"$PY" - "$tokjson" "$tmp/sentences.txt" >"$res/tokens.txt" <<'PY'
import sys
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1]); t.no_padding(); t.enable_truncation(256)
s = [l.rstrip("\n") for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
print(" ".join(str(len(e.ids)) for e in t.encode_batch(s)))
PY
echo "meta variants=$(tr ' ' ',' <<<"$VARIANTS") sentences=$(wc -l <"$tmp/sentences.txt") dur=$DUR rounds=$ROUNDS date=$(date -u +%FT%TZ)" \
  | record meta

log "export (cached) and torch reference"
exp=$("$PY" benches/peer-ort/export.py "$MODELS/minilm/1" --sentences "$tmp/sentences.txt" --ref "$res/reference.npy")
echo "$exp" >&2
onnx_f32=$(sed -n 's/^f32=//p' <<<"$exp")
onnx_int8=$(sed -n 's/^int8=//p' <<<"$exp")

log "peak rates"
"$EXAMPLES/peak_rate" | sed -E 's/^peak ([a-z0-9_]+) threads=([0-9]+) [a-z]+=/peak \1_\2t=/' | record peak

# The variants' model repositories.
for v in $VARIANTS; do
  dir="$tmp/repo-$v/minilm"
  mkdir -p "$dir/1"
  for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$dir/1/"; done
  cp "$MODELS/minilm/validation.jsonl" "$dir/"   # the [validation] gate's set
  cfgvar="CONFIG_$v"
  if [[ -n "${!cfgvar:-}" ]]; then
    cp "${!cfgvar}" "$dir/config.toml"
  elif [[ $v == auto ]]; then
    cp "$MODELS/minilm/config.toml" "$dir/config.toml"
  else
    line="precision = \"$v\""
    [[ $v == q8 ]] && line='quantization = "q8"'
    sed "/^architecture = /a $line" "$MODELS/minilm/config.toml" >"$dir/config.toml"
    grep -qF "$line" "$dir/config.toml" || { echo "could not set $line" >&2; exit 1; }
  fi
  # A capacity measurement: no queue-time budget (the shipped 50 ms one answers part of a
  # 64-connection closed loop with instant 503s, which are not throughput).
  sed -i -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "$dir/config.toml"
  # The same without the batching delay, for latency at one connection (the delay only waits for
  # requests that a single connection never sends: 1 ms of MiniLM's p50 there).
  mkdir -p "$tmp/repo-$v-z"
  cp -r "$dir" "$tmp/repo-$v-z/"
  sed -i -E 's/^max_queue_delay_us = [0-9]+/max_queue_delay_us = 0/' "$tmp/repo-$v-z/minilm/config.toml"
  grep -q '^max_queue_delay_us = 0' "$tmp/repo-$v-z/minilm/config.toml" \
    || { echo "could not zero max_queue_delay_us" >&2; exit 1; }
done

log "ONNX Runtime raw engine"
for m in f32 int8; do
  path=$onnx_f32
  [[ $m == int8 ]] && path=$onnx_int8
  "$PY" benches/peer-ort/run_ort.py "$path" "$tokjson" "$tmp/sentences.txt" --threads 2 --batch 32 \
    --rounds "$ENGINE_ROUNDS" --latency "$LATENCY_N" --out "$res/ort-$m.npy" | record "ort-$m"
done

log "Ferrite engine alone"
for v in $VARIANTS; do
  "$EXAMPLES/engine_rate" "$tmp/repo-$v/minilm" "$tmp/sentences.txt" --batch 32 --instances 1 \
    --threads-per-pass 2 --rounds "$ENGINE_ROUNDS" --latency "$LATENCY_N" --out "$res/engine-$v.npy" \
    | record "engine-$v"
  "$EXAMPLES/engine_rate" "$tmp/repo-$v/minilm" "$tmp/sentences.txt" --batch 32 --instances 2 \
    --threads-per-pass 1 --rounds "$ENGINE_ROUNDS" --latency 0 | record "engine2-$v"
done

declare -A url
start_ferrite() { # name repo intra-op-threads
  local log="$tmp/$1.log"
  "$FERRITE_BIN" serve --model-repository "$2" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
    --intra-op-threads "$3" 2>"$log" &
  pids+=($!)
  for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $1 did not become ready:" >&2; cat "$log" >&2; exit 1; }
  url[$1]=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -n 1 | sed 's/listening on //')
}
for v in $VARIANTS; do
  start_ferrite "served-$v" "$tmp/repo-$v" 1
  start_ferrite "served1-$v" "$tmp/repo-$v" 2
  start_ferrite "served1z-$v" "$tmp/repo-$v-z" 2
done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$EXAMPLES/hello_hyper" "$port" 2>"$tmp/hyper.log" &
pids+=($!)
url[hyper]=http://127.0.0.1:$port
for _ in $(seq 100); do curl -s -o /dev/null "${url[hyper]}/" && break; sleep 0.1; done

bench() { # name connections -> "name rps=.. p50_ms=.. p99_ms=.. errors=.."
  local out="$tmp/$1-$2.json"
  "$FERRITE_BIN" bench -u "${url[$1]}" --metrics-url none -m minilm --protocol tei \
    --input-data "$tmp/sentences.txt" --concurrency-range "$2" --warmup-ms 1000 \
    --measurement-interval-ms "$((DUR * 1000))" --max-windows 1 --json "$out" >/dev/null 2>"$out.err" \
    || { cat "$out.err" >&2; exit 1; }
  python3 - "$out" "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
l = s["latency"]
print(f'{sys.argv[2]} rps={s["throughput"]:.1f} p50_ms={l["p50_us"] / 1000:.3f} '
      f'p99_ms={l["p99_us"] / 1000:.3f} errors={sum(s["errors"].values())}')
PY
}
log "served, $ROUNDS rounds of $DUR s per target (and ONNX Runtime again each round)"
for r in $(seq "$ROUNDS"); do
  for v in $VARIANTS; do
    bench "served-$v" 64 | record "served-$v"
    bench "served1-$v" 1 | record "served1-$v"
    bench "served1z-$v" 1 | record "served1z-$v"
  done
  bench hyper 1 | record hyper
  # The peer between the served rounds too, so that a machine whose speed drifts during the run
  # (seen: ±20% within minutes on shared VMs) moves both sides of a ratio alike; its figure is the
  # median over the first measurement and these.
  for m in f32 int8; do
    path=$onnx_f32
    [[ $m == int8 ]] && path=$onnx_int8
    "$PY" benches/peer-ort/run_ort.py "$path" "$tokjson" "$tmp/sentences.txt" --threads 2 --batch 32 \
      --rounds 2 --latency 0 | record "ort-$m"
  done
done

"$PY" benches/peer-ort/report.py "$res"
[[ -n "${RESULTS:-}" ]] && log "raw results in $res"
exit 0
