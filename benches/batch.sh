#!/usr/bin/env bash
# Issue 21: offline `ferrite batch` MiniLM throughput vs the online server's best sentences/s on the
# same machine, in interleaved rounds (machine noise hits both alike), plus the offline run's peak RSS.
#   corpus   N JSON lines {"id", "text"} cycling through 400 varied sentences of 5-40 words
#            (benches/embed/make_sentences.py), each line with its own id
#   online   `ferrite serve` (models/minilm as committed: 2 instances, queue-time budget off) driven by `ferrite bench
#            --protocol tei`, closed loop: 64 connections x 1 text, and 8 connections x 32 texts per
#            request; the better of the two is the online best (sentences/s)
#   offline  `ferrite batch` over the corpus to .parquet (rows/s from its summary line; peak RSS from
#            /usr/bin/time -v)
# Also, for a shared machine where the two sides get different CPU shares: texts per CPU-second,
# online = texts the server computed during the bench (nv_inference_count) / (server + client CPU
# seconds over the same run), offline = rows / the batch process's CPU seconds (model load and
# validation gate included).
# Usage: benches/batch.sh [N=20000] [ROUNDS=3] [DUR_MS=10000]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20000}
ROUNDS=${2:-3}
DUR_MS=${3:-10000}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release)" >&2; exit 1; }
[[ -f "$MODELS/minilm/1/model.safetensors" ]] || scripts/fetch-models.sh >&2

tmp=$(mktemp -d)
server=""
cleanup() {
  [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 >/dev/null
python3 - "$tmp/sent/sentences.txt" "$tmp/corpus.jsonl" "$N" <<'PY'
import json, sys
sents = [l.rstrip("\n") for l in open(sys.argv[1]) if l.strip()]
n = int(sys.argv[3])
with open(sys.argv[2], "w") as f:
    for i in range(n):
        f.write(json.dumps({"id": f"doc-{i}", "text": sents[i % len(sents)]}) + "\n")
PY
echo "# corpus: $N records, $(du -h "$tmp/corpus.jsonl" | cut -f1)" >&2

mkdir -p "$tmp/repo/minilm/1"
for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$tmp/repo/minilm/1/"; done
cp "$MODELS/minilm/validation.jsonl" "$tmp/repo/minilm/"
# Without the shipped queue-time budget: closed-loop load at 64 connections would otherwise get
# instant 503s, which the bench counts as answered requests (capacity, not shedding, is measured).
sed -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "$MODELS/minilm/config.toml" >"$tmp/repo/minilm/config.toml"

"$FERRITE_BIN" serve --model-repository "$tmp/repo" --host 127.0.0.1 --http-port 0 \
  --metrics-port 0 --grpc-port 0 --access-log=false 2>"$tmp/server.log" &
server=$!
for _ in $(seq 600); do
  grep -q "server ready" "$tmp/server.log" 2>/dev/null && break
  sleep 0.1
done
url=$(grep -o 'listening on http://[0-9.:]*' "$tmp/server.log" | head -1 | sed 's/listening on //')
metrics=$(grep -o 'metrics on http://[0-9.:]*' "$tmp/server.log" | head -1 | sed 's/metrics on //')
[[ -n "$url" ]] || { cat "$tmp/server.log" >&2; exit 1; }

server_cpu() { # the server's user + system CPU seconds so far
  awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$server/stat"
}

texts_done() { # texts the server has computed so far
  curl -s "$metrics/metrics" | awk '/^nv_inference_count\{model="minilm"/ {print $2}'
}

online() { # connections texts_per_request -> "sentences/s texts_per_cpu_second"
  local c0 n0 c1 n1 client
  c0=$(server_cpu); n0=$(texts_done)
  rm -f "$tmp/bench.json"
  # A window in which no request completed (a starved machine) is reported as "-", not a failure.
  /usr/bin/time -f "%U %S" -o "$tmp/client.time" "$FERRITE_BIN" bench -u "$url" \
    --metrics-url "$metrics" -m minilm --protocol tei \
    --input-data "$tmp/sent/sentences.txt" -b "$2" --concurrency-range "$1" --warmup-ms 2000 \
    --measurement-interval-ms "$DUR_MS" --max-windows 1 --json "$tmp/bench.json" \
    >"$tmp/bench.log" 2>&1 || { echo "- -"; tail -3 "$tmp/bench.log" >&2; return 0; }
  c1=$(server_cpu); n1=$(texts_done)
  client=$(awk '{print $1 + $2}' "$tmp/client.time")
  python3 -c "import json; s=json.load(open('$tmp/bench.json'))['steps'][0]; print(round(s['throughput']*$2, 1), round(($n1-$n0)/($c1-$c0+$client), 1))"
}

offline() { # -> "rows/s rows_per_cpu_second peak_rss_MiB"
  rm -rf "$tmp/out.parquet" "$tmp/out.parquet.parts"
  /usr/bin/time -v "$FERRITE_BIN" batch --gpus none --no-progress --model-repository "$tmp/repo" \
    -m minilm --input "$tmp/corpus.jsonl" --output "$tmp/out.parquet" 2>"$tmp/batch.log"
  local rate rss cpu
  rate=$(grep -o '[0-9]* rows/s' "$tmp/batch.log" | tail -1 | cut -d' ' -f1)
  rss=$(grep 'Maximum resident set size' "$tmp/batch.log" | awk '{print int($6/1024)}')
  cpu=$(awk -F': ' '/User time|System time/ {s += $2} END {print s}' "$tmp/batch.log")
  echo "$rate $(python3 -c "print(round($N / $cpu, 1))") $rss"
}

command -v /usr/bin/time >/dev/null || { echo "installing time (Debian package)" >&2; apt-get install -y time >/dev/null; }
echo "| round | online 64x1 (sent/s) | online 8x32 (sent/s) | offline (rows/s) | offline / online best | online texts per CPU-s (64x1, 8x32) | offline rows per CPU-s | offline peak RSS (MiB) |"
echo "|---|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  read -r a acpu < <(online 64 1)
  read -r b bcpu < <(online 8 32)
  # The server idles (its workers wait) while the offline run has the cores.
  read -r rate rcpu rss < <(offline)
  ratio=$(python3 -c "print(round($rate / max(float(x) for x in ['$a', '$b'] if x != '-'), 2))" 2>/dev/null || echo -)
  echo "| $r | $a | $b | $rate | $ratio | $acpu, $bcpu | $rcpu | $rss |"
done
