"""`ferrite batch` Parquet output read back with pyarrow (what indexing pipelines load it with):
schema `id: string`, then one fixed-size list of float32 per model output, one row per good input
row, in input order; `.npy` output loads with numpy, its ids from the sidecar.

Runs the `ferrite` binary (env FERRITE_BIN) on the bundled digits and MiniLM models, CPU only.
"""

import json
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BINARY = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))


def run_batch(tmp_path, rows, output, part_records):
    inp = tmp_path / "in.jsonl"
    with open(inp, "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps({"id": f"row-{i}", "inputs": [
                {"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row.tolist()}]}) + "\n")
        f.write("not json\n")
    subprocess.run(
        [BINARY, "batch", "--gpus", "none", "--no-progress",
         "--model-repository", os.path.join(ROOT, "models"), "-m", "digits",
         "--input", str(inp), "--output", str(output), "--part-records", str(part_records)],
        check=True, capture_output=True, text=True, timeout=300)


def test_parquet_schema_and_rows_read_back_with_pyarrow(tmp_path):
    rows = np.random.default_rng(3).integers(0, 17, size=(250, 64)).astype(np.float32)
    out = tmp_path / "probs.parquet"
    run_batch(tmp_path, rows, out, part_records=100)  # three parts merged
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.string()
    probs = table.schema.field("probabilities").type
    assert pa.types.is_fixed_size_list(probs), probs
    assert probs.list_size == 10 and probs.value_type == pa.float32()
    assert table.num_rows == 250
    assert table.column("id").to_pylist() == [f"row-{i}" for i in range(250)]
    p = np.stack(table.column("probabilities").to_numpy(zero_copy_only=False))
    assert p.shape == (250, 10) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)  # softmax rows
    rejects = [json.loads(l) for l in open(tmp_path / "probs.rejects.jsonl")]
    assert [r["record"] for r in rejects] == [251]


def test_npy_output_loads_with_numpy_and_ids_sidecar(tmp_path):
    rows = np.random.default_rng(4).integers(0, 17, size=(130, 64)).astype(np.float32)
    out = tmp_path / "probs.npy"
    run_batch(tmp_path, rows, out, part_records=50)
    p = np.load(out)
    assert p.shape == (130, 10) and p.dtype == np.float32
    ids = [json.loads(l) for l in open(tmp_path / "probs.ids.jsonl")]
    assert ids == [f"row-{i}" for i in range(130)]
    pq_out = tmp_path / "same.parquet"
    run_batch(tmp_path, rows, pq_out, part_records=1000)
    same = np.stack(pq.read_table(pq_out).column("probabilities").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(p, same)


def test_minilm_parquet_embedding_is_a_fixed_size_list_of_float32(tmp_path):
    """The embedding job's schema: id, then `embedding` as fixed_size_list<float32>[384], one
    L2-normalised row per text (the bundled MiniLM, fetched by scripts/fetch-models.sh)."""
    if not os.path.isfile(os.path.join(ROOT, "models", "minilm", "1", "model.safetensors")):
        raise AssertionError("models/minilm/1 is missing: run scripts/fetch-models.sh")
    texts = [f"document number {i} about rivers and mountains" for i in range(40)]
    inp = tmp_path / "corpus.jsonl"
    with open(inp, "w") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": f"doc-{i}", "text": t}) + "\n")
        f.write(json.dumps({"id": "empty", "text": " "}) + "\n")
    out = tmp_path / "emb.parquet"
    subprocess.run(
        [BINARY, "batch", "--gpus", "none", "--no-progress",
         "--model-repository", os.path.join(ROOT, "models"), "-m", "minilm",
         "--input", str(inp), "--output", str(out), "--part-records", "16"],
        check=True, capture_output=True, text=True, timeout=600)
    table = pq.read_table(out)
    assert table.schema.names == ["id", "embedding"]
    assert table.schema.field("id").type == pa.string()
    emb = table.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(emb), emb
    assert emb.list_size == 384 and emb.value_type == pa.float32()
    assert table.column("id").to_pylist() == [f"doc-{i}" for i in range(40)]
    e = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert e.shape == (40, 384) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    rejects = [json.loads(l) for l in open(tmp_path / "emb.rejects.jsonl")]
    assert [r["id"] for r in rejects] == ["empty"]
