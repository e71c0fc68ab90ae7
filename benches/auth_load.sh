#!/usr/bin/env bash
# Issue 14 benchmark: what access control costs. digits KServe v2 JSON (one row per request) at CONN
# keep-alive connections with wrk, against one binary started five ways, taking turns ROUNDS times
# (interleaved; SLICES short turns each per round; only one under load at a time):
#   off      no [auth], --access-log=false
#   log      no [auth], access log on (the default)
#   apikey   [auth] with an API key (sent as Authorization: Bearer), access log on
#   hs256    [auth.jwt] HS256 (a token minted here with PyJWT-compatible code), access log on
#   rs256    [auth.jwt] RS256 (PEM public key), access log on
#   apikey-nolog  the API key with the access log off (only when named in TARGETS)
#   hs256-nolog   HS256 with the access log off (only when named in TARGETS)
#   off-jwt  as off (no auth, no log), the client sending the HS256 token anyway: the header's own
#            cost (client, kernel, parsing), which no server-side change removes (only in TARGETS)
# Prints each round and the median req/s per target with its ratio to `off`, the median over rounds
# of each round's own ratio (target / the same round's `off`: slow drift of the machine cancels), and
# the server's own CPU time per request (utime + stime from /proc over the requests wrk completed).
# Usage: benches/auth_load.sh [DUR=10] [CONN=64] [ROUNDS=3]
#   e.g. SLICES=12 ORDER=shuffle benches/auth_load.sh 3 64 5   (5 rounds of 12 x 3 s per target)
# Env: TARGETS (default "off log apikey hs256 rs256"), SLICES (turns per target per round,
#      default 1), FRESH (1, the default: fresh servers each round; 0: one server per target for
#      the whole run), START_ORDER (with FRESH=0: the servers' start order),
#      ORDER (alternate, the default: odd rounds in order, even rounds reversed; shuffle: a random
#      order each round, seeded by SEED, default 1),
#      FERRITE_BIN (default ${CARGO_TARGET_DIR:-target}/release/ferrite), PYTHON (with
#      `cryptography` for the RS256 key; default python3), WRK_THREADS (2),
#      LOG_SINK (pipe, the default: each server's stderr goes through a pipe that is drained, as to
#      a container runtime; file: into a file in $TMPDIR, as before 2026-12-03. On a VM whose
#      memory the host backs on first touch, a log file growing by ~12 MB/s takes fresh pages all
#      the time: writing it cost ~0.7 us a line there, 13x the cost of reused page-cache memory,
#      and it charged that to the access log).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
CONN=${2:-64}
ROUNDS=${3:-3}
THREADS=${WRK_THREADS:-2}
FERRITE_BIN=${FERRITE_BIN:-${CARGO_TARGET_DIR:-target}/release/ferrite}
PY=${PYTHON:-python3}
command -v wrk >/dev/null || { echo "installing wrk (Debian package)" >&2; apt-get install -y wrk >/dev/null; }
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

# Keys, tokens and settings files (stdlib HMAC for HS256; `cryptography` for RS256).
"$PY" - "$tmp" <<'PY'
import base64, hashlib, hmac, json, os, random, secrets, sys, time
tmp = sys.argv[1]
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
claims = {"sub": "bench", "exp": int(time.time()) + 86400, "scope": "infer"}
def token(alg, sign):
    h = b64(json.dumps({"alg": alg, "typ": "JWT"}).encode()); p = b64(json.dumps(claims).encode())
    return f"{h}.{p}.{b64(sign(f'{h}.{p}'.encode()))}"
