#!/usr/bin/env python3
"""Reference fixtures for test/test_sts.cpp (data/sts.h, data/npy.h), written to test/fixtures/sts/.

- spearman.json: vectors (several with ties, as SICK's relatedness scores have) with
  scipy.stats.spearmanr's statistic and scipy.stats.rankdata's average ranks.
- *.npy: the bytes numpy.save writes for small arrays: float32 C-order 2-D arrays (written byte for byte
  by write_npy_f32 and read by read_npy_f32), and arrays read_npy_f32 must refuse (float64, Fortran order,
  1-D, big-endian). npy.json lists each file with its shape and values.

Run from the repository root:
    scripts/.venv/bin/python scripts/make_sts_fixtures.py
Deterministic: a second run rewrites byte-identical files.
"""
import json
import os
import platform
import sys

import numpy as np
import scipy
from scipy import stats

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "test", "fixtures", "sts")


def spearman_cases():
    rng = np.random.default_rng(20240405)
    cases = []

    def add(name, x, y):
        x = [float(v) for v in x]
        y = [float(v) for v in y]
        rho = stats.spearmanr(x, y).statistic
        assert np.isfinite(rho), name
        cases.append({
            "name": name,
            "x": x,
            "y": y,
            "rho": float(rho),
            "rank_x": [float(r) for r in stats.rankdata(x, method="average")],
            "rank_y": [float(r) for r in stats.rankdata(y, method="average")],
        })

    add("no_ties", [1, 2, 3, 4, 5, 6], [2.5, 1.0, 4.0, 3.5, 6.0, 5.5])
    add("ties_both", [1, 2, 2, 3, 3, 3, 4, 5], [2, 1, 2, 3, 4, 4, 5, 5])
    add("negative_with_ties", [0.1, 0.2, 0.2, 0.4, 0.5, 0.9, 0.9], [9, 8, 8, 8, 3, 1, 2])
    add("two_points", [0.0, 1.0], [3.0, -1.0])
    # SICK-like: gold relatedness on a 0.1 grid in [1, 5] (many ties), noisy float cosines.
    gold = np.round(rng.uniform(1.0, 5.0, 200), 1)
    cos = 0.1 * gold + rng.normal(0.0, 0.25, 200)
    add("sick_like_200", gold, cos)
    # Ties in the prediction too (cosines rounded to 2 decimals).
    add("sick_like_rounded_200", gold, np.round(cos, 2))
    # Weakly correlated, no ties, larger n.
    x = rng.normal(size=300)
    y = 0.2 * x + rng.normal(size=300)
    add("random_300", x, y)
    # Integers with a huge tie block.
    add("tie_block", [1] * 10 + [2, 3, 4, 5], [5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 10, 11, 12, 13])
    return cases


def npy_arrays():
    a = np.array([[0.0, -0.0, 1.0, -1.5],
                  [3.1415927, 1e-30, -2.5e38, 1.4e-45],
                  [0.1, 0.2, 0.3, 65504.0]], dtype=np.float32)
    rng = np.random.default_rng(7)
    b = rng.normal(size=(17, 3)).astype(np.float32)
    ok = [("f32_3x4.npy", a), ("f32_17x3.npy", b), ("f32_1x1.npy", np.array([[42.0]], np.float32)),
          ("f32_0x5.npy", np.zeros((0, 5), np.float32))]
    bad = [("f64_2x2.npy", np.arange(4, dtype=np.float64).reshape(2, 2)),
           ("f32_fortran_2x3.npy", np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))),
           ("f32_1d.npy", np.arange(3, dtype=np.float32)),
           ("f32_bigendian_2x2.npy", np.arange(4, dtype=">f4").reshape(2, 2))]
    return ok, bad


def main():
    os.makedirs(OUT, exist_ok=True)
    versions = {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__}
    with open(os.path.join(OUT, "spearman.json"), "w") as f:
        # One case per line.
        f.write('{"versions": ' + json.dumps(versions) + ',\n "cases": [\n')
        f.write(",\n".join(json.dumps(c) for c in spearman_cases()))
        f.write("\n]}\n")
    ok, bad = npy_arrays()
    listing = {"versions": versions, "valid": [], "invalid": []}
    for name, arr in ok:
        np.save(os.path.join(OUT, name), arr)
        listing["valid"].append({"file": name, "rows": arr.shape[0], "cols": arr.shape[1],
                                 "data": [float(v) for v in arr.ravel()]})
    for name, arr in bad:
        np.save(os.path.join(OUT, name), arr)
        listing["invalid"].append({"file": name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                                   "fortran_order": bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)})
    with open(os.path.join(OUT, "npy.json"), "w") as f:
        json.dump(listing, f)
        f.write("\n")
    print(f"wrote {OUT} with {versions}", file=sys.stderr)


if __name__ == "__main__":
    main()
