#!/usr/bin/env bash
# gRPC vs HTTP on digits, same server, same run, ROUNDS interleaved rounds (machine noise hits every
# variant alike); prints each measurement and the median req/s per variant with the ratios.
#   perf_analyzer (NVIDIA's, from the tritonclient 2.50.0 wheel): -i grpc (raw contents), -i grpc
#   --streaming, -i http (binary tensors), -i http with JSON tensors (--input-tensor-format json
#   --output-tensor-format json) at concurrency CONC with 1 row per request, and -i grpc vs -i http
#   with 64 rows per request;
#   ferrite bench: --protocol grpc, v2-binary and v2-json (JSON tensors) at concurrency CONC.
# Usage: benches/grpc.sh [FERRITE_BIN=target/release/ferrite] [ROUNDS=3] [CONC=64] [INTERVAL_MS=3000]
# perf_analyzer runs from ~/.cache/ferrite/perf_analyzer: extracted from the wheel (pip download, no
# install beside the pinned tritonclient), with Debian's libb64-0d and libcudart.so.12 from the
# nvidia-cuda-runtime-cu12 wheel on its library path. STABILITY (default 100: accept the 3 windows
# as measured; a shared machine is too noisy for tighter) is perf_analyzer's --stability-percentage;
# PA_TIMEOUT (default 180 s) bounds one perf_analyzer run; a run that fails or times out is
# reported and left out of the medians. perf_analyzer measures in PA_INTERVAL_MS windows (default
# 1000; INTERVAL_MS is ferrite bench's): perf_analyzer 2.50 sums up a window by erasing each measured
# record from the middle of one vector (quadratic in the records per window) while its load threads
# keep sending, so at 12-24k req/s a 3 s window's summary can outlast the next window and never
# catch up (RSS grows by GBs, no pass ends; see RESULTS.md, "Issue 18: batch-64 gRPC after").
# Each measurement also prints the server's CPU time (utime + stime of the ferrite process) per
# request it answered (nv_inference_request_success) over the whole run of that client.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/ferrite}
ROUNDS=${2:-3}
CONC=${3:-64}
INTERVAL=${4:-3000}
PA_INTERVAL=${PA_INTERVAL_MS:-1000}
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite/perf_analyzer"
PA="$CACHE/tc/tritonclient-2.50.0.data/data/bin/perf_analyzer"
if [[ ! -x "$PA" ]]; then
  mkdir -p "$CACHE"
  python3 -m pip download -q --no-deps --disable-pip-version-check -d "$CACHE" \
    tritonclient==2.50.0 nvidia-cuda-runtime-cu12==12.4.127
  (cd "$CACHE" && python3 -m zipfile -e tritonclient-2.50.0-*.whl tc && python3 -m zipfile -e nvidia_cuda_runtime_cu12-*.whl cu)
  chmod +x "$PA"
fi
dpkg -s libb64-0d >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
export LD_LIBRARY_PATH="$CACHE/cu/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

tmp=$(mktemp -d)
log="$tmp/serve.log"
"$BIN" serve --model-repository models --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
  --access-log=false 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
grep -q 'server ready' "$log" || { cat "$log" >&2; exit 1; }
http=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's|listening on http://||')
grpc=$(grep -o 'listening for gRPC on grpc://[0-9.:]*' "$log" | head -1 | sed 's|.*grpc://||')
metrics=$(grep -o 'metrics on http://[0-9.:]*' "$log" | head -1 | sed 's|metrics on ||')

