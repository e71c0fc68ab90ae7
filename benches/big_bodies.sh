#!/usr/bin/env bash
# Issue 15: the server under maximum-size request bodies, two figures:
#   concurrent  CONC clients each upload one body of just under --max-body-bytes (KServe v2 JSON,
#               digits rows, refused after decoding: more rows than the model's max_batch_size) at
#               once; reports the server's peak RSS growth (VmHWM after `clear_refs 5`), the answers
#               by status (400 decoded and refused, 503 + Retry-After past --max-inflight-bytes) and
#               the wall time
#   small       while one maximum-size body is uploaded and decoded, a client sends small requests
#               (one digits row) back to back on its own connection; reports their latency (p50,
#               p99, max) during the big request, and the big request's own time
# Usage: benches/big_bodies.sh [CONC=64] [BODY_MIB=64] [SMALL_ROUNDS=3]
# Env: FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite); MAX_INFLIGHT (bytes,
#      default: the server's own default, an eighth of memory).
set -euo pipefail
cd "$(dirname "$0")/.."
CONC=${1:-64}
BODY_MIB=${2:-64}
SMALL_ROUNDS=${3:-3}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
[[ -x "$FERRITE_BIN" ]] || { echo "no ferrite binary at $FERRITE_BIN (cargo build --release)" >&2; exit 1; }
tmp=$(mktemp -d)
pid=""
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$tmp/repo"
cp -r models/digits "$tmp/repo/"
limit=$((BODY_MIB * 1024 * 1024))
python3 - "$tmp/big.json" "$limit" <<'PY'
import json, random, sys
path, limit = sys.argv[1], int(sys.argv[2])
random.seed(0)
rows = [json.dumps([random.randint(0, 16) for _ in range(64)], separators=(",", ":")) for _ in range(1000)]
head = '{"inputs":[{"name":"pixels","shape":[%d,64],"datatype":"FP32","data":['
# Rows until the body is just under the limit (the shape's digits are counted with room to spare).
budget = limit - len(head % 10**9) - len("]}]}")
parts, size = [], 0
while True:
    r = rows[len(parts) % 1000]
    if size + len(r) + 1 > budget:
        break
    parts.append(r)
    size += len(r) + 1
with open(path, "w") as f:
    f.write(head % len(parts) + ",".join(parts) + "]}]}")
PY
bytes=$(stat -c %s "$tmp/big.json")
echo "# body: $(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}') MiB of KServe v2 JSON (limit $BODY_MIB MiB)"

start() {
  local log="$tmp/server.log" args=()
  [[ -n "${MAX_INFLIGHT:-}" ]] && args+=(--max-inflight-bytes "$MAX_INFLIGHT")
  "$FERRITE_BIN" serve --model-repository "$tmp/repo" --host 127.0.0.1 --http-port 0 --metrics-port 0 \
    --grpc-port 0 --access-log=false --max-body-bytes "$limit" "${args[@]}" 2>"$log" &
  pid=$!
  for _ in $(seq 300); do grep -q 'server ready' "$log" && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { cat "$log" >&2; exit 1; }
  url=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1)
  url=${url#listening on }
}
stop() {
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

# --- concurrent maximum bodies ---
start
echo 5 >"/proc/$pid/clear_refs"
before=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
t0=$(date +%s.%N)
for i in $(seq "$CONC"); do
  # -T streams the file (curl does not hold it in memory); -X POST keeps the method.
  curl -s -o /dev/null -w '%{http_code} %header{retry-after}\n' -X POST -T "$tmp/big.json" \
    -H 'content-type: application/json' "$url/v2/models/digits/infer" >"$tmp/c.$i" &
done
wait $(jobs -p | grep -v "^$pid\$")
t1=$(date +%s.%N)
after=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' \
  -d '{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}]}' \
  "$url/v2/models/digits/infer")
echo
echo "| clients x body | answers (status [retry-after]: count) | peak RSS growth | growth / (clients x body) | wall s | server answers afterwards |"
echo "|---|---|---|---|---|---|"
answers=$(cat "$tmp"/c.* | sort | uniq -c | awk '{printf "%s%s%s: %s", sep, $2, ($3 != "" ? " [" $3 "]" : ""), $1; sep = ", "}')
awk -v c="$CONC" -v b="$bytes" -v a="$answers" -v d=$((after - before)) -v w="$(echo "$t1 - $t0" | bc)" -v s="$status" \
  'BEGIN {printf "| %d x %.0f MiB | %s | %.0f MiB | %.2f | %.1f | %s |\n", c, b / 1048576, a, d / 1024, d * 1024 / (c * b), w, s}'
stop

# --- a small request while a big one is decoded ---
start
echo
echo "| round | big request: status, s | small requests during it | small p50 ms | small p99 ms | small max ms |"
echo "|---|---|---|---|---|---|"
for r in $(seq "$SMALL_ROUNDS"); do
  python3 - "$url" "$tmp/big.json" "$r" <<'PY'
import http.client, json, sys, threading, time
url, path, rnd = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = url.removeprefix("http://").split(":")
small = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                "data": [float(i % 17) for i in range(64)]}]})
done = threading.Event()
big = {}
def send_big():
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    with open(path, "rb") as f:
        t = time.perf_counter()
        c.request("POST", "/v2/models/digits/infer", body=f,
                  headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        big.update(status=r.status, secs=time.perf_counter() - t)
    done.set()
c = http.client.HTTPConnection(host, int(port), timeout=120)
def one():
    t = time.perf_counter()
    c.request("POST", "/v2/models/digits/infer", body=small, headers={"content-type": "application/json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    return (time.perf_counter() - t) * 1000
for _ in range(20):  # warm the connection and the model
    one()
th = threading.Thread(target=send_big)
th.start()
lat = []
while not done.is_set():
    lat.append(one())
th.join()
lat.sort()
pct = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"| {rnd} | {big['status']}, {big['secs']:.2f} | {len(lat)} | {pct(0.5):.2f} | {pct(0.99):.2f} | {lat[-1]:.2f} |")
PY
done
stop
