"""NVIDIA's perf_analyzer against the ferrite binary: gRPC (unary, concurrency 8), gRPC streaming,
and HTTP, each returning numbers and no errors; over HTTP and gRPC it reads the statistics
extension for its server-side split without warnings.

perf_analyzer is the binary from the tritonclient 2.50.0 wheel (scripts/test.sh extracts it and
sets PERF_ANALYZER and PERF_ANALYZER_LIBS: libcudart.so.12 from the nvidia-cuda-runtime-cu12 wheel);
it also needs Debian's libb64-0d. Without it the tests say SKIPPED, or fail where CI is set.
"""

import os
import re
import subprocess

import pytest

from test_grpc import ROOT, start, stop

PA = os.environ.get("PERF_ANALYZER", "")


@pytest.fixture(scope="module")
def server():
    if not os.access(PA, os.X_OK):
        if os.environ.get("CI"):
            pytest.fail(f"perf_analyzer not found at PERF_ANALYZER={PA!r} (scripts/test.sh installs it)")
        pytest.skip("SKIPPED: perf_analyzer not installed (scripts/test.sh installs it)")
    proc, addr, client = start(os.path.join(ROOT, "models"), "--access-log=false")
    yield addr
    client.close()
    stop(proc)


def perf_analyzer(*args):
    env = {**os.environ, "LD_LIBRARY_PATH": os.environ.get("PERF_ANALYZER_LIBS", "")}
    # Stability over a few short windows is not what is tested (a busy CI machine is noisy): numbers
    # and no errors are.
    out = subprocess.run(
        [PA, "-m", "digits", "--concurrency-range", "8", "--measurement-interval", "1500",
         "--max-trials", "10", "--stability-percentage", "100", *args],
        capture_output=True, text=True, timeout=300, env=env)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert not re.search(r"(?i)warn|error|fail", text), text
    throughput = float(re.search(r"Concurrency: 8, throughput: ([0-9.]+) infer/sec", text).group(1))
    assert throughput > 0, text
    # The server-side split comes from the statistics extension.
    assert re.search(r"Server:\s+Inference count: [1-9]", text), text
    assert re.search(r"Avg request latency: \d+ usec \(overhead", text), text
    return throughput


@pytest.mark.parametrize("streaming", [False, True])
def test_grpc_returns_numbers_without_errors(server, streaming):
    perf_analyzer("-i", "grpc", "-u", server["grpc"], *(["--streaming"] if streaming else []))


def test_http_reads_the_statistics_extension_without_warnings(server):
    perf_analyzer("-i", "http", "-u", server["http"])
