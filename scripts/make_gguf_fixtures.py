"""Writes test/fixtures/gguf/: `tiny.gguf`, a GGUF v3 file written by the gguf Python package
(GGUFWriter) with metadata of every value type and one tensor per supported ggml type, and for each
tensor `<name>.npy`, its values as gguf.quants.dequantize returns them (float32), for test/test_gguf.cpp.
The quantised tensors hold random blocks (random bytes with random finite fp16 scales), so every bit
pattern of the packed quantities occurs; F32/F16/BF16 hold random values.

Run from the repository root in the scripts venv (scripts/requirements.txt pins gguf):
    scripts/.venv/bin/python scripts/make_gguf_fixtures.py
"""
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

rng = np.random.default_rng(13)
OUT = "test/fixtures/gguf"
os.makedirs(OUT, exist_ok=True)

# Offsets of the fp16 fields inside each type's block, and the block's elements and bytes.
layout = {  # type: (block elements, block bytes, fp16 field offsets)
    T.Q4_0: (32, 18, [0]), T.Q4_1: (32, 20, [0, 2]), T.Q5_0: (32, 22, [0]), T.Q5_1: (32, 24, [0, 2]),
    T.Q8_0: (32, 34, [0]), T.Q4_K: (256, 144, [0, 2]), T.Q5_K: (256, 176, [0, 2]), T.Q6_K: (256, 210, [208]),
}

w = gguf.GGUFWriter(os.path.join(OUT, "tiny.gguf"), arch="llama")
w.add_string("general.name", "tiny fixture")
w.add_uint32("llama.block_count", 2)
w.add_int32("test.int32", -7)
w.add_float32("test.float32", 0.25)
w.add_float64("test.float64", -1.5)
w.add_bool("test.bool", True)
w.add_uint64("test.uint64", 1 << 40)
w.add_int8("test.int8", -3)
w.add_uint16("test.uint16", 65535)
w.add_array("test.strings", ["a", "bc", "\u00e9t\u00e9"])
w.add_array("test.ints", [1, -2, 3])

expected = {}
rows = 3
for qtype, (block, nbytes, halves) in layout.items():
    blocks_per_row = 2
    raw = rng.integers(0, 256, size=(rows * blocks_per_row, nbytes), dtype=np.uint8)
    for off in halves:
        scales = (rng.normal(size=rows * blocks_per_row) * 0.05).astype(np.float16)
        raw[:, off:off + 2] = scales.view(np.uint8).reshape(-1, 2)
    raw = raw.reshape(rows, blocks_per_row * nbytes)
    name = "t." + qtype.name
    w.add_tensor(name, raw, raw_dtype=qtype)
    expected[name] = dequantize(raw, qtype).astype(np.float32).reshape(rows, -1)
for qtype, dtype in ((T.F32, np.float32), (T.F16, np.float16)):
    x = rng.normal(size=(2, 3, 8)).astype(dtype)
    name = "t." + qtype.name
    w.add_tensor(name, x)
    expected[name] = x.astype(np.float32).reshape(-1, 8)
bf = rng.integers(0, 1 << 16, size=(4, 16), dtype=np.uint16)
bf[(bf & 0x7F80) == 0x7F80] = 0x3F80  # no inf / NaN patterns
w.add_tensor("t.BF16", bf.view(np.uint8).reshape(4, 32), raw_dtype=T.BF16)
expected["t.BF16"] = dequantize(bf.view(np.uint8).reshape(4, 32), T.BF16).astype(np.float32)

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
for name, values in expected.items():
    np.save(os.path.join(OUT, name + ".npy"), np.ascontiguousarray(values, dtype=np.float32))
print("wrote", OUT, "gguf", gguf.__name__, sorted(expected))
