#!/usr/bin/env python3
"""ONNX export of the local MiniLM folder for the ONNX Runtime peer (issue 20), and the torch f32
reference embeddings the comparison's cosines are taken against. Never downloads anything: the model
is read from MODEL_DIR (config.json, model.safetensors, tokenizer.json; scripts/fetch-models.sh puts
them in models/minilm/1) with the hub switched off.

Writes into OUTDIR (default ${XDG_CACHE_HOME:-~/.cache}/ferrite/peer-ort):
  f32/model.onnx    optimum's exporter (task feature-extraction, opset 14): input_ids,
                    attention_mask, token_type_ids -> last_hidden_state; no graph optimisation
                    (ONNX Runtime applies its own when the session loads)
  model-int8.onnx   onnxruntime.quantization.quantize_dynamic of it: the MatMuls' weights QInt8
                    with a scale per output channel, activations quantized per tensor at run
                    time (uint8): ONNX Runtime's int8 CPU path (MatMulInteger / DynamicQuantize)
Skipped when present and newer than the model's weights (--force redoes them).

With SENTENCES given, also writes REF.npy: float32 [rows, 384], the torch f32 embeddings of each
line (transformers BertModel, batches of 32, truncation at 256 tokens as Ferrite's max_seq_length,
mean pooling over the attention mask, L2-normalised: what sentence-transformers' all-MiniLM-L6-v2
computes), and prints their minimum cosine against tests/fixtures/minilm-reference.json (the
sentence-transformers embeddings) as a check of the reference itself.

Usage: export.py MODEL_DIR [--out OUTDIR] [--force] [--sentences FILE --ref REF.npy]
"""
import argparse
import json
import os
import shutil
import sys
import time

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

MAX_LEN = 256
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "..", "tests", "fixtures", "minilm-reference.json")


def fresh(path, model_dir):
    weights = os.path.join(model_dir, "model.safetensors")
    return os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(weights)


def export(model_dir, out, force):
    f32 = os.path.join(out, "f32", "model.onnx")
    if force or not fresh(f32, model_dir):
        from optimum.exporters.onnx import main_export

        tmp = os.path.join(out, "f32.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        t = time.time()
        main_export(model_dir, output=tmp, task="feature-extraction", library_name="transformers",
                    opset=14, device="cpu", do_validation=True, no_post_process=True)
        shutil.rmtree(os.path.join(out, "f32"), ignore_errors=True)
        os.replace(tmp, os.path.join(out, "f32"))
        print(f"exported {f32} in {time.time() - t:.0f} s", file=sys.stderr)
    int8 = os.path.join(out, "model-int8.onnx")
    if force or not fresh(int8, model_dir) or os.path.getmtime(int8) < os.path.getmtime(f32):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Per-channel weight scales on the MatMuls only: of the settings tried here (README.md) the
        # most accurate, and the fastest; quantize_dynamic's defaults (per-tensor, Gather too)
        # measured min cosine 0.920 on the benchmark sentences.
        quantize_dynamic(f32, int8 + ".tmp", weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        os.replace(int8 + ".tmp", int8)
        print(f"quantized {int8}", file=sys.stderr)
    return f32, int8


def embed(model, tok, sentences, batch=32):
    """Mean-pooled, L2-normalised f32 embeddings, as sentence-transformers computes them."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(sentences), batch):
            enc = tok.encode_batch(sentences[i:i + batch])
            n = max(len(e.ids) for e in enc)
            ids = torch.tensor([e.ids + [0] * (n - len(e.ids)) for e in enc])
            mask = torch.tensor([[1] * len(e.ids) + [0] * (n - len(e.ids)) for e in enc])
            h = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))[0]
            m = mask.unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(e, p=2, dim=1).numpy())
    return np.concatenate(out).astype(np.float32)


def tokenizer(model_dir):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)
    return tok


def reference(model_dir, sentences_file, ref):
    from transformers import BertModel

    torch.set_num_threads(2)
    model = BertModel.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    tok = tokenizer(model_dir)
    fx = json.load(open(FIXTURE))
    got = embed(model, tok, fx["sentences"])
    want = np.asarray(fx["embeddings"], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    print(f"torch reference vs sentence-transformers fixture ({len(want)} sentences): "
          f"min cosine {float((got * want).sum(1).min()):.6f}")
    sentences = [line.rstrip("\n") for line in open(sentences_file, encoding="utf-8") if line.strip()]
    np.save(ref, embed(model, tok, sentences))
    print(f"wrote {ref}: {len(sentences)} torch f32 reference embeddings", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir")
    cache = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
    p.add_argument("--out", default=os.path.join(cache, "ferrite", "peer-ort"))
    p.add_argument("--force", action="store_true")
    p.add_argument("--sentences")
    p.add_argument("--ref")
    a = p.parse_args()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        if not os.path.isfile(os.path.join(a.model_dir, f)):
            sys.exit(f"{a.model_dir}/{f} is missing (scripts/fetch-models.sh)")
    os.makedirs(a.out, exist_ok=True)
    f32, int8 = export(a.model_dir, a.out, a.force)
    print(f"f32={f32}\nint8={int8}")
    if a.sentences:
        reference(a.model_dir, a.sentences, a.ref or os.path.join(a.out, "reference.npy"))


if __name__ == "__main__":
    main()
