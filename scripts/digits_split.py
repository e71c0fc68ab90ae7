"""Writes a split of the digits data set as safetensors (`pixels` float32 [n, 64], `labels` int64 [n]),
exactly as scripts/train_digits.py splits it (same seed, stratification and test size).

Usage: python scripts/digits_split.py train|test OUT.safetensors
(needs the training environment: scripts/requirements-train.txt)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import SPLIT_SEED, TEST_SIZE  # noqa: E402


def main() -> int:
    which, out = sys.argv[1], sys.argv[2]
    digits = load_digits()
    X = digits.data.astype(np.float64)
    y = digits.target.astype(np.int64)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )
    X, y = (X_train, y_train) if which == "train" else (X_test, y_test)
    save_file({"pixels": X.astype(np.float32), "labels": y}, out)
    print(f"{out}: {which} split, {len(y)} rows", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
