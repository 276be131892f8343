"""Writes test/fixtures/st_export/base/: a tiny random Llama model (transformers' own initialisation,
seeded; 2 layers, hidden 16, 4 heads, 2 KV heads, tied embeddings, float32) whose vocabulary is the cut
of Qwen2.5's byte-level BPE that test/fixtures/gguf/ uses (scripts/make_gguf_tokenizer_fixtures.py), with
a tokenizer.json that adds no special token (as Qwen2's and SmolLM2's) and a tokenizer_config.json without a
padding token: the input of test/test_st_export.cpp, which exports it with `llm2vec export --format
sentence-transformers` (and adds a BOS to a copy of the tokenizer, to check what the export says then).

Run from the repository root in the scripts venv (scripts/make_st_export_fixture.sh does):
    scripts/.venv/bin/python scripts/make_st_export_base.py
"""
import json
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from make_gguf_tokenizer_fixtures import qwen_cut, tokenizer_json

OUT = "test/fixtures/st_export/base"

tokens, merges, specials, ids, src = qwen_cut()
bos, eos = specials[0], specials[2]
tj = tokenizer_json("qwen2", tokens, merges, specials, ids, src)

torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tokens) + len(specials), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                     rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=ids[bos], eos_token_id=ids[eos],
                     torch_dtype="float32")
model = LlamaForCausalLM(config).eval()
os.makedirs(OUT, exist_ok=True)
model.save_pretrained(OUT, safe_serialization=True)
json.dump(tj, open(f"{OUT}/tokenizer.json", "w", encoding="utf-8"), ensure_ascii=False)
json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": None,
           "model_max_length": 256, "clean_up_tokenization_spaces": False},
          open(f"{OUT}/tokenizer_config.json", "w", encoding="utf-8"), indent=2)
print("wrote", OUT, sum(p.numel() for p in model.parameters()), "parameters,", config.vocab_size, "tokens")
