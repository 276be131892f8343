"""Writes test/fixtures/gguf/{mistral,qwen2,llama3}_tiny.gguf: the tiny Hugging Face models of
test/fixtures/{mistral,qwen2,llama3}_tiny/model/ as llama.cpp's convert_hf_to_gguf.py lays them out (Llama
3's RoPE scaling as its rope_freqs tensor, a divisor per frequency) (F32;
F16 and BF16 widened exactly;
tensors under GGUF names, the architecture's metadata keys, Llama-architecture Q and K rows permuted
for GGUF's RoPE layout; Mistral is stored as the llama architecture, as llama.cpp does), written with
the gguf package's GGUFWriter, for test/test_gguf.cpp: reading them back must give the original
config and every tensor bit for bit.

Run from the repository root in the scripts venv (scripts/requirements.txt pins gguf):
    scripts/.venv/bin/python scripts/make_gguf_model_fixtures.py
"""
import glob
import json
import math
import struct

import gguf
import numpy as np


def read_safetensors(directory):
    tensors = {}
    for path in sorted(glob.glob(directory + "/*.safetensors")):
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
            data = f.read()
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            if info["dtype"] == "F32":
                x = np.frombuffer(data[a:b], dtype=np.float32)
            elif info["dtype"] == "F16":
                x = np.frombuffer(data[a:b], dtype=np.float16).astype(np.float32)
            else:  # BF16: the upper half of an fp32, exactly
                assert info["dtype"] == "BF16", name
                x = (np.frombuffer(data[a:b], dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
            tensors[name] = x.reshape(info["shape"])
    return tensors


def permute(w, n_head, n_head_kv):
    # llama.cpp convert_hf_to_gguf.py LlamaModel.permute: each head's rows (first half, second half)
    # interleaved.
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
         "lm_head.weight": "output.weight"}
LAYER = {"input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
         "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down"}


def gguf_name(name):
    if name in NAMES:
        return NAMES[name]
    parts = name.split(".")
    layer, rest = parts[2], ".".join(parts[3:])
    for hf, g in LAYER.items():
        if rest.startswith(hf):
            return f"blk.{layer}.{g}{rest[len(hf):]}"
    raise KeyError(name)


def llama3_rope_freqs(cfg):
    """The rope_freqs tensor llama.cpp's convert_hf_to_gguf.py writes for Llama 3.1-style RoPE scaling: each
    frequency's divisor (frequencies in float32, as there)."""
    rs = cfg["rope_scaling"]
    dim = cfg.get("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    freqs = 1.0 / (np.float32(cfg["rope_theta"]) ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))
    factor, low, high, old = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], \
        rs["original_max_position_embeddings"]
    out = []
    for freq in freqs.astype(np.float32):
        wavelen = 2 * math.pi / float(freq)
        if wavelen < old / high:
            out.append(1.0)
        elif wavelen > old / low:
            out.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def convert(src, out, arch):
    cfg = json.load(open(src + "/config.json"))
    t = read_safetensors(src)
    H, KV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    w = gguf.GGUFWriter(out, arch=arch)
    w.add_name(cfg["model_type"] + " tiny fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_rope_dimension_count(cfg.get("head_dim", cfg["hidden_size"] // H))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    if cfg.get("rope_scaling", {}).get("rope_type") == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_rope_freqs(cfg))
    for name in sorted(t):
        x = t[name]
        if arch == "llama" and ".q_proj." in name:
            x = permute(x, H, H)
        if arch == "llama" and ".k_proj." in name:
            x = permute(x, H, KV)
        w.add_tensor(gguf_name(name), np.ascontiguousarray(x))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", out, len(t), "tensors")


convert("test/fixtures/mistral_tiny/model", "test/fixtures/gguf/mistral_tiny.gguf", "llama")
convert("test/fixtures/qwen2_tiny/model", "test/fixtures/gguf/qwen2_tiny.gguf", "qwen2")
convert("test/fixtures/llama3_tiny/model", "test/fixtures/gguf/llama3_tiny.gguf", "llama")
