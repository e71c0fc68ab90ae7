#!/usr/bin/env bash
# Issue 15, faults under load: each fault in turn against one release server, each checked for
#   0 hung requests: every request written to the server is answered within HANG_S (default 10 s);
#   exact accounting: the server's counters (nv_inference_request_success and
#     nv_inference_request_failure{reason}, CANCELED included) moved by exactly what the clients saw.
# Faults: (a) the debug model panics on a marker input while other requests flow: the panicking
# batches answer 500, the server stays up and the worker serves on; (b) a model version swapped
# (version 2 added and loaded: version 1 drains) and the model unloaded and loaded again, under
# load; (c) 1,000 clients that send a request and reset the connection before the answer, under
# load: the ones that left are counted CANCELED; (d) SIGTERM under load: every request written is
# answered (200, or 503 once draining), the process exits 0 within --exit-timeout-secs.
# The client is scripts/faults_client.py (Python 3 standard library). Prints one line per check and
# a table; exit 1 if any check failed.
# Usage: scripts/faults.sh
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), HANG_S (default 10),
#      WORKERS (closed-loop background clients, default 8), DISCONNECTS (default 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
HANG_S=${HANG_S:-10}
WORKERS=${WORKERS:-8}
DISCONNECTS=${DISCONNECTS:-1000}
EXIT_TIMEOUT=20
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release, or set FERRITE_BIN)" >&2; exit 1; }
CLIENT=(python3 scripts/faults_client.py)

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

debug_model() { # name max_batch parameters
  mkdir -p "$tmp/repo/$1/1"
  cat >"$tmp/repo/$1/config.toml" <<EOF
architecture = "debug"
max_batch_size = $2
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
[parameters]
$3
EOF
}
# dbg: 5 ms a batch of at most 8 (about 1,600 rows/s), panics on -1; swap: 2 ms a batch.
debug_model dbg 8 $'sleep_us = 5000\npanic_on = -1.0'
debug_model swap 8 'sleep_us = 2000'
body() { echo "{\"inputs\": [{\"name\": \"x\", \"shape\": [1, 4], \"datatype\": \"FP32\", \"data\": [$1, 2, 3, 4]}]}" >"$tmp/$2.json"; }
body 1 ok
body -1 panic

log=$tmp/ferrite.log
"$FERRITE_BIN" serve --model-repository "$tmp/repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 \
  --gpus none --access-log=false --model-control explicit --exit-timeout-secs "$EXIT_TIMEOUT" 2>"$log" &
server=$!
pids+=("$server")
for _ in $(seq 600); do grep -q 'server ready' "$log" && break; sleep 0.1; done
grep -q 'server ready' "$log" || { echo "ferrite did not become ready:" >&2; cat "$log" >&2; exit 1; }
line=$(grep -o 'listening on http://[0-9.:]*\b (metrics on http://[0-9.:]*/metrics)' "$log")
url=$(sed -E 's/listening on (http:[^ ]*) .*/\1/' <<<"$line")
metrics=$(sed -E 's/.*metrics on (http:[^)]*)\)/\1/' <<<"$line")

