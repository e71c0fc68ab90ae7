"""API conformance: the OpenAPI 3.1 document the server serves at GET /openapi.json (generated from
its route and type definitions, src/api/openapi.rs) against the live server, with schemathesis.

One server on free loopback ports with the bundled models (digits, MiniLM); schemathesis generates
requests for every documented operation (valid and invalid, a bounded number of examples each,
fixed seed) and checks every response: no 5xx, and no status, content type, header or body that
the document does not allow. The metrics port is checked the same way for GET /metrics.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKS = ",".join([
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
])
# Examples per operation and phase: the whole run stays around a minute on a debug build.
MAX_EXAMPLES = os.environ.get("FERRITE_SCHEMATHESIS_EXAMPLES", "12")


@pytest.fixture(scope="module")
def server():
    binary = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))
    proc = subprocess.Popen(
        [binary, "serve", "--model-repository", os.path.join(ROOT, "models"),
         "--host", "127.0.0.1", "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0"],
        stderr=subprocess.PIPE, text=True)
    addr = {}
    ready = threading.Event()
    log = []

    def read():
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"listening on http://(\S+) \(metrics on http://(\S+)/metrics\)", line)
            if m:
                addr["http"], addr["metrics"] = m.group(1), m.group(2)
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(60), "server did not log its address"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://{addr['http']}/v2/health/ready") as r:
                if r.status == 200:
                    break
        except Exception:
            pass
        time.sleep(0.05)
    yield addr, log
    proc.terminate()
    assert proc.wait(30) == 0


def document(addr):
    with urllib.request.urlopen(f"http://{addr['http']}/openapi.json") as r:
        assert r.headers["content-type"] == "application/json"
        return json.load(r)


def test_openapi_document_is_3_1_and_covers_every_door(server):
    addr, _ = server
    doc = document(addr)
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    paths = doc["paths"]
    for path, method in [
        ("/v2/models/{model}/infer", "post"),
        ("/v2/models/{model}", "get"),
        ("/v2/models/{model}/ready", "get"),
        ("/v2/health/ready", "get"),
        ("/v2/health/live", "get"),
        ("/v1/models/{model}", "post"),
        ("/v1/embeddings", "post"),
        ("/embed", "post"),
        ("/metrics", "get"),
        ("/v2/repository/index", "post"),
        ("/v2/repository/models/{model}/load", "post"),
        ("/v2/repository/models/{model}/unload", "post"),
        ("/v2/repository/models/{model}/routing", "put"),
    ]:
        assert method in paths.get(path, {}), f"{method.upper()} {path} is not documented"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    # The probes need no credentials; the rest may carry a bearer credential.
    assert paths["/v2/health/ready"]["get"]["security"] == [{}]


def schemathesis(schema_url, base_url, *extra):
    st = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    cmd = [st, "--no-color", "run", schema_url, "--url", base_url, "--checks", CHECKS,
           "--max-examples", MAX_EXAMPLES, "--seed", "15", "--phases", "examples,coverage,fuzzing",
           "--request-timeout", "60", "--workers", "2", *extra]
    # In a temporary folder: schemathesis keeps a cache (.schemathesis/) where it runs.
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_schemathesis_finds_no_server_error_and_no_response_outside_the_schema(server):
    addr, log = server
    schema = f"http://{addr['http']}/openapi.json"
    run = schemathesis(schema, f"http://{addr['http']}", "--exclude-path", "/metrics")
    tail = "\n".join(run.stdout.splitlines()[-60:])
    assert run.returncode == 0, f"schemathesis failed:\n{tail}\n{run.stderr[-2000:]}\nserver log:\n{''.join(log[-20:])}"
    # The metrics port serves /metrics (and the probes).
    run = schemathesis(schema, f"http://{addr['metrics']}", "--include-path", "/metrics")
    tail = "\n".join(run.stdout.splitlines()[-40:])
    assert run.returncode == 0, f"schemathesis (metrics port) failed:\n{tail}\n{run.stderr[-2000:]}"
