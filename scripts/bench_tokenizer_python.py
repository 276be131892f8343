#!/usr/bin/env python3
"""Throughput of the Python `tokenizers` library on WikiText-2's validation lines, the reference for
bench/bench_tokenizer.cpp (same lines, same add_special_tokens=True, tokens/s over all lines).

Three ways of calling it, each in a fresh process (tokenizers fixes its thread pool on first use):
  loop        Tokenizer.encode(line) per line from Python: one thread, with per-call Python overhead
  batch-1     Tokenizer.encode_batch(lines) with TOKENIZERS_PARALLELISM=false: one thread, no per-line overhead
  batch-N     Tokenizer.encode_batch(lines) with its default Rayon pool (all cores)
Each is warmed up once (so the BPE cache is warm, as in the C++ benchmark), then timed over
--repeats passes; the best pass is reported.

Run from the repository root:  scripts/.venv/bin/python scripts/bench_tokenizer_python.py
"""
import argparse
import json
import os
import subprocess
import sys
import time

TOKENIZERS = ["mistral-7b-v0.1", "qwen2.5"]


def find(*paths):
    for p in paths:
        if os.path.exists(p):
            return p
    sys.exit(f"bench_tokenizer_python: none of {paths} exists (run from the repo root)")


def measure(name, mode, repeats):
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(find(f"assets/tokenizers/{name}/tokenizer.json",
                                   f"../shared/data/tokenizers/{name}/tokenizer.json"))
    with open(find("assets/wikitext-2/wiki.valid.raw", "../shared/data/wikitext-2/wiki.valid.raw"),
              encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start another

    def run():
        if mode == "loop":
            return sum(len(tok.encode(line, add_special_tokens=True).ids) for line in lines)
        return sum(len(e.ids) for e in tok.encode_batch(lines, add_special_tokens=True))

    tokens = run()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
    return {"tokenizer": name, "mode": mode, "lines": len(lines), "tokens": tokens, "seconds": best,
            "tokens_per_s": tokens / best}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", nargs=2, metavar=("TOKENIZER", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.child[1], args.repeats)))
        return
    import tokenizers
    print(f"tokenizers {tokenizers.__version__}, {os.cpu_count()} CPUs")
    print(f"{'tokenizer':<16} {'mode':<8} {'tokens':>9} {'best s':>8} {'tokens/s':>12}")
    for name in TOKENIZERS:
        for mode, parallel in (("loop", "false"), ("batch-1", "false"), ("batch-N", "true")):
            env = dict(os.environ, TOKENIZERS_PARALLELISM=parallel)
            out = subprocess.run([sys.executable, __file__, "--repeats", str(args.repeats), "--child", name,
                                  mode if mode == "loop" else "batch"],
                                 env=env, check=True, capture_output=True, text=True).stdout
            r = json.loads(out)
            print(f"{name:<16} {mode:<8} {r['tokens']:>9} {r['seconds']:>8.3f} {r['tokens_per_s'] / 1e6:>10.2f} M")


if __name__ == "__main__":
    main()
