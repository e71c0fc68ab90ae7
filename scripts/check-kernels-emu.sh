#!/usr/bin/env bash
# Runs kernels/*.cu on the CPU (no GPU, no CUDA toolkit): kernels/emu/cuda_emu.h emulates blocks,
# __syncthreads, warp shuffles and shared memory with one thread per CUDA thread, and
# kernels/emu/emu_test.cpp checks every entry point (f32, f16, bf16) at the Rust launchers' launch
# shapes against a double-precision reference, on fresh random inputs (the seed is printed; pass it
# as $1 to rerun one). Built with AddressSanitizer and UBSan, so an out-of-bounds or misaligned access
# in a kernel fails too. Needs g++ >= 11 (std::barrier). Ends with
# `emulated kernel checks: N passed, M failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${CARGO_TARGET_DIR:-$PWD/target}/kernels-emu"
mkdir -p "$OUT"
g++ -std=c++20 -O1 -g -pthread -Wall -Wno-unknown-pragmas -Werror \
  -fsanitize=address,undefined -fno-sanitize-recover=undefined \
  -o "$OUT/emu_test" kernels/emu/emu_test.cpp
"$OUT/emu_test" "$@"
