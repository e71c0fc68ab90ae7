#!/usr/bin/env bash
# Load test for text embeddings (all-MiniLM-L6-v2), issue 3: one sentence per request, rotating
# through 400 varied English sentences of 5-40 words (benches/embed/make_sentences.py), wrk with
# CONN connections. Targets, taking turns for ROUNDS rounds of DUR seconds (interleaved so machine
# noise hits them alike; each row is the median round by req/s, with that round's latencies):
#   ferrite      /embed (TEI) and /v1/embeddings (OpenAI), dynamic batching as in models/minilm
#   ferrite-nb   /embed with max_batch_size = 1 (batching off), same everything else
#   ferrite-t2   /embed with --intra-op-threads 2 (others run with 1)
#   peer         benches/peer-fastapi: FastAPI + sentence-transformers, 2 uvicorn workers (PEER=0 skips)
# Only one target is under load at a time; the others stay up, idle. Also measured in the same run:
# the CPU's f32 GEMM rate (examples/gemm_rate.rs, candle matmul 512x384x1536; before and after the
# rounds), the sentences' average token count (usage.prompt_tokens from /v1/embeddings, includes
# [CLS]/[SEP]), batch size and padding efficiency per target from /metrics (deltas over its rounds),
# and each server's RSS (VmHWM/VmRSS from /proc after the rounds; the peer's summed over processes).
# Usage: benches/embed_load.sh [DUR=20] [CONN=64] [ROUNDS=3]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), MODELS (default models),
#      PEER=0 to skip the peer, PEER_TORCH_THREADS (default 1), PEER_WORKERS (default 2),
#      T2=0 to skip ferrite-t2, WRK_THREADS (default 2), GEMM_BIN (default: cargo-built example).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-20}
CONN=${2:-64}
ROUNDS=${3:-3}
THREADS=${WRK_THREADS:-2}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
MODELS=${MODELS:-models}
PEER=${PEER:-1}
T2=${T2:-1}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)" >&2; apt-get install -y wrk >/dev/null; }
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release, or set FERRITE_BIN)" >&2; exit 1; }
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

if [[ -z "${GEMM_BIN:-}" ]]; then
  cargo build --release --example gemm_rate >&2
  GEMM_BIN=${CARGO_TARGET_DIR:-target}/release/examples/gemm_rate
fi

python3 benches/embed/make_sentences.py tests/fixtures/minilm-reference.json "$tmp/sent" 400 2>&1 | sed 's/^/# /' >"$tmp/sentences.info"

# Two model repositories holding only minilm (weights linked, not copied): batching as configured,
# and batching off.
repo() { # dir max_batch_size|""
  mkdir -p "$1/minilm/1"
  for f in "$MODELS"/minilm/1/*; do ln -sf "$(realpath "$f")" "$1/minilm/1/"; done
  ln -sf "$(realpath "$MODELS/minilm/validation.jsonl")" "$1/minilm/"   # the [validation] gate's set
  # Capacity, not shedding: no queue-time budget (closed-loop connections past it would get
  # instant 503s, which wrk counts as requests).
  if [[ -n "$2" ]]; then
    sed -E -e "s/^max_batch_size = [0-9]+/max_batch_size = $2/" -e 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' \
      "$MODELS/minilm/config.toml" >"$1/minilm/config.toml"
  else
    sed -E 's/^max_queue_time_us = [0-9]+/max_queue_time_us = 0/' "$MODELS/minilm/config.toml" >"$1/minilm/config.toml"
  fi
}
repo "$tmp/repo-on" ""
repo "$tmp/repo-off" 1
grep -q '^max_batch_size = 1$' "$tmp/repo-off/minilm/config.toml" || { echo "could not set max_batch_size = 1" >&2; exit 1; }

declare -A url metrics pidof
start_ferrite() { # name repo intra-op-threads
  local log="$tmp/$1.log" line
  "$FERRITE_BIN" serve --model-repository "$2" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
    --intra-op-threads "$3" 2>"$log" &
  pids+=($!)
  pidof[$1]=$!
  for _ in $(seq 300); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $1 did not become ready:" >&2; cat "$log" >&2; exit 1; }
  line=$(grep -o 'listening on http://[0-9.:]*\b (metrics on http://[0-9.:]*/metrics)' "$log")
  url[$1]=$(sed -E 's/listening on (http:[^ ]*) .*/\1/' <<<"$line")
  metrics[$1]=$(sed -E 's/.*metrics on (http:[^)]*)\)/\1/' <<<"$line")
}
start_ferrite on "$tmp/repo-on" 1
start_ferrite off "$tmp/repo-off" 1
[[ $T2 == 1 ]] && start_ferrite t2 "$tmp/repo-on" 2

