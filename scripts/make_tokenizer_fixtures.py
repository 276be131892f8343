#!/usr/bin/env python3
"""Reference encodings for the Hugging Face tokenizer port (data/hf_tokenizer.*).

For each bundled tokenizer.json, encodes a few thousand lines with the `tokenizers` library (the Rust
implementation the C++ port must match token for token) and writes test/fixtures/tokenizers/:

  <name>.jsonl         one line per text: {"text", "ids", "ids_special", "decoded", "decoded_skip"}
                       ids = encode(text, add_special_tokens=False), ids_special = the same with True,
                       decoded / decoded_skip = decode(ids_special, skip_special_tokens=False / True).
  decode_<name>.jsonl  decoding of id sequences no text produces (random ids, lone byte tokens, special
                       tokens in the middle): {"ids", "decoded", "decoded_skip"}.
  variants/            components the two real files do not use, each checked the same way:
                       <name>.tokenizer.json + <name>.jsonl for small BPE tokenizers trained here
                       (byte-level GPT-2 style with lstrip/rstrip/normalized added tokens and a regex
                       normalizer; ##/</w> affixes with fused unk and Split behaviors; byte fallback
                       with missing byte tokens, ignore_merges and inverted splits), and
                       llama3-style.json (Qwen2.5 with Llama-3's normalizer, pre-tokenizer and
                       post-processor, as overrides the test applies to the bundled file) + .jsonl.
  README.md            versions and line counts.

Texts: WikiText-2 test lines (whole paragraphs, headings, blank lines) and sentences cut from other
paragraphs, SICK sentences, and synthetic lines built here with a fixed seed (scripts, combining marks and
non-NFC input, emoji, code, whitespace runs, digits, odd-case contractions, special-token strings, empty
and blank lines). The run is deterministic: a second run rewrites byte-identical files.

  --unicode9-table   instead prints the code points data/unicode.cpp must treat as unassigned so that
                     utf8proc's NFC (Unicode 15) matches tokenizers' NFC (Unicode 9 tables).

Run from the repository root with the venv of scripts/requirements.txt:
  scripts/.venv/bin/python scripts/make_tokenizer_fixtures.py
"""
import argparse
import json
import os
import random
import sys

import tokenizers
from tokenizers import Tokenizer

TOKENIZERS = ["mistral-7b-v0.1", "qwen2.5"]
OUT_DIR = "test/fixtures/tokenizers"


def find_data(rel_assets, rel_shared):
    for p in (rel_assets, rel_shared):
        if os.path.exists(p):
            return p
    sys.exit(f"make_tokenizer_fixtures: neither {rel_assets} nor {rel_shared} exists (run from the repo root)")


def tokenizer_path(name):
    return find_data(f"assets/tokenizers/{name}/tokenizer.json", f"../shared/data/tokenizers/{name}/tokenizer.json")


# ---------------------------------------------------------------------------------------------------------
# Texts

def wikitext_lines(rng):
    path = find_data("assets/wikitext-2/wiki.test.raw", "../shared/data/wikitext-2/wiki.test.raw")
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    headings = [l for l in lines if l.startswith(" = ")]
    paragraphs = [l for l in lines if len(l) > 3 and not l.startswith(" = ")]
    out = ["", " ", " \n"]
    out += rng.sample(headings, 120)
    picked = rng.sample(range(len(paragraphs)), 240)
    # Whole lines exercise long inputs (one BPE word per line for Mistral); sentences give variety cheaply.
    out += [paragraphs[i] for i in picked[:40]]
    for i in picked[40:]:
        sentences = [s for s in paragraphs[i].split(" . ") if s.strip()]
        out.append(rng.choice(sentences) + " .")
    return out


def sick_sentences(rng):
    path = find_data("assets/sick/SICK.txt", "../shared/data/sick/SICK.txt")
    with open(path, encoding="utf-8") as f:
        rows = [l.split("\t") for l in f.read().split("\n")[1:] if l]
    sentences = sorted({s for r in rows for s in (r[1], r[2])})
    return rng.sample(sentences, 450)


