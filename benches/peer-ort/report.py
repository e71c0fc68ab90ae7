#!/usr/bin/env python3
"""The markdown tables of benches/peer-ort/compare.sh, from its results folder: `results.txt` (the
`key=value` lines of every tool, each prefixed by the measurement's name) and the embeddings
(`*.npy`) beside the torch f32 reference (`reference.npy`).

Work per sentence, for the fractions of peak: the dense layers of MiniLM (6 layers, hidden 384, FFN
1536: 2 x (4 x 384^2 + 2 x 384 x 1536) x 6 = 21.23 MFLOP per token) times the sentence's real
tokens, plus attention's two T x T x 384 products per layer (4 x 384 x 6 x T^2 per sentence), from
the token counts in `tokens.txt` (no padding: the work any engine must do). The peaks are the
2-thread rates of examples/peak_rate.rs. A path's ideal time per sentence is each part of that work
over the peak of the instruction that part runs on; its fraction of peak is the measured rate times
that ideal time (1.0 = every part at its instruction's peak):
  f32               everything on f32 FMA
  bf16              dense layers on AMX bf16 (`tdpbf16ps`) where the CPU has it, else `vdpbf16ps`;
                    attention in f32 (FMA)
  q8 (Ferrite)      dense layers on AMX int8 (`tdpbssd`) where the CPU has it, else VNNI
                    (`vpdpbusd`), except bert's default `float_layers` (attention values and the
                    first FFN layer: 42% of the dense work), which run as bf16 does; attention f32
  ONNX Runtime int8 every dense layer on the best int8 instruction of the CPU (AMX int8, else
                    VNNI: whether ONNX Runtime's kernels use AMX was not checked); attention f32
Usage: report.py RESULTS_DIR
"""
import os
import re
import statistics
import sys

import numpy as np

LAYERS, HIDDEN, FFN = 6, 384, 1536
DENSE_PER_TOKEN = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN) * LAYERS


def parse(path):
    """{name: {key: [values...]}} from lines `name key=value key=value ...`."""
    out = {}
    for line in open(path):
        parts = line.split()
        if len(parts) < 2:
            continue
        d = out.setdefault(parts[0], {})
        for kv in parts[1:]:
            if "=" in kv:
                k, v = kv.split("=", 1)
                d.setdefault(k, []).append(v)
    return out


def num(r, name, key, agg=statistics.median):
    vals = [float(v) for v in r.get(name, {}).get(key, []) if re.match(r"^[0-9.eE+-]+$", v)]
    return agg(vals) if vals else None


