"""Train the small "digits" MLP classifier used by Ferrite's tests and examples.

Usage (from the repository root):

    python3 -m venv /tmp/ferrite-train \
        && /tmp/ferrite-train/bin/pip install -r scripts/requirements-train.txt \
        && /tmp/ferrite-train/bin/python scripts/train_digits.py

Data: sklearn.datasets.load_digits() (bundled with scikit-learn, no download):
1797 8x8 images, 64 raw pixel intensities in 0..16, 10 classes.

Outputs (paths relative to the repository root):

  models/digits/1/model.safetensors   float32 tensors
      norm.mean        [64]       per-feature mean of the TRAIN split
      norm.std         [64]       per-feature std of the TRAIN split (0 -> 1.0)
      layers.0.weight  [64, 64]   (out, in)
      layers.0.bias    [64]
      layers.1.weight  [10, 64]   (out, in)
      layers.1.bias    [10]
  models/digits/test-split.safetensors
      pixels           float32 [n, 64]  raw 0..16 values of the held-out split
      labels           int64   [n]
  models/digits/training-report.json

Model semantics (what the Rust side implements):

    z = (x - mean) / std
    h = relu(z @ W0.T + b0)
    p = softmax(h @ W1.T + b1)

The script reloads the saved file, runs that forward pass in numpy (float32),
and asserts that its held-out accuracy equals scikit-learn's and is >= 0.95.
Everything except the date in the report is deterministic: re-running produces
byte-identical safetensors files.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from pathlib import Path

# Pin BLAS/OpenMP to one thread before numpy is imported, so floating-point
# reductions happen in a fixed order and the weights are bit-reproducible.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import safetensors  # noqa: E402
import sklearn  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

SPLIT_SEED = 42
MODEL_SEED = 0
TEST_SIZE = 0.2
MIN_ACCURACY = 0.95
HYPERPARAMETERS = {
    "hidden_layer_sizes": [64],
    "activation": "relu",
    "solver": "adam",
    "alpha": 1e-4,
    "max_iter": 1000,
    "random_state": MODEL_SEED,
}

OUT_DIR = Path("models/digits")
MODEL_PATH = OUT_DIR / "1" / "model.safetensors"
TEST_SPLIT_PATH = OUT_DIR / "test-split.safetensors"
REPORT_PATH = OUT_DIR / "training-report.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def forward(tensors: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Reference forward pass in float32, mirroring the Rust implementation."""
    x = x.astype(np.float32)
    z = (x - tensors["norm.mean"]) / tensors["norm.std"]
    h = np.maximum(z @ tensors["layers.0.weight"].T + tensors["layers.0.bias"], 0.0)
    logits = h @ tensors["layers.1.weight"].T + tensors["layers.1.bias"]
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def main() -> int:
    if not Path("Cargo.toml").exists() and not Path(".git").exists():
        print("warning: run this from the repository root", file=sys.stderr)

    digits = load_digits()
    X = digits.data.astype(np.float64)  # raw 0..16 intensities, shape (1797, 64)
    y = digits.target.astype(np.int64)
    assert X.shape[1] == 64

    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_SIZE, stratify=y, random_state=SPLIT_SEED
    )

    mean = X_train.mean(axis=0)
    std = X_train.std(axis=0)
    std[std == 0] = 1.0

    clf = MLPClassifier(
        hidden_layer_sizes=tuple(HYPERPARAMETERS["hidden_layer_sizes"]),
        activation=HYPERPARAMETERS["activation"],
        solver=HYPERPARAMETERS["solver"],
        alpha=HYPERPARAMETERS["alpha"],
        max_iter=HYPERPARAMETERS["max_iter"],
        random_state=HYPERPARAMETERS["random_state"],
    )
    with threadpool_limits(limits=1):
        clf.fit((X_train - mean) / std, y_train)
        sk_pred = clf.predict((X_test - mean) / std)
    sk_accuracy = float((sk_pred == y_test).mean())
    assert list(clf.classes_) == list(range(10)), clf.classes_

    # sklearn stores coefs_[i] as (in, out); we store (out, in).
    tensors = {
        "norm.mean": mean.astype(np.float32),
        "norm.std": std.astype(np.float32),
        "layers.0.weight": np.ascontiguousarray(clf.coefs_[0].T, dtype=np.float32),
        "layers.0.bias": clf.intercepts_[0].astype(np.float32),
        "layers.1.weight": np.ascontiguousarray(clf.coefs_[1].T, dtype=np.float32),
        "layers.1.bias": clf.intercepts_[1].astype(np.float32),
    }
    expected_shapes = {
        "norm.mean": (64,),
        "norm.std": (64,),
        "layers.0.weight": (64, 64),
        "layers.0.bias": (64,),
        "layers.1.weight": (10, 64),
        "layers.1.bias": (10,),
    }
    for name, shape in expected_shapes.items():
        assert tensors[name].shape == shape, (name, tensors[name].shape)

    MODEL_PATH.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(MODEL_PATH))

    # Verify from the file on disk, not from the in-memory arrays.
    reloaded = load_file(str(MODEL_PATH))
    assert set(reloaded) == set(expected_shapes), sorted(reloaded)
    for name, t in reloaded.items():
        assert t.dtype == np.float32 and t.shape == expected_shapes[name], name
    with threadpool_limits(limits=1):
        np_pred = forward(reloaded, X_test).argmax(axis=1)
    np_accuracy = float((np_pred == y_test).mean())
    n_disagree = int((np_pred != sk_pred).sum())
    assert np_accuracy == sk_accuracy, (
        f"numpy accuracy {np_accuracy} != sklearn accuracy {sk_accuracy} "
        f"({n_disagree} predictions differ)"
    )
    assert np_accuracy >= MIN_ACCURACY, f"accuracy {np_accuracy} < {MIN_ACCURACY}"

    pixels = X_test.astype(np.float32)
    assert np.array_equal(pixels.astype(np.float64), X_test)  # exact 0..16 ints
    save_file(
        {"pixels": np.ascontiguousarray(pixels), "labels": y_test.astype(np.int64)},
        str(TEST_SPLIT_PATH),
    )

    model_sha = sha256_file(MODEL_PATH)
    report = {
        "dataset": "sklearn.datasets.load_digits",
        "accuracy": np_accuracy,
        "sklearn_accuracy": sk_accuracy,
        "prediction_disagreements": n_disagree,
        "n_train": int(len(y_train)),
        "n_test": int(len(y_test)),
        "n_iter": int(clf.n_iter_),
        "versions": {
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "scikit-learn": sklearn.__version__,
            "safetensors": safetensors.__version__,
        },
        "hyperparameters": HYPERPARAMETERS,
        "split": {"test_size": TEST_SIZE, "stratify": True},
        "seeds": {"train_test_split": SPLIT_SEED, "mlp_random_state": MODEL_SEED},
        "training_date": _dt.datetime.now(_dt.timezone.utc).date().isoformat(),
        "files": {
            str(MODEL_PATH): {"sha256": model_sha},
            str(TEST_SPLIT_PATH): {"sha256": sha256_file(TEST_SPLIT_PATH)},
        },
        "model_sha256": model_sha,
    }
    REPORT_PATH.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"digits: accuracy={np_accuracy:.4f} (sklearn {sk_accuracy:.4f}) "
        f"n_train={len(y_train)} n_test={len(y_test)} iters={clf.n_iter_} "
        f"model_sha256={model_sha}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
