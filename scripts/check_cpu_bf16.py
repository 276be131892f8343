"""The accuracy of the CPU backend's --precision bf16 against its fp32 reference, with PyTorch's own bf16
as the yardstick: how far do bf16 embeddings move from fp32 ones in llm2vec + transformers (bfloat16
weights and activations, as llm2vec's configs run), and how far in ours (bf16 base-weight GEMMs, fp32
everything else)? Also SICK-R Spearman both ways, and the wall times. Not part of CI (needs SmolLM2, see
scripts/get_smollm2.sh, and the scripts venv: scripts/requirements.txt).

  scripts/.venv/bin/python scripts/check_cpu_bf16.py [--model DIR] [--texts 512] [--threads 2] [--out FILE]

Error measure, per sentence: |e_bf16 - e_fp32| / |e_fp32| (embeddings not normalised), reported as the
median and the maximum over the sentences; ours and PyTorch's on the same sentences, causal and
bidirectional mean pooling.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def sick_sentences(n):
    seen, out = set(), []
    with open(f"{ROOT}/../shared/data/sick/SICK.txt", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        a, b, split = header.index("sentence_A"), header.index("sentence_B"), header.index("SemEval_set")
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if cols[split] != "TEST":
                continue
            for s in (cols[a], cols[b]):
                if s not in seen:
                    seen.add(s)
                    out.append(s)
    return out[:n]


def relative_errors(x, ref):
    return np.linalg.norm(x - ref, axis=1) / np.linalg.norm(ref, axis=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/llm2vec.cu/smollm2/SmolLM2-135M-Instruct"))
    ap.add_argument("--texts", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="also write the results as JSON")
    args = ap.parse_args()
    if not os.path.isdir(args.model):
        sys.exit(f"{args.model}: no such model directory (scripts/get_smollm2.sh makes SmolLM2's)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads))
    work = tempfile.mkdtemp(prefix="l2v_check_cpu_bf16.")
    texts = sick_sentences(args.texts)
    with open(f"{work}/texts.txt", "w", encoding="utf-8") as f:
        f.writelines(t + "\n" for t in texts)

    import torch
    from llm2vec import LLM2Vec

    torch.set_num_threads(args.threads)
    results = {"model": args.model, "texts": len(texts), "threads": args.threads, "rows": []}
    for bidirectional in (False, True):
        emb, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            out = f"{work}/ours-{bidirectional}-{precision}.npy"
            cmd = [f"{ROOT}/build/llm2vec", "embed", "--model", args.model, "--pooling_mode", "mean", "--max_length",
                   "512", "--precision", precision, "--input", f"{work}/texts.txt", "--output", out, "--quiet"]
            if not bidirectional:
                cmd.append("--causal")
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            seconds[f"ours_{precision}"] = time.perf_counter() - t0
            emb[f"ours_{precision}"] = np.load(out)
            dtype = torch.float32 if precision == "fp32" else torch.bfloat16
            model = LLM2Vec.from_pretrained(args.model, enable_bidirectional=bidirectional, pooling_mode="mean",
                                            max_length=512, torch_dtype=dtype)
            t0 = time.perf_counter()
            e = model.encode(texts, batch_size=16, show_progress_bar=False, convert_to_numpy=True)
            seconds[f"torch_{precision}"] = time.perf_counter() - t0
            emb[f"torch_{precision}"] = np.asarray(e, dtype=np.float64)
            del model
        ours = relative_errors(emb["ours_bf16"], emb["ours_fp32"])
        theirs = relative_errors(emb["torch_bf16"], emb["torch_fp32"])
        agree = relative_errors(emb["ours_fp32"], emb["torch_fp32"])
        results["rows"].append({
            "attention": "bidirectional" if bidirectional else "causal",
            "ours_bf16_vs_fp32": {"median": float(np.median(ours)), "max": float(ours.max())},
            "torch_bf16_vs_fp32": {"median": float(np.median(theirs)), "max": float(theirs.max())},
            "ours_fp32_vs_torch_fp32": {"median": float(np.median(agree)), "max": float(agree.max())},
            "seconds": seconds})

    for bidirectional in (False, True):
        for precision in ("fp32", "bf16"):
            js = f"{work}/sts-{bidirectional}-{precision}.json"
            cmd = [f"{ROOT}/build/llm2vec", "eval", "sts", "--model", args.model, "--data",
                   f"{ROOT}/../shared/data/sick/SICK.txt", "--pooling_mode", "mean", "--precision", precision,
                   "--json-out", js, "--quiet"]
            if not bidirectional:
                cmd.append("--causal")
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, env=env, capture_output=True)
            results.setdefault("sick_r", []).append({
                "attention": "bidirectional" if bidirectional else "causal", "precision": precision,
                "spearman": json.load(open(js))["spearman"], "seconds": time.perf_counter() - t0})

    print(f"\n{os.path.basename(args.model)}, {len(texts)} SICK sentences, {args.threads} threads\n")
    print("| attention | ours bf16 vs fp32 (median / max) | PyTorch bf16 vs fp32 (median / max) "
          "| ours fp32 vs PyTorch fp32 (max) |")
    print("|---|---|---|---|")
    for r in results["rows"]:
        o, t, a = r["ours_bf16_vs_fp32"], r["torch_bf16_vs_fp32"], r["ours_fp32_vs_torch_fp32"]
        print(f"| {r['attention']} | {o['median']:.2e} / {o['max']:.2e} | {t['median']:.2e} / {t['max']:.2e} "
              f"| {a['max']:.1e} |")
    print("\n| SICK-R (test, 4,906 pairs) | fp32 | bf16 |\n|---|---|---|")
    for att in ("causal", "bidirectional"):
        s = {x["precision"]: x for x in results["sick_r"] if x["attention"] == att}
        print(f"| {att} mean | {s['fp32']['spearman']:.4f} ({s['fp32']['seconds']:.0f} s) | "
              f"{s['bf16']['spearman']:.4f} ({s['bf16']['seconds']:.0f} s) |")
    if args.out:
        json.dump(results, open(args.out, "w"), indent=2)


if __name__ == "__main__":
    main()
