#!/usr/bin/env python3
"""Lists the dependency arrows between Ferrite's top-level modules (src/<module>/ or src/<module>.rs)
and fails if they form a cycle. Reads `crate::<module>` paths in non-test code (a file's
`#[cfg(test)]` tail and `tests.rs` files are left out), including grouped `use crate::{a, b}`.

    python3 scripts/module-deps.py            # arrows, then "no cycle" or the cycle (exit 1)
    python3 scripts/module-deps.py --bert     # also: names of BERT items used outside src/model/
"""
import pathlib, re, sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
BINARY = {"main", "cli", "lib"}  # the binary's composition: may use everything


def module_of(path):
    rel = path.relative_to(SRC).parts
    return rel[0][:-3] if len(rel) == 1 else rel[0]


def code_of(path):
    text = path.read_text()
    cut = text.find("#[cfg(test)]")
    text = text if cut < 0 else text[:cut]
    text = re.sub(r"//[^\n]*", "", text)  # comments (doc links name modules too)
    return text


def deps():
    arrows = {}
    for path in sorted(SRC.rglob("*.rs")):
        if path.name == "tests.rs":
            continue
        m = module_of(path)
        code = code_of(path)
        names = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", code))
        for group in re.findall(r"crate::\{([^}]*)\}", code, re.S):
            names |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()}
        names.discard(m)
        arrows.setdefault(m, set()).update(n for n in names if n)
    return arrows


def find_cycle(arrows):
    graph = {m: {d for d in ds if d in arrows} - BINARY for m, ds in arrows.items() if m not in BINARY}
    state, stack = {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            c = visit(m)
            if c:
                return c
    return None


def main():
    arrows = deps()
    for m in sorted(arrows):
        print(f"{m:12} -> {', '.join(sorted(arrows[m])) or '(leaf)'}")
    bad = 0
    if "--bert" in sys.argv:
        for path in sorted(SRC.rglob("*.rs")):
            if module_of(path) == "model":
                continue
            # The spec's `Architecture` enum names the architectures: that is its job.
            code = re.sub(r"pub enum Architecture \{.*?\n\}", lambda m: "\n" * m.group(0).count("\n"), code_of(path), flags=re.S)
            for i, line in enumerate(code.splitlines(), 1):
                # A path into model/bert.rs, its types (Bert, BertConfig, ...) or its input name.
                # The spec's `Architecture::Bert` variant names the architecture; that is the spec's job.
                if re.search(r"\bbert::|\bBert\w*\b(?<!Architecture::Bert)|INPUT_IDS|\"input_ids\"",
                             line.replace("Architecture::Bert", "")):
                    print(f"BERT outside model/: {path.relative_to(SRC.parent)}:{i}: {line.strip()}")
                    bad = 1
    cycle = find_cycle(arrows)
    if cycle:
        print("cycle: " + " -> ".join(cycle))
        return 1
    print("no cycle (main, cli and lib, the composition, excluded)")
    return bad


if __name__ == "__main__":
    sys.exit(main())
