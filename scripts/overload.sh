#!/usr/bin/env bash
# Overload check (issue 15): MiniLM over TEI /embed, one sentence per request (the 400 sentences of
# benches/embed/make_sentences.py), driven by `ferrite bench` on the same machine:
#   1. max: closed loop, CONN connections (default 64), on a server with max_queue_time_us = 0 (with
#      a budget, a closed loop past capacity spins on instant 503s): the throughput X it sustains;
# then per mode, on a fresh server:
#   2. 80%: open loop (`--request-rate-range`) at 0.8 X: the admitted p99 at 80% load;
#   3. 3x:  open loop at MULT x X (default 3): shed fraction (429/503; `ferrite bench` counts a
#      refusal without Retry-After apart, as "503-no-retry-after"), the admitted p99 against the
#      80% p99 (target <= 2x), server RSS before and after, and whether the server still answers.
# Run once per mode, each on its own server (one at a time):
#   budget  models/minilm/config.toml as shipped (its [dynamic_batching] max_queue_time_us: shed by
#           expected queueing time as well as by queue length)
#   off     the same with max_queue_time_us = 0 (shed by queue length only), for comparison
#           (MODES="budget" skips it).
# Prints one markdown table (for benches/RESULTS.md). Fails if a server dies, stops answering, or
# a refusal lacks Retry-After in the budget mode; the p99 bound is reported, not enforced (a
# benchmark on a shared machine, not a pass/fail test).
# Usage: scripts/overload.sh [DUR=15] [CONN=64] [MULT=3]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models),
#      MODES (default "budget off"), MAX_IN_FLIGHT (client's open-loop cap, default 4096).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
CONN=${2:-64}
MULT=${3:-3}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
MODES=${MODES:-budget off}
MAX_IN_FLIGHT=${MAX_IN_FLIGHT:-4096}
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release, or set FERRITE_BIN)" >&2; exit 1; }
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2

tmp=$(mktemp -d)
pid=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  [[ -n "$pid" ]] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 >/dev/null 2>&1

repo() { # dir max_queue_time_us|"" (as shipped)
  mkdir -p "$1/minilm/1"
  for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$1/minilm/1/"; done
  ln -sf "$(realpath "$MODELS/minilm/validation.jsonl")" "$1/minilm/"   # the [validation] gate's set
  if [[ -n "$2" ]]; then
    sed -E "s/^max_queue_time_us = [0-9]+/max_queue_time_us = $2/" "$MODELS/minilm/config.toml" >"$1/minilm/config.toml"
  else
    cp "$MODELS/minilm/config.toml" "$1/minilm/config.toml"
  fi
}

url="" metrics=""
start_ferrite() { # repo log
  "$FERRITE_BIN" serve --model-repository "$1" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
    --access-log=false 2>"$2" &
  pid=$!
  for _ in $(seq 600); do grep -q 'server ready' "$2" && break; sleep 0.1; done
  grep -q 'server ready' "$2" || { echo "ferrite did not become ready:" >&2; cat "$2" >&2; exit 1; }
  local line
  line=$(grep -o 'listening on http://[0-9.:]*\b (metrics on http://[0-9.:]*/metrics)' "$2")
  url=$(sed -E 's/listening on (http:[^ ]*) .*/\1/' <<<"$line")
  metrics=$(sed -E 's/.*metrics on (http:[^)]*)\)/\1/' <<<"$line")
}

rss_mib() { awk '/^VmRSS/ {printf "%d", $2 / 1024}' "/proc/$pid/status"; }
hwm_mib() { awk '/^VmHWM/ {printf "%d", $2 / 1024}' "/proc/$pid/status"; }

bench() { # out load-flag load
  "$FERRITE_BIN" bench -u "$url" --metrics-url none -m minilm --protocol tei \
    --input-data "$tmp/sent/sentences.txt" "$2" "$3" --max-in-flight "$MAX_IN_FLIGHT" --warmup-ms 2000 \
    --measurement-interval-ms "$((DUR * 1000))" --max-windows 1 --json "$1" >/dev/null 2>"$1.err" \
    || { cat "$1.err" >&2; exit 1; }
}

field() { # json python-expression over s (the step)
  python3 - "$1" "$2" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
print(eval(sys.argv[2], {"s": s}))
PY
}

answers() { # -> HTTP status of one /embed after the run
  curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
    -d '{"inputs": "Is the server still there?"}' "$url/embed"
}