venv=
if [[ $PEER == 1 ]]; then
  venv=$(benches/peer-fastapi/setup.sh)
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  HF_HUB_OFFLINE=1 PEER_TORCH_THREADS=${PEER_TORCH_THREADS:-1} "$venv/bin/uvicorn" app:app \
    --app-dir benches/peer-fastapi --workers "${PEER_WORKERS:-2}" --host 127.0.0.1 --port "$port" \
    --log-level warning 2>"$tmp/peer.log" &
  pids+=($!)
  pidof[peer]=$!
  url[peer]=http://127.0.0.1:$port
  for _ in $(seq 600); do curl -sf "${url[peer]}/health" >/dev/null && break; sleep 0.2; done
  curl -sf "${url[peer]}/health" >/dev/null || { echo "peer did not become ready:" >&2; cat "$tmp/peer.log" >&2; exit 1; }
fi

# Average tokens per sentence, [CLS] and [SEP] included, as Ferrite's tokenizer counts them.
python3 - "$tmp/sent/sentences.txt" "${url[on]}/v1/embeddings" >"$tmp/tokens" <<'PY'
import json, sys, urllib.request
s = [l.rstrip("\n") for l in open(sys.argv[1]) if l.strip()]
n = 0
for i in range(0, len(s), 200):
    req = urllib.request.Request(sys.argv[2], json.dumps({"input": s[i:i + 200], "model": "minilm"}).encode(),
                                 {"Content-Type": "application/json"})
    n += json.load(urllib.request.urlopen(req))["usage"]["prompt_tokens"]
print(n / len(s))
PY

gemm() { # -> "gflops_1thread gflops_2threads"
  "$GEMM_BIN" 512 384 1536 20 | sed -E 's/.*gflops=//' | paste -sd' '
}
np_gemm() { # -> numpy (OpenBLAS, all cores) GFLOP/s on the same shape, in the peer venv; "-" without it
  [[ $PEER == 1 ]] || { echo -; return; }
  "$venv/bin/python" - <<'PY'
import time
import numpy as np
a = np.random.rand(512, 384).astype(np.float32)
b = np.random.rand(384, 1536).astype(np.float32)
for _ in range(3):
    a @ b
best = 1e9
for _ in range(20):
    t = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - t)
print(f"{2 * 512 * 384 * 1536 / best / 1e9:.1f}")
PY
}
gemm_before=$(gemm)
np_before=$(np_gemm)

