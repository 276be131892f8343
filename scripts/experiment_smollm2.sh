#!/usr/bin/env bash
# The LLM2Vec recipe on SmolLM2-135M-Instruct, ours side by side with the official llm2vec pipeline (see
# scripts/experiment_smollm2.py for the data, the scale and what is measured). Needs `make`, the scripts venv
# (scripts/requirements.txt), SmolLM2 (scripts/get_smollm2.sh) and a checkout of McGill-NLP/llm2vec; not CI.
#   scripts/experiment_smollm2.sh [--llm2vec-repo DIR] [--steps-scale X] [--threads 2] [--work DIR]
#                                 [--stacks ours,llm2vec]
# Without --llm2vec-repo the repository is cloned (at the pinned commit) into ~/.cache/llm2vec.cu/llm2vec-repo.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ -x build/llm2vec ]] || { echo "build/llm2vec is not built: run make first" >&2; exit 1; }
[[ -x scripts/.venv/bin/python ]] || { echo "scripts/.venv is missing: python3 -m venv scripts/.venv && scripts/.venv/bin/pip install -r scripts/requirements.txt" >&2; exit 1; }
COMMIT=$(sed -n 's/^LLM2VEC_COMMIT = "\([0-9a-f]*\)".*/\1/p' scripts/experiment_smollm2.py)
args=("$@")
if [[ " $* " != *" --llm2vec-repo "* && " $* " != *" --stacks ours "* ]]; then
  repo=~/.cache/llm2vec.cu/llm2vec-repo
  if [[ ! -f $repo/experiments/run_mntp.py ]]; then
    git clone --quiet https://github.com/McGill-NLP/llm2vec "$repo.tmp" && git -C "$repo.tmp" checkout --quiet "$COMMIT" &&
      mv "$repo.tmp" "$repo" || { rm -rf "$repo.tmp"; echo "cannot clone McGill-NLP/llm2vec: give --llm2vec-repo DIR" >&2; exit 1; }
  fi
  args+=(--llm2vec-repo "$repo")
fi
exec scripts/.venv/bin/python scripts/experiment_smollm2.py "${args[@]}"
