#!/usr/bin/env bash
# Monitoring on vs off (issue 17), same binary, same run: digits KServe v2 JSON (one 64-pixel row per
# request: the held-out images) and MiniLM TEI /embed (one sentence per request, the 400 bench
# sentences), each at CONN keep-alive connections with wrk. Side A serves models/ as shipped
# (monitoring off); side B the same models with `[monitoring] enable = true, sample_rate = 1.0`
# (and their profile.json: drift computed every second). The sides take turns, ROUNDS times per
# workload, one under load at a time. Prints each round, the medians (req/s and p99) and B's
# monitor counters (dropped samples, rows seen) scraped at the end. Also the server's CPU time per
# request (user + system from /proc, over each round): less sensitive to a shared machine than req/s.
# Usage: benches/monitoring.sh BIN [DUR=10] [CONN=64] [ROUNDS=3]
# Env: WRK_THREADS (default 2), WORKLOADS (default "digits embed").
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: benches/monitoring.sh BIN [DUR] [CONN] [ROUNDS]}
DUR=${2:-10}
CONN=${3:-64}
ROUNDS=${4:-3}
THREADS=${WRK_THREADS:-2}
WORKLOADS=${WORKLOADS:-digits embed}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)" >&2; apt-get install -y wrk >/dev/null; }
[[ -f models/minilm/1/model.safetensors ]] || scripts/fetch-models.sh >&2

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

# Two repositories of the shipped models, files linked: A as shipped, B with [monitoring] on. Both
# without MiniLM's queue-time budget (capacity, not shedding: wrk counts instant 503s as requests).
for m in digits minilm; do
  for side in off on; do
    mkdir -p "$tmp/$side/$m/1"
    # The version's files and the model folder's own (labels, the [validation] gate's set).
    for f in models/$m/1/* models/$m/*; do
      [[ -f "$f" && "$f" != "models/$m/config.toml" ]] || continue
      rel=${f#models/$m/}
      ln -s "$PWD/$f" "$tmp/$side/$m/$rel"
    done
  done
  sed -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "models/$m/config.toml" >"$tmp/off/$m/config.toml"
  sed 's/^\[metadata\]/[monitoring]\nenable = true\nsample_rate = 1.0\nwindow = 1000\nperiod_ms = 1000\n\n[metadata]/' \
    "$tmp/off/$m/config.toml" >"$tmp/on/$m/config.toml"
done

python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 >/dev/null 2>&1
python3 - "$tmp" <<'PY'
import json, struct, sys
tmp = sys.argv[1]
# The held-out digits images (models/digits/test-split.safetensors: pixels float32 [360, 64]).
raw = open("models/digits/test-split.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
start, end = header["pixels"]["data_offsets"]
px = struct.unpack(f"<{(end - start) // 4}f", raw[8 + n + start:8 + n + end])
with open(f"{tmp}/digits.jsonl", "w") as f:
    for r in range(len(px) // 64):
        row = list(px[r * 64:(r + 1) * 64])
        f.write(json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row}]}) + "\n")
with open(f"{tmp}/embed.jsonl", "w") as f:
    for line in open(f"{tmp}/sent/sentences.txt"):
        if line.strip():
            f.write(json.dumps({"inputs": line.rstrip("\n")}) + "\n")
PY

declare -A url murl pid
# CPU seconds (user + system) the process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
start() { # side models
  local log="$tmp/$1.log" line
  "$BIN" serve --model-repository "$2" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 2>"$log" &
  pids+=($!)
  pid[$1]=$!
  for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $1 did not become ready:" >&2; cat "$log" >&2; exit 1; }
  line=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | grep -o 'listening on http://[^ ]* (metrics on http://[^ ]*/metrics)' | head -1)
  url[$1]=$(sed -E 's#listening on (http://[^ ]*) .*#\1#' <<<"$line")
  murl[$1]=$(sed -E 's#.*metrics on (http://[^ ]*/metrics)\)#\1#' <<<"$line")
}
start A "$tmp/off"
start B "$tmp/on"
grep -o 'monitoring drift against profile.json.*' "$tmp/B.log" | sed 's/\x1b\[[0-9;]*m//g' || true

path_of() { case $1 in digits) echo /v2/models/digits/infer ;; embed) echo /embed ;; esac; }
declare -A rps_of p99_of cpu_of_req
for w in $WORKLOADS; do
  for side in A B; do # warm-up
    BODIES="$tmp/$w.jsonl" wrk -t"$THREADS" -c"$CONN" -d2s -s benches/embed/rotate.lua "${url[$side]}$(path_of "$w")" >/dev/null
  done
  for r in $(seq "$ROUNDS"); do
    for side in A B; do
      c0=$(cpu_of "${pid[$side]}")
      out=$(BODIES="$tmp/$w.jsonl" wrk -t"$THREADS" -c"$CONN" -d"${DUR}s" --latency -s benches/embed/rotate.lua "${url[$side]}$(path_of "$w")")
      c1=$(cpu_of "${pid[$side]}")
      rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
      reqs=$(awk '/requests in/ {print $1}' <<<"$out")
      us=$(awk -v a="$c0" -v b="$c1" -v n="$reqs" 'BEGIN {printf "%.1f", (b - a) * 1e6 / n}')
      p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
      errs=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print}' <<<"$out" | paste -sd' ')
      echo "$w round $r $side: ${rps} req/s, p99 ${p99} ms, server CPU ${us} us/request${errs:+, errors: $errs}"
      rps_of[$w.$side]+="$rps "
      cpu_of_req[$w.$side]+="$us "
      p99_of[$w.$side]+="$p99 "
    done
  done
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| workload | off req/s | on req/s | on/off | off p99 ms | on p99 ms | on/off p99 | off CPU us/req | on CPU us/req | on/off CPU |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for w in $WORKLOADS; do
  a=$(med "${rps_of[$w.A]}"); b=$(med "${rps_of[$w.B]}")
  pa=$(med "${p99_of[$w.A]}"); pb=$(med "${p99_of[$w.B]}")
  ca=$(med "${cpu_of_req[$w.A]}"); cb=$(med "${cpu_of_req[$w.B]}")
  echo "| $w | $a | $b | $(awk -v a="$a" -v b="$b" 'BEGIN {printf "%.3f", b/a}') | $pa | $pb | $(awk -v a="$pa" -v b="$pb" 'BEGIN {printf "%.3f", b/a}') | $ca | $cb | $(awk -v a="$ca" -v b="$cb" 'BEGIN {printf "%.3f", b/a}') |"
done
echo
echo "monitor counters of side B:"
curl -fsS "${murl[B]}" | grep -E '^(ferrite_monitor_dropped_samples_total|ferrite_drift_window_rows|ferrite_drift_features_over_threshold)\{' || true
for m in digits minilm; do
  curl -fsS "${url[B]}/v2/models/$m/drift" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["model"], "rows_seen", d["rows_seen"], "dropped", d["dropped_samples"], "over_threshold", (d.get("summary") or {}).get("over_threshold"))' || true
done
