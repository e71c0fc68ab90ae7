#!/usr/bin/env bash
# Rollout benchmark (issue 16): digits over KServe v2 JSON at CONN connections (closed loop,
# `ferrite bench`), one 64-pixel row per request. Servers up at once, taking turns under load for
# ROUNDS interleaved rounds of DUR seconds:
#   single   one version (version_policy latest = 1)
#   split    two versions, [routing] weights 90/10 (the routing path on every request)
#   shadow   two versions, all unnamed traffic to 1, shadow 100% to 2 (idle-enough candidate)
# and the slow-candidate pair on the debug (echo) model: live p99 with shadow 100% to a version that
# sleeps SLOW_US per batch vs the same server with shadow off (toggled live between rounds).
# Prints markdown tables (median round by req/s, with its p99) and the shadow outcome counters.
# Usage: benches/rollout.sh [DUR=15] [CONN=64] [ROUNDS=3] [SLOW_US=20000]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-15}
CONN=${2:-64}
ROUNDS=${3:-3}
SLOW_US=${4:-20000}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release, or set FERRITE_BIN)" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 - "$tmp/digits.jsonl" "$tmp/echo.jsonl" <<'PY'
import json, sys
x = [0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]
open(sys.argv[1], "w").write(json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": x}]}) + "\n")
open(sys.argv[2], "w").write(json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}) + "\n")
PY

digits_repo() { # dir policy routing-toml
  mkdir -p "$1/digits/1"
  ln -sf "$(realpath "$MODELS/digits/1/model.safetensors")" "$1/digits/1/"
  ln -sf "$(realpath "$MODELS/digits/test-split.safetensors")" "$1/digits/"
  if [[ $2 == 2 ]]; then
    mkdir -p "$1/digits/2"
    ln -sf "$(realpath "$MODELS/digits/1/model.safetensors")" "$1/digits/2/"
  fi
  sed -E "s/^version_policy = .*/version_policy = { latest = $2 }/" "$MODELS/digits/config.toml" >"$1/digits/config.toml"
  printf '\n%b' "$3" >>"$1/digits/config.toml"
}
digits_repo "$tmp/single" 1 ""
digits_repo "$tmp/split" 2 '[routing]\nweights = { "1" = 90, "2" = 10 }\n'
digits_repo "$tmp/shadow" 2 '[routing]\nweights = { "1" = 100 }\nshadow = { version = "2", percent = 100 }\n'
mkdir -p "$tmp/echo/echo/1" "$tmp/echo/echo/2"
cat >"$tmp/echo/echo/config.toml" <<EOT
architecture = "debug"
max_batch_size = 64
version_policy = { latest = 2 }
[[input]]
name = "x"
datatype = "FP32"
dims = [-1, 4]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1, 4]
[dynamic_batching]
max_queue_size = 4096
[routing]
weights = { "1" = 100 }
EOT
printf '[parameters]\nsleep_us = %s\n' "$SLOW_US" >"$tmp/echo/echo/2/version.toml"

declare -A url metrics
start_ferrite() { # name repo
  local name=$1 log="$tmp/$1.log" line
  "$FERRITE_BIN" serve --model-repository "$2" --host 127.0.0.1 --http-port 0 --metrics-port 0 \
    --grpc-port 0 --access-log=false --model-control explicit 2>"$log" &
  pids+=($!)
  for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $name did not become ready:" >&2; cat "$log" >&2; exit 1; }
  line=$(grep -o 'listening on http://[0-9.:]*\b (metrics on http://[0-9.:]*/metrics)' "$log")
  url[$name]=$(sed -E 's/listening on (http:[^ ]*) .*/\1/' <<<"$line")
  metrics[$name]=$(sed -E 's/.*metrics on (http:[^)]*)\)/\1/' <<<"$line")
}
for m in single split shadow echo; do start_ferrite "$m" "$tmp/$m"; done

bench() { # name out model input
  "$FERRITE_BIN" bench -u "${url[$1]}" --metrics-url none -m "$3" --protocol v2-json \
    --input-data "$4" --concurrency-range "$CONN" --warmup-ms 1000 \
    --measurement-interval-ms "$((DUR * 1000))" --max-windows 1 --json "$2" >/dev/null 2>"$2.err" \
    || { cat "$2.err" >&2; exit 1; }
}
row() { # json -> "req/s p99_ms errors"
  python3 - "$1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
print(f'{s["throughput"]:.1f} {s["latency"]["p99_us"] / 1000:.2f} {sum(s["errors"].values())}')
PY
}
shadow_echo() { # percent|null
  local body='{"shadow": null}'
  [[ $1 != null ]] && body="{\"shadow\": {\"version\": \"2\", \"percent\": $1}}"
  curl -sf -X PUT "${url[echo]}/v2/repository/models/echo/routing" -d "$body" >/dev/null
}
for r in $(seq "$ROUNDS"); do
  for m in single split shadow; do
    bench "$m" "$tmp/$m-$r.json" digits "$tmp/digits.jsonl"
    echo "round $r $m: $(row "$tmp/$m-$r.json")" >&2
  done
  shadow_echo null
  bench echo "$tmp/echo_off-$r.json" echo "$tmp/echo.jsonl"
  shadow_echo 100
  bench echo "$tmp/echo_slow-$r.json" echo "$tmp/echo.jsonl"
  echo "round $r echo off: $(row "$tmp/echo_off-$r.json") slow shadow: $(row "$tmp/echo_slow-$r.json")" >&2
done
median() { for f in "$tmp"/"$1"-*.json; do row "$f"; done | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'; }
counter() { # name model candidate outcome
  curl -s "${metrics[$1]}" | awk -v m="ferrite_shadow_requests_total{candidate=\"$3\",model=\"$2\",outcome=\"$4\"}" '$1 == m {print $2; f=1} END {if (!f) print "-"}'
}
echo "| digits, $CONN connections | req/s | p99 ms | client errors | req/s vs single | p99 vs single |"
echo "|---|---|---|---|---|---|"
read -r s_rps s_p99 _ <<<"$(median single)"
for m in single split shadow; do
  read -r rps p99 err <<<"$(median "$m")"
  echo "| $m | $rps | $p99 | $err | $(python3 -c "print(f'{$rps/$s_rps:.3f}')") | $(python3 -c "print(f'{$p99/$s_p99:.3f}')") |"
done
echo
echo "shadow server (digits): compared $(counter shadow digits 2 compared), dropped $(counter shadow digits 2 dropped), failed $(counter shadow digits 2 failed)"
echo
read -r o_rps o_p99 _ <<<"$(median echo_off)"
read -r w_rps w_p99 w_err <<<"$(median echo_slow)"
echo "| echo, $CONN connections, candidate sleeps ${SLOW_US} us per batch | req/s | live p99 ms | client errors |"
echo "|---|---|---|---|"
echo "| shadow off | $o_rps | $o_p99 | 0 |"
echo "| shadow 100% to the slow candidate | $w_rps | $w_p99 | $w_err |"
echo "| ratio | $(python3 -c "print(f'{$w_rps/$o_rps:.3f}')") | $(python3 -c "print(f'{$w_p99/$o_p99:.3f}')") | |"
echo "echo server: compared $(counter echo echo 2 compared), dropped $(counter echo echo 2 dropped), failed $(counter echo echo 2 failed)"
