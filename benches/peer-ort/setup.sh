#!/usr/bin/env bash
# Creates the ONNX Runtime peer's venv (torch for the export, optimum, onnxruntime; pinned in
# requirements.txt and constraints.txt) under ${XDG_CACHE_HOME:-~/.cache}/ferrite/peer-ort-venv.
# Idempotent: a venv whose stamp matches the pin files is left alone. Prints the venv path on
# stdout and its size on stderr. Needs PyPI (setup only; nothing here downloads a model).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite/peer-ort-venv"
stamp="$VENV/.requirements.sha256"
want=$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d" " -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$VENV"
  exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
# --no-cache-dir: the wheels (torch and the nvidia-* ones, ~3 GB) are not kept a second time.
"$VENV/bin/pip" install --disable-pip-version-check --no-cache-dir -q \
  -r "$here/requirements.txt" -c "$here/constraints.txt" >&2
"$VENV/bin/python" -c 'import onnxruntime, optimum.exporters.onnx, tokenizers, torch, transformers; print("onnxruntime", onnxruntime.__version__, "torch", torch.__version__, "transformers", transformers.__version__)' >&2
echo "$want" >"$stamp"
echo "peer-ort venv: $(du -sh "$VENV" | cut -f1) installed" >&2
echo "$VENV"
