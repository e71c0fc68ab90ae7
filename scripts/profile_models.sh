#!/usr/bin/env bash
# Writes the reference profiles (`profile.json`, read by `[monitoring]`) of the bundled models from
# their own data, with `ferrite profile`:
#   models/digits/1/profile.json  <- the digits TRAINING split (scripts/digits_split.py: the same
#                                    sklearn split as scripts/train_digits.py; needs the training
#                                    venv of scripts/requirements-train.txt, PYTHON=.../bin/python)
#   models/minilm/1/profile.json  <- the `reference` sentences of tests/fixtures/minilm-drift-sentences.json
#                                    (this repository's own docs, scripts/doc_sentences.py), when
#                                    models/minilm/1 is installed (scripts/fetch-models.sh)
# Usage: PYTHON=/tmp/ferrite-train/bin/python FERRITE_BIN=target/debug/ferrite scripts/profile_models.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
FERRITE_BIN=${FERRITE_BIN:-target/debug/ferrite}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PYTHON" scripts/digits_split.py train "$tmp/digits-train.safetensors"
"$FERRITE_BIN" profile digits --version 1 --model-repository models \
  --sample "$tmp/digits-train.safetensors" \
  --source "digits training split (sklearn load_digits, stratified 80/20, random_state 42; scripts/digits_split.py)"

if [[ -f models/minilm/1/model.safetensors ]]; then
  python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["reference"]))' \
    tests/fixtures/minilm-drift-sentences.json >"$tmp/minilm-reference.txt"
  "$FERRITE_BIN" profile minilm --version 1 --model-repository models \
    --sample "$tmp/minilm-reference.txt" \
    --source "reference sentences of tests/fixtures/minilm-drift-sentences.json (the repository's docs; scripts/doc_sentences.py)"
else
  echo "models/minilm/1 not installed (scripts/fetch-models.sh): its profile is left as is" >&2
fi
