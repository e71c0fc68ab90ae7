#!/usr/bin/env bash
# Proves what can be proven about the `cuda` feature without a GPU (../shared/CUDA.md): installs the
# CUDA 13.0 toolchain wheels from PyPI (idempotent, ~1.2 GB under ${XDG_CACHE_HOME:-~/.cache}/ferrite),
# builds a stub libcuda from cudarc's symbol list, runs `cargo build --features cuda` (its own target
# dir: one per toolkit), then starts that binary and checks it falls back to the CPU with one log line
# and serves an inference. Ends with `cuda build check: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite"
WHEELS="$CACHE/cuda13full"
CU="$WHEELS/nvidia/cu13"
TARGET="${CUDA_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}-cuda}"
if [[ ! -x "$CU/bin/nvcc" || ! -f "$CU/lib/libcublas.so.13" || ! -f "$CU/lib/libcurand.so.10" ]]; then
  rm -rf "$WHEELS"
  # One pip command: a second install into the same --target silently skips files.
  python3 -m pip install --disable-pip-version-check -q --no-cache-dir --target "$WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
    nvidia-nvvm==13.0.88 nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85 \
    "nvidia-cublas<13.1" "nvidia-curand<10.4.1"
fi
(cd "$CU/lib" && for l in cudart nvrtc cublas cublasLt; do ln -sf "lib$l.so.13" "lib$l.so"; done && ln -sf libcurand.so.10 libcurand.so)

cargo fetch -q
CUDARC=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -mindepth 2 -maxdepth 2 -type d -name 'cudarc-0.19.*' | sort | tail -n 1)
if [[ ! -f "$CU/lib/stubs/libcuda.so.1" ]]; then
  mkdir -p "$CU/lib/stubs"
  grep -ohE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$CUDARC/src/driver/sys/mod.rs" | sed -E 's/.*\("(.*)"\)/\1/' \
    | sort -u | sed 's/.*/int &(void){return 34;}/' >"$CU/lib/stubs/libcuda_stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so.1" "$CU/lib/stubs/libcuda_stub.c"
  ln -sf libcuda.so.1 "$CU/lib/stubs/libcuda.so"
fi

echo "building with --features cuda (CUDA 13.0 wheels, sm_${CUDA_COMPUTE_CAP:-90}) into $TARGET"
CUDA_HOME="$CU" PATH="$CU/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" \
  LIBRARY_PATH="$CU/lib/stubs:$CU/lib" CARGO_TARGET_DIR="$TARGET" cargo build --features cuda

log=$(mktemp)
LD_LIBRARY_PATH="$CU/lib/stubs:$CU/lib" "$TARGET/debug/ferrite" serve --model-repository models \
  --host 127.0.0.1 --http-port 0 --metrics-port 0 2>"$log" &
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
