#!/usr/bin/env bash
# Proves what can be proven about the `cuda` feature without a GPU (docs/CUDA.md): installs the
# CUDA 13.0 toolchain wheels from PyPI (idempotent, ~1.2 GB under ${XDG_CACHE_HOME:-~/.cache}/ferrite),
# builds a stub libcuda from cudarc's symbol list, runs `cargo build --features cuda` (its own target
# dir: one per toolkit), then starts that binary and checks it falls back to the CPU with one log line
# and serves an inference. Ends with `cuda build check: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh
TARGET="$CUDA_TARGET"

echo "building with --features cuda (CUDA 13.0 wheels, sm_${CUDA_COMPUTE_CAP:-90}) into $TARGET"
"${cuda_env[@]}" cargo build --features cuda

log=$(mktemp)
LD_LIBRARY_PATH="$CU/lib/stubs:$CU/lib" "$TARGET/debug/ferrite" serve --model-repository models \
  --host 127.0.0.1 --http-port 0 --metrics-port 0 --grpc-port 0 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
passed=0
failed=0
addr=""
for _ in $(seq 120); do
  addr=$(grep -oE 'listening on http://[0-9.:]+' "$log" | head -n 1 | sed 's|listening on http://||' || true)
  [[ -n "$addr" ]] && curl -sf "http://$addr/v2/health/ready" >/dev/null && break
  sleep 0.5
done
body='{"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","data":[0,0,5,13,9,1,0,0,0,0,13,15,10,15,5,0,0,3,15,2,0,11,8,0,0,4,12,0,0,8,8,0,0,5,8,0,0,9,8,0,0,4,11,0,1,12,7,0,0,2,14,5,10,12,0,0,0,0,6,13,10,0,0,0]}]}'
if [[ -n "$addr" ]] && grep -q "no GPU in use" "$log" \
  && curl -sf "http://$addr/v2/models/digits/infer" -d "$body" | grep -q '"probabilities"'; then
  echo "cuda build: the binary started on the stub driver, fell back to the CPU and served"
  passed=1
else
  echo "cuda build: the binary did not fall back and serve; its log:" >&2
  cat "$log" >&2
  failed=1
fi
echo "cuda build check: $passed passed, $failed failed"
[[ $failed == 0 ]]
