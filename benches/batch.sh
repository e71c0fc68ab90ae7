#!/usr/bin/env bash
# Issue 21: offline `ferrite batch` MiniLM throughput vs the online server's best sentences/s on the
# same machine, in interleaved rounds (machine noise hits both alike), plus the offline run's peak RSS.
#   corpus   N JSON lines {"id", "text"} cycling through 400 varied sentences of 5-40 words
#            (benches/embed/make_sentences.py), each line with its own id
#   online   `ferrite serve` (models/minilm as committed: 2 instances) driven by `ferrite bench
#            --protocol tei`, closed loop: 64 connections x 1 text, and 8 connections x 32 texts per
#            request; the better of the two is the online best (sentences/s)
#   offline  `ferrite batch` over the corpus to .parquet (rows/s from its summary line; peak RSS from
#            /usr/bin/time -v, or VmHWM)
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
cp "$MODELS/minilm/config.toml" "$MODELS/minilm/validation.jsonl" "$tmp/repo/minilm/"

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

online() { # connections texts_per_request -> sentences/s
  "$FERRITE_BIN" bench -u "$url" --metrics-url "$metrics" -m minilm --protocol tei \
    --input-data "$tmp/sent/sentences.txt" -b "$2" --concurrency-range "$1" --warmup-ms 2000 \
    --measurement-interval-ms "$DUR_MS" --max-windows 1 --json "$tmp/bench.json" >/dev/null 2>&1
  python3 -c "import json,sys; s=json.load(open('$tmp/bench.json'))['steps'][0]; print(round(s['throughput']*$2, 1))"
}

offline() { # -> "rows/s peak_rss_MiB"
  rm -rf "$tmp/out.parquet" "$tmp/out.parquet.parts"
  /usr/bin/time -v "$FERRITE_BIN" batch --gpus none --no-progress --model-repository "$tmp/repo" \
    -m minilm --input "$tmp/corpus.jsonl" --output "$tmp/out.parquet" 2>"$tmp/batch.log"
  local rate rss
  rate=$(grep -o '[0-9]* rows/s' "$tmp/batch.log" | tail -1 | cut -d' ' -f1)
  rss=$(grep 'Maximum resident set size' "$tmp/batch.log" | awk '{print int($6/1024)}')
  echo "$rate $rss"
}

command -v /usr/bin/time >/dev/null || { echo "installing time (Debian package)" >&2; apt-get install -y time >/dev/null; }
echo "| round | online 64x1 (sent/s) | online 8x32 (sent/s) | offline (rows/s) | offline peak RSS (MiB) |"
echo "|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  a=$(online 64 1)
  b=$(online 8 32)
  # The server idles (its workers wait) while the offline run has the cores.
  read -r rate rss < <(offline)
  echo "| $r | $a | $b | $rate | $rss |"
done
