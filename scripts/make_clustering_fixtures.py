"""Writes test/fixtures/clustering/sklearn.json: scikit-learn's homogeneity, completeness and V-measure
(sklearn.metrics.homogeneity_completeness_v_measure) for pairs of labellings, and a k-means reference
(sklearn.cluster.KMeans) on separated Gaussian blobs, for test/test_clustering.cpp.

Run from the repository root in the scripts venv (scripts/requirements.txt pins scikit-learn):
    scripts/.venv/bin/python scripts/make_clustering_fixtures.py
"""
import json

import numpy as np
import sklearn
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import homogeneity_completeness_v_measure

rng = np.random.default_rng(7)


def case(name, truth, pred):
    h, c, v = homogeneity_completeness_v_measure(truth, pred)
    return {"name": name, "truth": [int(x) for x in truth], "pred": [int(x) for x in pred],
            "homogeneity": float(h), "completeness": float(c), "v_measure": float(v)}


truth = rng.integers(0, 4, 50)
cases = [
    case("random 4 vs 5 labels", truth, rng.integers(0, 5, 50)),
    case("random 3 vs 3 labels, 200 items", rng.integers(0, 3, 200), rng.integers(0, 3, 200)),
    case("noisy copy", truth, np.where(rng.random(50) < 0.2, rng.integers(0, 4, 50), truth)),
    case("identical", truth, truth),
    case("permuted label names", truth, (truth + 1) % 4 + 10),
    case("one cluster", truth, np.zeros(50, dtype=int)),
    case("every item its own cluster", truth, np.arange(50)),
    case("one true class", np.zeros(20, dtype=int), rng.integers(0, 3, 20)),
    case("both constant", np.zeros(5, dtype=int), np.full(5, 3)),
    case("one item", [2], [0]),
    case("sparse label ids", [0, 0, 7, 7, 300, 300], [5, 5, 5, 1, 1, 1]),
]

X, y = make_blobs(n_samples=120, centers=4, n_features=6, cluster_std=1.0, random_state=0)
X = X.astype(np.float32)
km = KMeans(n_clusters=4, n_init=10, random_state=0).fit(X)
labels = km.labels_
X64 = X.astype(np.float64)
inertia = 0.0
for c in range(4):
    rows = X64[labels == c]
    inertia += float(((rows - rows.mean(axis=0)) ** 2).sum())

out = {
    "sklearn": sklearn.__version__,
    "scores": cases,
    "kmeans": {"n": 120, "d": 6, "k": 4, "x": [float(v) for v in X.ravel()], "truth": [int(v) for v in y],
               "labels": [int(v) for v in labels], "inertia_float64": inertia},
}
with open("test/fixtures/clustering/sklearn.json", "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote test/fixtures/clustering/sklearn.json with sklearn", sklearn.__version__)
