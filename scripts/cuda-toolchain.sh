# Sourced (not run) by scripts/check-cuda-build.sh and benches/gpu-bundle.sh: installs the CUDA 13.0
# toolchain wheels from PyPI (idempotent, ~1.2 GB under ${XDG_CACHE_HOME:-~/.cache}/ferrite; see
# docs/CUDA.md), builds a stub libcuda from cudarc's symbol list so that `--features cuda` links
# and starts without a driver, and sets:
#   CU          the CUDA_HOME-shaped folder of the wheels
#   CUDA_TARGET the cargo target dir for cuda builds (one per toolkit; $CUDA_TARGET_DIR, else
#               ${CARGO_TARGET_DIR:-$PWD/target}-cuda)
#   cuda_env    a command prefix (array) with CUDA_HOME, PATH, CUDA_COMPUTE_CAP (default 90),
#               LIBRARY_PATH and CARGO_TARGET_DIR set for `cargo ... --features cuda`
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite"
WHEELS="$CACHE/cuda13full"
CU="$WHEELS/nvidia/cu13"
CUDA_TARGET="${CUDA_TARGET_DIR:-${CARGO_TARGET_DIR:-$PWD/target}-cuda}"
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
cuda_env=(env CUDA_HOME="$CU" PATH="$CU/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  LIBRARY_PATH="$CU/lib/stubs:$CU/lib" CARGO_TARGET_DIR="$CUDA_TARGET")
