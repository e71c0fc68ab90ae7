"""Ferrite's gRPC port against NVIDIA's own gRPC client (tritonclient.grpc): what Triton users run
unchanged. Metadata, config, inference (FP32 numpy arrays, BYTES texts), async and streaming
inference, statistics, repository calls, the error codes, the client's deadline, classification,
and the standard health service (Kubernetes gRPC probes).

Starts the `ferrite` binary (env FERRITE_BIN) on free loopback ports: the bundled repository, and
a second server on a temporary repository with a slow `debug` model for overload and deadlines.
"""

import os
import queue
import re
import subprocess
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LISTEN = re.compile(r"listening on http://(\S+) \(metrics")
LISTEN_GRPC = re.compile(r"listening for gRPC on grpc://(\S+) ")


def start(repo, *extra):
    binary = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))
    proc = subprocess.Popen(
        [binary, "serve", "--model-repository", repo, "--host", "127.0.0.1", "--http-port", "0",
         "--metrics-port", "0", "--grpc-port", "0", "--model-control", "explicit", *extra],
        stderr=subprocess.PIPE, text=True)
    addr = {}
    found = threading.Event()

    def read():
        for line in proc.stderr:
            for key, pattern in (("http", LISTEN), ("grpc", LISTEN_GRPC)):
                m = pattern.search(line)
                if m:
                    addr[key] = m.group(1)
            if len(addr) == 2:
                found.set()

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(60), "server did not log its addresses"
    client = grpcclient.InferenceServerClient(addr["grpc"])
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if client.is_server_ready():
                break
        except InferenceServerException:
            pass
        time.sleep(0.05)
    assert client.is_server_ready()
    return proc, addr, client


def stop(proc):
    proc.terminate()
    assert proc.wait(30) == 0


@pytest.fixture(scope="module")
def server():
    proc, addr, client = start(os.path.join(ROOT, "models"))
    yield client, addr
    client.close()
    stop(proc)


@pytest.fixture(scope="module")
def slow():
    repo = tempfile.mkdtemp()
    os.makedirs(f"{repo}/slow/1")
    open(f"{repo}/slow/config.toml", "w").write("""
architecture = "debug"
max_batch_size = 1
[[input]]
name = "x"
datatype = "FP32"
dims = [-1, 4]
[[output]]
name = "y"
datatype = "FP32"
dims = [-1, 4]
[dynamic_batching]
max_queue_size = 1
[parameters]
sleep_us = 400000
""")
    proc, addr, client = start(repo)
    yield client
    client.close()
    stop(proc)


def pixels(rows, seed):
    return np.random.default_rng(seed).integers(0, 17, size=(rows, 64)).astype(np.float32)


def digits_input(x):
    inp = grpcclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def http_reference(addr, x):
    """The same rows through the HTTP door (binary tensors): the reference gRPC must match."""
    c = httpclient.InferenceServerClient(addr["http"])
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    return c.infer("digits", [inp]).as_numpy("probabilities")


def code(e):
    return str(e.status())


def test_health_metadata_and_config(server):
    client, _ = server
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")
    assert not client.is_model_ready("nope")
    meta = client.get_model_metadata("digits")
    assert meta.name == "digits" and list(meta.versions) == ["1"]
    assert (meta.inputs[0].name, meta.inputs[0].datatype, list(meta.inputs[0].shape)) == ("pixels", "FP32", [-1, 64])
    assert (meta.outputs[0].name, list(meta.outputs[0].shape)) == ("probabilities", [-1, 10])
    server_meta = client.get_server_metadata()
    assert server_meta.name == "ferrite" and "statistics" in server_meta.extensions
    cfg = client.get_model_config("digits", as_json=True)["config"]
    assert cfg["max_batch_size"] == 64
    assert cfg["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": ["64"]}]
    assert cfg["dynamic_batching"]["preferred_batch_size"] == [16, 32]


def health_check(channel, service):
    """grpc.health.v1.Health/Check by hand (HealthCheckRequest{service=1}; the answer's field 1 is
    the status: 1 SERVING, 2 NOT_SERVING), so no extra client package is needed."""
    raw = service.encode()
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=None, response_deserializer=None)
    answer = check((b"\x0a" + bytes([len(raw)]) + raw) if raw else b"", timeout=10)
    return answer[1] if answer[:1] == b"\x08" else 0


def test_grpc_health_service_serves(server):
    _, addr = server
    with grpc.insecure_channel(addr["grpc"]) as ch:
        for service in ("", "inference.GRPCInferenceService"):
            assert health_check(ch, service) == 1, service
        with pytest.raises(grpc.RpcError) as e:
            health_check(ch, "nope")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_infer_fp32_matches_http(server):
    client, addr = server
    x = pixels(5, 1)
    got = client.infer("digits", [digits_input(x)], request_id="r1")
    assert got.get_response().id == "r1"
    np.testing.assert_allclose(got.as_numpy("probabilities"), http_reference(addr, x), rtol=0, atol=1e-6)


