#!/usr/bin/env bash
# Fetches the headers of the cuDNN frontend (NVIDIA's header-only C++ graph API over cuDNN, used by
# cuda/attention_cudnn.cpp) from its PyPI wheel, nvidia-cudnn-frontend, whose include/ folder holds them:
# `pip download --no-deps` of the version pinned here (PyPI is the only network access of the build),
# then include/ unpacked into DIR/include. Run by cuda/cuda.mk on machines with nvcc and cuDNN, once
# (its target is DIR/include/cudnn_frontend.h, remade when this script changes). DIR appears whole or
# not at all. Frontend 1.32.0 builds SDPA graphs for cuDNN 9 (checked with cuDNN 9.19; ragged offsets,
# used for padding, need cuDNN 9.18.1 or newer on Ampere, 9.x on Hopper).
#   usage: scripts/fetch_cudnn_frontend.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
version=1.32.0
dir=$1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# One wheel, whatever the local Python and machine: the headers are the same in every wheel of a version.
python3 -m pip download --quiet --no-deps --only-binary=:all: --implementation cp --python-version 3.11 \
    --abi cp311 --platform manylinux_2_28_x86_64 "nvidia-cudnn-frontend==$version" -d "$tmp/wheel" || {
  echo "fetch_cudnn_frontend: could not download nvidia-cudnn-frontend==$version from PyPI (needed for" \
       "--attention_impl cudnn)" >&2
  exit 1
}
# The wheel is a zip file; only its include/ folder is kept (unzip may be absent, python3 is not).
python3 - "$tmp"/wheel/*.whl "$tmp/out" <<'PY'
import sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.startswith("include/")]
    if "include/cudnn_frontend.h" not in members:
        sys.exit(f"fetch_cudnn_frontend: {wheel} has no include/cudnn_frontend.h")
    z.extractall(out, members)
PY
rm -rf "$dir"
mkdir -p "$(dirname "$dir")"
mv "$tmp/out" "$dir"
echo "fetch_cudnn_frontend: cuDNN frontend $version headers in $dir/include"