key = "fk_" + secrets.token_urlsafe(32)
secret = secrets.token_hex(32)
rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
open(f"{tmp}/hs.secret", "w").write(secret)
open(f"{tmp}/rsa.pub", "wb").write(rsa_key.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
open(f"{tmp}/apikey.toml", "w").write(f'[[auth.api_keys]]\nname = "bench"\nsha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\nscopes = ["infer"]\n')
open(f"{tmp}/hs256.toml", "w").write(f'[auth.jwt]\nalgorithms = ["HS256"]\nhs256_secret_file = "{tmp}/hs.secret"\n')
open(f"{tmp}/rs256.toml", "w").write(f'[auth.jwt]\nalgorithms = ["RS256"]\npublic_key_file = "{tmp}/rsa.pub"\n')
open(f"{tmp}/apikey.hdr", "w").write(key)
open(f"{tmp}/hs256.hdr", "w").write(token("HS256", lambda m: hmac.new(secret.encode(), m, hashlib.sha256).digest()))
open(f"{tmp}/rs256.hdr", "w").write(token("RS256", lambda m: rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256())))
random.seed(0)
with open(f"{tmp}/digits.jsonl", "w") as f:
    for _ in range(64):
        px = [float(random.randint(0, 16)) for _ in range(64)]
        f.write(json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": px}]}) + "\n")
PY

declare -A url hdr pid
start() { # name extra-args...
  local name=$1 log="$tmp/$1.log" line
  shift
  local cmd=("$FERRITE_BIN" serve --model-repository "${MODELS:-models}" --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 "$@")
  rm -f "$log"
  if [[ "${LOG_SINK:-pipe}" == file ]]; then
    "${cmd[@]}" 2>"$log" &
  else
    # Startup lines (up to "server ready") into the file, the rest (the access log) drained.
    "${cmd[@]}" 2> >(while IFS= read -r l; do printf '%s\n' "$l" >>"$log"; [[ $l == *"server ready"* ]] && break; done; exec cat >/dev/null) &
  fi
  pids+=($!)
  pid[$name]=$!
  for _ in $(seq 600); do grep -q 'server ready' "$log" 2>/dev/null && break; sleep 0.1; done
  grep -q 'server ready' "$log" || { echo "ferrite $name did not become ready:" >&2; cat "$log" >&2; exit 1; }
  line=$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1)
  url[$name]=${line#listening on }
}
launch() { # target: starts its server (url[t], pid[t], hdr[t])
  case $1 in
    off) start off --access-log=false; hdr[off]="" ;;
    log) start log; hdr[log]="" ;;
    off-jwt) start off-jwt --access-log=false; hdr[$1]="Authorization: Bearer $(cat "$tmp/hs256.hdr")" ;;
    apikey-nolog) start "$1" --config "$tmp/apikey.toml" --access-log=false; hdr[$1]="Authorization: Bearer $(cat "$tmp/apikey.hdr")" ;;
    hs256-nolog) start "$1" --config "$tmp/hs256.toml" --access-log=false; hdr[$1]="Authorization: Bearer $(cat "$tmp/hs256.hdr")" ;;
    *) start "$1" --config "$tmp/$1.toml"; hdr[$1]="Authorization: Bearer $(cat "$tmp/$1.hdr")" ;;
  esac
}
stop() { # target
  kill "${pid[$1]}" 2>/dev/null || true
  wait "${pid[$1]}" 2>/dev/null || true
}
# FRESH=1 (the default): each round starts the five servers afresh (in a random order), warms
# them, and stops them at its end, so what one server process happens to draw at start (thread
# placement, memory layout) does not follow its target through every round. FRESH=0: one server
# per target for the whole run, started in START_ORDER (env, default the targets' order).
# SLICES (default 1): a round measures each target SLICES times for DUR seconds, the targets taking
# turns slice by slice (ORDER per pass); a round's figure for a target is its requests over its time
# in all the round's slices. One server's throughput swings ±15% between 3-second windows here
# (the digits batches it happens to form: 3.5-3.9 rows, 79-112 us of CPU a request), so short
# slices, many of them, averaged within a round, give each round's ratio a small error.
FRESH=${FRESH:-1}
SLICES=${SLICES:-1}
TARGETS=${TARGETS:-off log apikey hs256 rs256}
[[ " $TARGETS " == *" off "* ]] || { echo "TARGETS must include off (the ratios are to it)" >&2; exit 1; }
shuffled() { # seed: the targets in a random order (reproducible from SEED)
  tr ' ' '\n' <<<"$1" | shuf --random-source=<(openssl enc -aes-256-ctr -pass pass:"${SEED:-1}-$2" -nosalt </dev/zero 2>/dev/null) | tr '\n' ' '
}
if [[ "$FRESH" == 0 ]]; then
  for t in ${START_ORDER:-$TARGETS}; do launch "$t"; done
