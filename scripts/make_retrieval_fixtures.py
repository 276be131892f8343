"""Writes test/fixtures/retrieval/trec_eval.json: pytrec_eval's (trec_eval 9.0.8's) nDCG@10, MAP@100,
Recall@100 and reciprocal rank of the top 10 (MRR@10) per query, for random graded qrels and runs with
tied scores, for test/test_retrieval.cpp.

Run from the repository root in the scripts venv:
    scripts/.venv/bin/python scripts/make_retrieval_fixtures.py
"""
import json

import numpy as np
import pytrec_eval

rng = np.random.default_rng(11)
qrels, run = {}, {}
docs = [f"d{i}" for i in range(150)]
for q in range(25):
    qid = f"q{q}"
    rel = {}
    for d in rng.choice(docs, size=int(rng.integers(1, 12)), replace=False):
        rel[str(d)] = int(rng.integers(0, 4))  # graded 0..3; 0 judged non-relevant
    if q == 3:
        rel = {"d5": 0, "d6": 0}  # judged, nothing relevant
    qrels[qid] = rel
    # A run over 120 documents, scores rounded to 0.05 so that many tie (trec_eval breaks ties by docno).
    cand = rng.choice(docs, size=120, replace=False)
    run[qid] = {str(d): float(np.round(rng.random() * 20) / 20) for d in cand}
    if q % 4 == 0:  # make sure some relevant documents are ranked high
        for d in list(rel)[:2]:
            run[qid][d] = 1.5

evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "map_cut.100", "recall.100"})
res = evaluator.evaluate(run)


def trec_order(items):
    # trec_eval: score descending, ties by document id descending.
    return sorted(items, key=lambda kv: (-kv[1], [-ord(c) for c in kv[0]] + [1]))


top10 = {q: dict(trec_order(list(r.items()))[:10]) for q, r in run.items()}
rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
out = {"pytrec_eval": pytrec_eval.__version__ if hasattr(pytrec_eval, "__version__") else "pytrec-eval-terrier",
       "qrels": qrels, "run": run,
       "expected": {q: {"ndcg@10": res[q]["ndcg_cut_10"], "map@100": res[q]["map_cut_100"],
                        "recall@100": res[q]["recall_100"], "mrr@10": rr[q]["recip_rank"]} for q in res}}
with open("test/fixtures/retrieval/trec_eval.json", "w") as f:
    json.dump(out, f, indent=1, sort_keys=True)
    f.write("\n")
print("wrote test/fixtures/retrieval/trec_eval.json:", len(res), "queries")
