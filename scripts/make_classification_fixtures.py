"""Writes test/fixtures/classification/sklearn.json: scikit-learn LogisticRegression (C = 1, newton-cg run
to tol 1e-14) fitted on Gaussian blobs with two and with four classes — coefficients, intercepts and the
predicted classes of held-out points — and f1_score(average="macro") / accuracy_score for pairs of
labellings, for test/test_classification.cpp.

Run from the repository root in the scripts venv (scripts/requirements.txt pins scikit-learn):
    scripts/.venv/bin/python scripts/make_classification_fixtures.py
"""
import json

import numpy as np
import sklearn
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score


def fit(classes, seed):
    X, y = make_blobs(n_samples=160, centers=classes, n_features=5, cluster_std=2.5, random_state=seed)
    X = X.astype(np.float32)
    train, test = slice(0, 100), slice(100, 160)
    # Fitted in float64 on the float32 values (sklearn keeps float32 inputs in float32, optimum included),
    # by newton-cg: the objective of the default lbfgs, whose ftol stops it ~1e-5 short of the optimum.
    m = LogisticRegression(C=1.0, tol=1e-14, max_iter=100000, solver="newton-cg").fit(
        X[train].astype(np.float64), y[train])
    return {"classes": classes, "dim": 5, "x_train": [float(v) for v in X[train].ravel()],
            "y_train": [int(v) for v in y[train]], "x_test": [float(v) for v in X[test].ravel()],
            "coef": [float(v) for v in m.coef_.ravel()], "intercept": [float(v) for v in m.intercept_],
            "predicted": [int(v) for v in m.predict(X[test].astype(np.float64))], "n_iter": int(m.n_iter_[0])}


rng = np.random.default_rng(5)
pairs = []
for n, k in [(40, 3), (25, 5), (10, 2)]:
    t, p = rng.integers(0, k, n), rng.integers(0, k, n)
    pairs.append((t, p))
pairs.append((np.array([0, 0, 1, 1]), np.array([0, 0, 1, 2])))  # a predicted label that is never true
pairs.append((np.array([2, 2, 2]), np.array([2, 2, 2])))
cases = [{"truth": [int(v) for v in t], "pred": [int(v) for v in p],
          "accuracy": float(accuracy_score(t, p)), "macro_f1": float(f1_score(t, p, average="macro", zero_division=0))}
         for t, p in pairs]
out = {"sklearn": sklearn.__version__, "fits": [fit(2, 1), fit(4, 2)], "scores": cases}
with open("test/fixtures/classification/sklearn.json", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote test/fixtures/classification/sklearn.json with sklearn", sklearn.__version__,
      "iterations", [x["n_iter"] for x in out["fits"]])