# Fragments the synthetic lines are assembled from, grouped by what they exercise.
FRAGMENTS = {
    "latin": ["café", "naïve", "Ångström", "Straße", "façade", "Øresund", "smörgåsbord", "jalapeño",
              "Dvořák", "Łódź", "İstanbul", "ǅemal", "ﬁnance", "Ⅻ", "résumé", "coöperate"],
    # Decomposed input that NFC composes, and mark orders NFC reorders.
    "combining": ["e\u0301", "A\u030a", "n\u0303o", "u\u0308ber", "a\u0323\u0302", "a\u0302\u0323",
                  "o\u031b\u0301", "\u1100\u1161\u11a8", "\u1112\u1161\u11ab\u1100\u1173\u11af",
                  "x\u0301\u0316", "q\u0316\u0301", "\u0391\u0301", "\u03b9\u0308\u0301", "\u212b",
                  "\u2126", "\u0958", "\u0915\u093c", "\u0928\u093c", "\u05d1\u05bc\u05b7",
                  "\u05d1\u05b7\u05bc", "\u0301start", "s\u0323\u0307", "\u1e9b\u0323", "\u0344",
                  "\u0340\u0341", "\u0f73", "\u0f77", "\u2adc", "\u0b47\u0b3e", "\u0bc6\u0bbe", "\u0cbf\u0cd5"],
    # Characters assigned after Unicode 9 with combining classes or decompositions (tokenizers' NFC
    # tables are Unicode 9, utf8proc's are Unicode 15): NFC must leave them and their neighbours alone.
    "unicode_new": ["a\u1df6\u0316", "a\u0316\u1df6", "e\u0898\u0301", "e\u0301\u0898", "o\u0d3b\u0301",
                    "\U00011935\U00011930", "\U00011938", "x\u0316\u0eba\u0301", "b\u0301\u1ac0\u0316",
                    "\U00010eab\u0316", "c\u0301\U0001e08f\u0316", "\u0c3c\u0301", "\U0001e4ec\u0316"],
    "cjk": ["中文分词测试", "日本語のテキスト", "한국어 문장", "漢字かなカナ", "你好，世界！", "東京都",
            "ｆｕｌｌｗｉｄｔｈ", "𠀀𠀁𪜀", "〜～", "「引用」"],
    "arabic": ["مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ", "١٢٣٤٥", "فارسی ۱۲۳", "עברית", "שָׁלוֹם"],
    "indic": ["नमस्ते दुनिया", "हिन्दी", "ক্ষ", "தமிழ்", "తెలుగు", "ಕನ್ನಡ", "മലയാളം", "ภาษาไทย", "ລາວ", "မြန်မာ"],
    "other_scripts": ["Привет, мир", "Ελληνικά", "Ἀθῆναι", "Հայերեն", "ქართული", "አማርኛ", "ᚠᚢᚦ", "𐌰𐌱𐌲",
                      "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝐀𝐁𝐂", "ⓐⓑⓒ"],
    "emoji": ["👍", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳\ufe0f\u200d🌈", "🇫🇷🇩🇪🇯🇵", "1\ufe0f\u20e3", "❤\ufe0f",
              "🦙", "🤖🧠", "😀😃😄", "🧑🏿\u200d💻", "☃", "✓✔✗"],
    "code": ["def f(x):\n    return x**2", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
             "{\"key\": [1, 2.5, null], \"b\": true}", "<div class=\"x\">&amp;</div>",
             "SELECT * FROM t WHERE id=42;", "x = y if a else b  # comment", "if (a && b || !c) return;",
             "std::vector<int> v{1,2,3};", "$ ls -la | grep '.cpp'", "a_b_c = __init__(self)",
             "https://example.com/path?q=1&r=2", "foo@example.org", "C:\\Users\\name\\file.txt",
             "λx.x", "i += 1;;", "#include <cstdio>", "    indented", "\tTabbed\tline"],
    "whitespace": ["  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", " \n ", "\n \n", "\r",
                   "\u00a0", "\u3000", "\u2009", "\u180e", "\u0085", "\u2028", "\u2029", "\u200b", "\u000b",
                   "\u000c", " \t \n", "      \n"],
    "digits": ["12345678901234567890", "3.14159", "1,000,000", "2024-01-31", "0x1F", "1e-9", "42nd",
               "٣٤٥", "１２３", "²³", "½", "Ⅻ", "⑦", "𝟙𝟚", "00007", "v1.2.3"],
    "contractions": ["DON'T", "it'S", "We'Re", "I'M", "you'LL", "they'VE", "he'D", "it'ſ", "'s", "'T",
                     "rock'n'roll", "it’s", "o'clock", "y'all'd've", "'LL'VE", "don'T", "I''m", "'"],
    "special": ["<s>", "</s>", "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
                "<|im_start|>user\nHi<|im_end|>", "<tool_call>", "</tool_call>", " <s> ", "a<s>b",
                "<s><s>", "<|im_start|", "<|endoftext|><|endoftext|>", "<<s>>", "< s >", "<|fim_prefix|>",
                "<|vision_pad|>", "<|begin_of_text|>", "<0x41>", "▁", "▁▁x", "Ġ", "Ċ"],
    "bytes": ["\u0000", "\u0001", "\u007f", "\u001b[0m", "\ufeff", "\ufffd", "\U0010fffd", "\ue000", "\uffff"],
    "ascii": ["Hello", "world", "The", "quick brown fox", "jumps", "over", "the lazy dog", "!", "?", "...",
              "--", "(", ")", "\"quoted\"", "'single'", "hyphen-ated", "UPPER", "MiXeD", "a", "I"],
}

