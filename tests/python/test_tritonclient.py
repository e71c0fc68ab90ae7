"""Ferrite against NVIDIA's own client library (tritonclient.http): what Triton users run unchanged.

Starts the `ferrite` binary (env FERRITE_BIN) on free loopback ports with the bundled model repository.
"""

import os
import re
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))
    proc = subprocess.Popen(
        [binary, "serve", "--model-repository", os.path.join(ROOT, "models"),
         "--host", "127.0.0.1", "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0",
         "--model-control", "explicit"],
        stderr=subprocess.PIPE, text=True)
    addr = {}
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            m = re.search(r"listening on http://(\S+) \(metrics on http://(\S+)/metrics\)", line)
            if m:
                addr["http"], addr["metrics"] = m.group(1), m.group(2)
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(30), "server did not log its address"
    client = httpclient.InferenceServerClient(addr["http"])
    for _ in range(300):
        try:
            if client.is_server_ready():
                break
        except Exception:
            pass
        time.sleep(0.05)
    yield client
    proc.terminate()
    assert proc.wait(30) == 0


def pixels(rows, seed):
    return np.random.default_rng(seed).integers(0, 17, size=(rows, 64)).astype(np.float32)


def infer(client, x, binary, **kw):
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer("digits", [inp], outputs=[out], **kw).as_numpy("probabilities")


def test_health_and_metadata(server):
    assert server.is_server_live()
    assert server.is_server_ready()
    assert server.is_model_ready("digits")
    assert not server.is_model_ready("nope")
    meta = server.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert server.get_server_metadata()["name"] == "ferrite"


def test_infer_json_and_binary_agree(server):
    x = pixels(5, 1)
    as_json = infer(server, x, binary=False)
    as_binary = infer(server, x, binary=True)
    assert as_json.shape == (5, 10)
    np.testing.assert_allclose(as_json, as_binary, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(as_binary.sum(axis=1), np.ones(5), atol=1e-5)


def test_priority_and_timeout_parameters_are_accepted(server):
    x = pixels(2, 2)
    got = infer(server, x, binary=True, priority=1, timeout=5_000_000)
    np.testing.assert_allclose(got, infer(server, x, binary=True), rtol=1e-6, atol=1e-7)


def test_bad_shape_raises_with_message(server):
    inp = httpclient.InferInput("pixels", [1, 63], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 63), np.float32), binary_data=True)
    with pytest.raises(InferenceServerException, match=r"expected shape \[-1, 64\], got \[1, 63\]"):
        server.infer("digits", [inp])


def test_repository_index_and_unload_load(server):
    index = server.get_model_repository_index()
    # Each version also carries its validation gate's figures (digits: its held-out split).
    rows = [{k: e.get(k) for k in ("name", "version", "state", "reason")} for e in index]
    assert {"name": "digits", "version": "1", "state": "READY", "reason": ""} in rows
    gate = next(e["validation"] for e in index if e["name"] == "digits")
    assert gate["passed"] and abs(gate["accuracy"] - 0.9778) < 1e-3
    server.unload_model("digits")
    assert not server.is_model_ready("digits")
    server.load_model("digits")
    assert server.is_model_ready("digits")
    assert infer(server, pixels(1, 3), binary=True).shape == (1, 10)
