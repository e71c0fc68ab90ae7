#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (fuzz/seeds/<target>/*): the request bodies the tests send
(tests/*.rs, tests/python, the protocol unit tests), in each target's input format (see
src/protocol/fuzz.rs; kserve_v2_binary: 4 bytes of little-endian JSON-header length, then the body).
scripts/test-long.sh minimises them with the committed corpus (`cargo fuzz cmin`) into fuzz/corpus/."""
import json
import os
import random
import struct
import sys

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "seeds")
random.seed(15)
pixels = [float(random.randint(0, 16)) for _ in range(64)]
texts = ["The quick brown fox jumps over the lazy dog.", "héllo wörld ✓", "", "a " * 40]


def j(v):
    return json.dumps(v).encode()


def put(target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


v2 = {
    "digits_1": {"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": pixels}]},
    "digits_2_nested": {"id": "r-1", "parameters": {"priority": 1, "timeout": 5000, "binary_data_output": True},
                        "inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": [pixels, pixels]}],
                        "outputs": [{"name": "probabilities", "parameters": {"classification": 3, "binary_data": False}}]},
    "digits_cache_off": {"parameters": {"cache": False}, "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": [pixels]}]},
    "minilm_texts": {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": texts}]},
    "multi": {"inputs": [
        {"name": "a", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2.5, -3, 4e3], [0, 0, 0, 1e-3]]},
        {"name": "b", "shape": [2, 2], "datatype": "INT64", "data": [[-9223372036854775808, 9223372036854775807], [0, 1]]},
        {"name": "c", "shape": [2], "datatype": "BYTES", "data": ["x", "\u00e9\\n"]},
        {"name": "d", "shape": [2, 2, 2], "datatype": "BOOL", "data": [[[True, False], [False, True]], [[True, True], [False, False]]]},
        {"name": "e", "shape": [2, 3], "datatype": "FP16", "data": [0.5, 65504, -1, 1, 2, 3]}]},
    "nobatch_u16": {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "UINT16", "data": [[0, 1, 65535], [4, 5, 6]]}]},
    "unit_params": {"id": "a", "parameters": {"priority": 2, "timeout": 5000, "binary_data_output": True},
                    "inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [[1.5, 2.5]]}],
                    "outputs": [{"name": "y", "parameters": {"binary_data": False}}]},
    "unit_overflow": {"inputs": [{"name": "x", "shape": [1, 4611686018427387904], "datatype": "FP32", "data": [1]}]},
    "unit_dup_outputs": {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}],
                         "outputs": [{"name": "y"}, {"name": "z"}, {"name": "y"}]},
    "unit_int8": {"id": "é" * 300, "inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT8", "data": [[1, 2], [3, -4]]}]},
}
types = {"BOOL": True, "UINT8": 255, "UINT32": 7, "UINT64": 18446744073709551615, "INT16": -32768,
         "INT32": -1, "BF16": 1.5, "FP64": 1e308}
for dt, x in types.items():
    v2[f"scalar_{dt}"] = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": dt, "data": [x, x]}]}
for name, body in v2.items():
    put("kserve_v2_json", name, j(body))


def binary(name, inputs, tails):
    header = j({"inputs": inputs, "parameters": {"binary_data_output": True}})
    put("kserve_v2_binary", name, struct.pack("<I", len(header)) + header + b"".join(tails))


def byt(*items):
    return b"".join(struct.pack("<I", len(s)) + s for s in items)


binary("digits_fp32", [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}],
       [struct.pack("<64f", *pixels)])
binary("unit_int32_bytes", [{"name": "a", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}},
                            {"name": "s", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 13}}],
       [struct.pack("<ii", 7, -1), byt(b"hi", b"you")])
binary("minilm_bytes", [{"name": "text", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 4 * 2 + 5 + 11}}],
       [byt(b"hello", b"world again")])
binary("multi_mixed", [
    {"name": "a", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}},
    {"name": "b", "shape": [1, 2], "datatype": "INT64", "data": [[1, 2]]},
    {"name": "c", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 7}},
    {"name": "d", "shape": [1, 2, 2], "datatype": "BOOL", "parameters": {"binary_data_size": 4}},
    {"name": "e", "shape": [1, 2], "datatype": "FP16", "parameters": {"binary_data_size": 4}}],
    [struct.pack("<4f", 1, 2, 3, 4), byt(b"abc"), bytes([1, 0, 0, 1]), struct.pack("<2e", 0.5, -2)])
binary("nobatch_u16", [{"name": "x", "shape": [2, 3], "datatype": "UINT16", "parameters": {"binary_data_size": 12}}],
       [struct.pack("<6H", 1, 2, 3, 4, 5, 65535)])
binary("unit_short", [{"name": "a", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 8}}], [b"\0\0\0\0"])

v1 = {
    "digits_1": {"instances": [pixels]},
    "digits_2": {"instances": [pixels, pixels]},
    "digits_empty": {"instances": []},
    "debug_4": {"instances": [[1.0, 2.0, 3.0, 4.0]]},
    "minilm": {"instances": texts},
    "multi": {"instances": [{"a": [1, 2, 3, 4], "b": [5, 6], "c": "t", "d": [[True, False], [False, True]], "e": [1, 2, 3]},
                            {"a": [0, 0, 0, 0], "b": [7, 8], "c": "u", "d": [[True, True], [True, True]], "e": [4, 5, 6]}]},
    "nobatch": {"instances": [[[1, 2, 3], [4, 5, 6]]]},
    "unit_objects": {"instances": [{"a": [1, 2], "b": [5, 6]}]},
    "unit_inputs": {"inputs": []},
}
for name, body in v1.items():
    put("kserve_v1", name, j(body))

openai = {
    "string": {"input": "hi"},
    "list_all": {"input": ["a", "b"], "model": "m", "encoding_format": "base64", "dimensions": 8, "user": "u1",
                 "extra": {"ignored": True}},
    "minilm": {"model": "minilm", "input": texts, "encoding_format": "float"},
    "bad_tokens": {"model": "m", "input": [1, 2]},
    "bad_format": {"model": "m", "input": "x", "encoding_format": "int8"},
    "no_input": {"model": "m"},
    "null_dims": {"input": "x", "dimensions": None},
}
for name, body in openai.items():
    put("openai", name, j(body))

tei = {
    "string": {"inputs": "x"},
    "all": {"inputs": ["a", "b"], "normalize": False, "truncate": True, "truncation_direction": "right",
            "dimensions": 4, "model": "m"},
    "empty": {"inputs": []},
    "minilm": {"inputs": texts, "truncate": True},
    "left": {"inputs": "a", "truncation_direction": "Left"},
    "bad_normalize": {"inputs": "a", "normalize": "yes"},
}
for name, body in tei.items():
    put("tei", name, j(body))
put("tei", "not_utf8", b'"\xff\xfe"')
put("openai", "not_json", b"not json")