rejected() { # nv_inference_request_failure{reason="REJECTED"} for minilm
  curl -s "$metrics" | awk '/^nv_inference_request_failure\{/ && /model="minilm"/ && /reason="REJECTED"/ {n += $2} END {print n + 0}'
}

stop_ferrite() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }

repo "$tmp/repo-max" 0
start_ferrite "$tmp/repo-max" "$tmp/max.log"
bench "$tmp/max.json" --concurrency-range "$CONN"
max=$(field "$tmp/max.json" 's["throughput"]')
stop_ferrite

echo "| mode | max req/s (closed, $CONN conn) | 80%: rate, p99 ms, shed | ${MULT}x: rate, admitted req/s, admitted p99 ms | p99 vs 80% | shed (with Retry-After / without) | REJECTED metric | RSS before → after (peak) MiB | answers after |"
echo "|---|---|---|---|---|---|---|---|---|"
fail=0
for mode in $MODES; do
  case $mode in
    budget) repo "$tmp/repo-$mode" "" ;;
    off) repo "$tmp/repo-$mode" 0 ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  start_ferrite "$tmp/repo-$mode" "$tmp/$mode.log"
  rss0=$(rss_mib)
  r80=$(python3 -c "print(max(1, round($max * 0.8)))")
  rx=$(python3 -c "print(max(1, round($max * $MULT)))")
  bench "$tmp/$mode-80.json" --request-rate-range "$r80"
  p80=$(field "$tmp/$mode-80.json" 's["latency"]["p99_us"] / 1000')
  e80=$(field "$tmp/$mode-80.json" 'sum(s["errors"].values())')
  bench "$tmp/$mode-x.json" --request-rate-range "$rx"
  px=$(field "$tmp/$mode-x.json" 's["latency"]["p99_us"] / 1000')
  okx=$(field "$tmp/$mode-x.json" 's["throughput"]')
  sent=$(field "$tmp/$mode-x.json" 's["ok"] + sum(s["errors"].values())')
  shed=$(field "$tmp/$mode-x.json" 'sum(v for k, v in s["errors"].items() if k in ("429", "503"))')
  bare=$(field "$tmp/$mode-x.json" 'sum(v for k, v in s["errors"].items() if k.endswith("-no-retry-after"))')
  other=$(field "$tmp/$mode-x.json" 'sum(v for k, v in s["errors"].items() if k not in ("429", "503") and not k.endswith("-no-retry-after"))')
  kill -0 "$pid" 2>/dev/null || { echo "FAIL: ferrite ($mode) died under overload" >&2; tail -20 "$tmp/$mode.log" >&2; exit 1; }
  rss1=$(rss_mib)
  hwm=$(hwm_mib)
  status=$(answers)
  rej=$(rejected)
  printf '| %s | %.0f | %s, %.1f, %s | %s, %.0f, %.1f | %.2fx | %s of %s = %.1f%% (%s / %s) | %s | %s → %s (%s) | %s |\n' \
    "$mode" "$max" "$r80" "$p80" "$e80" "$rx" "$okx" "$px" "$(python3 -c "print($px / max($p80, 1e-9))")" \
    "$((shed + bare))" "$sent" "$(python3 -c "print(100 * ($shed + $bare) / max($sent, 1))")" "$shed" "$bare" \
    "$rej" "$rss0" "$rss1" "$hwm" "$status"
  for f in 80 x; do
    # (one window per step by design: the "not stable" warning says nothing here)
    w=$(field "$tmp/$mode-$f.json" '"; ".join(w for w in s["warnings"] if not w.startswith("not stable"))')
    [[ -n "$w" ]] && echo "  ($mode, $f: client warnings: $w)" >&2
  done
  [[ "$other" -eq 0 ]] || echo "  ($mode, ${MULT}x: other errors: $(field "$tmp/$mode-x.json" 's["errors"]'))" >&2
  [[ "$status" == 200 ]] || { echo "FAIL: ferrite ($mode) answered $status after the overload" >&2; fail=1; }
  [[ "$mode" != budget || "$bare" -eq 0 ]] || { echo "FAIL: $bare refusals without Retry-After" >&2; fail=1; }
  [[ "$mode" != budget || "$((shed + bare))" -gt 0 ]] || { echo "FAIL: nothing shed at ${MULT}x" >&2; fail=1; }
  stop_ferrite
done
exit "$fail"
