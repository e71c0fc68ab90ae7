#!/usr/bin/env bash
# Response cache benchmark (issue 19): MiniLM over TEI /embed, CONN connections (closed loop,
# `ferrite bench`), one text per request drawn from a Zipf(1.1) distribution over 10,000 distinct
# sentences (benches/embed/make_zipf_sentences.py, from Debian's wamerican word list). Three servers,
# one per mode, up at once, taking turns under load for ROUNDS rounds of DUR seconds (interleaved so
# that machine noise hits them alike):
#   off     no [response_cache]
#   local   in-process cache (max_bytes 256 MiB)
#   redis   Redis level only (max_bytes = 0, --cache-redis-url to a redis-server started here)
# Then the all-hits run on the local server: one sentence, every request a hit, against the same
# server's digits KServe v2 JSON req/s (one fixed image, digits uncached), taking turns too.
# Hit rate per mode from nv_cache_num_{hits,misses}_per_model deltas over its rounds. Prints one
# markdown table per part (median round by req/s, with that round's p99).
# Usage: benches/cache.sh [DUR=20] [CONN=64] [ROUNDS=2]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-20}
CONN=${2:-64}
ROUNDS=${3:-2}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release, or set FERRITE_BIN)" >&2; exit 1; }
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2
need=()
command -v redis-server >/dev/null || need+=(redis-server)
[[ -f /usr/share/dict/words ]] || need+=(wamerican)
if [[ ${#need[@]} -gt 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

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

python3 benches/embed/make_zipf_sentences.py "$tmp/sentences.txt" 10000 >&2
head -1 "$tmp/sentences.txt" >"$tmp/one.txt"
python3 - "$tmp/digits.jsonl" <<'PY'
import json, sys
x = [0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]
open(sys.argv[1], "w").write(json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": x}]}) + "\n")
PY

rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$tmp/redis"
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --dir "$tmp/redis" >"$tmp/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done

repo() { # dir cache-table
  mkdir -p "$1/minilm/1" "$1/digits/1"
  for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$1/minilm/1/"; done
  ln -sf "$(realpath "$MODELS/minilm/validation.jsonl")" "$1/minilm/"   # the [validation] gate's set
  ln -sf "$(realpath "$MODELS/digits/1/model.safetensors")" "$1/digits/1/"
  ln -sf "$(realpath "$MODELS/digits/test-split.safetensors")" "$1/digits/"
  cp "$MODELS/digits/config.toml" "$1/digits/config.toml"
  { cat "$MODELS/minilm/config.toml"; printf '\n%b' "$2"; } >"$1/minilm/config.toml"
}
repo "$tmp/repo-off" ""
repo "$tmp/repo-local" '[response_cache]\nenable = true\nttl_secs = 3600\nmax_bytes = 268435456\n'
repo "$tmp/repo-redis" '[response_cache]\nenable = true\nttl_secs = 3600\nmax_bytes = 0\n'

declare -A url metrics
start_ferrite() { # name repo [flags]
  local name=$1 repo=$2 log="$tmp/$1.log" line
  shift 2
  "$FERRITE_BIN" serve --model-repository "$repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
    --access-log=false "$@" 2>"$log" &
  pids+=($!)
  for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $name did not become ready:" >&2; cat "$log" >&2; exit 1; }
  line=$(grep -o 'listening on http://[0-9.:]*\b (metrics on http://[0-9.:]*/metrics)' "$log")
  url[$name]=$(sed -E 's/listening on (http:[^ ]*) .*/\1/' <<<"$line")
  metrics[$name]=$(sed -E 's/.*metrics on (http:[^)]*)\)/\1/' <<<"$line")
}
start_ferrite off "$tmp/repo-off"
start_ferrite local "$tmp/repo-local"
start_ferrite redis "$tmp/repo-redis" --cache-redis-url "redis://127.0.0.1:$rport"

series() { # name metric -> value (0 when the model has no cache)
  curl -s "${metrics[$1]}" | awk -v m="$2{model=\"minilm\",version=\"1\"}" '$1 == m {print $2; f=1} END {if (!f) print 0}'
}

bench() { # name out model protocol input [zipf]
  local z=()
  [[ -n "${6:-}" ]] && z=(--zipf "$6")
  "$FERRITE_BIN" bench -u "${url[$1]}" --metrics-url none -m "$3" --protocol "$4" \
    --input-data "$5" "${z[@]}" --concurrency-range "$CONN" --warmup-ms 1000 \
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

declare -A h0 m0
for mode in off local redis; do h0[$mode]=$(series "$mode" nv_cache_num_hits_per_model); m0[$mode]=$(series "$mode" nv_cache_num_misses_per_model); done
for r in $(seq "$ROUNDS"); do
  for mode in off local redis; do
    bench "$mode" "$tmp/zipf-$mode-$r.json" minilm tei "$tmp/sentences.txt" 1.1
    echo "round $r $mode: $(row "$tmp/zipf-$mode-$r.json")" >&2
  done
done
median() { # prefix -> "req/s p99 errors" of the median round by req/s
  for f in "$tmp"/"$1"-*.json; do row "$f"; done | sort -n | awk '{a[NR]=$0} END {print a[int((NR+1)/2)]}'
}
echo "| mode | hit rate | req/s | p99 ms | client errors | req/s vs off |"
echo "|---|---|---|---|---|---|"
off_rps=$(median zipf-off | cut -d' ' -f1)
for mode in off local redis; do
  read -r rps p99 err <<<"$(median "zipf-$mode")"
  h=$(series "$mode" nv_cache_num_hits_per_model); m=$(series "$mode" nv_cache_num_misses_per_model)
  rate=$(python3 -c "h=$h-${h0[$mode]}; m=$m-${m0[$mode]}; print('-' if h+m == 0 else f'{h/(h+m):.3f}')")
  echo "| $mode | $rate | $rps | $p99 | $err | $(python3 -c "print(f'{$rps/$off_rps:.2f}x')") |"
done

# All hits: one sentence on the local server vs the same server's digits (KServe v2 JSON).
for r in $(seq "$ROUNDS"); do
  bench local "$tmp/allhit-$r.json" minilm tei "$tmp/one.txt"
  bench local "$tmp/digits-$r.json" digits v2-json "$tmp/digits.jsonl"
  echo "round $r all-hits: $(row "$tmp/allhit-$r.json") digits: $(row "$tmp/digits-$r.json")" >&2
done
read -r a_rps a_p99 a_err <<<"$(median allhit)"
read -r d_rps d_p99 d_err <<<"$(median digits)"
echo
echo "| run (local server) | req/s | p99 ms | client errors |"
echo "|---|---|---|---|"
echo "| MiniLM, one sentence, all hits | $a_rps | $a_p99 | $a_err |"
echo "| digits KServe v2 JSON | $d_rps | $d_p99 | $d_err |"
echo "| ratio all-hits / digits | $(python3 -c "print(f'{$a_rps/$d_rps:.2f}')") | | |"
