"""Loads what `llm2vec export --format sentence-transformers` wrote with the sentence-transformers library and
checks that it embeds as `llm2vec embed` does; writes the library's embeddings as the fixture of
test/test_st_export.cpp. Run by scripts/make_st_export_fixture.sh (which exports and embeds first), in the
venv of scripts/requirements-st.txt (transformers >= 5.2 reads `is_causal: false` from config.json; the
main venv's transformers 4.44.2, pinned by llm2vec, would run a bidirectional export causally):

    scripts/.venv-st/bin/python scripts/check_st_export.py --work WORK --fixture test/fixtures/st_export

Inputs: FIXTURE/texts.txt (documents, one per line), FIXTURE/variants.json (each variant's export options,
and `--query_instruction` when its texts are embedded as queries), WORK/<variant>/ (the export) and
WORK/<variant>.npy (ours: `llm2vec embed --normalize` of the same texts, with the instruction for queries).

Writes FIXTURE/<variant>.npy (float32 [n, dim], the library's normalised embeddings; queries with
prompt_name="query") and FIXTURE/check_report.json (versions, each variant's largest difference from ours).
CPU, float32, one thread. Exits 1 when a variant expected to match differs by more than 1e-5.
"""
import argparse
import json
import sys

import numpy as np
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

ap = argparse.ArgumentParser()
ap.add_argument("--work", required=True)
ap.add_argument("--fixture", required=True)
args = ap.parse_args()

torch.set_num_threads(1)
texts = [l.rstrip("\n") for l in open(f"{args.fixture}/texts.txt", encoding="utf-8")]
variants = json.load(open(f"{args.fixture}/variants.json"))
report = {"versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                       "sentence_transformers": sentence_transformers.__version__}, "variants": {}}
failed = []
for name, v in variants.items():
    model = SentenceTransformer(f"{args.work}/{name}", device="cpu")
    assert model[0].auto_model.dtype == torch.float32, name
    kwargs = {"prompt_name": "query"} if v.get("--query_instruction") else {}
    theirs = model.encode(texts, batch_size=len(texts), convert_to_numpy=True, **kwargs).astype(np.float32)
    ours = np.load(f"{args.work}/{name}.npy")
    diff = float(np.abs(theirs - ours).max())
    # The library pads on the right: every text alone must give its batch row (padding masked).
    alone = np.stack([model.encode([t], convert_to_numpy=True, **kwargs)[0] for t in texts])
    report["variants"][name] = {"options": v, "max_abs_diff_vs_ours": diff,
                                "max_abs_diff_alone_vs_batch": float(np.abs(alone - theirs).max()),
                                "expected_equal": v.get("expected_equal", True)}
    print(f"{name}: max |library - ours| = {diff:.3g}")
    np.save(f"{args.fixture}/{name}.npy", theirs)
    if v.get("expected_equal", True) and diff > 1e-5:
        failed.append(name)
json.dump(report, open(f"{args.fixture}/check_report.json", "w"), indent=2)
if failed:
    print("differ from ours:", failed)
    sys.exit(1)
