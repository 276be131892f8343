"""Writes test/fixtures/gguf/tokenizer_{qwen2,smollm}.gguf and tokenizer_expected.json for
test/test_gguf.cpp: a byte-level BPE cut from Qwen2.5's tokenizer.json (../shared/data/tokenizers/qwen2.5:
its 256 byte tokens, its first 3,000 merges and their tokens, in rank order, and its first three special
tokens) stored as GGUF tokenizer metadata (tokenizer.ggml.model "gpt2", pre "qwen2" and, the same
vocabulary, "smollm"), written with the gguf package's GGUFWriter; and the ids the `tokenizers` library
(0.19.1) gives the first 400 tokenizer fixture lines (and three more)
with the equivalent tokenizer.json — Qwen2's own pre-tokenizer, and
SmolLM2's (Digits(individual_digits) then ByteLevel) — as the independent reference.

Run from the repository root in the scripts venv:
    scripts/.venv/bin/python scripts/make_gguf_tokenizer_fixtures.py
"""
import json

import gguf
from tokenizers import Tokenizer


def qwen_cut():
    """The cut of Qwen2.5's tokenizer: (tokens, merges, specials, ids, the source tokenizer.json)."""
    src = json.load(open("../shared/data/tokenizers/qwen2.5/tokenizer.json", encoding="utf-8"))
    vocab, merges = src["model"]["vocab"], src["model"]["merges"][:3000]
    # The byte alphabet (ids below 256 in Qwen2.5 are exactly its 256 byte tokens), then each merge's result.
    tokens = [t for t, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i < 256]
    for m in merges:
        left, right = m.split(" ")
        if left + right not in tokens:
            tokens.append(left + right)
    specials = [a["content"] for a in src["added_tokens"][:3]]
    ids = {t: i for i, t in enumerate(tokens + specials)}
    return tokens, merges, specials, ids, src


def tokenizer_json(pre, tokens, merges, specials, ids, src):
    """The tokenizer.json equivalent to the GGUF metadata with pre-tokenizer `pre` (qwen2 or smollm)."""
    if pre == "qwen2":
        pre_tokenizer = src["pre_tokenizer"]
    else:
        pre_tokenizer = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    return {"version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": ids[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for s in specials],
            "normalizer": None, "pre_tokenizer": pre_tokenizer, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                      "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                      "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges}}


def main():
    tokens, merges, specials, ids, src = qwen_cut()
    lines = [json.loads(l)["text"] for l in open("test/fixtures/tokenizers/qwen2.5.jsonl", encoding="utf-8")][:400]
    lines += ["digits 12345 and 3.14, ¾ and \u1041\u1042", "<|im_start|>user hi<|im_end|>", "  two  spaces\tand tab\n"]

    expected = {"lines": lines}
    for pre in ("qwen2", "smollm"):
        w = gguf.GGUFWriter(f"test/fixtures/gguf/tokenizer_{pre}.gguf", arch="qwen2")
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens + specials)
        w.add_token_types([1] * len(tokens) + [3] * len(specials))
        w.add_token_merges(merges)
        w.add_bos_token_id(ids[specials[0]])
        w.add_eos_token_id(ids[specials[2]])
        w.add_add_bos_token(False)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        tok = Tokenizer.from_str(json.dumps(tokenizer_json(pre, tokens, merges, specials, ids, src)))
        expected[pre] = [tok.encode(l, add_special_tokens=False).ids for l in lines]
    json.dump(expected, open("test/fixtures/gguf/tokenizer_expected.json", "w", encoding="utf-8"), ensure_ascii=False)
    print("wrote test/fixtures/gguf/tokenizer_*:", len(tokens) + len(specials), "tokens,", len(lines), "lines")


if __name__ == "__main__":
    main()
