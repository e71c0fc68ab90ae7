"""`ferrite batch` Parquet output read back with pyarrow (what indexing pipelines load it with):
schema `id: string`, then one fixed-size list of float32 per model output, one row per good input
row, in input order; `.npy` output loads with numpy, its ids from the sidecar.

Runs the `ferrite` binary (env FERRITE_BIN) on the bundled digits model, CPU only.
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