SEPARATORS = [" ", " ", " ", "", "  ", "\n", "\t", " \n", ", ", "\r\n"]


def synthetic_lines(rng):
    out = ["", " ", "  ", "\n", "\t", "\r\n", "x", "▁", "a" * 300, "ab" * 120, "Supercalifragilisticexpialidocious",
           " leading space", "trailing space ", "  two leading", "double  inner   spaces",
           "".join(chr(rng.randrange(0x61, 0x7b)) for _ in range(200))]
    # Every fragment alone, then with a space on each side (the Mistral normalizer and the Qwen regex both
    # treat a leading space specially).
    for group in FRAGMENTS.values():
        for frag in group:
            out += [frag, " " + frag + " "]
    groups = list(FRAGMENTS)
    while len(out) < 950:
        # Mostly one theme per line, plus a random mix, so each theme is seen both alone and in context.
        n = rng.randint(2, 10)
        if rng.random() < 0.5:
            pool = FRAGMENTS[rng.choice(groups)] + FRAGMENTS["ascii"]
        else:
            pool = [f for g in groups for f in FRAGMENTS[g]]
        parts = []
        for _ in range(n):
            parts.append(rng.choice(pool))
            parts.append(rng.choice(SEPARATORS))
        out.append("".join(parts[:-1] if rng.random() < 0.7 else parts))
    return out


def all_texts():
    rng = random.Random(20240531)
    texts = wikitext_lines(rng) + sick_sentences(rng) + synthetic_lines(rng)
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    return unique


