#!/usr/bin/env bash
# Runs every GoogleTest binary given on the command line and prints one summary line
# "N passed, N failed" over all of them. Exits non-zero if any test failed or a binary crashed.
set -u
passed=0; failed=0; crashed=()
for bin in "$@"; do
  echo "=== $bin"
  out=$("$bin" --gtest_color=no 2>&1); rc=$?
  printf '%s\n' "$out" | grep -vE '^\[ +(RUN|OK) +\]' 
  p=$(printf '%s\n' "$out" | sed -nE 's/^\[  PASSED  \] ([0-9]+) tests?.*/\1/p' | tail -n1)
  f=$(printf '%s\n' "$out" | sed -nE 's/^\[  FAILED  \] ([0-9]+) tests?, listed below.*/\1/p' | tail -n1)
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  if [ $rc -ne 0 ] && [ -z "$f" ]; then crashed+=("$bin (exit $rc)"); failed=$((failed + 1)); fi
done
for c in "${crashed[@]+"${crashed[@]}"}"; do echo "CRASHED: $c"; done
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
