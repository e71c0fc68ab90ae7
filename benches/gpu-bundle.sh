#!/usr/bin/env bash
# Packs into .gpu/ (git-ignored) everything benches/gpu.sh needs on a GPU machine that has no Rust
# toolchain (nor network): NVIDIA driver 580+ (CUDA 13.0), python3, and CUDA 13's runtime, cuBLAS,
# cuRAND and NVRTC (a toolkit, or pip wheels such as torch's). The bundle is kept under 64 MiB
# together with the repository's tracked files, so both can be copied over cheaply:
#   .gpu/bin.tar.xz   release `--features cuda` builds (sm_90, CUDA 13.0 wheels), stripped: the server
#                     (`ferrite`), examples/ops_gpu (kernel timings), and the test binaries holding the
#                     GPU parity tests (the lib's ops::/device::transfer tests, tests/embeddings.rs)
#   .gpu/root/        a checkout-shaped folder for them (FERRITE_REPO_ROOT): models/digits,
#                     models/minilm with its weights stored as f16 (the f32 file is 91 MB; both load
#                     as f32, so the GPU runs the same f32 model on f16-rounded weights), and
#                     tests/fixtures/ (the reference embeddings tests/embeddings.rs reads)
# Then copy the repository with .gpu/ to the GPU machine and run there, from the repository root:
#   FERRITE_BUNDLE=.gpu benches/gpu.sh            (table and logs in ./gpu-results; see gpu.sh)
# A cold cuda release build takes ~25 min on this 2-core machine; later runs are incremental.
# Usage: benches/gpu-bundle.sh   (env CUDA_COMPUTE_CAP, default 90: one build = one architecture)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cuda-toolchain.sh
[[ -f models/minilm/1/model.safetensors ]] || scripts/fetch-models.sh >&2
B=.gpu
rm -rf "$B" "$B.tmp"
mkdir -p "$B.tmp/bin" "$B.tmp/root/models/minilm/1" "$B.tmp/root/tests/fixtures"

echo "building release --features cuda (sm_${CUDA_COMPUTE_CAP:-90}) into $CUDA_TARGET" >&2
"${cuda_env[@]}" cargo build --release --features cuda --bin ferrite --example ops_gpu
# The test binaries' paths come from cargo's JSON messages.
"${cuda_env[@]}" cargo test --release --features cuda --no-run --lib --test embeddings \
  --message-format=json-render-diagnostics >"$B.tmp/cargo.json"
python3 - "$B.tmp/cargo.json" "$B.tmp/bin" <<'PY'
import json, shutil, sys
found = {}
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        name = "lib-tests" if "lib" in m["target"]["kind"] else m["target"]["name"] + "-tests"
        found[name] = m["executable"]
assert set(found) == {"lib-tests", "embeddings-tests"}, found
for name, path in found.items():
    shutil.copy(path, f"{sys.argv[2]}/{name}")
PY
cp "$CUDA_TARGET/release/ferrite" "$CUDA_TARGET/release/examples/ops_gpu" "$B.tmp/bin/"
strip "$B.tmp/bin/"*
# One xz stream with a 64 MiB dictionary: the four binaries share most bytes (candle's PTX), ~11 MB.
XZ_OPT="-9e -T1" tar -C "$B.tmp" -cJf "$B.tmp/bin.tar.xz" bin
rm -rf "$B.tmp/bin" "$B.tmp/cargo.json"

cp -r models/digits "$B.tmp/root/models/"
cp models/minilm/config.toml models/minilm/validation.jsonl "$B.tmp/root/models/minilm/"
cp models/minilm/1/tokenizer.json models/minilm/1/config.json "$B.tmp/root/models/minilm/1/"
cp tests/fixtures/minilm-reference.json "$B.tmp/root/tests/fixtures/"
# f32 -> f16 safetensors (stdlib only): same names, shapes and order; header padded to 8 bytes.
python3 - models/minilm/1/model.safetensors "$B.tmp/root/models/minilm/1/model.safetensors" <<'PY'
import array, json, struct, sys
src, dst = sys.argv[1:3]
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
meta = header.pop("__metadata__", None)
out, chunks, off = {}, [], 0
for name, t in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    a, b = t["data_offsets"]
    if t["dtype"] == "F32":
        v = array.array("f")
        v.frombytes(data[a:b])
        raw = b"".join(struct.pack(f"<{len(v[i:i + 65536])}e", *v[i:i + 65536]) for i in range(0, len(v), 65536))
        dtype = "F16"
    else:
        raw, dtype = data[a:b], t["dtype"]
    out[name] = {"dtype": dtype, "shape": t["shape"], "data_offsets": [off, off + len(raw)]}
    chunks.append(raw)
    off += len(raw)
if meta is not None:
    out["__metadata__"] = meta
h = json.dumps(out, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(dst, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for c in chunks:
        f.write(c)
PY
mv "$B.tmp" "$B"
total=$(du -sb "$B" | cut -f1)
tree=$(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
echo "$B: $((total / 1024 / 1024)) MiB + working tree $((tree / 1024 / 1024)) MiB (at most 64 MiB together)" >&2
(( total + tree < 64 * 1024 * 1024 )) || { echo "$B is too large to carry" >&2; exit 1; }