def test_infer_bytes_embeddings_match_http(server):
    client, addr = server
    if not client.is_model_ready("minilm"):
        pytest.skip("SKIPPED: minilm weights not fetched (scripts/fetch-models.sh)")
    texts = np.array([b"What is Ferrite?", b"A Rust inference server."], dtype=np.object_)
    inp = grpcclient.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(texts)
    got = client.infer("minilm", [inp]).as_numpy(client.get_model_metadata("minilm").outputs[0].name)
    assert got.shape == (2, 384)
    h = httpclient.InferenceServerClient(addr["http"])
    hin = httpclient.InferInput("text", [2], "BYTES")
    hin.set_data_from_numpy(texts, binary_data=False)
    want = h.infer("minilm", [hin]).as_numpy(h.get_model_metadata("minilm")["outputs"][0]["name"])
    cos = (got * want).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.99999, cos


def test_async_and_streaming_infer(server):
    client, addr = server
    x = pixels(2, 5)
    want = http_reference(addr, x)
    done = queue.Queue()
    client.async_infer("digits", [digits_input(x)], lambda result, error: done.put((result, error)))
    result, error = done.get(timeout=30)
    assert error is None
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=0, atol=1e-6)

    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for i in range(8):
            client.async_stream_infer("digits", [digits_input(x)], request_id=f"s{i}")
        bad = grpcclient.InferInput("pixels", [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
        client.async_stream_infer("digits", [bad], request_id="bad")
        client.async_stream_infer("digits", [digits_input(x)], request_id="after-error")
        seen, errors = set(), []
        for _ in range(10):
            result, error = answers.get(timeout=30)
            if error is not None:
                errors.append(str(error))
                continue
            seen.add(result.get_response().id)
            np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=0, atol=1e-6)
        assert seen == {f"s{i}" for i in range(8)} | {"after-error"}
        assert len(errors) == 1 and "expected shape [-1, 64], got [1, 63]" in errors[0], errors
    finally:
        client.stop_stream()


def test_statistics(server):
    client, _ = server
    before = client.get_inference_statistics("digits").model_stats[0]
    for i in range(3):
        client.infer("digits", [digits_input(pixels(2, 10 + i))])
    after = client.get_inference_statistics("digits", as_json=True)["model_stats"][0]
    assert after["name"] == "digits" and after["version"] == "1"
    success = int(after["inference_stats"]["success"]["count"])
    assert success - before.inference_stats.success.count >= 3
    assert int(after["inference_count"]) - before.inference_count >= 6
    assert int(after["execution_count"]) >= 1 and int(after["last_inference"]) > 0
    assert after["batch_stats"], "per batch-size executions"
    everything = client.get_inference_statistics()
    assert "digits" in {m.name for m in everything.model_stats}


def test_repository_index_unload_load(server):
    client, _ = server
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "digits", "version": "1", "state": "READY"} in [
        {k: m.get(k) for k in ("name", "version", "state")} for m in index]
    client.unload_model("digits")
    assert not client.is_model_ready("digits")
    client.load_model("digits")
    assert client.is_model_ready("digits")


def test_errors_map_to_grpc_codes(server):
    client, _ = server
    with pytest.raises(InferenceServerException) as e:
        client.infer("nope", [digits_input(pixels(1, 2))])
    assert code(e.value) == "StatusCode.NOT_FOUND"
    bad = grpcclient.InferInput("pixels", [1, 63], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 63), np.float32))
    with pytest.raises(InferenceServerException, match=r"expected shape \[-1, 64\], got \[1, 63\]") as e:
        client.infer("digits", [bad])
    assert code(e.value) == "StatusCode.INVALID_ARGUMENT"


def test_classification_top3_equals_argsort(server):
    client, _ = server
    x = pixels(4, 3)
    full = client.infer("digits", [digits_input(x)]).as_numpy("probabilities")
    top = client.infer("digits", [digits_input(x)],
                       outputs=[grpcclient.InferRequestedOutput("probabilities", class_count=3)])
    got = top.as_numpy("probabilities")
    assert got.shape == (4, 3)
    labels = open(os.path.join(ROOT, "models/digits/labels.txt")).read().split()
    want = np.argsort(-full, axis=1, kind="stable")[:, :3]
    for r in range(4):
        for j in range(3):
            value, index, label = got[r, j].decode().split(":")
            assert int(index) == want[r, j], (r, j, got[r])
            assert label == labels[int(index)]
            assert abs(float(value) - full[r, int(index)]) <= 1e-6


def slow_input():
    inp = grpcclient.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32))
    return inp


def test_overload_is_unavailable(slow):
    results = queue.Queue()
    for _ in range(6):
        slow.async_infer("slow", [slow_input()], lambda result, error: results.put(error))
    errors = [results.get(timeout=30) for _ in range(6)]
    refused = [e for e in errors if e is not None]
    assert len(refused) >= 3, errors
    assert all(code(e) == "StatusCode.UNAVAILABLE" for e in refused), refused


def test_client_deadline_is_honoured(slow):
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as e:
        slow.infer("slow", [slow_input()], client_timeout=0.05)
    assert code(e.value) == "StatusCode.DEADLINE_EXCEEDED"
    assert time.monotonic() - start < 0.4, "answered at the deadline, not after the 400 ms compute"
