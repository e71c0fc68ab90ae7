#!/usr/bin/env bash
# TLS vs plain HTTP on the same binary, same machine, same run: digits KServe v2 JSON
# (/v2/models/digits/infer, one 64-pixel row per request) at CONN keep-alive connections, measured
# with `ferrite bench` (closed loop; over HTTPS it trusts the test CA with --cacert). Two servers run
# side by side (one plain, one with --tls-cert/--tls-key, certificates made here with openssl) and
# take turns, ROUNDS times (interleaved so that machine noise hits both alike); only one is under
# load at a time. Prints each round and the median req/s of each, with the TLS/plain ratio, and the
# server's CPU time per request (utime + stime from /proc over nv_inference_request_success: less
# sensitive than req/s to other work on the machine).
# Usage: benches/tls.sh FERRITE_BIN [CONN=64] [ROUNDS=3]
# Env: MODELS (default models), WINDOW_MS (default 3000), WARMUP_MS (default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:?usage: benches/tls.sh FERRITE_BIN [CONN] [ROUNDS]}
CONN=${2:-64}
ROUNDS=${3:-3}
MODELS=${MODELS:-models}
WINDOW_MS=${WINDOW_MS:-3000}
WARMUP_MS=${WARMUP_MS:-2000}

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

ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
openssl req -x509 "${ec[@]}" -days 2 -keyout "$tmp/ca.key" -out "$tmp/ca.pem" \
  -subj "/CN=bench CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req "${ec[@]}" -keyout "$tmp/server.key" -out "$tmp/server.csr" -subj "/CN=localhost" 2>/dev/null
printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" >"$tmp/server.ext"
openssl x509 -req -in "$tmp/server.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 2 -extfile "$tmp/server.ext" -out "$tmp/server.pem" 2>/dev/null

# start NAME EXTRA_FLAGS...: serves $MODELS on free ports; sets ADDR_<NAME> and METRICS_<NAME>
start() {
  local name=$1
  shift
  "$BIN" serve --model-repository "$MODELS" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 "$@" \
    2>"$tmp/$name.log" &
  pids+=($!)
  printf -v "PID_$name" '%s' "$!"
  for _ in $(seq 600); do
    grep -q "server ready" "$tmp/$name.log" && break
    sleep 0.1
  done
  local line
  line=$(grep -m1 "listening on" "$tmp/$name.log") || { cat "$tmp/$name.log" >&2; exit 1; }
  printf -v "ADDR_$name" '%s' "$(sed -E 's#.*listening on (https?://[^ ]+).*#\1#' <<<"$line")"
  printf -v "METRICS_$name" '%s' "$(sed -E 's#.*metrics on (http://[^ )]+).*#\1#' <<<"$line")"
}
start plain
start tls --tls-cert "$tmp/server.pem" --tls-key "$tmp/server.key"
echo "plain: $ADDR_plain   tls: $ADDR_tls   ($CONN connections, $ROUNDS rounds)"

# cpu_and_count NAME: "<server CPU seconds> <requests served>"
cpu_and_count() {
  local pid="PID_$1" metrics="METRICS_$1"
  local ticks
  ticks=$(awk '{print $14 + $15}' "/proc/${!pid}/stat")
  curl -fsS "${!metrics}" | awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" \
    '/^nv_inference_request_success\{model="digits"/ {n += $2} END {print t / hz, n}'
}

# bench NAME EXTRA_FLAGS...: prints req/s, p99 ms, client CPU cores and server CPU us/request of
# one closed-loop step
bench() {
  local name=$1 addr metrics c0 n0 c1 n1
  shift
  addr="ADDR_$name"
  metrics="METRICS_$name"
  read -r c0 n0 < <(cpu_and_count "$name")
  "$BIN" bench -m digits -u "${!addr}" --metrics-url "${!metrics}" "$@" \
    --concurrency-range "$CONN" --warmup-ms "$WARMUP_MS" --measurement-interval-ms "$WINDOW_MS" \
    --max-windows 6 --json "$tmp/$name.json" >"$tmp/$name.out" 2>&1 \
    || { cat "$tmp/$name.out" >&2; exit 1; }
  read -r c1 n1 < <(cpu_and_count "$name")
  python3 - "$tmp/$name.json" "$c0" "$n0" "$c1" "$n1" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))["steps"][0]
assert not s["errors"], s["errors"]
c0, n0, c1, n1 = map(float, sys.argv[2:])
print("%.0f %.2f %.2f %.1f" % (s["throughput"], s["latency"]["p99_us"] / 1000,
                               s["client_cpu_cores"], (c1 - c0) * 1e6 / max(n1 - n0, 1)))
PY
}

plain_all=()
tls_all=()
plain_cpu=()
tls_cpu=()
for r in $(seq "$ROUNDS"); do
  read -r p p99p cpup sp < <(bench plain)
  read -r t p99t cput st < <(bench tls --cacert "$tmp/ca.pem")
  plain_all+=("$p")
  tls_all+=("$t")
  plain_cpu+=("$sp")
  tls_cpu+=("$st")
  echo "round $r: plain $p req/s (p99 $p99p ms, client CPU $cpup, server $sp us CPU/req)  tls $t req/s (p99 $p99t ms, client CPU $cput, server $st us CPU/req)  ratio $(python3 -c "print(f'{$t/$p:.3f}')")"
done
python3 - "${plain_all[*]}" "${tls_all[*]}" "${plain_cpu[*]}" "${tls_cpu[*]}" <<'PY'
import statistics, sys
plain, tls, pc, tc = ([float(x) for x in a.split()] for a in sys.argv[1:5])
mp, mt = statistics.median(plain), statistics.median(tls)
ratios = [t / p for p, t in zip(plain, tls)]
print(f"median: plain {mp:.0f} req/s, tls {mt:.0f} req/s, tls/plain {mt / mp:.3f} "
      f"(median of per-round ratios {statistics.median(ratios):.3f}); server CPU per request: "
      f"plain {statistics.median(pc):.1f} us, tls {statistics.median(tc):.1f} us")
PY
