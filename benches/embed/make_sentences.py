#!/usr/bin/env python3
"""Writes the request bodies for benches/embed_load.sh: N varied English sentences of 5-40 words.

The 64 sentences of tests/fixtures/minilm-reference.json, then variants built from them (a prefix
clause, a suffix clause, two joined, a prefix/suffix of words) and a few simple templates, each kept to
5-40 words, deduplicated, shuffled with a fixed seed. Deterministic: the same inputs give the same
file. Output, one per line, into OUTDIR:
  sentences.txt   the sentence
  tei.jsonl       {"inputs": s, "normalize": true, "truncate": true}      (POST /embed)
  openai.jsonl    {"input": s, "model": "minilm"}                        (POST /v1/embeddings)
Usage: make_sentences.py FIXTURE OUTDIR [N=400]
"""
import json
import os
import random
import sys

PREFIXES = ["In practice,", "As the documentation explains,", "According to the release notes,",
            "For example,", "Surprisingly,", "Most of the time,", "Strictly speaking,",
            "On a busy server,", "Before the next release,", "In our experience,"]
SUFFIXES = ["which keeps the code simple.", "and nobody noticed for a week.",
            "so the tests were updated as well.", "but only on the first call.",
            "according to the maintainers.", "when the cache is cold.",
            "even under heavy load.", "as described in the next section."]
SUBJECTS = ["The server", "A small dog", "My neighbour", "The new library", "Our team",
            "The old bridge", "A curious student", "The weather service", "This function",
            "The orchestra", "A tired engineer", "The city council"]
VERBS = ["quietly rejected", "carefully reviewed", "unexpectedly delayed", "happily accepted",
         "slowly rebuilt", "publicly announced", "accidentally deleted", "finally measured"]
OBJECTS = ["the proposal for a larger park", "every request that arrived after midnight",
           "the results of the experiment", "a plan to repaint the station",
           "the batch of embeddings", "its own configuration file",
           "the long list of open questions", "a short poem about the sea"]
TAILS = ["", "yesterday.", "before lunch.", "without telling anyone.",
         "after a long discussion with the whole group.", "because the deadline was close."]


def words(s):
    return len(s.split())


def variants(base, rng):
    for s in base:
        yield s
        yield f"{rng.choice(PREFIXES)} {s[0].lower()}{s[1:]}"
        yield f"{s.rstrip('.')} {rng.choice(SUFFIXES)}"
        yield f"{s.rstrip('.')}, and {rng.choice(base)}"
        w = s.split()
        if len(w) >= 10:
            yield " ".join(w[: len(w) // 2]) + "."
            yield " ".join(w[len(w) // 2:])
    for _ in range(200):
        yield " ".join(x for x in [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS),
                                   rng.choice(TAILS)] if x).rstrip(".") + "."


def main():
    fixture, outdir = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    rng = random.Random(3)
    base = json.load(open(fixture))["sentences"]
    seen, out = set(), []
    for s in variants(base, rng):
        s = " ".join(s.split())
        if 5 <= words(s) <= 40 and s not in seen:
            seen.add(s)
            out.append(s)
    rng.shuffle(out)
    out = out[:n]
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, "sentences.txt"), "w") as f:
        f.writelines(s + "\n" for s in out)
    with open(os.path.join(outdir, "tei.jsonl"), "w") as f:
        f.writelines(json.dumps({"inputs": s, "normalize": True, "truncate": True}) + "\n" for s in out)
    with open(os.path.join(outdir, "openai.jsonl"), "w") as f:
        f.writelines(json.dumps({"input": s, "model": "minilm"}) + "\n" for s in out)
    lens = sorted(words(s) for s in out)
    print(f"{len(out)} sentences, words min {lens[0]} median {lens[len(lens) // 2]} max {lens[-1]}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
