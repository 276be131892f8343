#!/usr/bin/env python3
"""Seed corpora of the fuzz targets (fuzz/README.md), written under OUT/<target>/: small valid inputs
for each parser, cut from the bundled files (assets/, test/fixtures/) or built here, so that the
fuzzer starts from inputs that get past the first checks. Run from the repository root:
    python3 fuzz/make_seeds.py OUT
Deterministic: the same files every run."""
import json
import os
import shutil
import struct
import sys

OUT = sys.argv[1]


def put(target, name, data):
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def head(path, nbytes):
    with open(path, "rb") as f:
        data = f.read(nbytes)
    return data[: data.rfind(b"\n") + 1] if b"\n" in data else data


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


# safetensors: header + data, tensors tiling the data section.
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


put("fuzz_safetensors", "f32_bf16_i64.safetensors", safetensors(
    [("w", "F32", [2, 3], struct.pack("<6f", 1, 2, 3, 4, 5, 6)),
     ("b", "BF16", [4], struct.pack("<4H", 0x3F80, 0xBF80, 0x7F80, 0)),
     ("ids", "I64", [2], struct.pack("<2q", 7, -1)),
     ("h", "F16", [1, 2], struct.pack("<2H", 0x3C00, 0x0001)),
     ("e", "F32", [0, 5], b"")], {"format": "pt"}))
put("fuzz_safetensors", "i32_u8.safetensors", safetensors(
    [("n", "I32", [3], struct.pack("<3i", 1, 2, 3)), ("m", "U8", [1], b"\x01")]))
# gguf: the GGUF fixtures (every value type and ggml type; a model of the qwen2 architecture; a tokenizer).
for name in ("tiny.gguf", "qwen2_tiny.gguf", "tokenizer_smollm.gguf"):
    with open(os.path.join("test/fixtures/gguf", name), "rb") as f:
        put("fuzz_gguf", name, f.read())
for name in ("heads/pooling.safetensors", "heads/losses.safetensors"):
    path = os.path.join("test/fixtures", name)
    if os.path.getsize(path) <= 8192:
        shutil.copy(path, os.path.join(OUT, "fuzz_safetensors", os.path.basename(name)))

# config.json of the tiny fixture models (llama, llama3 rope scaling, mistral, qwen2).
for model in ("stories260k", "llama3_tiny", "mistral_tiny", "qwen2_tiny"):
    put("fuzz_model_config", model + ".json", open(f"test/fixtures/{model}/model/config.json", "rb").read())

# tokenizer.json: the fixture variants, and the two real tokenizers cut to their first 300 ids.
TOK = "fuzz_hf_tokenizer"
for name in ("affixes", "byte-fallback", "bytelevel"):
    put(TOK, name + ".json", open(f"test/fixtures/tokenizers/variants/{name}.tokenizer.json", "rb").read())
put(TOK, "llama3-style.json", open("test/fixtures/tokenizers/variants/llama3-style.json", "rb").read())
for name in ("mistral-7b-v0.1", "qwen2.5"):
    tok = json.load(open(f"assets/tokenizers/{name}/tokenizer.json", encoding="utf-8"))
    model = tok["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < 300}
    kept = []
    for m in model["merges"]:
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        if a in model["vocab"] and b in model["vocab"] and a + b in model["vocab"]:
            kept.append(m)
    model["merges"] = kept
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < 300]
    if tok.get("post_processor") and tok["post_processor"].get("type") == "TemplateProcessing":
        specials = tok["post_processor"]["special_tokens"]
        if any(i >= 300 for s in specials.values() for i in s["ids"]):
            tok["post_processor"] = None
    put(TOK, name + ".json", json.dumps(tok, ensure_ascii=False))


# llama2.c checkpoints: a tiny model with a shared and with a separate classifier.
def llama2c(dim, hidden, layers, heads, kv, vocab, seq, shared):
    d = dim // heads
    count = (vocab * dim + layers * (dim + heads * d * dim + 2 * kv * d * dim + dim * heads * d + dim
                                     + 3 * hidden * dim) + dim + seq * d + (0 if shared else vocab * dim))
    header = struct.pack("<7i", dim, hidden, layers, heads, kv, vocab if shared else -vocab, seq)
    return header + struct.pack(f"<{count}f", *[(i % 17 - 8) / 8 for i in range(count)])


put("fuzz_llama2c_model", "shared.bin", llama2c(8, 12, 2, 2, 1, 6, 4, True))
put("fuzz_llama2c_model", "separate.bin", llama2c(4, 6, 1, 1, 1, 5, 2, False))