def cos(dirname, name):
    f, ref = os.path.join(dirname, f"{name}.npy"), os.path.join(dirname, "reference.npy")
    if not (os.path.isfile(f) and os.path.isfile(ref)):
        return None
    a, b = np.load(f).astype(np.float64), np.load(ref).astype(np.float64)
    if a.shape != b.shape:
        return None
    c = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(c.min()), float(c.mean())


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def main():
    d = sys.argv[1]
    r = parse(os.path.join(d, "results.txt"))
    toks = [int(t) for t in open(os.path.join(d, "tokens.txt")).read().split()]
    variants = [v for v in r.get("meta", {}).get("variants", [""])[0].split(",") if v]
    peak = {k: num(r, "peak", f"{k}_2t")
            for k in ("f32_fma", "bf16_dot", "int8_dot", "amx_bf16", "amx_int8")}
    n = len(toks)
    dense = DENSE_PER_TOKEN * sum(toks) / n
    attn = 4 * HIDDEN * LAYERS * sum(t * t for t in toks) / n
    flop = dense + attn
    # bert's default float_layers under q8: attention.self.value (384 x 384) and
    # intermediate.dense (384 x 1536), of the 4 x 384^2 + 2 x 384 x 1536 per layer.
    float_share = (HIDDEN * HIDDEN + HIDDEN * FFN) / (4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN)
    first = lambda *ks: next((peak[k] for k in ks if peak[k]), None)  # noqa: E731
    p_f32, p_bf16 = peak["f32_fma"], first("amx_bf16", "bf16_dot")
    p_int8 = first("amx_int8", "int8_dot")

    def ideal_s(v):
        """Seconds per sentence with every part of the work at its instruction's peak."""
        parts = {"f32": [(dense + attn, p_f32)],
                 "bf16": [(dense, p_bf16), (attn, p_f32)],
                 "q8": [(dense * (1 - float_share), p_int8), (dense * float_share, p_bf16 or p_f32),
                        (attn, p_f32)],
                 "ort-int8": [(dense, p_int8), (attn, p_f32)]}.get(v)
        if not parts or any(not p for _, p in parts):
            return None
        return sum(w / (p * 1e9) for w, p in parts)

    def frac(rate, v):
        t = ideal_s(v)
        return None if rate is None or t is None else rate * t

    print(f"Sentences: {len(toks)}, mean {sum(toks) / len(toks):.1f} tokens ([CLS]/[SEP] included); "
          f"work {flop / 1e6:.0f} MFLOP per sentence. Peaks on 2 threads (1 thread): "
          + ", ".join(f"{k} {fmt(peak[k])} ({fmt(num(r, 'peak', k + '_1t'))})" for k in peak)
          + " G(FL)OP/s.\n")
    print("| path | sentences/s | fraction of peak | batch-1 p50 ms | p99 ms | cosine min / mean vs torch f32 |")
    print("|---|---|---|---|---|---|")
    rows = [("ort-f32", "ONNX Runtime f32, raw, batch 32, 2 threads", "f32"),
            ("ort-int8", "ONNX Runtime int8 (quantize_dynamic), raw, batch 32, 2 threads", "ort-int8")]
    for v in variants:
        rows += [(f"engine-{v}", f"Ferrite {v} engine alone, batch 32, 1 instance x 2 threads", v),
                 (f"engine2-{v}", f"Ferrite {v} engine alone, batch 32, 2 instances x 1 thread", v)]
    for name, label, v in rows:
        rate = num(r, name, "sentences_per_s")
        c = cos(d, name) or cos(d, name.replace("engine2-", "engine-"))
        print(f"| {label} | {fmt(rate)} | {fmt(frac(rate, v), '.1%')} | "
              f"{fmt(num(r, name, 'batch1_p50_ms'), '.2f')} | {fmt(num(r, name, 'batch1_p99_ms'), '.2f')} | "
              f"{'-' if c is None else f'{c[0]:.4f} / {c[1]:.4f}'} |")
    for v in variants:
        rate = num(r, f"served-{v}", "rps")
        p50 = num(r, f"served1-{v}", "p50_ms")
        print(f"| Ferrite {v} served, TEI /embed, 64 connections, one sentence per request "
              f"(2 instances x 1 thread) | {fmt(rate)} | {fmt(frac(rate, v), '.1%')} | - | - | as the engine |")
        print(f"| Ferrite {v} served, 1 connection (2 threads per pass) | {fmt(num(r, f'served1-{v}', 'rps'))} "
              f"| - | {fmt(p50, '.2f')} (served) | {fmt(num(r, f'served1-{v}', 'p99_ms'), '.2f')} | |")
        print(f"| Ferrite {v} served, 1 connection, no batching delay (max_queue_delay_us = 0) | "
              f"{fmt(num(r, f'served1z-{v}', 'rps'))} | - | {fmt(num(r, f'served1z-{v}', 'p50_ms'), '.2f')} (served) | "
              f"{fmt(num(r, f'served1z-{v}', 'p99_ms'), '.2f')} | |")
    hyper = num(r, "hyper", "p50_ms")
    print(f"| bare hyper (examples/hello_hyper.rs), 1 connection | {fmt(num(r, 'hyper', 'rps'))} | - | "
          f"{fmt(hyper, '.3f')} (round trip) | {fmt(num(r, 'hyper', 'p99_ms'), '.3f')} | |")

    print("\n| target (issue 20) | measured | goal |")
    print("|---|---|---|")
    ort_f32, ort_int8 = num(r, "ort-f32", "sentences_per_s"), num(r, "ort-int8", "sentences_per_s")
    ratio = lambda a, b: None if a is None or not b else a / b  # noqa: E731
    for v in variants:
        ort = "ort-int8" if v == "q8" else "ort-f32"
        ref, ref_name = (ort_int8, "ONNX Runtime int8") if v == "q8" else (ort_f32, "ONNX Runtime f32")
        ort_p50 = num(r, ort, "batch1_p50_ms")
        served, engine = num(r, f"served-{v}", "rps"), num(r, f"engine-{v}", "sentences_per_s")
        engine2 = num(r, f"engine2-{v}", "sentences_per_s")
        print(f"| Ferrite {v} served / {ref_name} raw | {fmt(ratio(served, ref), '.2f')}x | >= 1.5x |")
        print(f"| Ferrite {v} engine alone / {ref_name} raw (1x2 threads; 2x1) | "
              f"{fmt(ratio(engine, ref), '.2f')}x; {fmt(ratio(engine2, ref), '.2f')}x | (reported) |")
        bound = None if ort_p50 is None or hyper is None else 1.2 * (ort_p50 + hyper)
        for key, how in ((f"served1-{v}", "as configured"), (f"served1z-{v}", "no batching delay")):
            p50 = num(r, key, "p50_ms")
            print(f"| Ferrite {v} served p50 at 1 connection ({how}) vs 1.2 x ({ref_name} batch-1 p50 "
                  f"+ hyper round trip) | {fmt(p50, '.2f')} ms vs {fmt(bound, '.2f')} ms "
                  f"({fmt(ratio(p50, bound), '.2f')}x) | <= 1.0x |")
    print("\nRaw lines: results.txt in the results folder; each figure is the median of its rounds.")


if __name__ == "__main__":
    main()
