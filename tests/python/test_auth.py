"""Access control against the ferrite binary with tokens minted by an independent JWT implementation
(PyJWT), through plain HTTP, NVIDIA's tritonclient (headers) and the openai client (api_key).

One server: [auth] with an API key and JWT verification for HS256 (a secret file) and RS256/ES256
(a JWKS file, keys chosen by kid), started with RUST_LOG=trace so that the privacy test can read
every log line at every level.
"""

import json
import os
import re
import secrets
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import jwt
import numpy as np
import openai
import pytest
import tritonclient.http as httpclient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from tritonclient.utils import InferenceServerException

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ISS, AUD = "https://issuer.test", "ferrite"
API_KEY = "fk_test_" + secrets.token_urlsafe(24)
DISTINCTIVE = "Zyxquorble " + secrets.token_hex(8) + " never logged"


@pytest.fixture(scope="module")
def env():
    tmp = tempfile.mkdtemp()
    hs_secret = secrets.token_hex(32)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    open(f"{tmp}/hs.secret", "w").write(hs_secret)
    json.dump({"keys": [rsa_jwk, ec_jwk]}, open(f"{tmp}/jwks.json", "w"))
    import hashlib
    open(f"{tmp}/ferrite.toml", "w").write(f"""
[auth]
[[auth.api_keys]]
name = "ops-key"
sha256 = "{hashlib.sha256(API_KEY.encode()).hexdigest()}"
scopes = ["infer", "admin"]
[auth.jwt]
algorithms = ["HS256", "RS256", "ES256"]
hs256_secret_file = "{tmp}/hs.secret"
jwks_file = "{tmp}/jwks.json"
issuer = "{ISS}"
audience = "{AUD}"
leeway_secs = 5
""")
    binary = os.environ.get("FERRITE_BIN", os.path.join(ROOT, "target", "debug", "ferrite"))
    log_path = f"{tmp}/server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [binary, "serve", "--model-repository", os.path.join(ROOT, "models"), "--config", f"{tmp}/ferrite.toml",
         "--host", "127.0.0.1", "--http-port", "0", "--metrics-port", "0", "--grpc-port", "0", "--model-control", "explicit"],
        stderr=log, env={**os.environ, "RUST_LOG": "trace"})
    addr = None
    deadline = time.time() + 120
    while time.time() < deadline and addr is None:
        m = re.search(r"listening on http://(\S+) \(metrics", open(log_path).read())
        addr = m.group(1) if m else None
        time.sleep(0.05)
    assert addr, "server did not log its address"
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://{addr}/v2/health/ready").status == 200:
                break
        except Exception:
            pass
        time.sleep(0.1)
    keys = {
        "HS256": (hs_secret, None),
        "RS256": (rsa_key, "rsa-1"),
        "ES256": (ec_key, "ec-1"),
    }
    yield {"addr": addr, "keys": keys, "log": log_path, "rsa_pub_pem": rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)}
    proc.terminate()
    assert proc.wait(60) == 0
    log.close()