# llama2.c tokenizers: the bundled tok512.bin and a five-token one.
put("fuzz_llama2c_tokenizer", "tok512.bin", open("assets/stories260K/tok512.bin", "rb").read())
pieces = [(0.0, b"<unk>"), (0.0, b"\n<s>\n"), (0.0, b"\n</s>\n"), (-1.0, b" a"), (-2.0, b"b")]
put("fuzz_llama2c_tokenizer", "tiny.bin", struct.pack("<i", 6) + b"".join(
    struct.pack("<fi", score, len(p)) + p for score, p in pieces))


# Shards (data/shard.h): documents (2-byte ids) and supervised triples (4-byte ids).
def shard(kind, width, vocab, docs, meta=None, names=()):
    tokens = [t for doc in docs for t in doc]
    body = struct.pack(f"<{len(tokens)}{'H' if width == 2 else 'I'}", *tokens)
    index_offset = 256 + (len(body) + 7) // 8 * 8
    body += b"\0" * (index_offset - 256 - len(body))
    offsets = [0]
    for doc in docs:
        offsets.append(offsets[-1] + len(doc))
    body += struct.pack(f"<{len(offsets)}Q", *offsets)
    if kind == 2:
        body += b"".join(struct.pack("<II", n, d) for n, d in meta)
        blob = [0]
        for n in names:
            blob.append(blob[-1] + len(n))
        body += struct.pack(f"<{len(blob)}Q", *blob) + b"".join(names)
    header = b"L2VSHARD" + struct.pack("<IIII", 1, kind, width, vocab) + struct.pack(
        "<QQQQQ", 0x1234, len(tokens), len(docs), index_offset, len(names))
    header += b"\0" * (248 - len(header))
    return header + struct.pack("<Q", fnv1a64(header)) + body


put("fuzz_shard", "documents.bin", shard(0, 2, 512, [[1, 5, 9], [], [2, 3]]))
put("fuzz_shard", "sentences.bin", shard(1, 2, 512, [[7], [8, 9]]))
put("fuzz_shard", "triples.bin", shard(2, 4, 70000, [[1, 2, 3], [4], [5, 69999], [6], [7], [8]],
                                       meta=[(1, 0), (0, 1)], names=(b"sick", b"msmarco")))

# Shard manifests.
put("fuzz_shard_manifest", "two.json", json.dumps({"format": 1, "kind": "documents", "shards": [
    {"file": "wiki-000000.bin", "bytes": 300, "checksum": "0x0123456789abcdef"},
    {"file": "wiki-000001.bin", "bytes": 512, "checksum": "0xfedcba9876543210"}]}))
put("fuzz_shard_manifest", "triples.json", json.dumps({"format": 1, "kind": "triples", "shards": [
    {"file": "sick-000000.bin", "bytes": 4096, "checksum": "0x00000000000000ff"}]}))

# Training configurations, in llm2vec's train_configs style.
put("fuzz_train_config", "mntp.json", json.dumps({
    "stage": "mntp", "model_name_or_path": "m.bin", "dataset_file_path": "data/wiki-*.bin",
    "output_dir": "out/mntp", "max_steps": 150, "max_seq_length": 64, "learning_rate": 1e-3,
    "mask_token_type": "<0x5F>", "lora_target_modules": ["q_proj", "v_proj"], "bf16": True}))
put("fuzz_train_config", "supervised.json", json.dumps({
    "stage": "supervised", "model_name_or_path": "m", "dataset_file_path": "d.bin", "output_dir": "o",
    "peft_model_name_or_path": ["out/mntp"], "pooling_mode": "latent_attention", "loss_scale": 50,
    "in_batch_negatives": False, "warmup_ratio": 0.1, "lr_scheduler_type": "constant"}))

# prepare's text inputs: WikiText, sentences, supervised JSONL.
put("fuzz_text_sources", "wiki.txt", head("assets/wikitext-2/wiki.valid.raw", 3000))
put("fuzz_text_sources", "sentences.txt", open("assets/stories260K/sentences.txt", "rb").read())
put("fuzz_text_sources", "supervised.jsonl", "\n".join(json.dumps(r) for r in [
    {"query": "a man plays", "positive": "someone plays", "negative": "nobody plays"},
    {"query": "q", "positive": "p", "negative": "n", "instruction": "Retrieve: ", "dataset": "sick"},
    {"query": "q"}]) + "\n")

# Sentence pairs: the head of SICK.txt and an STS TSV.
put("fuzz_sts", "sick.txt", head("assets/sick/SICK.txt", 2500))
put("fuzz_sts", "sts.tsv", "sentence1\tsentence2\tscore\nA cat.\tA dog.\t1.5\nHi\tHello\t4\n")

# .npy: the small fixtures (2-D float32 and the refused kinds).
for name in sorted(os.listdir("test/fixtures/sts")):
    if name.endswith(".npy"):
        put("fuzz_npy", name, open(os.path.join("test/fixtures/sts", name), "rb").read())
