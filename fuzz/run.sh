#!/usr/bin/env bash
# Runs fuzz targets built by fuzz/fuzz.mk: fuzz/run.sh SECONDS JOBS TARGET... (from the repository root).
# Each target runs SECONDS under libFuzzer's limits (an input taking over 10 s, a process over 2 GB of
# memory or any leak is a finding) from build/fuzz/corpus/TARGET (kept between runs), the seeds of
# fuzz/make_seeds.py and, replayed first, the inputs of earlier findings in fuzz/regressions/TARGET.
# JOBS targets run at once. Prints one line per target (executions, result; a finding's input is saved
# under build/fuzz/artifacts/) and fails if any target had a finding.
set -euo pipefail
seconds=$1 jobs=$2
shift 2
out=build/fuzz
rm -rf "$out/seeds" "$out/logs"
mkdir -p "$out/logs" "$out/artifacts"
python3 fuzz/make_seeds.py "$out/seeds"

run_one() {
  local t=$1 dirs=("$out/corpus/$1" "$out/seeds/$1")
  mkdir -p "$out/corpus/$t"
  [[ -d fuzz/regressions/$t ]] && dirs+=("fuzz/regressions/$t")
  if "$out/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$out/artifacts/$t-" "${dirs[@]}" >"$out/logs/$t.log" 2>&1; then
    echo ok >"$out/logs/$t.result"
  else
    echo FINDING >"$out/logs/$t.result"
  fi
}
export -f run_one
export out seconds
printf '%s\n' "$@" | xargs -P "$jobs" -I{} bash -c 'run_one {}'

failed=0
printf '%-26s %12s  %s\n' target executions result
for t in "$@"; do
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out/logs/$t.log" | grep -o '[0-9]*$' || echo '?')
  result=$(cat "$out/logs/$t.result")
  printf '%-26s %12s  %s\n' "$t" "${execs:-?}" "$result"
  if [[ $result != ok ]]; then
    failed=1
    grep -E 'ERROR|FUZZ FINDING|terminate|what\(\)|SUMMARY|Test unit written' "$out/logs/$t.log" | head -8 | sed 's/^/    /'
  fi
done
exit $failed
