#!/usr/bin/env bash
# Ours against PyTorch + PEFT + llm2vec on the same model, batch, length and threads (see
# scripts/bench_vs_pytorch.py for what is measured). Needs `make` and the scripts venv
# (scripts/requirements.txt); not part of CI.
#   scripts/bench_vs_pytorch.sh [--model DIR] [--threads 2] [--batch 8] [--seq 128] [--steps 5] [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/llm2vec ]] || { echo "build/llm2vec is not built: run make first" >&2; exit 1; }
exec scripts/.venv/bin/python scripts/bench_vs_pytorch.py "$@"