def claims(**over):
    now = int(time.time())
    c = {"sub": "alice", "iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "scope": "infer admin"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def mint(env, alg="HS256", kid=None, **over):
    key, default_kid = env["keys"][alg]
    headers = {"kid": kid or default_kid} if (kid or default_kid) else None
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


def tamper_payload(token):
    h, p, s = token.split(".")
    body = json.loads(jwt.utils.base64url_decode(p))
    body["sub"] = "mallory"
    return ".".join([h, jwt.utils.base64url_encode(json.dumps(body).encode()).decode(), s])


def tamper_signature(token):
    h, p, s = token.split(".")
    sig = bytearray(jwt.utils.base64url_decode(s))
    sig[0] ^= 0x01
    return ".".join([h, p, jwt.utils.base64url_encode(bytes(sig)).decode()])


def alg_none(_env):
    h = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    p = jwt.utils.base64url_encode(json.dumps(claims()).encode()).decode()
    return f"{h}.{p}."


def cases(env):
    """(name, token, status, message the body must contain)."""
    now = int(time.time())
    return [
        *[(f"valid {a}", mint(env, a), 200, None) for a in ("HS256", "RS256", "ES256")],
        ("expired", mint(env, exp=now - 60), 401, "expired"),
        ("not yet valid", mint(env, nbf=now + 120), 401, "invalid"),
        ("wrong aud", mint(env, aud="someone-else"), 401, "invalid"),
        ("wrong iss", mint(env, iss="https://evil.test"), 401, "invalid"),
        ("tampered payload", tamper_payload(mint(env, "RS256")), 401, "invalid"),
        ("tampered signature", tamper_signature(mint(env, "ES256")), 401, "invalid"),
        ("alg none", alg_none(env), 401, "invalid"),
        ("RS256 public key as HS256 secret", forge_hs_with_pem(env), 401, "invalid"),
        ("unknown kid", mint(env, "RS256", kid="rsa-404"), 401, "invalid"),
        ("insufficient scope", mint(env, scope="feedback jobs"), 403, "insufficient scope"),
    ]


def forge_hs_with_pem(env):
    """HS256 signed with the RSA public key's PEM as the secret (the classic confusion attack);
    PyJWT refuses to do it, so it is signed by hand."""
    import hashlib
    import hmac
    h = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode()).decode()
    p = jwt.utils.base64url_encode(json.dumps(claims()).encode()).decode()
    sig = hmac.new(env["rsa_pub_pem"], f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{jwt.utils.base64url_encode(sig).decode()}"


def pixels():
    return np.random.default_rng(0).integers(0, 17, size=(1, 64)).astype(np.float32)


def http_infer(env, token):
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
                                   "data": pixels().ravel().tolist()}]}).encode()
    req = urllib.request.Request(f"http://{env['addr']}/v2/models/digits/infer", body,
                                 {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        r = urllib.request.urlopen(req)
        return r.status, json.load(r), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.load(e), e.headers


def test_jwt_matrix_over_http(env):
    for name, token, status, message in cases(env):
        got, body, headers = http_infer(env, token)
        assert got == status, f"{name}: {got} {body}"
        if message:
            assert message in body["error"], f"{name}: {body}"
            # Never more than expired / invalid / insufficient scope.
            assert body["error"] in ("credentials are expired", "credentials are invalid", "insufficient scope"), body
        if status == 401:
            assert headers["WWW-Authenticate"].startswith("Bearer"), name


def test_jwt_matrix_through_tritonclient(env):
    client = httpclient.InferenceServerClient(env["addr"])
    for name, token, status, _ in cases(env):
        inp = httpclient.InferInput("pixels", [1, 64], "FP32")
        inp.set_data_from_numpy(pixels(), binary_data=True)
        headers = {"Authorization": f"Bearer {token}"}
        if status == 200:
            out = client.infer("digits", [inp], headers=headers).as_numpy("probabilities")
            assert out.shape == (1, 10), name
        else:
            with pytest.raises(InferenceServerException) as e:
                client.infer("digits", [inp], headers=headers)
            assert e.value.status() == str(status), f"{name}: {e.value}"
    # An API key in the same header works too; no credentials do not.
    assert client.is_server_ready()
    with pytest.raises(InferenceServerException) as e:
        client.get_model_metadata("digits")
    assert e.value.status() == "401"
    assert client.get_model_metadata("digits", headers={"x-api-key": API_KEY})["name"] == "digits"


def test_jwt_matrix_through_openai_client(env):
    def client(token):
        return openai.OpenAI(base_url=f"http://{env['addr']}/v1", api_key=token, max_retries=0)

    for name, token, status, _ in cases(env):
        c = client(token)
        if status == 200:
            r = c.embeddings.create(model="minilm", input=["Ferrite checks tokens."])
            assert len(r.data[0].embedding) == 384, name
        else:
            err = openai.AuthenticationError if status == 401 else openai.PermissionDeniedError
            with pytest.raises(err):
                c.embeddings.create(model="minilm", input=["Ferrite checks tokens."])
    assert len(client(API_KEY).embeddings.create(model="minilm", input="x").data) == 1


def test_texts_never_reach_the_log_and_each_request_has_an_access_line(env):
    token = mint(env)
    for path, body in [("/embed", {"inputs": [DISTINCTIVE]}),
                       ("/v1/embeddings", {"input": DISTINCTIVE, "model": "minilm"})]:
        req = urllib.request.Request(f"http://{env['addr']}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(req).status == 200
    # Unload/load digits: one audit line each, with the principal.
    for action in ("unload", "load"):
        req = urllib.request.Request(f"http://{env['addr']}/v2/repository/models/digits/{action}", b"{}",
                                     {"Authorization": f"Bearer {token}"})
        assert urllib.request.urlopen(req).status == 200
    deadline = time.time() + 10
    while time.time() < deadline:
        text = open(env["log"], encoding="utf-8", errors="replace").read()
        if text.count("action=\"load\"") + text.count("action=load") >= 1:
            break
        time.sleep(0.1)
    lines = text.splitlines()
    assert len(lines) > 100, "RUST_LOG=trace gives many lines"
    leaked = [l for l in lines if "Zyxquorble" in l or DISTINCTIVE.split()[1] in l]
    assert not leaked, leaked[:3]
    access = [l for l in lines if "request_id" in l and "body_hmac" in l and "/embed" in l]
    assert access, "no access line for /embed"
    assert any("jwt:alice" in l and re.search(r"body_hmac=\"?[0-9a-f]{64}", l) for l in access), access[:2]
    audit = [l for l in lines if "audit" in l and "admin action" in l]
    assert any("unload" in l and "jwt:alice" in l and "ok" in l for l in audit), audit
    assert any("load" in l and "jwt:alice" in l for l in audit), audit
    # Secrets never reach the log either.
    assert not [l for l in lines if API_KEY in l]
