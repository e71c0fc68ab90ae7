#!/usr/bin/env python3
"""ONNX Runtime's raw engine on MiniLM (issue 20's peer): no HTTP, no server, the engine as a
program embedding it would call it. Tokenizes every sentence up front with the model's own
tokenizer.json (the `tokenizers` package; truncation at 256 tokens, Ferrite's max_seq_length for
MiniLM), then, timed:
  throughput  the sentences sorted by token count, batches of 32 padded to their longest, one
              session.run per batch plus mean pooling over the attention mask and L2 normalisation
              (numpy); ROUNDS timed rounds after a warm-up round, sentences/s of each and the median
  latency     the file's first N sentences one at a time (batch 1, no padding): p50 and p99
Session: intra_op_num_threads=THREADS (2), inter_op_num_threads=1, sequential execution, all
graph optimisations (ORT_ENABLE_ALL), CPU provider. Tokenization is outside the timings, as in
Ferrite's examples/engine_rate.rs.

With --ref REF.npy (export.py's torch f32 embeddings of the same file), prints the min and mean
cosine against it; with --out FILE.npy, writes the embeddings (float32 [rows, 384]).
Output: `ort key=value ...` lines.
Usage: run_ort.py MODEL.onnx TOKENIZER.json SENTENCES.txt [--threads 2] [--batch 32] [--rounds 5]
                  [--latency 200] [--ref REF.npy] [--out FILE.npy]
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

MAX_LEN = 256


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def feeds(ids_list, input_names):
    n = max(len(i) for i in ids_list)
    ids = np.zeros((len(ids_list), n), dtype=np.int64)
    mask = np.zeros((len(ids_list), n), dtype=np.int64)
    for r, i in enumerate(ids_list):
        ids[r, :len(i)] = i
        mask[r, :len(i)] = 1
    f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: v for k, v in f.items() if k in input_names}, mask


def embed(sess, ids_list, input_names):
    f, mask = feeds(ids_list, input_names)
    h = sess.run(None, f)[0]
    m = mask[:, :, None].astype(np.float32)
    e = (h * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("tokenizer")
    p.add_argument("sentences")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--latency", type=int, default=200)
    p.add_argument("--ref")
    p.add_argument("--out")
    p.add_argument("--label", default="")
    a = p.parse_args()

    tok = Tokenizer.from_file(a.tokenizer)
    tok.no_padding()
    tok.enable_truncation(MAX_LEN)
    sentences = [line.rstrip("\n") for line in open(a.sentences, encoding="utf-8") if line.strip()]
    ids = [e.ids for e in tok.encode_batch(sentences)]
    n = len(ids)
    sess = session(a.model, a.threads)
    names = {i.name for i in sess.get_inputs()}
    print(f"ort label={a.label} model={a.model} onnxruntime={ort.__version__} sentences={n} "
          f"tokens_mean={sum(map(len, ids)) / n:.2f} batch={a.batch} threads={a.threads}")

    order = sorted(range(n), key=lambda i: len(ids[i]))
    batches = [order[i:i + a.batch] for i in range(0, n, a.batch)]
    out = np.zeros((n, 0), dtype=np.float32)
    rates = []
    for r in range(a.rounds + 1):
        t = time.perf_counter()
        res = [embed(sess, [ids[i] for i in b], names) for b in batches]
        dt = time.perf_counter() - t
        if r > 0:  # round 0 is the warm-up
            rates.append(n / dt)
    out = np.zeros((n, res[0].shape[1]), dtype=np.float32)
    for b, e in zip(batches, res):
        out[b] = e
    print(f"ort sentences_per_s={sorted(rates)[len(rates) // 2]:.1f} "
          f"rounds={','.join(f'{x:.1f}' for x in rates)}")

    if a.latency > 0:
        ms = []
        for i in range(min(a.latency, n)):
            t = time.perf_counter()
            embed(sess, [ids[i]], names)
            ms.append((time.perf_counter() - t) * 1e3)
        ms.sort()
        pct = lambda q: ms[min(len(ms) - 1, round((len(ms) - 1) * q))]  # noqa: E731
        print(f"ort batch1_p50_ms={pct(0.5):.3f} batch1_p99_ms={pct(0.99):.3f} n={len(ms)}")

    if a.ref:
        ref = np.load(a.ref)
        if ref.shape != out.shape:
            raise SystemExit(f"{a.ref}: shape {ref.shape}, expected {out.shape}")
        cos = (out * ref).sum(1) / (np.linalg.norm(out, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"ort cosine_min={cos.min():.6f} cosine_mean={cos.mean():.6f}")
    if a.out:
        np.save(a.out, out)


if __name__ == "__main__":
    main()
