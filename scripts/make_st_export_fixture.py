#!/usr/bin/env python3
"""Regenerates test/fixtures/st_export/: a tiny model exported with `llm2vec export --format
sentence-transformers`, loaded by the sentence-transformers library, whose embeddings must equal ours.
Run by hand from the repository root (CI never runs it; standard library only, it drives the rest):

    python3 scripts/make_st_export_fixture.py [WORK_DIR]

Steps:
  1. scripts/.venv/bin/python scripts/make_st_export_base.py       -> test/fixtures/st_export/base/
  2. make build/llm2vec build/test/test_st_export
  3. for each variant of test/fixtures/st_export/variants.json (its llm2vec options; `expected_equal`
     false marks a variant the library is known not to reproduce, kept to measure by how much):
       build/llm2vec export --format sentence-transformers --model base OPTIONS --out WORK/<variant>
       build/llm2vec embed --model base OPTIONS --normalize --output WORK/<variant>.npy
     (with --query_instruction: the texts embedded as instruction<TAB>text)
  4. scripts/.venv-st/bin/python scripts/check_st_export.py (the library; writes <variant>.npy and
     check_report.json into the fixture directory)
  5. build/test/test_st_export
"""
import json
import os
import subprocess
import sys
import tempfile

FIX = "test/fixtures/st_export"
BASE = f"{FIX}/base"


def run(*cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


work = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="l2v_st_export.")
os.makedirs(work, exist_ok=True)
print("work directory:", work)
run("scripts/.venv/bin/python", "scripts/make_st_export_base.py")
run("make", "build/llm2vec", "build/test/test_st_export")
texts = [l.rstrip("\n") for l in open(f"{FIX}/texts.txt", encoding="utf-8")]
for name, v in json.load(open(f"{FIX}/variants.json")).items():
    flags = []
    for k, x in v.items():
        if k.startswith("--") and k != "--query_instruction":
            flags += [k] if x is True else [k, str(x)]
    instruction = v.get("--query_instruction", "")
    out = f"{work}/{name}"
    subprocess.run(["rm", "-rf", out], check=True)
    run("build/llm2vec", "export", "--format", "sentence-transformers", "--model", BASE, "--out", out, *flags,
        *(["--query_instruction", instruction] if instruction else []))
    inputs = f"{work}/{name}.txt"
    with open(inputs, "w", encoding="utf-8") as f:
        f.writelines((instruction + "\t" + t if instruction else t) + "\n" for t in texts)
    run("build/llm2vec", "embed", "--precision", "fp32", "--model", BASE, *flags, "--normalize", "--quiet", "--input", inputs,
        "--output", f"{out}.npy", *(["--instructions"] if instruction else []))
run("scripts/.venv-st/bin/python", "scripts/check_st_export.py", "--work", work, "--fixture", FIX)
run("build/test/test_st_export")