fi
run() { # target dur
  local args=(-t"$THREADS" -c"$CONN" -d"$2" --latency -s benches/embed/rotate.lua)
  [[ -n "${hdr[$1]}" ]] && args+=(-H "${hdr[$1]}")
  BODIES="$tmp/digits.jsonl" wrk "${args[@]}" "${url[$1]}/v2/models/digits/infer"
}
warm() { # target: warm-up, and a check that auth passes (no non-2xx)
  local out
  out=$(run "$1" 2s)
  if grep -q "Non-2xx" <<<"$out"; then echo "$1: non-2xx answers in warm-up:" >&2; echo "$out" >&2; exit 1; fi
}
if [[ "$FRESH" == 0 ]]; then for t in $TARGETS; do warm "$t"; done; fi
# The server's CPU time (utime + stime, clock ticks) so far: CPU per request is what each setting
# costs the server itself.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
declare -A results cpu round  # round[r,t]: target t's req/s in round r
for r in $(seq "$ROUNDS"); do
  if [[ "$FRESH" != 0 ]]; then
    for t in $(shuffled "$TARGETS" "start-$r"); do launch "$t"; done
    for t in $TARGETS; do warm "$t"; done
  fi
  declare -A n_req=() secs=() tk=() p99s=() errs=()
  for sl in $(seq "$SLICES"); do
    # ORDER=alternate: odd passes in order, even passes reversed (whatever one run leaves behind,
    # a server still closing 64 connections, hits every target alike); shuffle: random.
    order=$TARGETS
    if [[ "${ORDER:-alternate}" == shuffle ]]; then
      order=$(shuffled "$TARGETS" "$r-$sl")
    elif (((r * SLICES + sl) % 2 == 0)); then
      order=$(tr ' ' '\n' <<<"$TARGETS" | tac | tr '\n' ' ')
    fi
    for t in $order; do
      t0=$(ticks "${pid[$t]}")
      out=$(run "$t" "${DUR}s")
      t1=$(ticks "${pid[$t]}")
      n_req[$t]=$((${n_req[$t]:-0} + $(awk '/requests in/ {print $1}' <<<"$out")))
      secs[$t]=$(awk -v a="${secs[$t]:-0}" -v b="$(awk '/requests in/ {sub(/s,$/, "", $4); print $4}' <<<"$out")" 'BEGIN {print a + b}')
      tk[$t]=$((${tk[$t]:-0} + t1 - t0))
      p99s[$t]+="$(awk '$1 == "99%" {print $2}' <<<"$out") "
      e=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
      errs[$t]=$((${errs[$t]:-0} + ${e:-0}))
    done
  done
  for t in $TARGETS; do
    rps=$(awk -v n="${n_req[$t]}" -v s="${secs[$t]}" 'BEGIN {printf "%.1f", n / s}')
    us=$(awk -v d="${tk[$t]}" -v n="${n_req[$t]}" -v hz="$HZ" 'BEGIN {printf "%.1f", d / hz * 1e6 / n}')
    cpu[$t]+="$us "
    results[$t]+="$rps "
    round[$r,$t]=$rps
    echo "round $r $t: $rps req/s over $SLICES x ${DUR}s, p99 per slice: ${p99s[$t]}server CPU $us us/request$( ((errs[$t] > 0)) && echo ", non-2xx ${errs[$t]}")"
  done
  if [[ "$FRESH" != 0 ]]; then for t in $TARGETS; do stop "$t"; done; fi
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
base=$(med "${results[off]}")
echo
cbase=$(med "${cpu[off]}")
echo "| target | median req/s | vs off | median of the rounds' own ratios (min–max) | server CPU µs/request (median) | vs off |"
echo "|---|---|---|---|---|---|"
for t in $TARGETS; do
  m=$(med "${results[$t]}")
  c=$(med "${cpu[$t]}")
  ratios=""
  for r in $(seq "$ROUNDS"); do
    ratios+="$(awk -v a="${round[$r,off]}" -v b="${round[$r,$t]}" 'BEGIN {printf "%.4f", b/a}') "
  done
  rm=$(med "$ratios")
  range=$(tr ' ' '\n' <<<"$ratios" | grep -v '^$' | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.3f–%.3f", lo, hi}')
  echo "| $t | $m | $(awk -v a="$base" -v b="$m" 'BEGIN {printf "%.3f", b/a}') | $(awk -v x="$rm" 'BEGIN {printf "%.3f", x}') ($range) | $c | $(awk -v a="$cbase" -v b="$c" 'BEGIN {printf "%+.1f", b-a}') |"
done
