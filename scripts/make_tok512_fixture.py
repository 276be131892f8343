#!/usr/bin/env python3
"""Writes test/fixtures/tok512_encodings.jsonl: reference encodings of varied lines by SentencePiece.

The C++ llama2.c tokenizer (data/llama2c_tokenizer.cpp) is checked against these ids. SentencePiece with
tok512.model is an implementation independent of ours, sharing only the pieces and scores.

Only lines that SentencePiece's normaliser leaves unchanged go into the fixture. tok512.model uses the
`identity` normaliser but with remove_extra_whitespaces=True, so SentencePiece drops leading and trailing
spaces and collapses runs of spaces before encoding; llama2.c's run.c (and our encode) does not normalise
at all. On such lines the two tokenizers legitimately disagree, so they are listed on stderr and left out
rather than compared. Every line kept is encoded with add_bos=False, add_eos=False.

Usage (needs the `sentencepiece` package, e.g. in a venv; the committed fixture was made with 0.2.3):
    python3 scripts/make_tok512_fixture.py [--data-dir DIR] [--out FILE]
Defaults: DIR=/work/shared/data, FILE=test/fixtures/tok512_encodings.jsonl.
"""
import argparse
import json
import os
import sys

import sentencepiece as spm

# Synthetic lines for what wikitext lacks: TinyStories style, dialogue, digits, tabs and newlines inside
# a line, repeated letters, characters that exist as pieces (é, ’, …) and ones that need byte fallback
# (emoji, CJK, ß).
SYNTHETIC = [
    "Once upon a time, there was a little girl named Lily.",
    "She loved to play outside in the park with her friend Tom.",
    'Lily\'s mom said, "Lily, let\'s go to the park!" Lily was happy.',
    "The cat sat on the mat. The dog barked: woof, woof?",
    "One day, a big red ball fell from the sky...",
    "They had 3 apples, 12 pears and 1024 grapes in 2023.",
    "Call 555-0199 or email tom@example.com (before 9:30 am).",
    "Line one\nLine two\nLine three",
    "tab\tseparated\tvalues",
    "I had a café au lait.",
    "Crème brûlée is très délicieux — naïve façade.",
    "He said \u2018hello\u2019 and waited\u2026",
    "The dragon smiled 😀 and flew away 🐉!",
    "Straße und Grüße",
    "日本語のテキスト",
    "Ünïcödé ŝtrïñg wïth äccents",
    "x",
    "!",
    "<0x41> <s> </s> <unk>",
    "a_b-c+d=e*f/g\\h|i~j^k`l{m}n[o]p",
    "CAPITAL LETTERS AND lower letters",
    "The end.",
    # Runs of a letter whose pair is a piece ("ll", "oo", "pp") make equal-score merges compete; the
    # leftmost must win ("alll" is "▁a" "ll" "l", not "▁a" "l" "ll").
    "alll the balll went tooooo hiiigh, ooo, pppp!",
    "Hmmm, she said. Wellll, sooo yummmy.",
]


def wikitext_lines(path, count):
    """`count` non-heading lines spread evenly over the file, stripped of wikitext's edge spaces.

    Whole paragraphs run to thousands of characters; lines of at most 400 keep the fixture small."""
    with open(path, encoding="utf-8") as f:
        lines = [l.strip() for l in f]
    lines = [l for l in lines if l and not l.startswith("=") and len(l) <= 400]
    step = max(1, len(lines) // count)
    return lines[::step][:count]


def normalisation_is_noop(normalizer, text):
    # SentencePiece's normalised form is the text with a leading "▁" and every space turned into "▁";
    # text that already holds a literal "▁" would make this comparison ambiguous, so it never counts.
    return "\u2581" not in text and normalizer.normalize(text) == "\u2581" + text.replace(" ", "\u2581")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/work/shared/data")
    ap.add_argument("--out", default=os.path.join(here, "..", "test", "fixtures", "tok512_encodings.jsonl"))
    ap.add_argument("--wiki-lines", type=int, default=30)
    args = ap.parse_args()

    model = os.path.join(args.data_dir, "llama2c", "tok512.model")
    sp = spm.SentencePieceProcessor(model_file=model)
    normalizer = spm.SentencePieceNormalizer(model_file=model)
    # Lines that SentencePiece normalises, included here so the exclusion is visible in the output.
    normalised_examples = ["two  spaces", " leading space", "trailing space ", "   "]
    candidates = SYNTHETIC + normalised_examples
    candidates += wikitext_lines(os.path.join(args.data_dir, "wikitext-2", "wiki.valid.raw"), args.wiki_lines)

    kept = 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as out:
        for text in candidates:
            if not normalisation_is_noop(normalizer, text):
                print(f"excluded (SentencePiece normalises it): {text!r}", file=sys.stderr)
                continue
            ids = sp.encode(text, add_bos=False, add_eos=False)
            if sp.decode(ids) != text:
                sys.exit(f"sentencepiece does not round-trip {text!r}; refusing to write a fixture")
            out.write(json.dumps({"text": text, "ids": ids}, ensure_ascii=False) + "\n")
            kept += 1
    print(f"wrote {kept} encodings to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
