"""TLS on Ferrite's HTTP port from Python: NVIDIA's tritonclient.http with ssl=True and a CA file,
and the standard library's ssl module (ALPN, certificate checks, mutual TLS).

Certificates are made here with the openssl CLI, with the same commands as README's TLS example;
no key is committed. Starts the `ferrite` binary (env FERRITE_BIN) on free loopback ports.
"""

import os
import re
import socket
import ssl
import subprocess
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(cwd, name, subject, ext):
    """Key and certificate `name`.key/.pem for `subject`, signed by ca.pem, with extensions `ext`."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=cwd)
    with open(os.path.join(cwd, f"{name}.ext"), "w") as f:
        f.write(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
            cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "30", "-subj", "/CN=ferrite test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    issue(d, "server", "/CN=localhost",
          "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    issue(d, "client", "/CN=py-client", "extendedKeyUsage=clientAuth\n")
    return lambda name: os.path.join(d, name)


def start(pki, mutual):
    binary = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))
    cmd = [binary, "serve", "--model-repository", os.path.join(ROOT, "models"),
           "--host", "127.0.0.1", "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0",
           "--tls-cert", pki("server.pem"), "--tls-key", pki("server.key")]
    if mutual:
        cmd += ["--tls-client-ca", pki("ca.pem")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    found = {}
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            m = re.search(r"listening on https://(\S+) ", line)
            if m:
                found["addr"] = m.group(1)
            if "server ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    assert ready.wait(60), "server did not become ready"
    return proc, found["addr"]


def stop(proc):
    proc.terminate()
    assert proc.wait(30) == 0


@pytest.fixture(scope="module")
def tls_server(pki):
    proc, addr = start(pki, mutual=False)
    yield addr
    stop(proc)


@pytest.fixture(scope="module")
def mtls_server(pki):
    proc, addr = start(pki, mutual=True)
    yield addr
    stop(proc)


def infer(client, rows, binary):
    x = np.random.default_rng(rows).integers(0, 17, size=(rows, 64)).astype(np.float32)
    inp = httpclient.InferInput("pixels", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary)
    return client.infer("digits", [inp], outputs=[out]).as_numpy("probabilities")


def test_tritonclient_ssl_with_ca_file_infers(tls_server, pki):
    client = httpclient.InferenceServerClient(
        tls_server, ssl=True, ssl_options={"ca_certs": pki("ca.pem")})
    assert client.is_server_ready()
    assert client.is_model_ready("digits")
    as_json, as_binary = infer(client, 3, binary=False), infer(client, 3, binary=True)
    assert as_json.shape == (3, 10)
    np.testing.assert_allclose(as_json, as_binary, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(as_binary.sum(axis=1), np.ones(3), atol=1e-5)
    client.close()


def test_tritonclient_ssl_without_our_ca_refuses_server(tls_server):
    # default trust store (certifi): our test CA is not in it
    client = httpclient.InferenceServerClient(tls_server, ssl=True)
    with pytest.raises(Exception, match="(?i)certificate"):
        client.is_server_ready()
    client.close()


def http_get(sock, path):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def connect(addr, ctx, hostname="localhost"):
    host, port = addr.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=30)
    return ctx.wrap_socket(raw, server_hostname=hostname)


def test_ssl_module_alpn_and_certificate(tls_server, pki):
    for offered, chosen in [(["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")]:
        ctx = ssl.create_default_context(cafile=pki("ca.pem"))
        ctx.set_alpn_protocols(offered)
        with connect(tls_server, ctx) as s:
            assert s.selected_alpn_protocol() == chosen
            assert s.version() in ("TLSv1.3", "TLSv1.2")
            sans = s.getpeercert()["subjectAltName"]
            assert ("IP Address", "127.0.0.1") in sans and ("DNS", "localhost") in sans
            if chosen == "http/1.1":
                assert http_get(s, "/v2/health/ready").startswith(b"HTTP/1.1 200")
    # a name the certificate does not carry is refused by the client
    ctx = ssl.create_default_context(cafile=pki("ca.pem"))
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(tls_server, ctx, hostname="elsewhere.example")


def test_mtls_client_certificate_required(mtls_server, pki):
    ok = httpclient.InferenceServerClient(mtls_server, ssl=True, ssl_options={
        "ca_certs": pki("ca.pem"), "certfile": pki("client.pem"), "keyfile": pki("client.key")})
    assert ok.is_server_ready()
    assert infer(ok, 2, binary=True).shape == (2, 10)
    ok.close()

    anonymous = httpclient.InferenceServerClient(
        mtls_server, ssl=True, ssl_options={"ca_certs": pki("ca.pem")})
    with pytest.raises(Exception):
        anonymous.is_server_ready()
    anonymous.close()

    # ssl module: with TLS 1.3 the refusal arrives as an alert on the first read
    ctx = ssl.create_default_context(cafile=pki("ca.pem"))
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        with connect(mtls_server, ctx) as s:
            http_get(s, "/v2/health/ready")
    ctx.load_cert_chain(pki("client.pem"), pki("client.key"))
    with connect(mtls_server, ctx) as s:
        assert http_get(s, "/v2/health/ready").startswith(b"HTTP/1.1 200")
