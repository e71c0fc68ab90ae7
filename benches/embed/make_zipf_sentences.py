#!/usr/bin/env python3
"""Writes N distinct sentences (default 10,000), one per line, for the response-cache benchmark
(benches/cache.sh: `ferrite bench --zipf 1.1` over them; the first line is the most frequent).

Source: the word list of Debian's `wamerican` package (/usr/share/dict/words, public domain, installed
by scripts/test.sh and benches/cache.sh): no text corpus (nltk, model hubs) is reachable offline here,
so each sentence is 6-16 words drawn from it with a fixed seed, capitalised and ended with a period.
Only plain lowercase words of 3-10 letters are used (no proper nouns, no possessives). Deterministic:
the same word list gives the same file.
Usage: make_zipf_sentences.py OUT [N=10000] [WORDS=/usr/share/dict/words]
"""
import random
import sys


def main():
    out = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
    src = sys.argv[3] if len(sys.argv) > 3 else "/usr/share/dict/words"
    with open(src, encoding="utf-8", errors="replace") as f:
        words = sorted({w.strip() for w in f if w.strip().isascii() and w.strip().isalpha()
                        and w.strip().islower() and 3 <= len(w.strip()) <= 10})
    if len(words) < 1000:
        sys.exit(f"{src}: only {len(words)} usable words")
    rng = random.Random(19)
    seen, lines = set(), []
    while len(lines) < n:
        w = rng.sample(words, rng.randint(6, 16))
        s = " ".join(w).capitalize() + "."
        if s not in seen:
            seen.add(s)
            lines.append(s)
    with open(out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{out}: {len(lines)} sentences from {len(words)} words of {src}")


if __name__ == "__main__":
    main()
