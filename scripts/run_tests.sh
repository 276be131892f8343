#!/usr/bin/env bash
# Runs every GoogleTest binary given on the command line and prints one summary line
# "N passed, N failed, N skipped" over all of them (skipped tests are listed by name above it, so a
# test that silently stopped running is visible). Exits non-zero if any test failed or a binary crashed.
set -u
passed=0; failed=0; skipped=0; crashed=(); skipped_names=()
for bin in "$@"; do
  echo "=== $bin"
  out=$("$bin" --gtest_color=no 2>&1); rc=$?
  printf '%s\n' "$out" | grep -vE '^\[ +(RUN|OK) +\]' 
  p=$(printf '%s\n' "$out" | sed -nE 's/^\[  PASSED  \] ([0-9]+) tests?.*/\1/p' | tail -n1)
  f=$(printf '%s\n' "$out" | sed -nE 's/^\[  FAILED  \] ([0-9]+) tests?, listed below.*/\1/p' | tail -n1)
  s=$(printf '%s\n' "$out" | sed -nE 's/^\[  SKIPPED \] ([0-9]+) tests?, listed below.*/\1/p' | tail -n1)
  while IFS= read -r name; do [ -n "$name" ] && skipped_names+=("$bin: $name"); done \
    < <(printf '%s\n' "$out" | sed -nE 's/^\[  SKIPPED \] ([A-Za-z_0-9/.]+)( \(.*)?$/\1/p' | sort -u)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0})); skipped=$((skipped + ${s:-0}))
  if [ $rc -ne 0 ] && [ -z "$f" ]; then crashed+=("$bin (exit $rc)"); failed=$((failed + 1)); fi
done
for c in "${crashed[@]+"${crashed[@]}"}"; do echo "CRASHED: $c"; done
for n in "${skipped_names[@]+"${skipped_names[@]}"}"; do echo "SKIPPED: $n"; done
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