counters() { # model -> "success failures canceled backend pending" (all versions summed)
  curl -s "$metrics" | awk -v m="model=\"$1\"" '
    index($0, m) == 0 {next}
    /^nv_inference_request_success\{/ {s += $NF}
    /^nv_inference_request_failure\{/ {f += $NF; if (/reason="CANCELED"/) c += $NF; if (/reason="BACKEND"/) b += $NF}
    /^nv_inference_pending_request_count\{/ {p += $NF}
    END {print s + 0, f + 0, c + 0, b + 0, p + 0}'
}
settled() { # model -> counters once the queue is empty and the counters stop moving (<= 10 s)
  local a b
  a=$(counters "$1")
  for _ in $(seq 100); do
    sleep 0.1
    b=$(counters "$1")
    [[ "$a" == "$b" && $(cut -d' ' -f5 <<<"$b") == 0 ]] && break
    a=$b
  done
  echo "$b"
}
delta() { paste -d' ' <(tr ' ' '\n' <<<"$2") <(tr ' ' '\n' <<<"$1") | awk '{printf "%s ", $1 - $2}'; }
field() { python3 -c "import json, sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], 0))" "$1" "$2"; }
sum_fields() { local f=$1 s=0 k; shift; for k in "$@"; do s=$((s + $(field "$f" "$k"))); done; echo $s; }

fails=0
rows=()
check() { # name condition-result message
  if [[ $2 == ok ]]; then echo "PASS $1: $3"; else echo "FAIL $1: $3"; fails=$((fails + 1)); fi
}
drive() { # model out: background closed loop until $tmp/stop exists; its pid in $bg
  rm -f "$tmp/stop"
  "${CLIENT[@]}" drive "$url/v2/models/$1/infer" "$tmp/ok.json" --workers "$WORKERS" --timeout "$HANG_S" \
    --stop-file "$tmp/stop" --out "$2" &
  bg=$!
  pids+=("$bg")
}
no_hang() { # client json -> "ok" when every written request was answered
  local h r
  h=$(field "$1" hung); r=$(field "$1" reset)
  [[ $h == 0 && $r == 0 ]] && echo ok || echo "hung=$h reset=$r"
}

# (a) a worker panic under load -------------------------------------------------------------------
before=$(counters dbg)
drive dbg "$tmp/a-bg.json"
"${CLIENT[@]}" drive "$url/v2/models/dbg/infer" "$tmp/panic.json" --workers 2 --count 20 --timeout "$HANG_S" --out "$tmp/a-panic.json"
touch "$tmp/stop"; wait "$bg"
"${CLIENT[@]}" drive "$url/v2/models/dbg/infer" "$tmp/ok.json" --workers 4 --count 200 --timeout "$HANG_S" --out "$tmp/a-after.json"
d=$(delta "$before" "$(settled dbg)")
read -r ds df dc db _ <<<"$d"
sent=$(sum_fields "$tmp/a-bg.json" sent); sent=$((sent + $(field "$tmp/a-panic.json" sent) + $(field "$tmp/a-after.json" sent)))
ok=$(( $(field "$tmp/a-bg.json" ok) + $(field "$tmp/a-panic.json" ok) + $(field "$tmp/a-after.json" ok) ))
err=$(( $(field "$tmp/a-bg.json" errors) + $(field "$tmp/a-panic.json" errors) + $(field "$tmp/a-after.json" errors) ))
s500=$(( $(field "$tmp/a-bg.json" status_500) + $(field "$tmp/a-panic.json" status_500) ))
panics=$(grep -c 'forward pass panicked; failing this batch' "$log" || true)
check "a.no-hang" "$(for f in a-bg a-panic a-after; do no_hang "$tmp/$f.json"; done | sort -u | paste -sd,)" "background, marker and after: every request answered within ${HANG_S}s"
check "a.panic-answered" "$([[ $(field "$tmp/a-panic.json" status_500) == 20 ]] && echo ok || echo no)" "20 marker requests answered 500 ($(field "$tmp/a-panic.json" status_500)); $panics panicking batches logged; $s500 answers 500 in all (marker and batch-mates)"
check "a.recovered" "$(kill -0 "$server" 2>/dev/null && [[ $(field "$tmp/a-after.json" ok) == 200 ]] && echo ok || echo no)" "server up; 200/200 requests after the panics answered 200"
check "a.accounting" "$([[ $ds == "$ok" && $df == "$err" && $db == "$s500" && $((ds + df)) == "$sent" ]] && echo ok || echo no)" "sent $sent = success $ds + failure $df (BACKEND $db, CANCELED $dc); client: ok $ok, errors $err (500: $s500)"
rows+=("| (a) worker panic | $sent | $ok | $err | $dc | $(( $(field "$tmp/a-bg.json" hung) + $(field "$tmp/a-panic.json" hung) + $(field "$tmp/a-after.json" hung) )) | $(field "$tmp/a-bg.json" max_latency_s) s |")

# (b) a version swapped, then the model unloaded and loaded again, under load ---------------------
before=$(counters swap)
drive swap "$tmp/b-bg.json"
admin() { curl -s -o "$tmp/admin.out" -w '%{http_code}' -X POST "$url/v2/repository/models/swap/$1"; }
sleep 2
mkdir -p "$tmp/repo/swap/2"
s_load=$(admin load)          # version 2 replaces version 1 (latest = 1): 1 drains
sleep 2
s_unload=$(admin unload)      # requests from here on: model not found
sleep 1
s_reload=$(admin load)
sleep 2
touch "$tmp/stop"; wait "$bg"
d=$(delta "$before" "$(settled swap)")
read -r ds df dc _ _ <<<"$d"
sent=$(field "$tmp/b-bg.json" sent); ok=$(field "$tmp/b-bg.json" ok); err=$(field "$tmp/b-bg.json" errors)
by_status=$(python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(' '.join(f'{k[7:]}:{v}' for k, v in sorted(d.items()) if k.startswith('status_')))" "$tmp/b-bg.json")
v1=$(curl -s "$metrics" | awk '/^nv_inference_request_success\{model="swap",version="1"\}/ {print $NF}')
v2=$(curl -s "$metrics" | awk '/^nv_inference_request_success\{model="swap",version="2"\}/ {print $NF}')
check "b.admin" "$([[ $s_load == 200 && $s_unload == 200 && $s_reload == 200 ]] && echo ok || echo no)" "load v2 $s_load, unload $s_unload, load $s_reload; served by v1 ${v1:-0}, v2 ${v2:-0}"
check "b.no-hang" "$(no_hang "$tmp/b-bg.json")" "every request answered within ${HANG_S}s (by status: $by_status)"
# Requests that found no model (unloaded) are refused before any version's counter exists: the rest
# of the client's errors must be the server's failures, one for one.
unrouted=$((err - df))
no_version=$(( $(field "$tmp/b-bg.json" status_404) + $(field "$tmp/b-bg.json" status_503) ))
check "b.accounting" "$([[ $ds == "$ok" && $dc == 0 && $unrouted -ge 0 && $unrouted -le $no_version && $((ds + df + unrouted)) == "$sent" ]] && echo ok || echo no)" "sent $sent = success $ds + failure $df + refused while unloaded $unrouted; client: ok $ok, errors $err"
rows+=("| (b) version swap + unload + load | $sent | $ok | $err | $dc | $(field "$tmp/b-bg.json" hung) | $(field "$tmp/b-bg.json" max_latency_s) s |")

# (c) 1,000 clients leaving mid-request, under load -----------------------------------------------
before=$(counters dbg)
drive dbg "$tmp/c-bg.json"
"${CLIENT[@]}" disconnect "$url/v2/models/dbg/infer" "$tmp/ok.json" --clients "$DISCONNECTS" --hold-ms 200 --out "$tmp/c-dis.json"
touch "$tmp/stop"; wait "$bg"
d=$(delta "$before" "$(settled dbg)")
read -r ds df dc _ _ <<<"$d"
dsent=$(field "$tmp/c-dis.json" sent); left=$(field "$tmp/c-dis.json" left_unanswered); early=$(field "$tmp/c-dis.json" answered_before_leaving)
sent=$(( $(field "$tmp/c-bg.json" sent) + dsent )); ok=$(field "$tmp/c-bg.json" ok); err=$(field "$tmp/c-bg.json" errors)
check "c.no-hang" "$(no_hang "$tmp/c-bg.json")" "background: every request answered within ${HANG_S}s; $DISCONNECTS clients: $dsent sent, $left left unanswered, $early answered within 200 ms"
check "c.alive" "$(kill -0 "$server" 2>/dev/null && curl -sf "$url/v2/health/ready" >/dev/null && echo ok || echo no)" "server up and ready"
# Each client that left is either counted CANCELED (dropped before compute) or was computed anyway
# (counted a success although nobody read it); the ones answered before leaving are successes.
check "c.accounting" "$([[ $((ds + df)) == "$sent" && $((df - dc)) == "$err" && $dc -le $left ]] && echo ok || echo no)" "sent $sent = success $ds + failure $df (CANCELED $dc of $left that left); background ok $ok, errors $err"
rows+=("| (c) $DISCONNECTS clients leave mid-request | $sent | $((ok + early)) | $err | $dc | $(field "$tmp/c-bg.json" hung) | $(field "$tmp/c-bg.json" max_latency_s) s |")

# (d) SIGTERM under load --------------------------------------------------------------------------
rm -f "$tmp/stop"
"${CLIENT[@]}" drive "$url/v2/models/dbg/infer" "$tmp/ok.json" --workers $((WORKERS * 4)) --duration 60 --stop-on-refused \
  --timeout "$HANG_S" --out "$tmp/d-bg.json" &
bg=$!
sleep 3
before=$(counters dbg)
t0=$(date +%s.%N)
kill -TERM "$server"
rc=0
wait "$server" || rc=$?
t1=$(date +%s.%N)
pids=("${pids[@]/$server/}")
wait "$bg"
took=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.2f", b - a}')
by_status=$(python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print(' '.join(f'{k[7:]}:{v}' for k, v in sorted(d.items()) if k.startswith('status_')))" "$tmp/d-bg.json")
check "d.exit" "$([[ $rc == 0 ]] && awk -v t="$took" -v m="$EXIT_TIMEOUT" 'BEGIN {exit !(t <= m)}' && echo ok || echo no)" "exit status $rc after ${took}s (--exit-timeout-secs $EXIT_TIMEOUT)"
check "d.no-hang" "$(no_hang "$tmp/d-bg.json")" "every request written was answered within ${HANG_S}s (by status: $by_status; refused at connect after the listener closed: $(field "$tmp/d-bg.json" refused))"
check "d.drained" "$(grep -q 'in-flight requests drained' "$log" && grep -q 'shutdown complete' "$log" && ! grep -q 'drain timed out' "$log" && echo ok || echo no)" "log: in-flight requests drained, shutdown complete"
rows+=("| (d) SIGTERM under load | $(field "$tmp/d-bg.json" sent) | $(field "$tmp/d-bg.json" ok) | $(field "$tmp/d-bg.json" errors) | - | $(field "$tmp/d-bg.json" hung) | $(field "$tmp/d-bg.json" max_latency_s) s |")
echo "# counters at SIGTERM (dbg): success failure canceled backend pending = $before"

echo
echo "| fault | requests sent | answered 200 | answered error | counted canceled | hung | max latency |"
echo "|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
if [[ $fails -gt 0 ]]; then echo "FAIL: $fails check(s) failed"; exit 1; fi
echo "PASS: every fault answered every request, counted exactly"
