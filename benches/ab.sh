#!/usr/bin/env bash
# A/B of two ferrite binaries on the same machine, in the same run: digits KServe v2 JSON
# (/v2/models/digits/infer, one 64-pixel row per request) and MiniLM TEI /embed (one sentence per
# request, rotating through the 400 bench sentences), each at CONN keep-alive connections with wrk.
# The two servers take turns, ROUNDS times per workload (interleaved so that machine noise hits them
# alike); only one is under load at a time. Prints each round (req/s, p99, and the server's CPU time
# per request: utime + stime from /proc over the run, divided by the requests wrk completed) and the
# medians per binary, with the B/A ratios. Used for "no regression" checks (issue 13 and later).
# Usage: benches/ab.sh A_BIN B_BIN [DUR=10] [CONN=64] [ROUNDS=3]
# Env: MODELS (default models; A_MODELS / B_MODELS per side), WRK_THREADS (default 2), WORKLOADS
#      (default "digits embed"), A_ARGS / B_ARGS: extra `ferrite serve` flags for each side (e.g. a --config file).
set -euo pipefail
cd "$(dirname "$0")/.."
A=${1:?usage: benches/ab.sh A_BIN B_BIN [DUR] [CONN] [ROUNDS]}
B=${2:?usage: benches/ab.sh A_BIN B_BIN [DUR] [CONN] [ROUNDS]}
DUR=${3:-10}
CONN=${4:-64}
ROUNDS=${5:-3}
THREADS=${WRK_THREADS:-2}
MODELS=${MODELS:-models}
WORKLOADS=${WORKLOADS:-digits embed}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)" >&2; apt-get install -y wrk >/dev/null; }
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2

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

python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 >/dev/null 2>&1
python3 - "$tmp" <<'PY'
import json, random, sys
tmp = sys.argv[1]
random.seed(0)
with open(f"{tmp}/digits.jsonl", "w") as f:
    for _ in range(64):
        px = [float(random.randint(0, 16)) for _ in range(64)]
        f.write(json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": px}]}) + "\n")
with open(f"{tmp}/embed.jsonl", "w") as f:
    for line in open(f"{tmp}/sent/sentences.txt"):
        if line.strip():
            f.write(json.dumps({"inputs": line.rstrip("\n")}) + "\n")
PY

# The models, files linked, configs without a queue-time budget: this measures capacity, and past
# the budget closed-loop connections get instant 503s, which wrk counts as requests. One copy per
# side: A_MODELS / B_MODELS (default MODELS) let a build of an older main serve its own configs.
copy_models() { # from to
  local d m f rel
  for d in "$1"/*/; do
    m=$(basename "$d")
    [[ -f "$d/config.toml" ]] || continue
    mkdir -p "$2/$m"
    for f in "$d"* "$d"*/*; do
      [[ -f "$f" ]] || continue
      rel=${f#"$d"}
      mkdir -p "$(dirname "$2/$m/$rel")"
      ln -s "$(realpath "$f")" "$2/$m/$rel"
    done
    rm "$2/$m/config.toml"
    sed -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "$d/config.toml" >"$2/$m/config.toml"
  done
}
copy_models "${A_MODELS:-$MODELS}" "$tmp/models-A"
copy_models "${B_MODELS:-$MODELS}" "$tmp/models-B"

declare -A url pid
start() { # name bin extra-args
  local log="$tmp/$1.log" line
  local grpc=""
  # A build from before the gRPC port (issue 18) has no --grpc-port.
  if [[ "$("$2" serve --help 2>/dev/null)" == *--grpc-port* ]]; then grpc="--grpc-port 0"; fi
  # shellcheck disable=SC2086  # extra args are words
  "$2" serve --model-repository "$tmp/models-$1" --host 127.0.0.1 --http-port 0 --metrics-port 0 $grpc $3 2>"$log" &
  pids+=($!)
  pid[$1]=$!
  for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $1 did not become ready:" >&2; cat "$log" >&2; exit 1; }
  line=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1)
  url[$1]=${line#listening on }
}
start A "$A" "${A_ARGS:-}"
start B "$B" "${B_ARGS:-}"

# CPU seconds (user + system) a process has used so far.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
path_of() { case $1 in digits) echo /v2/models/digits/infer ;; embed) echo /embed ;; esac; }
declare -A results cpus
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
      n=$(awk '/requests in/ {print $1}' <<<"$out")
      cpu=$(awk -v a="$c0" -v b="$c1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) * 1e6 / n}')
      p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
      errs=$(awk '/Non-2xx/ {print $NF} /Socket errors/ {print}' <<<"$out" | paste -sd' ')
      echo "$w round $r $side: ${rps} req/s, p99 ${p99}, server CPU ${cpu} us/req${errs:+, errors: $errs}"
      results[$w.$side]+="$rps "
      cpus[$w.$side]+="$cpu "
    done
  done
done
echo
echo "| workload | A median req/s | B median req/s | B/A | A median CPU us/req | B median CPU us/req | B/A |"
echo "|---|---|---|---|---|---|---|"
for w in $WORKLOADS; do
  med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  a=$(med "${results[$w.A]}")
  b=$(med "${results[$w.B]}")
  ca=$(med "${cpus[$w.A]}")
  cb=$(med "${cpus[$w.B]}")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", b/a}'; }
  echo "| $w | $a | $b | $(ratio "$a" "$b") | $ca | $cb | $(ratio "$ca" "$cb") |"
done