def decode_cases(tok, rng):
    """Id sequences that exercise decoding paths text does not reach: byte tokens forming invalid UTF-8,
    special tokens between pieces, random ids."""
    vocab = tok.get_vocab(with_added_tokens=True)
    n = max(vocab.values()) + 1
    specials = sorted(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    cases = [[], [0], [1], [2], [n - 1]]
    for _ in range(200):
        ids = [rng.randrange(n) for _ in range(rng.randint(1, 12))]
        if specials and rng.random() < 0.5:
            ids.insert(rng.randrange(len(ids) + 1), rng.choice(specials))
        cases.append(ids)
    # Byte-level pieces: ids of single bytes (Qwen "Ġ" style, Mistral "<0xHH>"), mixed into odd sequences.
    byte_ids = [vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab]
    if not byte_ids:
        from tokenizers.pre_tokenizers import ByteLevel
        alphabet = sorted(ByteLevel.alphabet())
        byte_ids = [vocab[c] for c in alphabet if c in vocab]
    for _ in range(100):
        ids = [rng.choice(byte_ids) for _ in range(rng.randint(1, 6))]
        if rng.random() < 0.5:
            ids.insert(rng.randrange(len(ids) + 1), rng.randrange(n))
        cases.append(ids)
    return cases


# ---------------------------------------------------------------------------------------------------------
# Variants: components and options the two bundled files do not exercise

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")

# Llama-3's tokenizer.json components around Qwen2.5's vocabulary (both byte-level BPE): no normalizer,
# the Llama-3 split regex (digits in groups of three), ByteLevel post-processing, then a template adding a
# BOS (<|endoftext|> standing in for <|begin_of_text|>).
LLAMA3_OVERRIDE = {
    "normalizer": None,
    "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
    "post_processor": {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [151643], "tokens": ["<|endoftext|>"]}}}]},
}


def train_texts(rng):
    path = find_data("assets/wikitext-2/wiki.valid.raw", "../shared/data/wikitext-2/wiki.valid.raw")
    with open(path, encoding="utf-8") as f:
        lines = [l for l in f.read().split("\n") if len(l) > 3]
    return rng.sample(lines, 400)


def variant_bytelevel(texts):
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, show_progress=False, special_tokens=["<bos>", "<eos>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, normalized=False, special=True),
                            AddedToken("<sep>", rstrip=True, normalized=False, special=True)])
    tok.add_tokens([AddedToken("foo  bar", normalized=True), AddedToken("New York", normalized=False),
                    AddedToken("  pad", lstrip=True, rstrip=True, normalized=False)])
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", pair="<bos> $A <eos> $B:1 <eos>:1",
        special_tokens=[("<bos>", tok.token_to_id("<bos>")), ("<eos>", tok.token_to_id("<eos>"))])
    tok.decoder = decoders.ByteLevel()
    extra = ["<mask>", "a <mask> b", "a   <mask>   b", "<sep>", "x <sep>   y", "x<sep>\n\ny", "foo  bar", "foo   bar",
             "foo bar", "afoo  barb", "New York", "new york", "New  York", "  pad  ", "a  pad  b", "<bos>text<eos>",
             " <mask><sep> ", "<mask><mask>", "tab\t<sep>\tafter"]
    return tok, extra


def variant_affixes(texts):
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="[UNK]", fuse_unk=True, continuing_subword_prefix="##", end_of_word_suffix="</w>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\s+"), behavior="removed"),
        pre_tokenizers.Split("-", behavior="merged_with_previous"),
        pre_tokenizers.Split(Regex(r"[.,!?;:]"), behavior="isolated"),
        pre_tokenizers.Split(Regex(r"\d"), behavior="merged_with_next")])
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, limit_alphabet=30, show_progress=False,
                                                       special_tokens=["[UNK]"], continuing_subword_prefix="##",
                                                       end_of_word_suffix="</w>"))
    tok.decoder = decoders.Sequence([decoders.Replace("</w>", " "), decoders.Replace("##", ""), decoders.Strip(" ", 0, 1)])
    extra = ["well-known co-operation", "x-y-z", "a1b2c3", "123", "end.", "Zürich 中文 qqq", "QQQ XYZ", "!!!", "- -",
             "ünïcödé wörds", "a--b"]
    return tok, extra