pa() { # protocol url batch extra...
  local out
  out=$(timeout "${PA_TIMEOUT:-180}" "$PA" -m digits -i "$1" -u "$2" -b "$3" --concurrency-range "$CONC" \
    --measurement-interval "$PA_INTERVAL" --max-trials 10 --stability-percentage "${STABILITY:-100}" "${@:4}" 2>&1) || { echo "$out" >&2; return 1; }
  if grep -qiE "warn|error" <<<"$out"; then echo "perf_analyzer said:" >&2; grep -iE "warn|error" <<<"$out" >&2; fi
  # "Concurrency: 64, throughput: 1234.5 infer/sec, latency ..." (infer/sec counts rows: / batch)
  awk -v b="$3" '/Concurrency: [0-9]+, throughput:/ {gsub(",", "", $4); printf "%.1f\n", $4 / b}' <<<"$out" | tail -1
}
fb() { # protocol
  "$BIN" bench -u "http://$http" --grpc-url "http://$grpc" --metrics-url "$metrics" -m digits \
    --protocol "$1" --concurrency-range "$CONC:$CONC" --warmup-ms 1000 --measurement-interval-ms "$INTERVAL" \
    --max-windows 3 --json "$tmp/fb.json" >/dev/null 2>&1
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1]))["steps"][-1]; print("%.1f" % s["throughput"])' "$tmp/fb.json"
}
declare -A res
variants=(pa-grpc pa-grpc-stream pa-http pa-http-json pa-grpc-b64 pa-http-b64 fb-grpc fb-v2-binary fb-v2-json)
run() {
  case $1 in
    pa-grpc) pa grpc "$grpc" 1 ;;
    pa-grpc-stream) pa grpc "$grpc" 1 --streaming ;;
    pa-http) pa http "$http" 1 ;;
    pa-http-json) pa http "$http" 1 --input-tensor-format json --output-tensor-format json ;;
    pa-grpc-b64) pa grpc "$grpc" 64 ;;
    pa-http-b64) pa http "$http" 64 ;;
    fb-grpc) fb grpc ;;
    fb-v2-binary) fb v2-binary ;;
    fb-v2-json) fb v2-json ;;
  esac
}
# the server's answered requests and CPU seconds so far
answered() { curl -s "$metrics/metrics" | awk '/^nv_inference_request_success\{/ {s += $2} END {print s + 0}'; }
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$pid/stat"; }
declare -A cpu round  # round[r,v]: variant v's req/s in round r
for r in $(seq "$ROUNDS"); do
  for v in "${variants[@]}"; do
    n0=$(answered); c0=$(cpu_s)
    if ! rps=$(run "$v"); then
      echo "round $r $v: failed (perf_analyzer's output above), left out"
      continue
    fi
    n1=$(answered); c1=$(cpu_s)
    us=$(python3 -c "n = $n1 - $n0; print('%.1f' % (($c1 - $c0) * 1e6 / n) if n else 'nan')")
    echo "round $r $v: $rps req/s, server CPU $us us/request"
    res[$v]+="$rps "
    round[$r,$v]=$rps
    cpu[$v]+="$us "
  done
done
med() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "median req/s over $ROUNDS rounds (concurrency $CONC):"
for v in "${variants[@]}"; do
  printf '  %-16s %10s req/s  server CPU %s us/request\n' "$v" "$(med "${res[$v]:-}")" "$(med "${cpu[$v]:-}")"
done
ratio() { python3 -c "a, b = '$(med "${res[$1]:-}")', '$(med "${res[$2]:-}")'; print('%.2f' % (float(a) / float(b)) if a and b else 'n/a')"; }
echo "ratios of the medians: pa-grpc/fb-v2-json $(ratio pa-grpc fb-v2-json), fb-grpc/fb-v2-json $(ratio fb-grpc fb-v2-json)," \
  "fb-grpc/fb-v2-binary $(ratio fb-grpc fb-v2-binary)"
# The issue's targets, all perf_analyzer against perf_analyzer: the median of each round's own ratio
# (both sides measured minutes apart in the same round), with the rounds' range.
per_round() { # a b: each round's a/b, then "median (min-max)"
  local rs="" r
  for r in $(seq "$ROUNDS"); do
    [[ -n "${round[$r,$1]:-}" && -n "${round[$r,$2]:-}" ]] && rs+="$(python3 -c "print('%.4f' % (${round[$r,$1]} / ${round[$r,$2]}))") "
  done
  [[ -z "$rs" ]] && { echo "n/a"; return; }
  printf '%.2f (%s)' "$(med "$rs")" "$(tr ' ' '\n' <<<"$rs" | grep . | sort -g | awk 'NR == 1 {lo = $1} {hi = $1} END {printf "%.2f-%.2f", lo, hi}')"
}
echo "targets (median of the rounds' own ratios):"
echo "  gRPC raw / HTTP JSON      (>= 1.2):  $(per_round pa-grpc pa-http-json)"
echo "  gRPC raw / HTTP binary    (>= 1.0):  $(per_round pa-grpc pa-http)"
echo "  streaming / unary         (>= 1.0):  $(per_round pa-grpc-stream pa-grpc)"
echo "  64 rows: gRPC / HTTP bin. (>= 0.9):  $(per_round pa-grpc-b64 pa-http-b64)"
