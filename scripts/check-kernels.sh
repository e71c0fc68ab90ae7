#!/usr/bin/env bash
# Compile check for kernels/*.cu without a GPU: installs NVIDIA's CUDA 13.0 wheels from PyPI
# (scripts/cuda-toolchain.sh: NVRTC, ptxas, headers; idempotent) and runs scripts/check_kernels.py
# for sm_80 and sm_90 (fails on errors, missing entry points, spills).
# CUDA 13.0 matches the driver (580) of the GPU machines this project is lent; see docs/CUDA.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh # the same CUDA 13.0 wheels as the cuda build: sets CU
LD_LIBRARY_PATH="$CU/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" python3 scripts/check_kernels.py "$CU" kernels 80 90
