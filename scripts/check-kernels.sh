#!/usr/bin/env bash
# Compile check for kernels/*.cu without a GPU: installs NVIDIA's CUDA 13.0 compiler wheels from PyPI
# (NVRTC, ptxas, headers; idempotent, ~0.5 GB under ${XDG_CACHE_HOME:-~/.cache}/ferrite/cuda13) and
# runs scripts/check_kernels.py for sm_80 and sm_90 (fails on errors, missing entry points, spills).
# CUDA 13.0 matches the driver (580) of the GPU machines this project is lent; see ../shared/CUDA.md.
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite/cuda13"
CU="$CUDA_WHEELS/nvidia/cu13"
if [[ ! -x "$CU/bin/ptxas" || ! -f "$CU/lib/libnvrtc.so.13" || ! -f "$CU/include/cuda_fp16.h" ]]; then
  rm -rf "$CUDA_WHEELS"
  # One pip command: a second install into the same --target silently skips files.
  python3 -m pip install --disable-pip-version-check -q --no-cache-dir --target "$CUDA_WHEELS" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-cccl==13.0.85
fi
LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" python3 scripts/check_kernels.py "$CU" kernels 80 90