def variant_byte_fallback(texts):
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="contiguous"),
        pre_tokenizers.Split("▁", behavior="merged_with_next"),
        pre_tokenizers.Split(Regex(r"[\p{L}\p{N}▁]+"), behavior="removed", invert=True)])
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=300, limit_alphabet=40, show_progress=False,
                                                       special_tokens=["<unk>"]))
    # Byte tokens for ASCII and for the bytes of U+0080..U+00FF only: other characters outside the
    # alphabet cannot be spelled in bytes and fall back to <unk>. ignore_merges makes whole words in the
    # vocabulary one token.
    d = json.loads(tok.to_str())
    vocab = d["model"]["vocab"]
    for b in list(range(0x80)) + [0xC2, 0xC3] + list(range(0x80, 0xC0)):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    d["model"]["ignore_merges"] = True
    d["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"},
        {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}
    tok = Tokenizer.from_str(json.dumps(d))
    extra = ["café crème brûlée", "naïve 中文 emoji 🦙 here", "über 12345 and 6", "a,b;c", "ÿ þ ß", "€5", "x\u0000y",
             "done!!!", "▁literal", "<unk>", "  lead", "<0x41>"]
    return tok, extra


VARIANTS = {"bytelevel": variant_bytelevel, "affixes": variant_affixes, "byte-fallback": variant_byte_fallback}


def write_encodings(tok, texts, path):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False).ids
            ids_special = tok.encode(text, add_special_tokens=True).ids
            f.write(dump({"text": text, "ids": ids, "ids_special": ids_special,
                          "decoded": tok.decode(ids_special, skip_special_tokens=False),
                          "decoded_skip": tok.decode(ids_special, skip_special_tokens=True)}) + "\n")


