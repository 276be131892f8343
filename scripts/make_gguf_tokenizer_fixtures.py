"""Writes test/fixtures/gguf/tokenizer_{qwen2,smollm,llama}.gguf and tokenizer_expected.json for
test/test_gguf.cpp: a byte-level BPE cut from Qwen2.5's tokenizer.json (../shared/data/tokenizers/qwen2.5:
its 256 byte tokens, its first 3,000 merges and their tokens, in rank order, and its first three special
tokens) stored as GGUF tokenizer metadata (tokenizer.ggml.model "gpt2", pre "qwen2" and, the same
vocabulary, "smollm"), written with the gguf package's GGUFWriter; and the ids the `tokenizers` library
(0.19.1) gives the first 400 tokenizer fixture lines (and three more)
with the equivalent tokenizer.json — Qwen2's own pre-tokenizer, and
SmolLM2's (Digits(individual_digits) then ByteLevel) — as the independent reference; and a SentencePiece
BPE (tokenizer.ggml.model "llama": the first 3,000 ids of Mistral-7B-v0.1's vocabulary and its
single-character pieces, renumbered, with scores and token types, no merges, as llama.cpp stores Llama 2 and Mistral tokenizers) with two references on 405 lines: the
ids of Mistral's own tokenizer.json cut the same way (tokenizers) and those of the tokenizer transformers
4.44.2 builds from the GGUF (AutoTokenizer with gguf_file; merges rebuilt from the scores).

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


def mistral_cut(n=3000):
    """Mistral-7B-v0.1's SentencePiece BPE cut to its first n ids (<unk>, <s>, </s>, 256 byte tokens, pieces by
    rank) and its single-character pieces (the vocabulary's tail), renumbered in the original order, as GGUF
    stores such a vocabulary (llama.cpp's `llama` tokenizer model: tokens, scores, token types; no merges);
    and the equivalent cut of its tokenizer.json (the merges whose halves and result are kept)."""
    src = json.load(open("../shared/data/tokenizers/mistral-7b-v0.1/tokenizer.json", encoding="utf-8"))
    kept = sorted((i, t) for t, i in src["model"]["vocab"].items() if i < n or len(t) == 1)
    tokens = [t for _, t in kept]
    vocab = {t: k for k, t in enumerate(tokens)}
    # llama.cpp's types: 2 unknown, 3 control, 6 byte, 1 normal. Scores as SentencePiece's fall with a piece's
    # merge rank: minus the rank of the first merge that makes it (Mistral's "▁▁" and "▁▁▁▁" come early in the
    # vocabulary but merge late), single characters below every merge, bytes and control tokens 0.
    merges = src["model"]["merges"]
    rank = {}
    for r, m in enumerate(merges):
        rank.setdefault(m.replace(" ", ""), r)
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 259)
    scores = [0.0] * 259 + [-float(rank.get(t, len(merges) + i)) for i, t in kept[259:]]
    tj = dict(src)
    tj["added_tokens"] = [a for a in src["added_tokens"] if a["id"] < 3]
    tj["model"] = dict(src["model"], vocab=vocab,
                       merges=[m for m in src["model"]["merges"]
                               if m.replace(" ", "") in vocab and all(p in vocab for p in m.split(" "))])
    return tokens, scores, types, tj


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

    # SentencePiece BPE (Llama 2, Mistral): the GGUF, and the ids of Mistral's own tokenizer.json cut the same
    # way (tokenizers) and of the tokenizer transformers builds from the GGUF (merges from the scores).
    n_bpe = len(tokens) + len(specials)
    tokens, scores, types, tj = mistral_cut()
    w = gguf.GGUFWriter("test/fixtures/gguf/tokenizer_llama.gguf", arch="llama")
    w.add_name("SentencePiece tokenizer fixture")  # transformers' GGUF loader reads general.name
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    spm_lines = [json.loads(l)["text"] for l in open("test/fixtures/tokenizers/mistral-7b-v0.1.jsonl",
                                                      encoding="utf-8")][:400]
    spm_lines += [" leading space", "two  spaces", "\u00e9t\u00e9 \u4e2d\u6587 \U0001F600", "<s> literal </s>", ""]
    expected["llama_lines"] = spm_lines
    tok = Tokenizer.from_str(json.dumps(tj))
    expected["llama"] = [tok.encode(l, add_special_tokens=True).ids for l in spm_lines]
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained("test/fixtures/gguf", gguf_file="tokenizer_llama.gguf")
    expected["llama_transformers"] = [hf(l)["input_ids"] for l in spm_lines]
    json.dump(expected, open("test/fixtures/gguf/tokenizer_expected.json", "w", encoding="utf-8"), ensure_ascii=False)
    print("wrote test/fixtures/gguf/tokenizer_*:", n_bpe, "byte-level BPE tokens,", len(lines), "lines;", len(tokens),
          "SentencePiece tokens,", len(spm_lines), "lines")


if __name__ == "__main__":
    main()
