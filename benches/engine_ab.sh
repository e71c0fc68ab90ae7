#!/usr/bin/env bash
# Engine alone (no HTTP), two or more builds taking turns: each round runs examples/engine_rate.rs
# of every side once, in order, so machine noise hits them alike; prints per run the sentences/s and
# the process's CPU ms per sentence (engine_rate's getrusage over its timed rounds) and the load.
# Usage: benches/engine_ab.sh ROUNDS "label|ENGINE_RATE_BIN[|ENV=VALUE ...]" ...
# Env: MODEL (default models/minilm), SENTENCES (default: the 534 of benches/embed/make_sentences.py),
#      EARGS (default "--batch 32 --instances 2 --threads-per-pass 1 --rounds 2 --latency 0").
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:?usage: benches/engine_ab.sh ROUNDS "label|bin[|env]" ...}
shift
MODEL=${MODEL:-models/minilm}
EARGS=${EARGS:---batch 32 --instances 2 --threads-per-pass 1 --rounds 2 --latency 0}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -z "${SENTENCES:-}" ]]; then
  python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 1000 >/dev/null
  SENTENCES=$tmp/sent/sentences.txt
fi
for r in $(seq "$ROUNDS"); do
  for side in "$@"; do
    IFS='|' read -r label bin envs <<<"$side"
    # shellcheck disable=SC2086  # envs are words
    out=$(env $envs "$bin" "$MODEL" "$SENTENCES" $EARGS | grep 'sentences_per_s')
    rate=$(grep -o 'sentences_per_s=[0-9.]*' <<<"$out" | cut -d= -f2)
    cpu=$(grep -o 'cpu_ms_per_sentence=[0-9.]*' <<<"$out" | cut -d= -f2)
    echo "$label round=$r sentences_per_s=$rate cpu_ms_per_sentence=$cpu load=$(cut -d' ' -f1 /proc/loadavg)"
  done
done