snap() { # name -> "count exec padsum padcount" for minilm from that server's /metrics
  curl -s "${metrics[$1]}" | awk '
    /^nv_inference_count\{model="minilm"/ {c=$NF} /^nv_inference_exec_count\{model="minilm"/ {e=$NF}
    /^ferrite_batch_padding_ratio_sum\{model="minilm"/ {ps=$NF} /^ferrite_batch_padding_ratio_count\{model="minilm"/ {pc=$NF}
    END {print c+0, e+0, ps+0, pc+0}'
}
run() { # key server path bodies [dur]
  local out before after
  [[ $2 != peer ]] && before=$(snap "$2")
  out=$(BODIES=$4 wrk -t"$THREADS" -c"$CONN" -d"${5:-$DUR}s" --timeout 30s --latency -s benches/embed/rotate.lua "${url[$2]}$3")
  [[ -n ${5:-} ]] && return 0
  awk '/Requests\/sec/ {r=$2} $1=="50%" {p50=$2} $1=="99%" {p99=$2} /Non-2xx/ {e=$NF}
       /Socket errors/ {gsub(",", ""); se=$4+$6+$8+$10}
       END {print r, p50, p99, e+se}' <<<"$out" >>"$tmp/$1.runs"
  if [[ $2 != peer ]]; then
    after=$(snap "$2")
    paste -d' ' <(tr ' ' '\n' <<<"$after") <(tr ' ' '\n' <<<"$before") | awk '{printf "%s ", $1 - $2} END {print ""}' >>"$tmp/$1.batch"
  fi
}
tei=$tmp/sent/tei.jsonl
oai=$tmp/sent/openai.jsonl
keys=(on_embed on_openai off_embed)
[[ $T2 == 1 ]] && keys+=(t2_embed)
[[ $PEER == 1 ]] && keys+=(peer_embed)
declare -A server=([on_embed]=on [on_openai]=on [off_embed]=off [t2_embed]=t2 [peer_embed]=peer)
declare -A path=([on_embed]=/embed [on_openai]=/v1/embeddings [off_embed]=/embed [t2_embed]=/embed [peer_embed]=/embed)
declare -A body=([on_embed]=$tei [on_openai]=$oai [off_embed]=$tei [t2_embed]=$tei [peer_embed]=$tei)
declare -A label=([on_embed]="ferrite /embed, batching on" [on_openai]="ferrite /v1/embeddings, batching on"
                  [off_embed]="ferrite /embed, max_batch_size 1" [t2_embed]="ferrite /embed, batching on, --intra-op-threads 2"
                  [peer_embed]="peer FastAPI + sentence-transformers /embed")
for k in "${keys[@]}"; do run "$k" "${server[$k]}" "${path[$k]}" "${body[$k]}" 3; done # warm-up, not recorded
for r in $(seq "$ROUNDS"); do
  for k in "${keys[@]}"; do
    echo "round $r/$ROUNDS: $k" >&2
    run "$k" "${server[$k]}" "${path[$k]}" "${body[$k]}"
  done
done
gemm_after=$(gemm)
np_after=$(np_gemm)

rss() { # pid... -> "hwm_MiB rss_MiB" summed
  local h=0 r=0 p
  for p in "$@"; do
    [[ -r /proc/$p/status ]] || continue
    h=$((h + $(awk '/VmHWM/ {print $2}' "/proc/$p/status")))
    r=$((r + $(awk '/VmRSS/ {print $2}' "/proc/$p/status")))
  done
  echo "$((h / 1024)) $((r / 1024))"
}
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
declare -A mem
for s in on off t2; do [[ -n ${pidof[$s]:-} ]] && mem[$s]=$(rss "${pidof[$s]}"); done
# shellcheck disable=SC2046
[[ $PEER == 1 ]] && mem[peer]=$(rss "${pidof[peer]}" $(descendants "${pidof[peer]}"))

median() { sort -n -k1,1 "$tmp/$1.runs" | awk -v n="$ROUNDS" 'NR == int((n + 1) / 2)'; }
rps() { median "$1" | awk '{print $1}'; }
batchinfo() { # key -> "avg_batch padding_efficiency" over all its rounds
  [[ -f $tmp/$1.batch ]] || { echo "- -"; return; }
  awk '{c+=$1; e+=$2; ps+=$3; pc+=$4} END {printf "%.1f %.2f\n", (e ? c/e : 0), (pc ? ps/pc : 0)}' "$tmp/$1.batch"
}
tok=$(cat "$tmp/tokens")
read -r g1b g2b <<<"$gemm_before"
read -r g1a g2a <<<"$gemm_after"
# Limits: candle's (the kernel Ferrite runs) = best 2-core rate seen (2 threads, or twice 1 thread),
# before or after the rounds; the CPU's = the best of that and numpy/OpenBLAS on 2 threads.
limit=$(awk -v a="$g1b" -v b="$g2b" -v c="$g1a" -v d="$g2a" 'BEGIN {m=2*a; if (b>m) m=b; if (2*c>m) m=2*c; if (d>m) m=d; print m}')
cpu_limit=$(awk -v m="$limit" -v x="$np_before" -v y="$np_after" 'BEGIN {if (x+0>m) m=x; if (y+0>m) m=y; print m}')
flops=$(awk -v L="$tok" 'BEGIN {print 6 * (2*L*(4*384*384 + 2*384*1536) + 4*L*L*384)}')

cat "$tmp/sentences.info"
echo "# average tokens per sentence (incl. [CLS]/[SEP]): $(printf '%.2f' "$tok")"
echo "# FLOPs per sentence = 6 x (2L(4h^2 + 2hi) + 4L^2 h), h=384, i=1536, L=$(printf '%.2f' "$tok"): $(awk -v f="$flops" 'BEGIN {printf "%.1f MFLOP", f/1e6}')"
echo "# f32 GEMM 512x384x1536 (candle, examples/gemm_rate.rs), GFLOP/s: before 1 thread $g1b, 2 threads $g2b; after 1 thread $g1a, 2 threads $g2a; 2-core limit used: $limit"
echo "# f32 GEMM same shape, numpy $("$venv/bin/python" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo -) (OpenBLAS, 2 threads), GFLOP/s: before $np_before, after $np_after; CPU limit used: $cpu_limit"
echo
echo "| target ($CONN connections, ${DUR}s x $ROUNDS rounds, interleaved) | median req/s | p50 | p99 | errors | avg batch | padding eff. | server VmHWM / VmRSS | % of candle GEMM limit | % of CPU GEMM limit |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for k in "${keys[@]}"; do
  read -r r p50 p99 err <<<"$(median "$k")"
  read -r ab pe <<<"$(batchinfo "$k")"
  read -r hwm cur <<<"${mem[${server[$k]}]}"
  printf '| %s | %.1f | %s | %s | %s | %s | %s | %s / %s MiB | %.1f%% | %.1f%% |\n' "${label[$k]}" "$r" "$p50" "$p99" "$err" "$ab" "$pe" "$hwm" "$cur" \
    "$(awk -v r="$r" -v f="$flops" -v l="$limit" 'BEGIN {print 100 * r * f / (l * 1e9)}')" \
    "$(awk -v r="$r" -v f="$flops" -v l="$cpu_limit" 'BEGIN {print 100 * r * f / (l * 1e9)}')"
done
ratio() { awk -v a="$(rps "$1")" -v b="$(rps "$2")" 'BEGIN {printf "%.2f", a / b}'; }
per_round() { paste -d' ' <(cut -d' ' -f1 "$tmp/$1.runs") <(cut -d' ' -f1 "$tmp/$2.runs") | awk '{printf "%s%.2f", (NR > 1 ? ", " : ""), $1 / $2}'; }
echo
echo "| ratio (medians of the same run) | value | per round |"
echo "|---|---|---|"
echo "| batching on / max_batch_size 1 (/embed) | $(ratio on_embed off_embed) | $(per_round on_embed off_embed) |"
echo "| /v1/embeddings / /embed (batching on) | $(ratio on_openai on_embed) | $(per_round on_openai on_embed) |"
[[ $T2 == 1 ]] && echo "| intra-op 2 / intra-op 1 (/embed) | $(ratio t2_embed on_embed) | $(per_round t2_embed on_embed) |"
if [[ $PEER == 1 ]]; then
  echo "| ferrite /embed / peer /embed | $(ratio on_embed peer_embed) | $(per_round on_embed peer_embed) |"
  [[ $T2 == 1 ]] && echo "| ferrite intra-op 2 /embed / peer /embed | $(ratio t2_embed peer_embed) | $(per_round t2_embed peer_embed) |"
fi
exit 0
