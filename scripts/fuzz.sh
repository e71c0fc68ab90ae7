#!/usr/bin/env bash
# Fuzzing of the request-body decoders (issue 15), run by scripts/test-long.sh: the cargo fuzz
# targets in fuzz/ (KServe v2 JSON and binary, KServe v1, OpenAI embeddings, TEI), each for RUNS
# executions, from the committed corpus (fuzz/corpus) and fresh seeds (fuzz/seeds.py). The harness
# (src/protocol/fuzz.rs) fails an input that panics a decoder, holds more heap than its bound, or
# is accepted outside the bundled models' budgets; tests/fuzz_corpus.rs replays the corpus on stable.
# Reports executions and failing inputs per target; exits 1 if any input failed (they are kept in
# fuzz/artifacts/<target>/; add one to fuzz/regressions/<target>/ with its fix).
# Usage: scripts/fuzz.sh [RUNS=10000000] [TARGET...]
# Env: FUZZ_MAX_LEN (16384), FUZZ_UPDATE_CORPUS=1 minimises the grown corpus back into fuzz/corpus
#      (`cargo fuzz cmin`); CARGO_TARGET_DIR (the build goes under its fuzz/).
# Needs the nightly toolchain and cargo-fuzz (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10000000}
shift || true
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(kserve_v2_json kserve_v2_binary kserve_v1 openai tei)
MAX_LEN=${FUZZ_MAX_LEN:-16384}
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}/fuzz
# No sanitizer: the decoders are safe Rust (the harness's allocator is the one `unsafe`); debug
# assertions (overflow checks) stay on, as cargo fuzz builds by default.
FUZZ=(cargo +nightly fuzz)
BUILD=(--fuzz-dir fuzz -s none --target-dir "$TARGET_DIR")
"${FUZZ[@]}" build "${BUILD[@]}"
BIN="$TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 fuzz/seeds.py "$work/seeds"
failed=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  cp fuzz/corpus/"$t"/* "$work/corpus/$t/" 2>/dev/null || true
  start=$SECONDS
  "$BIN/$t" "$work/corpus/$t" "$work/seeds/$t" -runs="$RUNS" -max_len="$MAX_LEN" -timeout=10 \
    -rss_limit_mb=2048 -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 \
    >"$work/$t.log" 2>&1 || true
  execs=$(grep -o 'number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || true)
  bad=$(find "$work/artifacts/$t" -type f | wc -l)
  echo "fuzz $t: ${execs:-0} executions in $((SECONDS - start)) s, $bad failing inputs"
  if [[ "$bad" -gt 0 || -z "$execs" ]]; then
    failed=1
    mkdir -p fuzz/artifacts/"$t"
    cp "$work/artifacts/$t"/* fuzz/artifacts/"$t"/ 2>/dev/null || true
    grep -m1 -A2 'panicked' "$work/$t.log" || tail -n 20 "$work/$t.log"
  fi
  if [[ "${FUZZ_UPDATE_CORPUS:-0}" == 1 ]]; then
    "${FUZZ[@]}" cmin "${BUILD[@]}" "$t" "$work/corpus/$t" -- -max_len="$MAX_LEN" >/dev/null 2>&1
    rm -rf fuzz/corpus/"$t" && mkdir -p fuzz/corpus/"$t" && cp "$work/corpus/$t"/* fuzz/corpus/"$t"/
    echo "fuzz $t: corpus minimised to $(ls fuzz/corpus/"$t" | wc -l) inputs"
  fi
done
exit "$failed"