def write_variants(texts):
    """Returns {name: number of texts}."""
    os.makedirs(f"{OUT_DIR}/variants", exist_ok=True)
    rng = random.Random(99)
    training = train_texts(rng)
    sample = rng.sample(texts, 150)
    counts = {}
    for name, build in VARIANTS.items():
        # BpeTrainer breaks some ties in hash order, so a trained file is kept once written (delete it
        # to train again); the encodings are always rewritten from it.
        path = f"{OUT_DIR}/variants/{name}.tokenizer.json"
        trained, extra = build(training)
        if os.path.exists(path):
            tok = Tokenizer.from_file(path)
        else:
            tok = trained
            with open(path, "w", encoding="utf-8", newline="\n") as f:
                f.write(tok.to_str(pretty=True) + "\n")
        write_encodings(tok, sample + extra, f"{OUT_DIR}/variants/{name}.jsonl")
        counts[name] = len(sample) + len(extra)
    base = json.loads(open(tokenizer_path("qwen2.5"), encoding="utf-8").read())
    base.update(LLAMA3_OVERRIDE)
    tok = Tokenizer.from_str(json.dumps(base))
    with open(f"{OUT_DIR}/variants/llama3-style.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({"base": "qwen2.5", "override": LLAMA3_OVERRIDE}, indent=1, ensure_ascii=False) + "\n")
    llama_texts = sample + ["1234567", "12 345 6789 0", "DON'T it'S", " \n\n x", "a\r\n\r\nb", "<|endoftext|>x"]
    write_encodings(tok, llama_texts, f"{OUT_DIR}/variants/llama3-style.jsonl")
    counts["llama3-style"] = len(llama_texts)
    return counts


def dump(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def write_fixtures():
    os.makedirs(OUT_DIR, exist_ok=True)
    texts = all_texts()
    counts = {}
    for name in TOKENIZERS:
        tok = Tokenizer.from_file(tokenizer_path(name))
        with open(f"{OUT_DIR}/{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for text in texts:
                ids = tok.encode(text, add_special_tokens=False).ids
                ids_special = tok.encode(text, add_special_tokens=True).ids
                f.write(dump({"text": text, "ids": ids, "ids_special": ids_special,
                              "decoded": tok.decode(ids_special, skip_special_tokens=False),
                              "decoded_skip": tok.decode(ids_special, skip_special_tokens=True)}) + "\n")
        rng = random.Random(7)
        cases = decode_cases(tok, rng)
        with open(f"{OUT_DIR}/decode_{name}.jsonl", "w", encoding="utf-8", newline="\n") as f:
            for ids in cases:
                f.write(dump({"ids": ids, "decoded": tok.decode(ids, skip_special_tokens=False),
                              "decoded_skip": tok.decode(ids, skip_special_tokens=True)}) + "\n")
        counts[name] = (len(texts), len(cases))
    variant_counts = write_variants(texts)
    with open(f"{OUT_DIR}/README.md", "w", encoding="utf-8", newline="\n") as f:
        f.write("# Hugging Face tokenizer fixtures (generated, do not edit)\n\n"
                "Written by `scripts/make_tokenizer_fixtures.py` with `tokenizers` "
                f"{tokenizers.__version__} (Python {sys.version.split()[0]}); see that script for the format.\n"
                "Regenerate from the repository root with\n"
                "`scripts/.venv/bin/python scripts/make_tokenizer_fixtures.py`.\n\n"
                "Texts come from WikiText-2 (CC BY-SA 3.0), SICK (CC BY-NC-SA 3.0) and synthetic lines the\n"
                "script builds.\n\n| tokenizer | encoded texts | decoded id sequences |\n| --- | --- | --- |\n")
        for name, (n_texts, n_cases) in counts.items():
            f.write(f"| {name} | {n_texts} | {n_cases} |\n")
        f.write("\n| variant (variants/) | encoded texts |\n| --- | --- |\n")
        for name, n in variant_counts.items():
            f.write(f"| {name} | {n} |\n")
    for name, (n_texts, n_cases) in counts.items():
        print(f"{name}: {n_texts} texts, {n_cases} decode cases")
    for name, n in variant_counts.items():
        print(f"variant {name}: {n} texts")


# ---------------------------------------------------------------------------------------------------------
# Unicode 9 table for NFC

def unicode9_table():
    """Code points whose NFC behaviour differs between utf8proc and tokenizers' NFC.

    A code point is 'active' for normalization when NFD changes it alone or reorders it against a mark of
    class 1 after it or class 230 before it. The difference of the two sets is the characters tokenizers
    (Unicode 9 tables) sees as unassigned; utf8proc must not decompose, reorder or compose them. The
    components of their canonical decompositions are unassigned in Unicode 9 too (else the composite
    would have been encoded earlier), so they are added: utf8proc would otherwise compose them."""
    import ctypes
    from tokenizers import normalizers
    lib = ctypes.CDLL("libutf8proc.so.2")
    libc = ctypes.CDLL("libc.so.6")
    lib.utf8proc_NFD.restype = ctypes.c_void_p
    lib.utf8proc_NFD.argtypes = [ctypes.c_char_p]
    lib.utf8proc_unicode_version.restype = ctypes.c_char_p

    def u_nfd(s):
        p = lib.utf8proc_NFD(s.encode())
        r = ctypes.string_at(p).decode()
        libc.free(ctypes.c_void_p(p))
        return r

    hf = normalizers.NFD()

    def active(nfd, c):
        return nfd(c) != c or nfd(c + "\u0334") != c + "\u0334" or nfd("\u0301" + c) != "\u0301" + c

    table = set()
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        if active(u_nfd, c) and not active(hf.normalize_str, c):
            table.add(cp)
            if u_nfd(c) != c:
                table.update(ord(x) for x in u_nfd(c))
    print(f"// utf8proc Unicode {lib.utf8proc_unicode_version().decode()}, tokenizers {tokenizers.__version__}: "
          f"{len(table)} code points")
    ranges = []
    for cp in sorted(table):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    for i in range(0, len(ranges), 4):
        print("  " + " ".join(f"{{0x{a:04X}, 0x{b:04X}}}," for a, b in ranges[i:i + 4]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--unicode9-table", action="store_true")
    args = ap.parse_args()
    if args.unicode9_table:
        unicode9_table()
    else:
        write_fixtures()


if __name__ == "__main__":
    main()
