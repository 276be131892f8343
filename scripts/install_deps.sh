#!/usr/bin/env bash
# Installs the Debian packages the build needs, only those that are missing.
# Called by the Makefile before building; safe to run again (does nothing when all are present).
set -euo pipefail

# clang and its runtimes (libFuzzer, sanitizers) build the fuzz targets (fuzz/fuzz.mk).
packages=(g++ make nlohmann-json3-dev libopenblas-dev libopenmpi-dev openmpi-bin libgtest-dev libbenchmark-dev
          libpcre2-dev libutf8proc-dev clang libclang-rt-14-dev)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install_deps: installing missing packages: ${missing[*]}"
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install_deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
